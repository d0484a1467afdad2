"""What of an Engine survives a restart or a reload: capture_state / restore_state.

Theory of operation
-------------------
``capture_state(engine)`` takes everything an ``Engine`` carries from one
batch to the next -- the probe table and its timeout FIFO, every detector's
lifecycle and counter tables, the alert gate's minute, the prober episodes
(``sensor/episodes.py``: ids, seq, merged evidence, held updates; an optional
key, so older checkpoints load with none), the decode counters
and the keyed-hash seed -- as a dict of plain values and numpy arrays.
``restore_state(engine, state)`` puts it into a *fresh* engine, at the same
slot indices, so the engine goes on exactly as the one it was taken from:
the same alerts, ids, seq and order as one uninterrupted run. The engine
adopts the saved seed (tables are placed by a hash keyed with it).

Only live slots are saved (``last_seen_ns != EMPTY``: a slot never becomes
empty again once used). Each per-slot array is saved as the rows of the live
slots, or as the non-zero elements of those rows (flat index + value) when
that is smaller (port bitmaps, sketches, item lists, unused columns); port
bitmaps only for keys whose ports are in bitmaps (``tier_n == IN_BITMAPS``;
kernels/port_set.py keeps them all-zero otherwise). A checkpoint is
therefore proportional to the live keys, not to the ~306 MiB the tables take at default settings.

The same pair moves state from the old engine to a new one on a config
reload: thresholds, lists and outputs come from the new config, tables from
the old engine. A table whose ``max_keys`` or ``table_ways`` (or
``probes.max_probes``, ``probes.table_ways``) changed cannot be placed 1:1:
its keys are re-placed into the new layout (``placement``: the bucket of each
saved key hash; in a bucket too full, keys with alerts waiting first, then
the heaviest; keys that do not fit are dropped and counted as evictions; if
a key with an alert waiting does not fit, the state is refused). A table
whose ``max_listed``, ``window_s``, ``scope`` or ``count`` (or port_sweep's
``max_sources``: its source lists are as long as that) changed means
something else now: the whole state is refused with ``StateRefused`` naming
the setting, before anything is written into the engine (the caller keeps
the old config, or starts fresh), or, with ``drop_mismatched``, that table
alone starts empty (with a message saying how many keys and waiting alerts
it had). ``max_pending_alerts`` may change as long
as the waiting alerts fit.
A rule disabled in the new config has its table dropped (with a message); a
rule newly enabled starts empty.
"""
import numpy as np

from kernels import alert_slots as ks
from kernels import probes as kp
from kernels.addr_table import EMPTY
from kernels.port_set import IN_BITMAPS
from kernels.slow_tier import SlowTierState


class StateRefused(Exception):
    """Saved state this engine cannot take as it is (message says which setting)."""


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
                  "llr", "failures", "trw_state", "attempts",
                  # port_sweep's sources (zero-width in the other host-set rules)
                  "src_hi", "src_lo", "src_probes", "src_hosts", "src_beyond", "src_index",
                  "src_sketch", "src_meta", "host_hi", "host_lo",
                  # which index entries and sketch words are current (kernels/host_set.py)
                  "item_gen", "sketch_live")


def _host_set_arrays(t):
    return tuple((name, getattr(t, name)) for name in HOST_SET_NAMES)


def derived_arrays(obj):
    """Per-slot arrays that are not saved but rebuilt on restore from what is: the
    item index of a host-set table (``HostSetState.rebuild_index``)."""
    return (obj.item_index,) if hasattr(obj, "item_index") else ()


def _slow_tier_arrays(t):
    return (("pairs", _owner(t.item_hi)), ("row", _owner(t.pane)),
            ("vbest_target", t.vbest_target))


def _probe_arrays(p):
    return (("keys", p.keys), ("fps", p.fps), ("last_seen_ns", p.last_seen_ns),
            ("pinned", p.pinned), ("sent_ns", p.sent_ns), ("row", _owner(p.state)),
            ("weight", p.weight))


