"""Host-set counter: distinct targets (or target + port pairs) per key, over a sliding window.

Serves host_sweep (key = prober + port), port_sweep (key = port, with the
probers as contributors), icmp_sweep (key = prober), failed_connections
(key = prober, item = refusing host + port), trw_scanner (key = prober,
item = host contacted) and arp_sweep / ndp_sweep (key = sender, item =
unanswered target, with the sender's MACs as contributors);
``kernels/rules.py`` says which rows each counts.

trw_scanner is Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan,
IEEE S&P 2004): each *first contact* of a prober with a host (an item new to
its list) moves the prober's log-likelihood ratio up (failure: closed or
filtered) or down (success: open). At or above log(eta1) the prober is a
scanner; at or below log(eta0) it is declared benign and no longer scored
for the episode. The ratio is kept in fixed point (micro-units), so the
kernel and its reference agree exactly.

Items are kept exactly in a per-slot list of ``P_LIST`` entries, each with the
pane it was last seen in (pane = ts // window_ns). On a pane change, items
older than the previous pane are dropped, so the list holds exactly the items
of the current and previous pane and the count is exact while the list has
room. Two 4,096-bit pane sketches (hashed items) estimate the count by linear
counting once the list is full; the estimate is flagged in the alert.

Contributors: port_sweep keeps the top ``CONTRIBUTORS`` probers per key (arp_sweep
and ndp_sweep the sender's MACs) with
Misra-Gries counters (exact when no more probers than that; otherwise each
count is a lower bound, off by at most probes / (CONTRIBUTORS + 1)).

Memory (fixed at allocation, per slot): 26 B per list entry, 1 KiB of pane
sketches, 24 B per contributor, about 130 B of scalars.
"""
import numpy as np

from kernels.addr_table import mix64
from kernels.alert_slots import (
    EV_DUE, EV_FORCED, EV_NONE, M_DIR_FILTERED, M_PORT_FILTERED, P_COUNT_ATTEMPTS,
    P_COUNT_FILTERED, P_DIR_MASK, P_FROM_OUTCOMES, P_LIST, P_MODE, P_SUPPRESS_NS, P_TRW_FAIL,
    P_TRW_LOWER, P_TRW_SUCCESS, P_TRW_UPPER, P_WAYS, P_WINDOW_NS, claim_slot, due_slot, pane_at,
    row_counted,
)
from kernels.jit import inline, kernel

U0 = np.uint64(0)
from kernels.port_set import popcount64
from kernels.rules import (
    HS_ARP_SWEEP, HS_FAILED, HS_ICMP_SWEEP, HS_NDP_SWEEP, HS_PORT_SWEEP, HS_TRW, OUT_OPEN,
    select_host_row,
)

SKETCH_WORDS = 64
SKETCH_BITS = SKETCH_WORDS * 64
CONTRIBUTORS = 8


class HostSetState:
    def __init__(self, capacity, list_len):
        self.pane = np.zeros(capacity, np.int64)
        self.item_hi = np.zeros((capacity, list_len), np.uint64)
        self.item_lo = np.zeros((capacity, list_len), np.uint64)
        self.item_port = np.zeros((capacity, list_len), np.int32)
        self.item_pane = np.zeros((capacity, list_len), np.int64)
        self.item_n = np.zeros(capacity, np.int64)
        self.sketch = np.zeros((capacity, 2, SKETCH_WORDS), np.uint64)
        self.contrib_hi = np.zeros((capacity, CONTRIBUTORS), np.uint64)
        self.contrib_lo = np.zeros((capacity, CONTRIBUTORS), np.uint64)
        self.contrib_n = np.zeros((capacity, CONTRIBUTORS), np.int64)
        self.llr = np.zeros(capacity, np.int64)        # trw_scanner log-likelihood ratio
        self.failures = np.zeros(capacity, np.int64)   # trw_scanner failed first contacts
        self.trw_state = np.zeros(capacity, np.uint8)  # 0 scoring, 1 benign
        self.attempts = np.zeros((capacity, 2), np.int64)  # per pane, for count = attempts

    @property
    def arrays(self):
        return (self.pane, self.item_hi, self.item_lo, self.item_port, self.item_pane,
                self.item_n, self.sketch, self.contrib_hi, self.contrib_lo, self.contrib_n,
                self.llr, self.failures, self.trw_state, self.attempts)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


