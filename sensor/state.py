"""Engine state that survives restarts and reloads: capture, restore, checkpoint files.

Theory of operation
-------------------
``capture_state(engine)`` takes everything an ``Engine`` carries from one
batch to the next -- the probe table and its timeout FIFO, every detector's
lifecycle and counter tables, the alert gate's minute, the decode counters
and the keyed-hash seed -- as a dict of plain values and numpy arrays.
``restore_state(engine, state)`` puts it into a *fresh* engine, at the same
slot indices, so the engine goes on exactly as the one it was taken from:
the same alerts, ids, seq and order as one uninterrupted run. The engine
adopts the saved seed (tables are placed by a hash keyed with it).

Only live slots are saved (``last_seen_ns != EMPTY``: a slot never becomes
empty again once used). Per-slot arrays with small rows are saved as rows of
the live slots; big rows (port bitmaps, sketches, item lists) as their
non-zero elements (flat index + value), and port bitmaps only for keys whose
ports are in bitmaps (``tier_n == IN_BITMAPS``; kernels/port_set.py keeps
them all-zero otherwise). A checkpoint is therefore proportional to the live
keys, not to the 237 MiB the tables take at default settings.

The same pair moves state from the old engine to a new one on a config
reload: thresholds, lists and outputs come from the new config, tables from
the old engine. A table whose ``max_keys`` or ``table_ways`` (or
``probes.max_probes``, ``probes.table_ways``) changed cannot be placed 1:1:
its keys are re-placed into the new layout (``placement``: the bucket of each
saved key hash; in a bucket too full, keys with alerts waiting first, then
the heaviest; keys that do not fit are dropped and counted as evictions; if
a key with an alert waiting does not fit, the state is refused). A table
whose ``max_listed``, ``window_s``, ``scope`` or ``count`` changed means
something else now: the whole state is refused with ``StateRefused`` naming
the setting, before anything is written into the engine (the caller keeps
the old config, or starts fresh). ``max_pending_alerts`` may change as long
as the waiting alerts fit.
A rule disabled in the new config has its table dropped (with a message); a
rule newly enabled starts empty.

File format (``save_checkpoint`` / ``load_checkpoint``): one msgpack array
``[header, payload]``. ``header`` is a map: ``format`` ("scan-sensor-state"),
``version`` (this module's ``VERSION``), ``sensor_version``, ``created_ns``
(the daemon's wall clock, passed in), ``tables`` (each table's shape),
``meta`` (the daemon's: interfaces, config fingerprint), ``payload_bytes``
and ``payload_blake2b`` (hex digest of ``payload``). ``payload`` is the
msgpack of ``capture_state``, numpy arrays as ``{"nd": dtype, "shape": [...],
"data": raw bytes}``. Files are written atomically (temp file in the same
directory, fsync, rename, fsync of the directory). A file that is not
msgpack, has the wrong magic or a bad checksum is moved aside
(``NAME.corrupt-N``), one written by a newer version or with other table
shapes is refused and moved aside (``NAME.refused-N``); older versions are
converted through ``CONVERTERS``, one function per version step (the model
is mitmproxy's ``io/compat.py``).
"""
import dataclasses
import hashlib
import importlib.metadata
import os
import time

import msgpack
import numpy as np

from kernels import alert_slots as ks
from kernels import probes as kp
from kernels.addr_table import EMPTY
from kernels.port_set import IN_BITMAPS

FORMAT = "scan-sensor-state"
VERSION = 1
SPARSE_ROW_BYTES = 256      # per-slot rows larger than this are saved as non-zero elements


class StateRefused(Exception):
    """Saved state this engine cannot take as it is (message says which setting)."""


class StateCorrupt(Exception):
    """A state file that is not one (not msgpack, foreign, truncated, bad checksum)."""


