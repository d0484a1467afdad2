"""port_scan detector kernel: distinct destination ports per source.

Computes, for every source address sending TCP connection attempts (SYN
without ACK or RST), the exact set of destination ports it probed within a
sliding window, as a 65,536-bit bitmap.

Window: time is cut into panes of ``window_ns`` (pane = ts // window_ns). A
source keeps two bitmaps, the current pane's and the previous pane's; its
count is the popcount of their union, maintained incrementally (+1 when a
port is new to both, recomputed once per pane change). Any set of ports
probed within ``window_ns`` of each other lies in those two panes, so a scan
reaching ``threshold`` distinct ports inside one window is always caught; a
scan spread over up to two windows can also count.

Alerts: when a source's count reaches ``threshold`` its slot is pinned and
an alert falls due ``delay_ns`` later (packet time), collecting evidence
meanwhile. The kernel returns to its caller at the first packet whose time
reaches the earliest due time, or when it must free a pinned slot, so the
caller can snapshot the slot; what the alert holds never depends on batch
boundaries. A reported source is not reported again until it has been idle
for two windows (its state then starts afresh).

Destinations: each slot keeps up to ``max_dst`` distinct destination
addresses exactly, plus a 4,096-bit hashed bitmap of all of them (linear
counting) for the count once the list is full.

Memory (fixed at allocation, ``capacity`` slots): 16 KiB of port bitmaps +
512 B of destination sketch + 16 * max_dst bytes of destination list + about
100 B of scalars per slot. Default 4,096 slots, max_dst 64: about 70 MiB.
"""
import numpy as np

from kernels.addr_table import (
    EMPTY, LOOKUP_EVICTED, LOOKUP_FULL, LOOKUP_HIT, find_slot, mix64,
)
from kernels.batch import PF_HAS_TCP_FLAGS, TH_ACK, TH_RST, TH_SYN
from kernels.jit import inline, kernel

PORT_WORDS = 1024          # 65,536 bits
DST_SKETCH_WORDS = 64      # 4,096 bits
DST_SKETCH_BITS = DST_SKETCH_WORDS * 64

# kernel events
EV_NONE = 0        # batch finished
EV_DUE = 1         # slot's alert is due: snapshot and report it, then resume at the returned index
EV_FORCED = 2      # slot must be reported now to free room (bucket or pending list full)

# params (int64 array)
P_THRESHOLD = 0
P_WINDOW_NS = 1
P_DELAY_NS = 2
P_WAYS = 3
P_MAX_DST = 4
N_PARAMS = 5

# meta (int64 array): running counters and the pending list's bookkeeping
M_NPENDING = 0
M_MIN_DUE = 1
M_MIN_DUE_SLOT = 2
M_EVICTIONS = 3      # live (non-pinned) sources dropped to make room
M_FORCED = 4         # alerts reported early because room was needed
M_PROBES = 5         # connection attempts counted
N_META = 6


class PortScanState:
    """All arrays of the port_scan detector, allocated once from its settings."""

    def __init__(self, capacity, ways, max_dst, max_pending, threshold, window_ns,
                 delay_ns, seed):
        if capacity % ways:
            raise ValueError("capacity must be a multiple of ways")
        self.capacity = capacity
        self.key_hi = np.zeros(capacity, np.uint64)
        self.key_lo = np.zeros(capacity, np.uint64)
        self.key_extra = np.zeros(capacity, np.uint16)
        self.last_seen_ns = np.full(capacity, EMPTY, np.int64)
        self.first_seen_ns = np.zeros(capacity, np.int64)
        self.pinned = np.zeros(capacity, np.uint8)
        self.reported = np.zeros(capacity, np.uint8)
        self.pane = np.zeros(capacity, np.int64)
        self.port_count = np.zeros(capacity, np.int64)
        self.probes = np.zeros(capacity, np.int64)
        self.due_ns = np.zeros(capacity, np.int64)
        self.ports = np.zeros((capacity, 2, PORT_WORDS), np.uint64)
        self.dst_hi = np.zeros((capacity, max_dst), np.uint64)
        self.dst_lo = np.zeros((capacity, max_dst), np.uint64)
        self.dst_n = np.zeros(capacity, np.int64)
        self.dst_sketch = np.zeros((capacity, DST_SKETCH_WORDS), np.uint64)
        self.pending = np.zeros(max_pending, np.int64)
        self.params = np.zeros(N_PARAMS, np.int64)
        self.params[P_THRESHOLD] = threshold
        self.params[P_WINDOW_NS] = window_ns
        self.params[P_DELAY_NS] = delay_ns
        self.params[P_WAYS] = ways
        self.params[P_MAX_DST] = max_dst
        self.meta = np.zeros(N_META, np.int64)
        self.seed = np.uint64(seed)

    @property
    def arrays(self):
        return (self.key_hi, self.key_lo, self.key_extra, self.last_seen_ns,
                self.first_seen_ns, self.pinned, self.reported, self.pane,
                self.port_count, self.probes, self.due_ns, self.ports,
                self.dst_hi, self.dst_lo, self.dst_n, self.dst_sketch,
                self.pending, self.params, self.meta)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


@inline
def popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@inline
def reset_slot(st, slot, ts, pane):
    (key_hi, key_lo, key_extra, last_seen_ns, first_seen_ns, pinned, reported,
     pane_a, port_count, probes, due_ns, ports, dst_hi, dst_lo, dst_n,
     dst_sketch, pending, params, meta) = st
    first_seen_ns[slot] = ts
    last_seen_ns[slot] = ts
    pinned[slot] = 0
    reported[slot] = 0
    pane_a[slot] = pane
    port_count[slot] = 0
    probes[slot] = 0
    dst_n[slot] = 0
    for w in range(PORT_WORDS):
        ports[slot, 0, w] = 0
        ports[slot, 1, w] = 0
    for w in range(DST_SKETCH_WORDS):
        dst_sketch[slot, w] = 0


