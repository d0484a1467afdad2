"""Host-set counter: distinct targets (or target + port pairs) per key, over a sliding window.

Serves host_sweep (key = prober + port), port_sweep (key = port, with every
prober listed as a source), icmp_sweep (key = prober), failed_connections
(key = prober, item = refusing host + port), trw_scanner (key = prober,
item = host contacted) and arp_sweep / ndp_sweep (key = sender, item =
unanswered target, with the sender's MACs listed as its sources);
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

An item is found in its list through an open-addressed index of
``item_index_len(P_LIST)`` int32 entries (a power of two >= 2 * P_LIST, so at
most half full): O(1) per row, where a scan of a full 1,024-item list cost a
microsecond. An entry is ``generation << 13 | position + 1``; a slot's
generation (``item_gen``) moves on when its list is emptied or compacted, which
turns every old entry into an empty one without writing it (a new key costs no
index clearing). The index is derived data: not saved in checkpoints, rebuilt
on restore (``rebuild_index``).

The pane sketches are only kept once the list has been full this episode
(``sketch_live``): they are then cleared and filled with the listed items (in
the pane each was last seen), and every item after that goes into them as
well. Their union is the same set as if every item had always gone in (a
listed item's bit sits in its last pane, and the older pane is the one cleared
first), so the estimates and "new item" decisions are unchanged, while a new
key (a spoofed flood's every packet) writes no sketch words at all.

Sources (port_sweep, and arp_sweep / ndp_sweep whose "sources" are the sender's MACs as (0, MAC); the other rules get zero-width source arrays): per
episode (the lifecycle's, ``kernels/alert_slots.py``: never shrinks until the
episode ends), an exact list of up to ``max_sources`` probers in order of
first probe, each with its probes and a ``HOST_BITS``-bit mask over the
episode's host list (the first ``HOST_BITS`` distinct targets of the
episode, in order), so each source names the hosts it touched; a source's
hosts past that list go into a 64-bit linear-counting sketch of its own
(``src_beyond``, unseeded hash so the reference reproduces it) from which the
alert estimates how many it did not name. A source is found through an
open-addressed index of ``2 * max_sources`` (rounded up to a power of two)
int16 entries, at most half full, so a lookup is O(1) however many sources
the sweep has. A prober beyond the cap is not listed: its probes are counted
(``src_meta[:, SM_UNLISTED]``) and every prober, listed or not, is hashed into
a 4,096-bit sketch of the episode's sources, whose linear-counting estimate
the alert gives (flagged) once a source was left out; while none was, the
number of sources is exact.

Memory (fixed at allocation, per slot): 26 B per list entry plus 8 B of index
per entry (4 B, twice as many entries), 1 KiB of pane sketches, about 140 B of
scalars; port_sweep adds 40 B per source, 4 B per
source of index, 512 B of source sketch, 16 B per episode host
(``HOST_BITS``) and 24 B: 12.5 KiB at the default 256 sources.
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
HOST_BITS = 64              # port_sweep: episode hosts a source's mask can name
SM_SOURCES = 0              # src_meta columns: sources listed,
SM_HOSTS = 1                # episode hosts listed (<= HOST_BITS),
SM_UNLISTED = 2             # probes of sources beyond max_sources
N_SRC_META = 3
INDEX_POS_BITS = 13         # item_index entry: generation << 13 | position + 1 (max_listed <= 4096)
INDEX_POS_MASK = (1 << INDEX_POS_BITS) - 1
INDEX_GEN_MASK = (1 << 18) - 1      # generations wrap; an old entry is only ever a non-match


def item_index_len(list_len):
    """Entries of a slot's item index: a power of two >= 2 * list_len."""
    n = 1
    while n < 2 * list_len:
        n *= 2
    return n


def source_index_len(max_sources):
    """Entries of a slot's source index: a power of two >= 2 * max_sources."""
    n = 1
    while n < 2 * max_sources:
        n *= 2
    return n if max_sources > 0 else 0