def slot_arrays(obj):
    """(name, array) of every per-slot array of a Lifecycle, PortSetState,
    HostSetState or ProbeState (tests check that nothing is left out)."""
    if isinstance(obj, ks.Lifecycle):
        return _lifecycle_arrays(obj)
    if isinstance(obj, kp.ProbeState):
        return _probe_arrays(obj)
    if isinstance(obj, SlowTierState):
        return _slow_tier_arrays(obj)
    if hasattr(obj, "ports"):
        return _port_set_arrays(obj)
    return _host_set_arrays(obj)


def _capture_slots(pairs, live, only=None):
    """Each array's rows of the live slots, saved densely (rows) or as its non-zero
    elements (flat index, value), whichever is smaller. ``only``: {name: slots}
    restricting which slots of that array can hold non-zero elements."""
    dense, sparse = {}, {}
    for name, arr in pairs:
        row_len = int(np.prod(arr.shape[1:], dtype=np.int64))
        slots = (only or {}).get(name, live)
        sub = arr.reshape(arr.shape[0], row_len)[slots]
        nz = np.flatnonzero(sub)
        index_type = np.int32 if arr.size < 2**31 else np.int64
        sparse_bytes = len(nz) * (np.dtype(index_type).itemsize + arr.itemsize)
        if name not in (only or {}) and sparse_bytes >= len(live) * row_len * arr.itemsize:
            dense[name] = arr[live]
            continue
        sparse[name] = {"index": (slots[nz // row_len] * row_len + nz % row_len).astype(index_type),
                        "values": sub.reshape(-1)[nz]}
    return {"dense": dense, "sparse": sparse}


def _in_range(name, index, size):
    if len(index) and (index.min() < 0 or index.max() >= size):
        raise IndexError(f"{name}: saved index outside the table")


def _restore_slots(pairs, live, saved):
    for name, arr in pairs:
        if name in saved["dense"]:
            _in_range(name, live, arr.shape[0])
            arr[live] = saved["dense"][name]
        else:
            s = saved["sparse"][name]
            if arr.size == 0 and len(s["index"]) == 0:
                continue        # a zero-width array (port_sweep's sources in other rules)
            flat = arr.reshape(-1)
            if not np.shares_memory(flat, arr):
                raise ValueError(f"{name}: table array is not contiguous")
            _in_range(name, s["index"], flat.shape[0])
            flat[s["index"]] = s["values"]


def _live(last_seen_ns):
    return np.flatnonzero(last_seen_ns != EMPTY).astype(np.int64)


# --- capture -----------------------------------------------------------------------
def _detector_shape(det):
    return {"kind": det.rule.table, "capacity": int(det.lc.keys.shape[0]),
            "ways": int(det.params[ks.P_WAYS]), "max_listed": int(det.params[ks.P_LIST]),
            "max_sources": int(det.max_sources),
            "max_pending_alerts": int(det.lc.pending.shape[0])}


def _detector_meaning(det):
    return {"window_ns": int(det.params[ks.P_WINDOW_NS]), "mode": int(det.params[ks.P_MODE]),
            "pair_scope": int(det.params[ks.P_PAIR_SCOPE]),
            "count_attempts": int(det.params[ks.P_COUNT_ATTEMPTS])}


def _probe_shape(probes):
    return {"capacity": int(probes.keys.shape[0]), "ways": int(probes.params[kp.PP_WAYS])}


def _capture_detector(det):
    lc, t = det.lc, det.table
    live = _live(lc.last_seen_ns)
    only = {}
    if det.rule.table == "port_set":
        only["ports"] = live[t.tier_n[live] == IN_BITMAPS]
    n = int(lc.meta[ks.M_NPENDING])
    out = {"shape": _detector_shape(det), "meaning": _detector_meaning(det), "live": live,
           "lifecycle": _capture_slots(_lifecycle_arrays(lc), live),
           "table": _capture_slots(slot_arrays(t), live, only),
           "pending": lc.pending[:n].copy(), "meta": lc.meta.copy()}
    if isinstance(t, SlowTierState):
        # the doorkeeper's marks (probers seen failing once), as (index, fingerprint)
        marked = np.flatnonzero(t.doorkeeper).astype(np.int64)
        out["doorkeeper"] = {"entries": int(t.doorkeeper.shape[0]), "index": marked,
                             "fp": t.doorkeeper[marked].copy(), "meta": t.dk_meta.copy()}
    return out


def _capture_probes(probes):
    live = _live(probes.last_seen_ns)
    m = probes.meta
    cap = probes.fifo_slot.shape[0]
    at = np.arange(m[kp.PM_HEAD], m[kp.PM_TAIL], dtype=np.int64) % cap
    hot = np.arange(m[kp.PM_HOT_HEAD], m[kp.PM_HOT_TAIL],
                    dtype=np.int64) % probes.hot_slot.shape[0]
    sketch = probes.initiator_sketch.reshape(-1)
    counted = np.flatnonzero(sketch).astype(np.int32)
    trace_live = np.flatnonzero(probes.trace_until_ns != EMPTY).astype(np.int64)
    return {"shape": _probe_shape(probes), "live": live,
            "slots": _capture_slots(_probe_arrays(probes), live),
            "fifo_slot": probes.fifo_slot[at], "fifo_ts": probes.fifo_ts[at],
            # the busy initiators' timeout queue and the initiators' recent counts
            # (kernels/probes.py), the counts as (index, count) of the non-zero ones
            "hot_slot": probes.hot_slot[hot], "hot_ts": probes.hot_ts[hot],
            "hot_mark": probes.hot_mark[hot],
            "initiators": {"index": counted, "values": sketch[counted]},
            "meta": m.copy(),
            # pairs being traced (kernels/probes.py), at their slots: the table's
            # size does not depend on the configuration
            "trace": {"live": trace_live, "keys": probes.trace_keys[trace_live],
                      "until_ns": probes.trace_until_ns[trace_live],
                      "ports": probes.trace_ports[trace_live]}}


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
        # prober episodes (sensor/episodes.py): optional, absent in older checkpoints
        "episodes": engine.episodes.capture(),
    }


# --- restore -----------------------------------------------------------------------
MEANING_SETTINGS = {"window_ns": "window_s", "pair_scope": "scope",
                    "count_attempts": "count", "mode": "(rule mode)"}
SHAPE_SETTINGS = {"capacity": "max_keys", "ways": "table_ways", "max_listed": "max_listed",
                  "max_sources": "max_sources", "kind": "(table kind)"}


def _check_detector(det, saved):
    """Reasons (setting names) why ``saved`` cannot go into ``det``'s tables; a
    changed ``max_keys`` / ``table_ways`` is not one (the keys are re-placed)."""
    problems = []
    shape, now = saved["shape"], _detector_shape(det)
    for key, setting in SHAPE_SETTINGS.items():
        if key == "max_sources" and shape.get(key) is None:
            continue        # converted from format 1: its source lists start empty (state.py)
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


def _column(saved, name, live, dtype):
    """A saved one-value-per-slot array as one value per live slot (dense or not)."""
    if name in saved["dense"]:
        return saved["dense"][name]
    out = np.zeros(len(live), dtype)
    s = saved["sparse"][name]
    out[np.searchsorted(live, s["index"].astype(np.int64))] = s["values"]
    return out


def _move_slots(saved, live, new_of_live, row_lens):
    """The saved rows of ``live`` slots at their new slots (dropping those at -1)."""
    keep = new_of_live >= 0
    dense = {name: rows[keep] for name, rows in saved["dense"].items()}
    sparse = {}
    for name, s in saved["sparse"].items():
        row_len = row_lens[name]
        index = s["index"].astype(np.int64)
        new = new_of_live[np.searchsorted(live, index // row_len)]
        m = new >= 0
        sparse[name] = {"index": new[m] * row_len + index[m] % row_len,
                        "values": s["values"][m]}
    return {"dense": dense, "sparse": sparse}


def _row_lens(pairs):
    return {name: int(np.prod(a.shape[1:], dtype=np.int64)) for name, a in pairs}


def _relocate_detector(det, saved):
    """``saved`` re-placed into ``det``'s table shape; (new saved, message)."""
    now = _detector_shape(det)
    live = saved["live"]
    lc = det.lc
    col = {name: _column(saved["lifecycle"], name, live, getattr(lc, name).dtype)
           for name in ("fps", "last_seen_ns", "pinned", "count")}
    new_of_live = placement(col["fps"], col["last_seen_ns"], col["pinned"], col["count"],
                            now["capacity"], now["ways"])
    lost_pinned = int(((new_of_live < 0) & (col["pinned"] != 0)).sum())
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
    d = {name: _column(saved["slots"], name, live, getattr(probes, name).dtype)
         for name in ("fps", "last_seen_ns", "pinned", "sent_ns")}
    new_of_live = placement(d["fps"], d["last_seen_ns"], d["pinned"], d["sent_ns"],
                            now["capacity"], now["ways"])
    fifo_new = new_of_live[np.searchsorted(live, saved["fifo_slot"])]
    m = fifo_new >= 0
    old_index = saved["meta"][kp.PM_HEAD] + np.arange(len(fifo_new))   # queue positions
    kept_index = old_index[m][-now["capacity"]:]
    fifo_slot, fifo_ts = fifo_new[m][-now["capacity"]:], saved["fifo_ts"][m][-now["capacity"]:]
    meta = saved["meta"].copy()
    dropped = int((new_of_live < 0).sum())
    meta[kp.PM_EVICTIONS] += dropped
    meta[kp.PM_HEAD], meta[kp.PM_TAIL] = 0, len(fifo_slot)
    hot = {}
    if "hot_slot" in saved:
        hot_new = new_of_live[np.searchsorted(live, saved["hot_slot"])]
        keep = hot_new >= 0
        room = kp.hot_queue_len(now["capacity"])
        # an entry's mark: the main entries queued before it, counted in the new queue
        marks = np.searchsorted(kept_index, saved["hot_mark"][keep][-room:])
        hot = {"hot_slot": hot_new[keep][-room:], "hot_ts": saved["hot_ts"][keep][-room:],
               "hot_mark": marks.astype(np.int64)}
        meta[kp.PM_HOT_HEAD], meta[kp.PM_HOT_TAIL] = 0, len(hot["hot_slot"])
    out = dict(saved, shape=now, live=new_of_live[new_of_live >= 0], meta=meta,
               fifo_slot=fifo_slot, fifo_ts=fifo_ts, **hot,
               slots=_move_slots(saved["slots"], live, new_of_live,
                                 _row_lens(_probe_arrays(probes))))
    old = saved["shape"]
    return out, (f"probe table: attempts re-placed from {old['capacity']} slots / "
                 f"{old['ways']} ways to {now['capacity']} / {now['ways']}: "
                 f"{len(out['live'])} kept, {dropped} did not fit (counted as evictions)")


def is_fresh(engine):
    """True if no packet has touched the engine's tables yet."""
    if (engine.probes.last_seen_ns != EMPTY).any() or engine.probes.meta.any():
        return False
    return not engine.episodes.episodes and not any(
        (d.lc.last_seen_ns != EMPTY).any() or d.lc.meta.any() for d in engine.counters)


def _check_refs(probes, probe_capacity, by_name, detectors):
    m = probes["meta"]
    queued = int(m[kp.PM_TAIL] - m[kp.PM_HEAD])
    fifo = probes["fifo_slot"]
    if not (0 <= queued <= probe_capacity and len(fifo) == queued) or (
            queued and (fifo.min() < 0 or fifo.max() >= probe_capacity)):
        raise ValueError("probe table: timeout queue does not fit the table")
    hot = probes.get("hot_slot")
    if hot is not None and (len(hot) > kp.hot_queue_len(probe_capacity) or (
            len(hot) and (hot.min() < 0 or hot.max() >= probe_capacity))):
        raise ValueError("probe table: busy initiators' timeout queue does not fit the table")
    for name, saved in detectors.items():
        det = by_name.get(name)
        if det is None:
            continue
        capacity, pend, meta = det.lc.keys.shape[0], saved["pending"], saved["meta"]
        if meta[ks.M_NPENDING] != len(pend) or len(pend) and (
                pend.min() < 0 or pend.max() >= capacity
                or not 0 <= meta[ks.M_MIN_DUE_SLOT] < capacity):
            raise ValueError(f"{name}: waiting alerts do not fit the table")


def restore_state(engine, state, drop_mismatched=False):
    """Put ``state`` (from ``capture_state``) into ``engine``, which must be fresh
    (just built). Returns messages worth logging. When a table's meaning differs
    (or a resize would drop a waiting alert), raises ``StateRefused`` naming the
    settings, with the engine untouched; with ``drop_mismatched`` those tables
    start empty instead (one message each) and the rest is restored."""
    if not is_fresh(engine):
        raise ValueError("restore_state needs a freshly built engine")
    by_name = {d.name: d for d in engine.counters}
    problems, dropped = [], {}
    detectors = {}
    notes = []
    for name, saved in state["detectors"].items():
        det = by_name.get(name)
        found = _check_detector(det, saved) if det is not None else []
        if not found and det is not None and _moved(saved["shape"], _detector_shape(det)):
            # max_keys / table_ways changed: keys re-placed (may still refuse)
            try:
                saved, note = _relocate_detector(det, saved)
                notes.append(note)
            except StateRefused as exc:
                found = [str(exc)]
        if found:
            problems += found
            dropped[name] = (found, len(saved["live"]), len(saved["pending"]))
        else:
            detectors[name] = saved
    if problems and not drop_mismatched:
        raise StateRefused("saved state does not fit the configured tables: "
                           + "; ".join(problems))
    for name, (found, keys, waiting) in dropped.items():
        notes.append(f"{name}: saved table ({keys} keys, {waiting} alerts waiting) dropped, "
                     f"the rule starts empty: {'; '.join(found)}")
    p_saved = state["probes"]
    if _moved(p_saved["shape"], _probe_shape(engine.probes)):
        p_saved, note = _relocate_probes(engine.probes, p_saved)
        notes.append(note)

    # slot numbers the kernels index with (unchecked there): must lie in the tables
    _check_refs(p_saved, engine.probes.keys.shape[0], by_name, detectors)

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
    messages += engine.episodes.restore(state.get("episodes"))

    probes = engine.probes
    _restore_slots(_probe_arrays(probes), p_saved["live"], p_saved["slots"])
    # a checkpoint from before a counter was added has fewer (the rest start at 0)
    probes.meta[:len(p_saved["meta"])] = p_saved["meta"][:len(probes.meta)]
    probes.params[kp.PP_SEED] = np.int64(seed)
    trace = p_saved.get("trace")
    if trace is not None:
        _in_range("trace", trace["live"], probes.trace_until_ns.shape[0])
        probes.trace_keys[trace["live"]] = trace["keys"]
        probes.trace_until_ns[trace["live"]] = trace["until_ns"]
        probes.trace_ports[trace["live"]] = trace["ports"]
    cap = probes.fifo_slot.shape[0]
    at = np.arange(probes.meta[kp.PM_HEAD], probes.meta[kp.PM_TAIL], dtype=np.int64) % cap
    probes.fifo_slot[at] = p_saved["fifo_slot"]
    probes.fifo_ts[at] = p_saved["fifo_ts"]
    if "hot_slot" in p_saved:      # (a checkpoint from before it has none: empty)
        hot = np.arange(probes.meta[kp.PM_HOT_HEAD], probes.meta[kp.PM_HOT_TAIL],
                        dtype=np.int64) % probes.hot_slot.shape[0]
        probes.hot_slot[hot] = p_saved["hot_slot"]
        probes.hot_ts[hot] = p_saved["hot_ts"]
        probes.hot_mark[hot] = p_saved["hot_mark"]
    initiators = p_saved.get("initiators")
    if initiators is not None:
        flat = probes.initiator_sketch.reshape(-1)
        _in_range("initiators", initiators["index"], flat.shape[0])
        flat[initiators["index"]] = initiators["values"]
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
        if derived_arrays(det.table):
            det.table.rebuild_index(live, seed)
        det.lc.meta[:] = saved["meta"]
        det.lc.pending[:len(saved["pending"])] = saved["pending"]
        dk = saved.get("doorkeeper")
        if dk is not None and isinstance(det.table, SlowTierState):
            det.table.dk_meta[:] = dk["meta"]
            if dk["entries"] == det.table.doorkeeper.shape[0]:
                det.table.doorkeeper[dk["index"]] = dk["fp"]
            else:
                messages.append(f"{name}: doorkeeper_entries changed: its {len(dk['index'])} "
                                "marks are dropped (those probers are admitted one failed "
                                "attempt later)")
        summary.append(f"{name} {len(live)}")
    for name in by_name:
        if name not in state["detectors"]:
            messages.append(f"{name} was not running: it starts with an empty table")
    messages[:0] = ["restored state (live keys): " + ", ".join(summary)] + notes
    return messages