@inline
def advance_pane(ports, port_count, pane_a, slot, pane):
    old = pane_a[slot]
    if pane <= old:
        return
    cur_new = pane & 1
    if pane == old + 1:
        # previous pane becomes the older half; the new current half starts empty
        total = 0
        for w in range(PORT_WORDS):
            ports[slot, cur_new, w] = 0
            total += popcount64(ports[slot, 1 - cur_new, w])
        port_count[slot] = total
    else:
        for w in range(PORT_WORDS):
            ports[slot, 0, w] = 0
            ports[slot, 1, w] = 0
        port_count[slot] = 0
    pane_a[slot] = pane


@inline
def add_destination(dst_hi, dst_lo, dst_n, dst_sketch, slot, hi, lo, max_dst, seed):
    h = mix64(mix64(hi ^ seed) ^ lo)
    bit = np.int64(h & np.uint64(DST_SKETCH_BITS - 1))
    word = bit >> 6
    mask = np.uint64(1) << np.uint64(bit & 63)
    seen_bit = (dst_sketch[slot, word] & mask) != 0
    dst_sketch[slot, word] |= mask
    n = dst_n[slot]
    if n >= max_dst:
        return
    if seen_bit:
        for k in range(n):
            if dst_hi[slot, k] == hi and dst_lo[slot, k] == lo:
                return
    dst_hi[slot, n] = hi
    dst_lo[slot, n] = lo
    dst_n[slot] = n + 1


@inline
def add_pending(pending, meta, slot, due):
    n = meta[M_NPENDING]
    pending[n] = slot
    meta[M_NPENDING] = n + 1
    if n == 0 or due < meta[M_MIN_DUE]:
        meta[M_MIN_DUE] = due
        meta[M_MIN_DUE_SLOT] = slot


@kernel
def port_scan_update(cols, start, n, st, seed):
    """Feed rows [start, n) of a batch. Returns (next_row, event, slot)."""
    (key_hi, key_lo, key_extra, last_seen_ns, first_seen_ns, pinned, reported,
     pane_a, port_count, probes, due_ns, ports, dst_hi, dst_lo, dst_n,
     dst_sketch, pending, params, meta) = st
    ts_col = cols[0]
    src_hi = cols[1]
    src_lo = cols[2]
    dst_hi_col = cols[3]
    dst_lo_col = cols[4]
    dport_col = cols[6]
    tcp_flags = cols[8]
    pkt_flags = cols[11]
    threshold = params[P_THRESHOLD]
    window_ns = params[P_WINDOW_NS]
    delay_ns = params[P_DELAY_NS]
    ways = params[P_WAYS]
    max_dst = params[P_MAX_DST]
    stale_ns = 2 * window_ns
    max_pending = pending.shape[0]
    for i in range(start, n):
        ts = ts_col[i]
        if meta[M_NPENDING] > 0 and ts >= meta[M_MIN_DUE]:
            return i, EV_DUE, meta[M_MIN_DUE_SLOT]
        if (pkt_flags[i] & PF_HAS_TCP_FLAGS) == 0:
            continue
        if (tcp_flags[i] & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN:
            continue
        hi = src_hi[i]
        lo = src_lo[i]
        outcome, slot = find_slot(key_hi, key_lo, key_extra, last_seen_ns, pinned,
                                  hi, lo, 0, ts, stale_ns, ways, seed)
        if outcome == LOOKUP_FULL:
            meta[M_FORCED] += 1
            return i, EV_FORCED, slot
        pane = ts // window_ns
        if outcome != LOOKUP_HIT:
            if outcome == LOOKUP_EVICTED:
                meta[M_EVICTIONS] += 1
            reset_slot(st, slot, ts, pane)
        elif ts - last_seen_ns[slot] >= stale_ns and pinned[slot] == 0:
            reset_slot(st, slot, ts, pane)
        advance_pane(ports, port_count, pane_a, slot, pane)
        port = np.int64(dport_col[i])
        word = port >> 6
        mask = np.uint64(1) << np.uint64(port & 63)
        cur = pane_a[slot] & 1
        if (ports[slot, cur, word] & mask) == 0:
            if (ports[slot, 1 - cur, word] & mask) == 0:
                port_count[slot] += 1
            ports[slot, cur, word] |= mask
        probes[slot] += 1
        meta[M_PROBES] += 1
        if ts > last_seen_ns[slot]:
            last_seen_ns[slot] = ts
        add_destination(dst_hi, dst_lo, dst_n, dst_sketch, slot,
                        dst_hi_col[i], dst_lo_col[i], max_dst, seed)
        if port_count[slot] >= threshold and reported[slot] == 0 and pinned[slot] == 0:
            if meta[M_NPENDING] >= max_pending:
                meta[M_FORCED] += 1
                return i + 1, EV_FORCED, slot
            pinned[slot] = 1
            due_ns[slot] = ts + delay_ns
            add_pending(pending, meta, slot, ts + delay_ns)
    return n, EV_NONE, -1


@kernel
def release_slot(st, slot):
    """Mark ``slot`` reported and drop it from the pending list."""
    (key_hi, key_lo, key_extra, last_seen_ns, first_seen_ns, pinned, reported,
     pane_a, port_count, probes, due_ns, ports, dst_hi, dst_lo, dst_n,
     dst_sketch, pending, params, meta) = st
    reported[slot] = 1
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