class HostSetState:
    def __init__(self, capacity, list_len, max_sources=0):
        self.pane = np.zeros(capacity, np.int64)
        self.item_hi = np.zeros((capacity, list_len), np.uint64)
        self.item_lo = np.zeros((capacity, list_len), np.uint64)
        self.item_port = np.zeros((capacity, list_len), np.int32)
        self.item_pane = np.zeros((capacity, list_len), np.int64)
        self.item_n = np.zeros(capacity, np.int64)
        self.sketch = np.zeros((capacity, 2, SKETCH_WORDS), np.uint64)
        self.llr = np.zeros(capacity, np.int64)        # trw_scanner log-likelihood ratio
        self.failures = np.zeros(capacity, np.int64)   # trw_scanner failed first contacts
        self.trw_state = np.zeros(capacity, np.uint8)  # 0 scoring, 1 benign
        self.attempts = np.zeros((capacity, 2), np.int64)  # per pane, for count = attempts
        # port_sweep's sources (zero-width for the other rules)
        m = max_sources
        on = 1 if m > 0 else 0
        self.src_hi = np.zeros((capacity, m), np.uint64)
        self.src_lo = np.zeros((capacity, m), np.uint64)
        self.src_probes = np.zeros((capacity, m), np.int64)
        self.src_hosts = np.zeros((capacity, m), np.uint64)    # bit j: episode host j
        self.src_beyond = np.zeros((capacity, m), np.uint64)   # sketch of hosts past HOST_BITS
        self.src_index = np.zeros((capacity, source_index_len(m)), np.int16)  # entry + 1
        self.src_sketch = np.zeros((capacity, SKETCH_WORDS * on), np.uint64)
        self.src_meta = np.zeros((capacity, N_SRC_META * on), np.int64)
        self.host_hi = np.zeros((capacity, HOST_BITS * on), np.uint64)  # episode hosts
        self.host_lo = np.zeros((capacity, HOST_BITS * on), np.uint64)
        # the item lists' index (derived: rebuilt on restore) and what says which of its
        # entries and sketch words are current
        self.item_index = np.zeros((capacity, item_index_len(list_len)), np.int32)
        self.item_gen = np.zeros(capacity, np.int64)
        self.sketch_live = np.zeros(capacity, np.uint8)

    @property
    def arrays(self):
        return (self.pane, self.item_hi, self.item_lo, self.item_port, self.item_pane,
                self.item_n, self.sketch, self.llr, self.failures, self.trw_state,
                self.attempts, self.src_hi, self.src_lo, self.src_probes, self.src_hosts,
                self.src_beyond, self.src_index, self.src_sketch, self.src_meta,
                self.host_hi, self.host_lo, self.item_index, self.item_gen, self.sketch_live)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)

    def rebuild_index(self, slots, seed):
        """Rebuild the item index of ``slots`` from their lists (after a restore)."""
        rebuild_indexes(self.arrays, np.asarray(slots, np.int64), np.uint64(seed))


@inline
def clear_slot(hs, slot, pane):
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, llr, failures,
     trw_state, attempts, src_hi, src_lo, src_probes, src_hosts, src_beyond, src_index,
     src_sketch, src_meta, host_hi, host_lo) = hs[:21]
    item_index, item_gen, sketch_live = hs[21], hs[22], hs[23]
    pane_a[slot] = pane
    item_n[slot] = 0
    item_gen[slot] += 1          # every index entry of the slot is now stale
    sketch_live[slot] = 0        # the sketches are cleared when they are next needed
    if src_meta.shape[1] > 0:
        for k in range(N_SRC_META):
            src_meta[slot, k] = 0
        for k in range(src_index.shape[1]):
            src_index[slot, k] = 0
        for w in range(SKETCH_WORDS):
            src_sketch[slot, w] = 0
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
def advance_pane(hs, slot, pane, seed):
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, llr, failures,
     trw_state, attempts, src_hi, src_lo, src_probes, src_hosts, src_beyond, src_index,
     src_sketch, src_meta, host_hi, host_lo) = hs[:21]
    item_index, item_gen, sketch_live = hs[21], hs[22], hs[23]
    old = pane_a[slot]
    if pane <= old:
        return
    if pane == old + 1:
        attempts[slot, pane & 1] = 0
        if sketch_live[slot] != 0:
            for w in range(SKETCH_WORDS):
                sketch[slot, pane & 1, w] = 0
        keep = 0
        n = item_n[slot]
        for k in range(n):
            if item_pane[slot, k] >= pane - 1:
                item_hi[slot, keep] = item_hi[slot, k]
                item_lo[slot, keep] = item_lo[slot, k]
                item_port[slot, keep] = item_port[slot, k]
                item_pane[slot, keep] = item_pane[slot, k]
                keep += 1
        item_n[slot] = keep
        if keep < n:
            rebuild_slot_index(hs, slot, seed)     # positions moved
    else:
        attempts[slot, 0] = 0
        attempts[slot, 1] = 0
        if sketch_live[slot] != 0:
            for w in range(SKETCH_WORDS):
                sketch[slot, 0, w] = 0
                sketch[slot, 1, w] = 0
        sketch_live[slot] = 0
        item_n[slot] = 0
        item_gen[slot] += 1
    pane_a[slot] = pane


@inline
def item_hash(hi, lo, port, seed):
    return mix64(mix64(hi ^ seed) ^ lo ^ np.uint64(port))


