"""Checkpoint files of engine state: versioned, checksummed, written atomically.

What is saved and how it is restored (also on a config reload):
``sensor/state_tables.py`` (``capture_state`` / ``restore_state``, re-exported here:
this module is the one the daemon calls).

File format (``save_checkpoint`` / ``load_checkpoint``): one msgpack array
``[header, payload]``. ``header`` is a map: ``format`` ("scan-sensor-state"),
``version`` (this module's ``VERSION``), ``sensor_version``, ``created_ns``
(the daemon's wall clock, passed in), ``tables`` (each table's shape),
``meta`` (the daemon's: interfaces, config fingerprint), ``payload_bytes``
and ``blake2b`` (128-bit BLAKE2b, hex, of the msgpack of the other header
fields followed by ``payload``). ``payload`` is the
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

# the API of both modules, from one place
from sensor.state_tables import (  # noqa: F401
    StateRefused, capture_state, is_fresh, restore_state,
)

FORMAT = "scan-sensor-state"
VERSION = 3


class StateCorrupt(Exception):
    """A state file that is not one (not msgpack, foreign, truncated, bad checksum)."""


def _sensor_version():
    try:
        return importlib.metadata.version("scan-sensor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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


def _digest(header, payload):
    """Checksum of the header (less this field) and the payload."""
    fields = {k: v for k, v in header.items() if k != "blake2b"}
    h = hashlib.blake2b(msgpack.packb(fields, use_bin_type=True), digest_size=16)
    h.update(payload)
    return h.hexdigest()


def encode_checkpoint(state, meta=None, created_ns=None):
    """The bytes of a checkpoint file of ``state`` (from ``capture_state``)."""
    payload = msgpack.packb(state, default=_encode, use_bin_type=True)
    tables = {"probes": state["probes"]["shape"]}
    tables.update((name, d["shape"]) for name, d in state["detectors"].items())
    header = {"format": FORMAT, "version": VERSION, "sensor_version": _sensor_version(),
              "created_ns": created_ns, "tables": tables, "meta": meta or {},
              "payload_bytes": len(payload)}
    header["blake2b"] = _digest(header, payload)
    return msgpack.packb([header, payload], use_bin_type=True)


@dataclasses.dataclass
class SaveResult:
    path: str
    bytes_written: int
    seconds: float


def save_checkpoint(engine, path, meta=None, *, created_ns=None):
    """Write ``engine``'s state to ``path`` atomically, between batches;
    ``created_ns`` is the caller's wall clock (this module reads no clock but
    a duration timer)."""
    started = time.perf_counter()
    result = write_checkpoint(capture_state(engine), path, meta, created_ns=created_ns)
    result.seconds = time.perf_counter() - started
    return result


def write_checkpoint(state, path, meta=None, *, created_ns=None):
    """``save_checkpoint`` of a state already captured: ``capture_state`` (a copy
    of the live rows, tens of ms) must run between batches; this part (encode,
    write, fsync) may then run on another thread while capture goes on."""
    started = time.perf_counter()
    data = encode_checkpoint(state, meta, created_ns)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _temp_name(path, os.getpid())
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


# --- converters: one function per format version, to the next (mitmproxy io/compat.py) --
V1_CONTRIB = ("contrib_hi", "contrib_lo", "contrib_n")
V2_SOURCES = {"src_hi": "<u8", "src_lo": "<u8", "src_probes": "<i8", "src_hosts": "<u8",
              "src_beyond": "<u8", "src_index": "<i2", "src_sketch": "<u8",
              "src_meta": "<i8", "host_hi": "<u8", "host_lo": "<u8"}
V1_EPISODE_WIDTH, V1_EPISODE_PROBES = 9, 5    # lifecycle "episode" row: probes column
V2_SRC_META_WIDTH, V2_SM_UNLISTED = 3, 2      # kernels/host_set.py src_meta
V1_PORT_SWEEP_MODE = 1                        # kernels/rules.py HS_PORT_SWEEP


def _empty_sparse(dtype):
    return {"index": np.zeros(0, np.int32), "values": np.zeros(0, np.dtype(dtype))}


def _v1_episode_probes(lifecycle, live):
    """The probes column of a format-1 lifecycle's "episode" rows, one per live slot."""
    if "episode" in lifecycle["dense"]:
        return np.asarray(lifecycle["dense"]["episode"])[:, V1_EPISODE_PROBES].astype(np.int64)
    s = lifecycle["sparse"]["episode"]
    index = np.asarray(s["index"]).astype(np.int64)
    at = index % V1_EPISODE_WIDTH == V1_EPISODE_PROBES
    out = np.zeros(len(live), np.int64)
    out[np.searchsorted(live, index[at] // V1_EPISODE_WIDTH)] = np.asarray(s["values"])[at]
    return out


def v1_to_v2(header, state):
    """Format 1 -> 2: port_sweep's top-8 Misra-Gries contributors became an exact
    per-episode source list (``kernels/host_set.py``).

    Every host-set table loses its ``contrib_hi``/``contrib_lo``/``contrib_n``
    arrays and gets the source arrays empty: the other rules' tables, the
    lifecycles, the probe table and everything else are kept as they were. A
    port_sweep episode in progress keeps its id, count, targets and pending
    alert, but its source list starts empty: the sources seen before the
    upgrade are not named. So that the alert does not claim to be complete,
    the probes counted before the upgrade are recorded as probes of unlisted
    sources (``sources_complete: false``, ``source_count_estimated: true``). The
    saved shape gets ``max_sources: None``: an empty list fits any
    ``port_sweep.max_sources``."""
    return header, _each_host_set(state, _v1_to_v2_table)


def _each_host_set(state, convert):
    """``state`` with ``convert(saved)`` in place of every host-set table's saved dict."""
    state = dict(state)
    state["detectors"] = {name: convert(saved) if saved["shape"].get("kind") == "host_set"
                          else saved for name, saved in state["detectors"].items()}
    return state


def _v1_to_v2_table(saved):
    table = {"dense": {k: v for k, v in saved["table"]["dense"].items() if k not in V1_CONTRIB},
             "sparse": {k: v for k, v in saved["table"]["sparse"].items()
                        if k not in V1_CONTRIB}}
    for array, dtype in V2_SOURCES.items():
        table["sparse"][array] = _empty_sparse(dtype)
    live = np.asarray(saved["live"]).astype(np.int64)
    if saved["meaning"].get("mode") == V1_PORT_SWEEP_MODE and len(live):
        probes = _v1_episode_probes(saved["lifecycle"], live)
        at = probes > 0
        table["sparse"]["src_meta"] = {
            "index": (live[at] * V2_SRC_META_WIDTH + V2_SM_UNLISTED).astype(np.int64),
            "values": probes[at]}
    return dict(saved, table=table, shape=dict(saved["shape"], max_sources=None))


V3_SKETCH_ROW = 2 * 64                        # kernels/host_set.py sketch words per slot


def v2_to_v3(header, state):
    """Format 2 -> 3: a host-set table keeps its pane sketches only once a key's item
    list has been full (``sketch_live``), and finds items through an index whose
    entries carry a generation (``item_gen``; the index itself is rebuilt on
    restore). Format 2 kept every sketch, so a key whose sketches hold anything is
    marked live (its sketches go on being kept, as before); generations start at 0.
    The probe table chooses its victims by each probe's ``weight`` (its initiator's
    recent count, ``initiators``): a format-2 probe gets weight 0 (the first to go
    if its bucket fills), the counts start empty, and the probes waiting stay in the
    main timeout queue (the busy initiators' queue starts empty)."""
    state = _each_host_set(state, _v2_to_v3_table)
    probes = dict(state["probes"])
    slots = probes["slots"]
    probes["slots"] = {"dense": dict(slots["dense"]),
                       "sparse": dict(slots["sparse"], weight=_empty_sparse("<i8"))}
    return header, dict(state, probes=probes)


def _v2_to_v3_table(saved):
    live = np.asarray(saved["live"]).astype(np.int64)
    dense, sparse = dict(saved["table"]["dense"]), dict(saved["table"]["sparse"])
    if "sketch" in dense:
        rows = np.asarray(dense["sketch"]).reshape(len(live), V3_SKETCH_ROW)
        used = rows.any(axis=1)
    else:
        s = sparse["sketch"]
        slots = np.asarray(s["index"]).astype(np.int64) // V3_SKETCH_ROW
        used = np.isin(live, slots[np.asarray(s["values"]) != 0])
    dense["sketch_live"] = used.astype(np.uint8)
    sparse["item_gen"] = _empty_sparse("<i8")
    return dict(saved, table={"dense": dense, "sparse": sparse})


CONVERTERS = {1: v1_to_v2, 2: v2_to_v3}


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
    current = VERSION if current is None else current
    version = header.get("version")
    if isinstance(version, int) and version > current:
        migrate(header, None, converters, current)      # refused: its checksum may differ too
    if not isinstance(payload, bytes) or len(payload) != header.get("payload_bytes") \
            or _digest(header, payload) != header.get("blake2b"):
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
    engine_touched: bool = False   # not restored, yet partly written: build a new Engine


def move_aside(path, tag):
    """Rename ``path`` to ``path.TAG-N`` (first free N); returns the new name."""
    n = 1
    while True:
        target = f"{path}.{tag}-{n}"
        if not os.path.exists(target):
            os.rename(path, target)
            return target
        n += 1


def load_checkpoint(engine, path, move=True, drop_mismatched=False):
    """Restore ``engine`` (fresh) from the checkpoint at ``path``. A corrupt or
    foreign file is moved aside (``.corrupt-N``), a refused one (newer format,
    tables that mean something else) too (``.refused-N``) unless ``move`` is
    false; the engine is then left fresh. ``drop_mismatched``: see
    ``restore_state``. Never deletes a file."""
    path = os.fspath(path)
    leftovers = _remove_temp_files(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return LoadResult("missing", leftovers + [f"no state file at {path}: starting fresh"])
    if not is_fresh(engine):
        raise ValueError("load_checkpoint needs a freshly built engine")
    header = None
    touched = False
    try:
        header, state = decode_checkpoint(data)
        try:
            messages = restore_state(engine, state, drop_mismatched)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            # a well-formed file whose content is not a state (or a bug): the
            # engine may be partly written, the caller must build a new one
            touched = True
            raise StateCorrupt(f"content is not engine state ({type(exc).__name__}: {exc}); "
                               "build a new engine") from None
    except StateCorrupt as exc:
        status, tag, reason = "moved_aside", "corrupt", exc
    except StateRefused as exc:
        status, tag, reason = "refused", "refused", exc
    else:
        return LoadResult("restored", leftovers + messages, header=header)
    moved = move_aside(path, tag) if move else None
    where = f"moved to {moved}" if moved else "left in place"
    return LoadResult(status, leftovers + [f"state file {path}: {reason}; {where}, "
                                           "starting fresh"], moved, header, touched)


def _temp_name(path, pid):
    return os.path.join(os.path.dirname(os.path.abspath(path)),
                        f".{os.path.basename(path)}.tmp-{pid}")


def _remove_temp_files(path):
    """Remove half-written temp files a killed writer left beside ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(_temp_name(path, ""))
    messages = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix):
            os.unlink(os.path.join(directory, name))
            messages.append(f"removed {name}, a checkpoint left half-written by a killed writer")
    return messages