def _sensor_version():
    try:
        return importlib.metadata.version("scan-sensor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- what is saved of each table -------------------------------------------------
# (name, the per-slot array holding it); rows of row-wise matrices are saved whole
def _owner(a):
    while a.base is not None:
        a = a.base
    return a


def _lifecycle_arrays(lc):
    return (("keys", lc.keys), ("fps", lc.fps), ("last_seen_ns", lc.last_seen_ns),
            ("pinned", lc.pinned), ("count", lc.count), ("episode", _owner(lc.first_seen_ns)))


def _port_set_arrays(t):
    return (("ports", t.ports), ("targets", _owner(t.target_hi)),
            ("target_sketch", t.target_sketch), ("row", _owner(t.pane)))


HOST_SET_NAMES = ("pane", "item_hi", "item_lo", "item_port", "item_pane", "item_n", "sketch",
                  "contrib_hi", "contrib_lo", "contrib_n", "llr", "failures", "trw_state",
                  "attempts")


def _host_set_arrays(t):
    return tuple((name, getattr(t, name)) for name in HOST_SET_NAMES)


def _probe_arrays(p):
    return (("keys", p.keys), ("fps", p.fps), ("last_seen_ns", p.last_seen_ns),
            ("pinned", p.pinned), ("sent_ns", p.sent_ns), ("row", _owner(p.state)))


def slot_arrays(obj):
    """(name, array) of every per-slot array of a Lifecycle, PortSetState,
    HostSetState or ProbeState (tests check that nothing is left out)."""
    if isinstance(obj, ks.Lifecycle):
        return _lifecycle_arrays(obj)
    if isinstance(obj, kp.ProbeState):
        return _probe_arrays(obj)
    if hasattr(obj, "ports"):
        return _port_set_arrays(obj)
    return _host_set_arrays(obj)


def _capture_slots(pairs, live, only=None):
    """Rows of the live slots: dense for small rows, non-zero elements for big ones.
    ``only``: {name: slots} restricting which slots of that array can be non-zero."""
    dense, sparse = {}, {}
    for name, arr in pairs:
        row_len = int(np.prod(arr.shape[1:], dtype=np.int64))
        if row_len * arr.itemsize <= SPARSE_ROW_BYTES:
            dense[name] = arr[live]
            continue
        slots = (only or {}).get(name, live)
        sub = arr.reshape(arr.shape[0], row_len)[slots]
        nz = np.flatnonzero(sub)
        sparse[name] = {"index": slots[nz // row_len] * row_len + nz % row_len,
                        "values": sub.reshape(-1)[nz]}
    return {"dense": dense, "sparse": sparse}


def _restore_slots(pairs, live, saved):
    for name, arr in pairs:
        if name in saved["dense"]:
            arr[live] = saved["dense"][name]
        else:
            s = saved["sparse"][name]
            flat = arr.reshape(-1)
            if not np.shares_memory(flat, arr):
                raise ValueError(f"{name}: table array is not contiguous")
            flat[s["index"]] = s["values"]


def _live(last_seen_ns):
    return np.flatnonzero(last_seen_ns != EMPTY).astype(np.int64)


# --- capture -----------------------------------------------------------------------
def _detector_shape(det):
    return {"kind": det.rule.table, "capacity": int(det.lc.keys.shape[0]),
            "ways": int(det.params[ks.P_WAYS]), "max_listed": int(det.params[ks.P_LIST]),
            "max_pending_alerts": int(det.lc.pending.shape[0])}


def _detector_meaning(det):
    return {"window_ns": int(det.params[ks.P_WINDOW_NS]), "mode": int(det.params[ks.P_MODE]),
            "pair_scope": int(det.params[ks.P_PAIR_SCOPE]),
            "count_attempts": int(det.params[ks.P_COUNT_ATTEMPTS])}


def _probe_shape(probes):
    return {"capacity": int(probes.keys.shape[0]), "ways": int(probes.params[kp.PP_WAYS])}


def table_shapes(engine):
    """Shape of every table of ``engine`` (for the checkpoint header)."""
    shapes = {"probes": _probe_shape(engine.probes)}
    for det in engine.counters:
        shapes[det.name] = _detector_shape(det)
    return shapes


def _capture_detector(det):
    lc, t = det.lc, det.table
    live = _live(lc.last_seen_ns)
    only = {}
    if det.rule.table == "port_set":
        only["ports"] = live[t.tier_n[live] == IN_BITMAPS]
    n = int(lc.meta[ks.M_NPENDING])
    return {"shape": _detector_shape(det), "meaning": _detector_meaning(det), "live": live,
            "lifecycle": _capture_slots(_lifecycle_arrays(lc), live),
            "table": _capture_slots(slot_arrays(t), live, only),
            "pending": lc.pending[:n].copy(), "meta": lc.meta.copy()}


def _capture_probes(probes):
    live = _live(probes.last_seen_ns)
    m = probes.meta
    cap = probes.fifo_slot.shape[0]
    at = np.arange(m[kp.PM_HEAD], m[kp.PM_TAIL], dtype=np.int64) % cap
    return {"shape": _probe_shape(probes), "live": live,
            "slots": _capture_slots(_probe_arrays(probes), live),
            "fifo_slot": probes.fifo_slot[at], "fifo_ts": probes.fifo_ts[at],
            "meta": m.copy()}


def capture_state(engine):
    """Everything ``engine`` carries between batches, as plain values and arrays.
    Call it between batches (never while ``process`` runs)."""
    g = engine.gate
    return {
        "seed": int(engine.seed),
        "decode_stats": engine.decode_stats.copy(),
        "gate": {"minute": g.minute, "passed": g.passed, "held": dict(g.held),
                 "held_sources": list(g.held_sources), "total_held": g.total_held},
        "probes": _capture_probes(engine.probes),
        "detectors": {det.name: _capture_detector(det) for det in engine.counters},
    }


# --- restore -----------------------------------------------------------------------
MEANING_SETTINGS = {"window_ns": "window_s", "pair_scope": "scope",
                    "count_attempts": "count", "mode": "(rule mode)"}
SHAPE_SETTINGS = {"capacity": "max_keys", "ways": "table_ways", "max_listed": "max_listed",
                  "kind": "(table kind)"}


def _check_detector(det, saved):
    """Reasons (setting names) why ``saved`` cannot go into ``det``'s tables; a
    changed ``max_keys`` / ``table_ways`` is not one (the keys are re-placed)."""
    problems = []
    shape, now = saved["shape"], _detector_shape(det)
    for key, setting in SHAPE_SETTINGS.items():
        if key not in RELOCATABLE and shape[key] != now[key]:
            problems.append(f"{det.name}.{setting} changed ({shape[key]} -> {now[key]})")
    meaning, now_m = saved["meaning"], _detector_meaning(det)
    for key, setting in MEANING_SETTINGS.items():
        if meaning[key] != now_m[key]:
            problems.append(f"{det.name}.{setting} changed")
    waiting = len(saved["pending"])
    if waiting > now["max_pending_alerts"]:
        problems.append(f"{det.name}.max_pending_alerts lowered to {now['max_pending_alerts']} "
                        f"but {waiting} alerts are waiting")
    return problems


# --- re-placing a table whose max_keys / table_ways changed -----------------------------
RELOCATABLE = ("capacity", "ways")


def _moved(old_shape, new_shape):
    return any(old_shape[k] != new_shape[k] for k in RELOCATABLE)


def _bucket_of(h, nbuckets):
    """kernels/addr_table.py ``bucket_of``, vectorised."""
    return (((h >> np.uint64(32)) * np.uint64(nbuckets)) >> np.uint64(32)).astype(np.int64)


def placement(fps, last_seen_ns, pinned, weight, capacity, ways):
    """New slot of each saved key in a table of ``capacity`` slots, ``ways`` per
    bucket (-1: its bucket is full). Within a bucket, pinned keys go first, then
    the heaviest, the most recent among equals (who find_slot would keep)."""
    b = _bucket_of(fps.astype(np.uint64), capacity // ways)
    order = np.lexsort((-last_seen_ns.astype(np.int64), -weight.astype(np.int64),
                        -pinned.astype(np.int64), b))
    bs = b[order]
    rank = np.arange(len(bs)) - np.searchsorted(bs, bs, side="left")
    new = np.full(len(b), -1, np.int64)
    fits = rank < ways
    new[order[fits]] = bs[fits] * ways + rank[fits]
    return new


def _move_slots(saved, live, new_of_live, row_lens):
    """The saved rows of ``live`` slots at their new slots (dropping those at -1)."""
    keep = new_of_live >= 0
    dense = {name: rows[keep] for name, rows in saved["dense"].items()}
    sparse = {}
    for name, s in saved["sparse"].items():
        row_len = row_lens[name]
        new = new_of_live[np.searchsorted(live, s["index"] // row_len)]
        m = new >= 0
        sparse[name] = {"index": new[m] * row_len + s["index"][m] % row_len,
                        "values": s["values"][m]}
    return {"dense": dense, "sparse": sparse}


def _row_lens(pairs):
    return {name: int(np.prod(a.shape[1:], dtype=np.int64)) for name, a in pairs}


def _relocate_detector(det, saved):
    """``saved`` re-placed into ``det``'s table shape; (new saved, message)."""
    now = _detector_shape(det)
    live = saved["live"]
    lcd = saved["lifecycle"]["dense"]
    new_of_live = placement(lcd["fps"], lcd["last_seen_ns"], lcd["pinned"], lcd["count"],
                            now["capacity"], now["ways"])
    lost_pinned = int(((new_of_live < 0) & (lcd["pinned"] != 0)).sum())
    if lost_pinned:
        raise StateRefused(f"{det.name}.max_keys/table_ways changed: {lost_pinned} keys with "
                           "alerts waiting do not fit the new table")
    pos = np.searchsorted(live, saved["pending"])
    meta = saved["meta"].copy()
    dropped = int((new_of_live < 0).sum())
    meta[ks.M_EVICTIONS] += dropped
    if len(saved["pending"]):
        meta[ks.M_MIN_DUE_SLOT] = new_of_live[np.searchsorted(live, meta[ks.M_MIN_DUE_SLOT])]
    out = dict(saved, shape=now, live=new_of_live[new_of_live >= 0], meta=meta,
               pending=new_of_live[pos],
               lifecycle=_move_slots(saved["lifecycle"], live, new_of_live,
                                     _row_lens(_lifecycle_arrays(det.lc))),
               table=_move_slots(saved["table"], live, new_of_live,
                                 _row_lens(slot_arrays(det.table))))
    old = saved["shape"]
    return out, (f"{det.name}: keys re-placed from {old['capacity']} slots / {old['ways']} ways "
                 f"to {now['capacity']} / {now['ways']}: {len(out['live'])} kept, "
                 f"{dropped} did not fit (counted as evictions)")


def _relocate_probes(probes, saved):
    now = _probe_shape(probes)
    live = saved["live"]
    d = saved["slots"]["dense"]
    new_of_live = placement(d["fps"], d["last_seen_ns"], d["pinned"], d["sent_ns"],
                            now["capacity"], now["ways"])
    fifo_new = new_of_live[np.searchsorted(live, saved["fifo_slot"])]
    m = fifo_new >= 0
    fifo_slot, fifo_ts = fifo_new[m][-now["capacity"]:], saved["fifo_ts"][m][-now["capacity"]:]
    meta = saved["meta"].copy()
    dropped = int((new_of_live < 0).sum())
    meta[kp.PM_EVICTIONS] += dropped
    meta[kp.PM_HEAD], meta[kp.PM_TAIL] = 0, len(fifo_slot)
    out = dict(saved, shape=now, live=new_of_live[new_of_live >= 0], meta=meta,
               fifo_slot=fifo_slot, fifo_ts=fifo_ts,
               slots=_move_slots(saved["slots"], live, new_of_live,
                                 _row_lens(_probe_arrays(probes))))
    old = saved["shape"]
    return out, (f"probe table: attempts re-placed from {old['capacity']} slots / "
                 f"{old['ways']} ways to {now['capacity']} / {now['ways']}: "
                 f"{len(out['live'])} kept, {dropped} did not fit (counted as evictions)")


def _is_fresh(engine):
    if (engine.probes.last_seen_ns != EMPTY).any() or engine.probes.meta.any():
        return False
    return not any((d.lc.last_seen_ns != EMPTY).any() or d.lc.meta.any()
                   for d in engine.counters)


def restore_state(engine, state):
    """Put ``state`` (from ``capture_state``) into ``engine``, which must be fresh
    (just built). Returns messages worth logging. Raises ``StateRefused``, with
    the engine untouched, when a table's shape or meaning differs."""
    if not _is_fresh(engine):
        raise ValueError("restore_state needs a freshly built engine")
    by_name = {d.name: d for d in engine.counters}
    problems = []
    for name, saved in state["detectors"].items():
        if name in by_name:
            problems += _check_detector(by_name[name], saved)
    if problems:
        raise StateRefused("saved state does not fit the configured tables: "
                           + "; ".join(problems))
    # tables whose max_keys / table_ways changed: re-placed (may still refuse)
    notes = []
    p_saved = state["probes"]
    if _moved(p_saved["shape"], _probe_shape(engine.probes)):
        p_saved, note = _relocate_probes(engine.probes, p_saved)
        notes.append(note)
    detectors = {}
    for name, saved in state["detectors"].items():
        det = by_name.get(name)
        if det is not None and _moved(saved["shape"], _detector_shape(det)):
            saved, note = _relocate_detector(det, saved)
            notes.append(note)
        detectors[name] = saved

    messages = []
    cfg_seed = engine.cfg["sensor.hash_seed"]
    seed = np.uint64(state["seed"])
    if cfg_seed and np.uint64(cfg_seed) != seed:
        messages.append(f"sensor.hash_seed {cfg_seed} ignored: the saved tables are placed "
                        f"with seed {int(seed)}, which stays in use")
    engine.seed = seed
    for det in engine.counters:
        det.seed = seed
    engine.decode_stats[:] = state["decode_stats"]
    g, gs = engine.gate, state["gate"]
    g.minute, g.passed, g.total_held = gs["minute"], gs["passed"], gs["total_held"]
    g.held.clear()
    g.held.update(gs["held"])
    g.held_sources = list(gs["held_sources"])

    probes = engine.probes
    _restore_slots(_probe_arrays(probes), p_saved["live"], p_saved["slots"])
    probes.meta[:] = p_saved["meta"]
    cap = probes.fifo_slot.shape[0]
    at = np.arange(probes.meta[kp.PM_HEAD], probes.meta[kp.PM_TAIL], dtype=np.int64) % cap
    probes.fifo_slot[at] = p_saved["fifo_slot"]
    probes.fifo_ts[at] = p_saved["fifo_ts"]
    summary = [f"probes {len(p_saved['live'])}"]

    for name, saved in detectors.items():
        det = by_name.get(name)
        if det is None:
            messages.append(f"{name} is disabled: its saved table ({len(saved['live'])} keys) "
                            "is dropped")
            continue
        live = saved["live"]
        _restore_slots(_lifecycle_arrays(det.lc), live, saved["lifecycle"])
        _restore_slots(slot_arrays(det.table), live, saved["table"])
        det.lc.meta[:] = saved["meta"]
        det.lc.pending[:len(saved["pending"])] = saved["pending"]
        summary.append(f"{name} {len(live)}")
    for name in by_name:
        if name not in state["detectors"]:
            messages.append(f"{name} was not running: it starts with an empty table")
    messages[:0] = ["restored state (live keys): " + ", ".join(summary)] + notes
    return messages


# --- files -------------------------------------------------------------------------
def _encode(obj):
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {"nd": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(obj, np.integer):
        return int(obj)
    raise TypeError(f"cannot save {type(obj).__name__}")


def _decode(obj):
    if len(obj) == 3 and "nd" in obj and "data" in obj and "shape" in obj:
        return np.frombuffer(obj["data"], np.dtype(obj["nd"])).reshape(obj["shape"])
    return obj


def _digest(payload):
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def encode_checkpoint(engine, meta=None, created_ns=None):
    """The bytes of a checkpoint file of ``engine``."""
    payload = msgpack.packb(capture_state(engine), default=_encode, use_bin_type=True)
    header = {"format": FORMAT, "version": VERSION, "sensor_version": _sensor_version(),
              "created_ns": created_ns, "tables": table_shapes(engine), "meta": meta or {},
              "payload_bytes": len(payload), "payload_blake2b": _digest(payload)}
    return msgpack.packb([header, payload], use_bin_type=True)


@dataclasses.dataclass
class SaveResult:
    path: str
    bytes_written: int
    seconds: float


def save_checkpoint(engine, path, meta=None, *, created_ns=None):
    """Write ``engine``'s state to ``path`` atomically; ``created_ns`` is the
    caller's wall clock (this module reads no clock but a duration timer)."""
    started = time.perf_counter()
    data = encode_checkpoint(engine, meta, created_ns)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return SaveResult(path, len(data), time.perf_counter() - started)


# one function per format version, converting a state of that version to the next:
# CONVERTERS[1] will take a version-1 (header, state) to version 2, and so on
CONVERTERS = {}


def migrate(header, state, converters=None, current=None):
    """Run (header, state) of an older format version up to ``current``."""
    converters = CONVERTERS if converters is None else converters
    current = VERSION if current is None else current
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise StateCorrupt(f"format version {version!r} is not a version")
    if version > current:
        raise StateRefused(f"written by a newer scan-sensor ({header.get('sensor_version')}, "
                           f"state format {version}); this one reads formats up to {current}")
    while version < current:
        if version not in converters:
            raise StateRefused(f"state format {version} cannot be converted (no converter)")
        header, state = converters[version](header, state)
        version += 1
        header = dict(header, version=version)
    return header, state


def decode_checkpoint(data, converters=None, current=None):
    """Checkpoint bytes -> (header, state) at the current version. Raises
    StateCorrupt or StateRefused with a one-line reason."""
    try:
        header, payload = msgpack.unpackb(data, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise StateCorrupt(f"not a scan-sensor state file ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateCorrupt("not a scan-sensor state file (wrong magic)")
    if not isinstance(payload, bytes) or len(payload) != header.get("payload_bytes") \
            or _digest(payload) != header.get("payload_blake2b"):
        raise StateCorrupt("checksum mismatch (truncated or damaged)")
    try:
        state = msgpack.unpackb(payload, raw=False, object_hook=_decode, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise StateCorrupt(f"payload does not decode ({exc})") from None
    return migrate(header, state, converters, current)


@dataclasses.dataclass
class LoadResult:
    status: str            # "restored", "missing", "moved_aside" (corrupt), "refused"
    messages: list
    moved_to: str = None
    header: dict = None


def move_aside(path, tag):
    """Rename ``path`` to ``path.TAG-N`` (first free N); returns the new name."""
    n = 1
    while True:
        target = f"{path}.{tag}-{n}"
        if not os.path.exists(target):
            os.rename(path, target)
            return target
        n += 1


def load_checkpoint(engine, path, move=True):
    """Restore ``engine`` (fresh) from the checkpoint at ``path``. A corrupt or
    foreign file is moved aside (``.corrupt-N``), a refused one (newer format,
    other table shapes) too (``.refused-N``) unless ``move`` is false; the
    engine is then left fresh. Never deletes a file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return LoadResult("missing", [f"no state file at {path}: starting fresh"])
    header = None
    try:
        header, state = decode_checkpoint(data)
        messages = restore_state(engine, state)
    except StateCorrupt as exc:
        status, tag, reason = "moved_aside", "corrupt", exc
    except StateRefused as exc:
        status, tag, reason = "refused", "refused", exc
    else:
        return LoadResult("restored", messages, header=header)
    moved = move_aside(path, tag) if move else None
    where = f"moved to {moved}" if moved else "left in place"
    return LoadResult(status, [f"state file {path}: {reason}; {where}, starting fresh"],
                      moved, header)