@inline
def index_find(hs, slot, hi, lo, port, h):
    """(position of the item in the slot's list or -1, index entry where it would go
    or -1 if the index has no free entry)."""
    item_hi, item_lo, item_port, item_n = hs[1], hs[2], hs[3], hs[5]
    item_index, item_gen = hs[21], hs[22]
    gen = item_gen[slot] & INDEX_GEN_MASK
    mask = np.int64(item_index.shape[1] - 1)
    at = np.int64(h >> np.uint64(40)) & mask      # bits apart from the sketch bit's
    n = item_n[slot]
    for _ in range(item_index.shape[1]):
        e = np.int64(item_index[slot, at])
        k = (e & INDEX_POS_MASK) - 1
        if k < 0 or (e >> INDEX_POS_BITS) != gen:
            return -1, at                                  # empty (or stale)
        if (k < n and item_hi[slot, k] == hi and item_lo[slot, k] == lo
                and item_port[slot, k] == port):
            return k, at
        at = (at + 1) & mask
    return -1, -1


@inline
def index_put(hs, slot, at, k):
    item_index, item_gen = hs[21], hs[22]
    item_index[slot, at] = np.int32(((item_gen[slot] & INDEX_GEN_MASK) << INDEX_POS_BITS) | (k + 1))


@inline
def rebuild_slot_index(hs, slot, seed):
    """A new generation, every listed item entered again (in list order)."""
    item_gen = hs[22]
    item_gen[slot] += 1
    enter_items(hs, slot, seed)


@inline
def enter_items(hs, slot, seed):
    item_hi, item_lo, item_port, item_n = hs[1], hs[2], hs[3], hs[5]
    for k in range(item_n[slot]):
        hi = item_hi[slot, k]
        lo = item_lo[slot, k]
        port = np.int64(item_port[slot, k])
        found, at = index_find(hs, slot, hi, lo, port, item_hash(hi, lo, port, seed))
        if found < 0 and at >= 0:
            index_put(hs, slot, at, k)


@kernel
def rebuild_indexes(hs, slots, seed):
    """The item index of ``slots`` from their lists and generations (a restore: the
    same entries at the same places as the index they were saved from had)."""
    item_index = hs[21]
    for j in range(slots.shape[0]):
        for a in range(item_index.shape[1]):
            item_index[slots[j], a] = 0
        enter_items(hs, slots[j], seed)


@inline
def fill_sketches(hs, slot, seed):
    """The list is full for the first time this episode: clear the pane sketches and
    enter every listed item in the pane it was last seen in."""
    item_hi, item_lo, item_port, item_pane, item_n, sketch = hs[1], hs[2], hs[3], hs[4], hs[5], hs[6]
    sketch_live = hs[23]
    for w in range(SKETCH_WORDS):
        sketch[slot, 0, w] = 0
        sketch[slot, 1, w] = 0
    for k in range(item_n[slot]):
        h = item_hash(item_hi[slot, k], item_lo[slot, k], np.int64(item_port[slot, k]), seed)
        bit = np.int64(h & np.uint64(SKETCH_BITS - 1))
        sketch[slot, item_pane[slot, k] & 1, bit >> 6] |= np.uint64(1) << np.uint64(bit & 63)
    sketch_live[slot] = 1


@inline
def add_item(hs, slot, hi, lo, port, pane, list_len, seed):
    """Record an item in the current pane; returns True if it is new to the window
    (exactly while the list has room, then per the sketches)."""
    item_hi, item_lo, item_port, item_pane, item_n, sketch = hs[1], hs[2], hs[3], hs[4], hs[5], hs[6]
    pane_a, sketch_live = hs[0], hs[23]
    h = item_hash(hi, lo, port, seed)
    bit = np.int64(h & np.uint64(SKETCH_BITS - 1))
    word = bit >> 6
    mask = np.uint64(1) << np.uint64(bit & 63)
    cur = pane_a[slot] & 1
    live = sketch_live[slot] != 0
    k, at = index_find(hs, slot, hi, lo, port, h)
    if k >= 0:
        if pane > item_pane[slot, k]:
            item_pane[slot, k] = pane
        if live:
            sketch[slot, cur, word] |= mask
        return False
    maybe_seen = False
    if live:
        maybe_seen = ((sketch[slot, 0, word] | sketch[slot, 1, word]) & mask) != 0
        sketch[slot, cur, word] |= mask
    n = item_n[slot]
    if n < list_len:
        item_hi[slot, n] = hi
        item_lo[slot, n] = lo
        item_port[slot, n] = port
        item_pane[slot, n] = pane
        item_n[slot] = n + 1
        if at >= 0:
            index_put(hs, slot, at, n)
        else:
            rebuild_slot_index(hs, slot, seed)     # stale entries filled it: start afresh
        if n + 1 == list_len and not live:
            fill_sketches(hs, slot, seed)
        return True
    return not maybe_seen


