"""Failed-attempt shapes per prober: the long-horizon tier (slow_scan) and small
vertical scans (vertical_scan), one kernel in two modes.

Counts, per prober, the distinct (target, port) pairs of its connection
attempts that did not succeed (TCP SYN attempts decided closed, filtered or
unknown by the probe table), over a *horizon* of hours, and from them the
two shapes of a scan: the most ports on one target (vertical) and the most
targets on one port (horizontal). ``count`` is the larger of the two; the
alert falls due when it reaches the threshold and the prober's failed
attempts have spanned at least ``min_span_ns`` (faster scans are the
five-minute rules' business; they still merge into the same alert).

Window: panes of ``horizon_ns``; a prober keeps the pairs of its current and
previous pane (between one and two horizons of history), exactly, up to
``P_LIST`` pairs; pairs past the list are counted (``dropped``) but not
kept, so counts are then lower bounds and the alert says so (the target count
only if a dropped pair's target was not listed).

Modes (``P_MODE``): ``ST_SLOW`` (slow_scan) counts both shapes over a horizon of
hours; ``ST_VERTICAL`` (vertical_scan) counts ports on one target only, over a
five-minute window with no span required and, by default, no doorkeeper
(``doorkeeper_entries = 0``: every prober gets a slot at its first failed
attempt, so a 20-port probe is counted whole; slots are then defended by the
eviction rule alone, which under a one-packet spoofed flood evicts one-attempt
keys before any key with two or more).

Admission (the flood defence, slow_scan): a prober gets a slot only at its *second*
failed attempt. The first one only writes a 32-bit fingerprint of the
prober into the doorkeeper, a direct-mapped array of ``D`` entries (the
entry at hash mod D; a later prober with the same index overwrites it). A
spoofed flood, one failed attempt per forged source, therefore only ever
writes doorkeeper entries and never claims a slot (a false admission needs
a 32-bit fingerprint match: about one in 2**32 lookups); a real prober is
admitted at its next attempt unless ~D other new probers came between the
two (the chance it survives F of them is exp(-F / D)). The attempt that only
marked the doorkeeper is not in the evidence (``M_DOORKEEPER_HELD`` counts
such attempts). Slots are evicted by the shared table rule
(kernels/addr_table.py): stale after two horizons idle, else the lowest
count, least recently seen.

Memory (fixed at allocation): D * 4 B of doorkeeper (none when D = 0), and per slot 24 B per
listed pair plus 64 B of scalars (and the shared episode state,
kernels/alert_slots.py).
"""
import numpy as np

from kernels.addr_table import hash_key, lookup_slot, slot_columns
from kernels.alert_slots import (
    EV_DUE, EV_FORCED, EV_NONE, M_DIR_FILTERED, M_PORT_FILTERED, P_DIR_MASK, P_LIST,
    P_MIN_SPAN_NS, P_MODE, P_SLOW_THRESHOLD, P_SUPPRESS_NS, P_WAYS, P_WINDOW_NS, claim_slot, due_slot,
    pane_at, row_counted,
)
from kernels.jit import inline, kernel
from kernels.rules import OUT_CLOSED, OUT_FILTERED, OUT_UNKNOWN, direction, forward_ok
from kernels.classify import C_DST_HOME, C_SRC_HOME
from kernels.batch import TH_SYN

U0 = np.uint64(0)
ST_SLOW = 0              # both shapes (slow_scan)
ST_VERTICAL = 1          # ports on one target only (vertical_scan)
DOORKEEPER_SEED = np.uint64(0xD00D4EE9E7000001)

# doorkeeper bookkeeping, in dk_meta
DK_HELD = 0              # attempts that only marked the doorkeeper
DK_ADMITTED = 1          # probers admitted (second attempt found their mark)
DK_OVERWRITTEN = 2       # marks overwritten by another prober before a second attempt
N_DK_META = 3


def doorkeeper_size(entries):
    """Configured ``doorkeeper_entries`` -> array length: a power of two, or 1 (off) for 0."""
    return 1 << (int(entries) - 1).bit_length() if entries > 0 else 1


