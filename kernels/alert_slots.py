"""Alert lifecycle shared by the counter kernels: when a key's alert falls due.

Each table slot carries, besides its key and counts, the state of its
*episode*: the stretch of activity one alert (and its updates) describes.

* An episode starts at a key's first counted row; it ends when the key has
  been idle for two windows, or ``suppress_ns`` after it started. The next
  row then starts a new episode (a new alert id).
* When the count reaches ``threshold`` the slot is *pinned* and the alert
  falls due ``delay_ns`` later (packet time), collecting evidence meanwhile.
* After the first report, an *update* (same id, next ``seq``) is scheduled
  when the count reaches ``growth`` times the last reported count, or when a
  new target appears (if enabled), but no sooner than ``update_ns`` after the
  previous report.
* A kernel returns to its caller at the first row whose time reaches the
  earliest due time (EV_DUE), or when a pinned slot must be reported early to
  make room (EV_FORCED). The caller snapshots the slot, calls
  ``release_slot`` and resumes at the returned row, so alert contents never
  depend on batch boundaries and no alert is ever dropped.

Memory: about 120 bytes per slot plus 8 bytes per pending-list entry.
"""
import numpy as np

from kernels.addr_table import (
    EMPTY, LOOKUP_EVICTED, LOOKUP_FULL, LOOKUP_HIT, find_slot, slot_columns,
)
from kernels.jit import inline, kernel

EV_NONE = 0
EV_DUE = 1
EV_FORCED = 2

# params (int64), shared layout for every counter kernel
P_THRESHOLD = 0
P_WINDOW_NS = 1
P_DELAY_NS = 2
P_WAYS = 3
P_LIST = 4            # exact list length per slot (targets or items)
P_DIR_MASK = 5        # directions counted
P_GROWTH = 6          # update when count >= growth * reported count (0: never)
P_UPDATE_NS = 7       # minimum time between reports of one episode
P_SUPPRESS_NS = 8     # maximum episode length
P_MODE = 9            # rule mode (kernels/rules.py)
P_PAIR_SCOPE = 10     # port-set: key is prober + target
P_COUNT_ATTEMPTS = 11  # port-set: count attempts instead of distinct ports
P_NEW_TARGET = 12     # schedule an update when a new target appears
P_TRW_FAIL = 13       # trw_scanner: log-likelihood step of a failed first contact (micro-units)
P_TRW_SUCCESS = 14    # ... of a successful one (negative)
P_TRW_UPPER = 15      # log(eta1): flag as scanner at or above
P_TRW_LOWER = 16      # log(eta0): declare benign at or below
P_COUNT_FILTERED = 17  # failed_connections: unanswered/filtered attempts count as failures
P_FROM_OUTCOMES = 18  # host_sweep/port_sweep: count decided attempts that did not succeed
P_SENSITIVE = 19      # port_scan: also alert at this many distinct sensitive ports (0: off)
P_SLOW_THRESHOLD = 20  # slow_scan: ports on one target or targets on one port (P_THRESHOLD unused)
P_MIN_SPAN_NS = 21    # slow_scan: the failed attempts must span at least this long
N_PARAMS = 22

# meta (int64): pending-list bookkeeping and counters
M_NPENDING = 0
M_MIN_DUE = 1
M_MIN_DUE_SLOT = 2
M_EVICTIONS = 3       # live, unpinned keys dropped to make room
M_FORCED = 4          # reports made early because room was needed
M_COUNTED = 5         # rows counted by the rule
M_DIR_FILTERED = 6    # rows of the rule's kind dropped by its direction filter
M_PORT_FILTERED = 7   # rows dropped by the rule's excluded ports
N_META = 8


class Lifecycle:
    """Per-slot episode arrays and the pending list of one table."""

    def __init__(self, capacity, max_pending):
        self.keys = np.zeros((capacity, 5), np.uint64)
        self.fps = np.zeros(capacity, np.uint64)             # hash of each key
        # looked at for every slot of a bucket: one array each
        self.last_seen_ns = np.full(capacity, EMPTY, np.int64)
        self.pinned = np.zeros(capacity, np.uint8)
        self.count = np.zeros(capacity, np.int64)            # the rule's current count
        # the rest of a slot's episode: one row each (kernels/addr_table.py)
        row = slot_columns(capacity, ("first_seen_ns", "seq", "reported_count",
                                      "last_report_ns", "due_ns", "probes", "dir_mask",
                                      "evidence", "new_target"))
        self.first_seen_ns = row["first_seen_ns"]
        self.seq = row["seq"]                                # reports made this episode
        self.reported_count = row["reported_count"]
        self.last_report_ns = row["last_report_ns"]
        self.due_ns = row["due_ns"]
        self.probes = row["probes"]                          # rows counted this episode
        self.dir_mask = row["dir_mask"]
        self.evidence = row["evidence"]                      # rule-specific bits (stealth kinds)
        self.new_target = row["new_target"]                  # a target appeared since the last report
        self.pending = np.zeros(max_pending, np.int64)
        self.meta = np.zeros(N_META, np.int64)

    @property
    def arrays(self):
        return (self.keys, self.last_seen_ns, self.first_seen_ns, self.pinned, self.seq,
                self.reported_count, self.last_report_ns, self.due_ns, self.count,
                self.probes, self.dir_mask, self.evidence, self.new_target,
                self.pending, self.meta, self.fps)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