@inline
def clear_slot(hs, slot, pane):
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, contrib_hi,
     contrib_lo, contrib_n, llr, failures, trw_state, attempts) = hs
    pane_a[slot] = pane
    item_n[slot] = 0
    for w in range(SKETCH_WORDS):
        sketch[slot, 0, w] = 0
        sketch[slot, 1, w] = 0
    for k in range(CONTRIBUTORS):
        contrib_n[slot, k] = 0
    llr[slot] = 0
    failures[slot] = 0
    trw_state[slot] = 0
    attempts[slot, 0] = 0
    attempts[slot, 1] = 0


@inline
def sketch_estimate(sketch, slot):
    zeros = 0
    for w in range(SKETCH_WORDS):
        zeros += 64 - popcount64(sketch[slot, 0, w] | sketch[slot, 1, w])
    if zeros == 0:
        zeros = 1
    return np.int64(np.round(-SKETCH_BITS * np.log(zeros / SKETCH_BITS)))


@inline
def live_count(hs, slot, list_len):
    item_n = hs[5]
    n = item_n[slot]
    if n < list_len:
        return n
    return max(n, sketch_estimate(hs[6], slot))


@inline
def advance_pane(hs, slot, pane):
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, contrib_hi,
     contrib_lo, contrib_n, llr, failures, trw_state, attempts) = hs
    old = pane_a[slot]
    if pane <= old:
        return
    if pane == old + 1:
        attempts[slot, pane & 1] = 0
        for w in range(SKETCH_WORDS):
            sketch[slot, pane & 1, w] = 0
        keep = 0
        for k in range(item_n[slot]):
            if item_pane[slot, k] >= pane - 1:
                item_hi[slot, keep] = item_hi[slot, k]
                item_lo[slot, keep] = item_lo[slot, k]
                item_port[slot, keep] = item_port[slot, k]
                item_pane[slot, keep] = item_pane[slot, k]
                keep += 1
        item_n[slot] = keep
    else:
        attempts[slot, 0] = 0
        attempts[slot, 1] = 0
        for w in range(SKETCH_WORDS):
            sketch[slot, 0, w] = 0
            sketch[slot, 1, w] = 0
        item_n[slot] = 0
    pane_a[slot] = pane


@inline
def add_item(hs, slot, hi, lo, port, pane, list_len, seed):
    """Record an item in the current pane; returns True if it is new to the window."""
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, contrib_hi,
     contrib_lo, contrib_n, llr, failures, trw_state, attempts) = hs
    h = mix64(mix64(hi ^ seed) ^ lo ^ np.uint64(port))
    bit = np.int64(h & np.uint64(SKETCH_BITS - 1))
    word = bit >> 6
    mask = np.uint64(1) << np.uint64(bit & 63)
    cur = pane_a[slot] & 1
    maybe_seen = ((sketch[slot, 0, word] | sketch[slot, 1, word]) & mask) != 0
    sketch[slot, cur, word] |= mask
    n = item_n[slot]
    if maybe_seen:
        for k in range(n):
            if item_hi[slot, k] == hi and item_lo[slot, k] == lo and item_port[slot, k] == port:
                if pane > item_pane[slot, k]:
                    item_pane[slot, k] = pane
                return False
    if n < list_len:
        item_hi[slot, n] = hi
        item_lo[slot, n] = lo
        item_port[slot, n] = port
        item_pane[slot, n] = pane
        item_n[slot] = n + 1
        return True
    return not maybe_seen


@inline
def add_contributor(hs, slot, hi, lo):
    """Misra-Gries update of the slot's top probers."""
    contrib_hi = hs[7]
    contrib_lo = hs[8]
    contrib_n = hs[9]
    free = -1
    for k in range(CONTRIBUTORS):
        if contrib_n[slot, k] > 0:
            if contrib_hi[slot, k] == hi and contrib_lo[slot, k] == lo:
                contrib_n[slot, k] += 1
                return
        elif free < 0:
            free = k
    if free >= 0:
        contrib_hi[slot, free] = hi
        contrib_lo[slot, free] = lo
        contrib_n[slot, free] = 1
        return
    for k in range(CONTRIBUTORS):
        contrib_n[slot, k] -= 1