class SlowTierState:
    """Per-slot arrays of the slow tier, and its doorkeeper."""

    def __init__(self, capacity, list_len, doorkeeper_entries):
        pairs = np.zeros((capacity, list_len, 3), np.uint64)
        self.item_hi = pairs[:, :, 0]
        self.item_lo = pairs[:, :, 1]
        # port in the low 32 bits, pane in the high 32 bits
        self.item_tag = pairs[:, :, 2]
        row = slot_columns(capacity, ("pane", "item_n", "dropped", "vbest", "hbest",
                                      "hbest_port", "dropped_hosts"))
        # pairs not kept whose target was not in the list either (dst_ip_count is then
        # a lower bound)
        self.dropped_hosts = row["dropped_hosts"]
        self.pane = row["pane"]
        self.item_n = row["item_n"]
        self.dropped = row["dropped"]          # pairs not kept (list full), this episode
        self.vbest = row["vbest"]              # most ports on one target
        self.vbest_target = np.zeros((capacity, 2), np.uint64)   # ... that target
        self.hbest = row["hbest"]              # most targets on one port
        self.hbest_port = row["hbest_port"]
        self.doorkeeper = np.zeros(doorkeeper_entries, np.uint32)
        self.dk_meta = np.zeros(N_DK_META, np.int64)

    @property
    def arrays(self):
        return (self.pane, self.item_hi, self.item_lo, self.item_tag, self.item_n,
                self.dropped, self.vbest, self.vbest_target, self.hbest, self.hbest_port,
                self.dropped_hosts)

    def nbytes(self):
        return (self.item_hi.base.nbytes + self.pane.base.nbytes + self.vbest_target.nbytes
                + self.doorkeeper.nbytes + self.dk_meta.nbytes)


@inline
def tag_of(port, pane):
    return (np.uint64(pane) << np.uint64(32)) | np.uint64(port)


@inline
def recount(st, slot):
    """Recompute the slot's best vertical and horizontal counts from its list."""
    (pane_a, item_hi, item_lo, item_tag, item_n, dropped, vbest, vbest_target, hbest,
     hbest_port, dropped_hosts) = st
    n = item_n[slot]
    vbest[slot] = 0
    hbest[slot] = 0
    for a in range(n):
        same_host = 0
        same_port = 0
        pa = item_tag[slot, a] & np.uint64(0xFFFFFFFF)
        for b in range(n):
            if item_hi[slot, b] == item_hi[slot, a] and item_lo[slot, b] == item_lo[slot, a]:
                same_host += 1
            if (item_tag[slot, b] & np.uint64(0xFFFFFFFF)) == pa:
                same_port += 1
        if same_host > vbest[slot]:
            vbest[slot] = same_host
            vbest_target[slot, 0] = item_hi[slot, a]
            vbest_target[slot, 1] = item_lo[slot, a]
        if same_port > hbest[slot]:
            hbest[slot] = same_port
            hbest_port[slot] = np.int64(pa)


@inline
def clear_slot(st, slot, pane):
    (pane_a, item_hi, item_lo, item_tag, item_n, dropped, vbest, vbest_target, hbest,
     hbest_port, dropped_hosts) = st
    pane_a[slot] = pane
    item_n[slot] = 0
    dropped[slot] = 0
    dropped_hosts[slot] = 0
    vbest[slot] = 0
    hbest[slot] = 0
    vbest_target[slot, 0] = U0
    vbest_target[slot, 1] = U0
    hbest_port[slot] = 0


@inline
def advance_pane(st, slot, pane):
    """Drop the pairs older than the previous pane of ``pane``."""
    (pane_a, item_hi, item_lo, item_tag, item_n, dropped, vbest, vbest_target, hbest,
     hbest_port, dropped_hosts) = st
    keep = 0
    for k in range(item_n[slot]):
        if np.int64(item_tag[slot, k] >> np.uint64(32)) >= pane - 1:
            item_hi[slot, keep] = item_hi[slot, k]
            item_lo[slot, keep] = item_lo[slot, k]
            item_tag[slot, keep] = item_tag[slot, k]
            keep += 1
    item_n[slot] = keep
    pane_a[slot] = pane
    recount(st, slot)


@inline
def add_pair(st, slot, hi, lo, port, pane, list_len):
    """Record pair (target, port) in the current pane. Returns True if it is new."""
    (pane_a, item_hi, item_lo, item_tag, item_n, dropped, vbest, vbest_target, hbest,
     hbest_port, dropped_hosts) = st
    n = item_n[slot]
    same_host = 1
    same_port = 1
    p = np.uint64(port)
    for k in range(n):
        h_eq = item_hi[slot, k] == hi and item_lo[slot, k] == lo
        p_eq = (item_tag[slot, k] & np.uint64(0xFFFFFFFF)) == p
        if h_eq and p_eq:
            item_tag[slot, k] = tag_of(port, pane)
            return False
        if h_eq:
            same_host += 1
        if p_eq:
            same_port += 1
    if n >= list_len:
        dropped[slot] += 1
        if same_host == 1:
            dropped_hosts[slot] += 1
        return True
    item_hi[slot, n] = hi
    item_lo[slot, n] = lo
    item_tag[slot, n] = tag_of(port, pane)
    item_n[slot] = n + 1
    if same_host > vbest[slot]:
        vbest[slot] = same_host
        vbest_target[slot, 0] = hi
        vbest_target[slot, 1] = lo
    if same_port > hbest[slot]:
        hbest[slot] = same_port
        hbest_port[slot] = np.int64(port)
    return True