@inline
def start_episode(lc, slot, ts):
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    last_seen_ns[slot] = ts
    first_seen_ns[slot] = ts
    pinned[slot] = 0
    seq[slot] = 0
    reported_count[slot] = 0
    last_report_ns[slot] = 0
    due_ns[slot] = 0
    count[slot] = 0
    probes[slot] = 0
    dir_mask[slot] = 0
    evidence[slot] = 0
    new_target[slot] = 0


@inline
def pane_at(ts, window_ns, pane, start, end):
    """Pane of ``ts``, given the last pane computed and its span [start, end): a
    division only when the pane changes. Returns (pane, start, end)."""
    if ts >= end or ts < start:
        pane = ts // window_ns
        start = pane * window_ns
        end = start + window_ns
    return pane, start, end


@inline
def claim_slot(lc, k0, k1, k2, k3, ts, stale_ns, suppress_ns, ways, seed):
    """Find or claim the slot of key (k0, k1, k2, k3) for a row at ``ts``.

    Returns (full, slot, fresh). ``full``: every slot of the bucket is pinned,
    ``slot`` must be reported first (counted in M_FORCED). ``fresh``: the row
    starts a new episode in ``slot`` (a new key, or the key's last episode
    ended: idle for ``stale_ns``, or ``suppress_ns`` long); its lifecycle is
    reset here, the caller resets its own per-slot state.
    """
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    found, slot = find_slot(fps, keys, last_seen_ns, pinned, count, k0, k1, k2, k3,
                            np.uint64(0), ts, stale_ns, ways, seed)
    if found == LOOKUP_FULL:
        meta[M_FORCED] += 1
        return True, slot, False
    fresh = found != LOOKUP_HIT or (pinned[slot] == 0 and (
        ts - last_seen_ns[slot] >= stale_ns
        or (seq[slot] > 0 and ts - first_seen_ns[slot] >= suppress_ns)))
    if fresh:
        if found == LOOKUP_EVICTED:
            meta[M_EVICTIONS] += 1
        start_episode(lc, slot, ts)
    return False, slot, fresh


@inline
def row_counted(lc, slot, ts, d, is_new, params, also_due):
    """Bookkeeping once a row is counted in ``slot`` (direction bit ``d``; ``is_new``:
    it brought a new target or item). Returns -1, or a slot to report at once
    (``maybe_schedule``)."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    probes[slot] += 1
    meta[M_COUNTED] += 1
    dir_mask[slot] |= d
    if ts > last_seen_ns[slot]:
        last_seen_ns[slot] = ts
    if is_new and seq[slot] > 0:
        new_target[slot] = 1
    if pinned[slot] == 0 and (seq[slot] > 0 or count[slot] >= params[P_THRESHOLD] or also_due):
        return maybe_schedule(lc, slot, ts, params, also_due)
    return -1


@inline
def due_slot(lc, ts):
    """Slot whose alert is due at time ts, or -1."""
    meta = lc[14]
    if meta[M_NPENDING] > 0 and ts >= meta[M_MIN_DUE]:
        return meta[M_MIN_DUE_SLOT]
    return -1


@inline
def maybe_schedule(lc, slot, ts, params, also_due):
    """Pin the slot if its alert (or an update) should now fall due; ``also_due``
    is a rule's second trigger (port_scan's sensitive ports).

    Returns -1 normally, or the slot if it must be reported at once because
    the pending list is full.
    """
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    if pinned[slot] != 0:
        return -1
    c = count[slot]
    if seq[slot] == 0:
        if c < params[P_THRESHOLD] and not also_due:
            return -1
    else:
        growth = params[P_GROWTH]
        grown = growth > 0 and c >= growth * reported_count[slot]
        fresh = params[P_NEW_TARGET] != 0 and new_target[slot] != 0
        if not (grown or fresh):
            return -1
        if ts - last_report_ns[slot] < params[P_UPDATE_NS]:
            return -1
    n = meta[M_NPENDING]
    if n >= pending.shape[0]:
        meta[M_FORCED] += 1
        return slot
    due = ts + params[P_DELAY_NS]
    pinned[slot] = 1
    due_ns[slot] = due
    pending[n] = slot
    meta[M_NPENDING] = n + 1
    if n == 0 or due < meta[M_MIN_DUE]:
        meta[M_MIN_DUE] = due
        meta[M_MIN_DUE_SLOT] = slot
    return -1


@kernel
def release_slot(lc, slot):
    """The caller reported ``slot``: record it and drop it from the pending list."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    seq[slot] += 1
    reported_count[slot] = max(count[slot], 1)
    last_report_ns[slot] = last_seen_ns[slot]
    new_target[slot] = 0
    if pinned[slot] == 0:
        return
    pinned[slot] = 0
    n = meta[M_NPENDING]
    for k in range(n):
        if pending[k] == slot:
            pending[k] = pending[n - 1]
            n -= 1
            break
    meta[M_NPENDING] = n
    if n > 0:
        best = 0
        for k in range(1, n):
            if due_ns[pending[k]] < due_ns[pending[best]]:
                best = k
        meta[M_MIN_DUE] = due_ns[pending[best]]
        meta[M_MIN_DUE_SLOT] = pending[best]


@kernel
def next_due(lc, now_ns):
    """Slot whose alert is due by ``now_ns`` (earliest first), or -1."""
    return due_slot(lc, now_ns)