@kernel
def host_set_update(cols, cls, start, n, lc, hs, params, excluded_ports, seed, outcome):
    """Feed rows [start, n) of a batch. Returns (next_row, event, slot)."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, contrib_hi,
     contrib_lo, contrib_n, llr, failures, trw_state, attempts) = hs
    (c_ts, c_src_hi, c_src_lo, c_dst_hi, c_dst_lo, c_sport, c_dport, c_proto, c_tcp_flags,
     c_icmp_type, c_icmp_code, c_pkt_flags, c_inner_proto, c_inner_src_hi, c_inner_src_lo,
     c_inner_dst_hi, c_inner_dst_lo, c_inner_sport, c_inner_dport, c_vlan, c_wire_len) = cols
    mode = params[P_MODE]
    window_ns = params[P_WINDOW_NS]
    suppress_ns = params[P_SUPPRESS_NS]
    ways = params[P_WAYS]
    list_len = params[P_LIST]
    dir_allowed = params[P_DIR_MASK]
    count_attempts = params[P_COUNT_ATTEMPTS] != 0
    count_filtered = params[P_COUNT_FILTERED] != 0
    from_outcomes = params[P_FROM_OUTCOMES] != 0
    stale_ns = 2 * window_ns
    pane = np.int64(0)
    pane_start = np.int64(0)
    pane_end = np.int64(0)       # span of ``pane``: none yet
    for i in range(start, n):
        ts = c_ts[i]
        due = due_slot(lc, ts)
        if due >= 0:
            return i, EV_DUE, due
        take, k0, k1, k2, it_hi, it_lo, it_port, p_hi, p_lo, d = select_host_row(
            mode, cls[i], c_pkt_flags[i], c_proto[i], c_tcp_flags[i], c_icmp_type[i],
            c_src_hi[i], c_src_lo[i], c_dst_hi[i], c_dst_lo[i], c_dport[i], outcome[i],
            count_filtered, from_outcomes)
        if not take:
            continue
        if (d & dir_allowed) == 0:
            meta[M_DIR_FILTERED] += 1
            continue
        if mode == HS_FAILED:
            port = np.int64(it_port)
        elif (mode == HS_ICMP_SWEEP or mode == HS_TRW or mode == HS_ARP_SWEEP
              or mode == HS_NDP_SWEEP):
            port = np.int64(-1)
        else:
            port = np.int64(k2)
        if port >= 0 and (excluded_ports[port >> 6] >> np.uint64(port & 63)) & np.uint64(1):
            meta[M_PORT_FILTERED] += 1
            continue
        full, slot, fresh = claim_slot(lc, k0, k1, k2, U0, ts, stale_ns, suppress_ns, ways, seed)
        if full:
            return i, EV_FORCED, slot
        pane, pane_start, pane_end = pane_at(ts, window_ns, pane, pane_start, pane_end)
        if fresh:
            clear_slot(hs, slot, pane)
        if pane > pane_a[slot]:
            advance_pane(hs, slot, pane)
        is_new = add_item(hs, slot, it_hi, it_lo, it_port, pane_a[slot], list_len, seed)
        if mode == HS_TRW:
            if is_new and trw_state[slot] == 0:
                if outcome[i] == OUT_OPEN:
                    llr[slot] += params[P_TRW_SUCCESS]
                else:
                    llr[slot] += params[P_TRW_FAIL]
                    failures[slot] += 1
                if llr[slot] <= params[P_TRW_LOWER]:
                    trw_state[slot] = 1                    # benign: stop scoring
            # count = failed first contacts, but only once the walk crossed eta1
            count[slot] = failures[slot] if llr[slot] >= params[P_TRW_UPPER] else 0
        elif count_attempts:
            attempts[slot, pane_a[slot] & 1] += 1
            count[slot] = attempts[slot, 0] + attempts[slot, 1]
        else:
            count[slot] = live_count(hs, slot, list_len)
        if mode == HS_PORT_SWEEP:
            add_contributor(hs, slot, p_hi, p_lo)
        elif (mode == HS_ARP_SWEEP or mode == HS_NDP_SWEEP) and c_inner_src_lo[i] != U0:
            add_contributor(hs, slot, U0, c_inner_src_lo[i])    # the requester's MAC
        forced = row_counted(lc, slot, ts, d, is_new, params, False)
        if forced >= 0:
            return i + 1, EV_FORCED, forced
    return n, EV_NONE, -1