@inline
def host_hash(hi, lo):
    """Unseeded hash of an address (a source's beyond-the-mask sketch)."""
    return mix64(mix64(hi) ^ lo)


@inline
def add_source(hs, slot, p_hi, p_lo, t_hi, t_lo, seed):
    """port_sweep: prober (p_hi, p_lo) probed target (t_hi, t_lo) in ``slot``'s episode.
    Returns True if the prober is new to the listed sources (worth an update, like a
    new target: every source of a sweep must reach the SIEM)."""
    src_hi, src_lo, src_probes, src_hosts, src_beyond = hs[11], hs[12], hs[13], hs[14], hs[15]
    src_index, src_sketch, src_meta, host_hi, host_lo = hs[16], hs[17], hs[18], hs[19], hs[20]
    # the target's position in the episode's host list (-1: past HOST_BITS)
    nh = min(src_meta[slot, SM_HOSTS], HOST_BITS)
    pos = -1
    for j in range(nh):
        if host_hi[slot, j] == t_hi and host_lo[slot, j] == t_lo:
            pos = j
            break
    if pos < 0 and nh < HOST_BITS:
        host_hi[slot, nh] = t_hi
        host_lo[slot, nh] = t_lo
        src_meta[slot, SM_HOSTS] = nh + 1
        pos = nh
    # the prober: every one into the sketch, the first max_sources into the list
    h = mix64(mix64(p_hi ^ seed) ^ p_lo)
    bit = np.int64(h & np.uint64(SKETCH_BITS - 1))
    src_sketch[slot, bit >> 6] |= np.uint64(1) << np.uint64(bit & 63)
    cap = src_hi.shape[1]
    mask = np.int64(src_index.shape[1] - 1)
    at = np.int64(h >> np.uint64(20)) & mask
    e = -1
    n = min(src_meta[slot, SM_SOURCES], cap)
    free = -1
    # bounded even for an index restored damaged: at most one pass over it
    for _ in range(src_index.shape[1]):
        k = np.int64(src_index[slot, at]) - 1
        if k < 0:
            free = at
            break
        if k < n and src_hi[slot, k] == p_hi and src_lo[slot, k] == p_lo:
            e = k
            break
        at = (at + 1) & mask
    if e < 0:
        if n >= cap or free < 0:
            src_meta[slot, SM_UNLISTED] += 1
            return False
        e = n
        src_index[slot, free] = np.int16(e + 1)   # the index is at most half full
        src_hi[slot, e] = p_hi
        src_lo[slot, e] = p_lo
        src_probes[slot, e] = 0
        src_hosts[slot, e] = U0
        src_beyond[slot, e] = U0
        src_meta[slot, SM_SOURCES] = n + 1
    fresh = src_probes[slot, e] == 0
    src_probes[slot, e] += 1
    if pos >= 0:
        src_hosts[slot, e] |= np.uint64(1) << np.uint64(pos)
    else:
        src_beyond[slot, e] |= np.uint64(1) << (host_hash(t_hi, t_lo) & np.uint64(63))
    return fresh


@kernel
def host_set_update(cols, cls, start, n, lc, hs, params, excluded_ports, seed, outcome):
    """Feed rows [start, n) of a batch. Returns (next_row, event, slot)."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    (pane_a, item_hi, item_lo, item_port, item_pane, item_n, sketch, llr, failures,
     trw_state, attempts, src_hi, src_lo, src_probes, src_hosts, src_beyond, src_index,
     src_sketch, src_meta, host_hi, host_lo) = hs[:21]
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
        changed = fresh
        if pane > pane_a[slot]:
            advance_pane(hs, slot, pane, seed)
            changed = True
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
        elif is_new or changed:
            # the window's items change only with a new item or a new pane
            count[slot] = live_count(hs, slot, list_len)
        if mode == HS_PORT_SWEEP:
            if add_source(hs, slot, p_hi, p_lo, it_hi, it_lo, seed):
                is_new = True                  # a new source: an update names it
        elif (mode == HS_ARP_SWEEP or mode == HS_NDP_SWEEP) and c_inner_src_lo[i] != U0:
            add_source(hs, slot, U0, c_inner_src_lo[i], it_hi, it_lo, seed)   # requester's MAC
        forced = row_counted(lc, slot, ts, d, is_new, params, np.bool_(False))
        if forced >= 0:
            return i + 1, EV_FORCED, forced
    return n, EV_NONE, -1