@inline
def admitted(doorkeeper, dk_meta, k0, k1, seed):
    """The doorkeeper's answer for a prober with no slot: True at its second attempt."""
    h = hash_key(k0, k1, U0, U0, U0, seed ^ DOORKEEPER_SEED)
    idx = np.int64(h & np.uint64(doorkeeper.shape[0] - 1))
    fp = np.uint32((h >> np.uint64(32)) | np.uint64(1))
    if doorkeeper[idx] == fp:
        doorkeeper[idx] = 0
        dk_meta[DK_ADMITTED] += 1
        return True
    if doorkeeper[idx] != 0:
        dk_meta[DK_OVERWRITTEN] += 1
    doorkeeper[idx] = fp
    dk_meta[DK_HELD] += 1
    return False


@inline
def select_slow_row(c, proto, flags, outc):
    """A failed or unanswered TCP connection attempt (outcome row) from a prober."""
    if proto != 6 or flags != TH_SYN:
        return False, 0
    if outc != OUT_CLOSED and outc != OUT_FILTERED and outc != OUT_UNKNOWN:
        return False, 0
    if not forward_ok(c):
        return False, 0
    return True, direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)


@kernel
def slow_tier_update(cols, cls, start, n, lc, st, params, excluded_ports, seed, outcome,
                     doorkeeper, dk_meta):
    """Feed outcome rows [start, n). Returns (next_row, event, slot)."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    (pane_a, item_hi, item_lo, item_tag, item_n, dropped, vbest, vbest_target, hbest,
     hbest_port, dropped_hosts) = st
    (c_ts, c_src_hi, c_src_lo, c_dst_hi, c_dst_lo, c_sport, c_dport, c_proto, c_tcp_flags,
     c_icmp_type, c_icmp_code, c_pkt_flags, c_inner_proto, c_inner_src_hi, c_inner_src_lo,
     c_inner_dst_hi, c_inner_dst_lo, c_inner_sport, c_inner_dport, c_vlan, c_wire_len) = cols
    vertical_only = params[P_MODE] == ST_VERTICAL
    use_doorkeeper = doorkeeper.shape[0] > 1
    horizon_ns = params[P_WINDOW_NS]
    suppress_ns = params[P_SUPPRESS_NS]
    ways = params[P_WAYS]
    list_len = params[P_LIST]
    dir_allowed = params[P_DIR_MASK]
    threshold = params[P_SLOW_THRESHOLD]
    min_span_ns = params[P_MIN_SPAN_NS]
    stale_ns = 2 * horizon_ns
    pane = np.int64(0)
    pane_start = np.int64(0)
    pane_end = np.int64(0)
    for i in range(start, n):
        ts = c_ts[i]
        due = due_slot(lc, ts)
        if due >= 0:
            return i, EV_DUE, due
        take, d = select_slow_row(cls[i], c_proto[i], c_tcp_flags[i], outcome[i])
        if not take:
            continue
        if (d & dir_allowed) == 0:
            meta[M_DIR_FILTERED] += 1
            continue
        port = np.int64(c_dport[i])
        if (excluded_ports[port >> 6] >> np.uint64(port & 63)) & np.uint64(1):
            meta[M_PORT_FILTERED] += 1
            continue
        k0 = c_src_hi[i]
        k1 = c_src_lo[i]
        if use_doorkeeper and lookup_slot(fps, keys, last_seen_ns, k0, k1, U0, U0, U0, ways,
                                          seed) < 0:
            if not admitted(doorkeeper, dk_meta, k0, k1, seed):
                continue
        full, slot, fresh = claim_slot(lc, k0, k1, U0, U0, ts, stale_ns, suppress_ns, ways, seed)
        if full:
            return i, EV_FORCED, slot
        pane, pane_start, pane_end = pane_at(ts, horizon_ns, pane, pane_start, pane_end)
        if fresh:
            clear_slot(st, slot, pane)
        elif pane > pane_a[slot]:
            advance_pane(st, slot, pane)
        is_new = add_pair(st, slot, c_dst_hi[i], c_dst_lo[i], port, pane_a[slot], list_len)
        count[slot] = vbest[slot] if vertical_only else max(vbest[slot], hbest[slot])
        due_now = count[slot] >= threshold and ts - first_seen_ns[slot] >= min_span_ns
        forced = row_counted(lc, slot, ts, d, is_new, params, due_now)
        if forced >= 0:
            return i + 1, EV_FORCED, forced
    return n, EV_NONE, -1
