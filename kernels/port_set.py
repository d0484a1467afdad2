"""Port-set counter: distinct destination ports per key, exact, over a sliding window.

Serves port_scan (key = prober, or prober + target), stealth_scan, udp_scan
(key as port_scan; from decided UDP probes) and exposed_host_probe (which counts attempts, per pane like the ports,
instead of distinct ports);
``kernels/rules.py`` says which rows each counts.

Window: time is cut into panes of ``window_ns`` (pane = ts // window_ns). A
key keeps two 65,536-bit bitmaps, the current pane's and the previous one's;
its count is the popcount of their union, kept incrementally (+1 when a port
is new to both, recomputed once per pane change). Ports probed within one
window of each other always lie in those two panes, so a scan reaching the
threshold inside one window is always caught; one spread over up to two
windows may also count.

Targets: each slot keeps up to ``P_LIST`` distinct targets exactly, and a
4,096-bit hashed bitmap of all of them (linear counting) for their number
once the list is full.

Alert timing, episodes and updates: ``kernels/alert_slots.py``.

A key's first ``TIER`` (port, pane) entries are kept inline in its slot row;
only a key that goes past them gets its bitmaps (the entries are copied in).
A random-source flood, one port per source, then never touches a bitmap:
its rows cost a bucket scan and one slot row, and the bitmap pages of an
idle table are never faulted in.

Resetting a slot must not cost 16 KiB of writes (a flood of one-packet
spoofed sources would spend all its time clearing): each slot remembers up
to ``TOUCHED`` bitmap words it made non-zero, and clears or counts only
those; past that it falls back to whole bitmaps.

Memory (fixed at allocation, per slot): 16 KiB of port bitmaps, 512 B of
target sketch, 16 B per listed target, a 96-byte row (scalars, touched-word
list, inline entries) and about 100 B of episode state.
"""
import numpy as np

from kernels.addr_table import mix64, slot_columns
from kernels.alert_slots import (
    EV_DUE, EV_FORCED, EV_NONE, M_DIR_FILTERED, M_PORT_FILTERED, P_COUNT_ATTEMPTS, P_DIR_MASK,
    P_LIST, P_MODE, P_PAIR_SCOPE, P_SENSITIVE, P_SUPPRESS_NS, P_WAYS, P_WINDOW_NS, claim_slot,
    due_slot, pane_at, row_counted,
)
from kernels.jit import inline, kernel

U0 = np.uint64(0)
from kernels.rules import PS_UDP_PROBES, select_port_row

PORT_WORDS = 1024          # 65,536 bits
SKETCH_WORDS = 64          # 4,096 bits
SKETCH_BITS = SKETCH_WORDS * 64
TOUCHED = 8                # words remembered per slot; TOUCHED + 1 means "more"
TIER = 4                   # inline (port, pane) entries before a key gets bitmaps
IN_BITMAPS = -1            # tier_n of a key whose ports are in its bitmaps


class PortSetState:
    """Arrays of one port-set table besides its lifecycle (kernels/alert_slots.py)."""

    def __init__(self, capacity, list_len):
        self.ports = np.zeros((capacity, 2, PORT_WORDS), np.uint64)
        # a target's two address words side by side: one cache line per new target
        targets = np.zeros((capacity, list_len, 2), np.uint64)
        self.target_hi = targets[:, :, 0]
        self.target_lo = targets[:, :, 1]
        self.target_sketch = np.zeros((capacity, SKETCH_WORDS), np.uint64)
        # a slot's scalars in one 80-byte row (kernels/addr_table.py)
        row = slot_columns(capacity, ("pane", "target_n", "attempts0", "attempts1",
                                      "n_touched", "sensitive", "sketch_live", "touched0",
                                      "touched1", "tier_n", "tier0", "tier1"))
        self.pane = row["pane"]
        self.target_n = row["target_n"]
        self.attempts = row["attempts0"].base[:, 2:4]   # per pane, for count = attempts
        self.n_touched = row["n_touched"]
        self.sensitive = row["sensitive"]   # distinct sensitive ports in the window
        self.sketch_live = row["sketch_live"]   # more targets than the list holds
        # up to TOUCHED bitmap words made non-zero, as pane << 10 | word
        self.touched = row["touched0"].base[:, 7:9].view(np.int16)
        # inline entries (port | pane parity << 16) while tier_n >= 0
        self.tier_n = row["tier_n"]
        self.tier = row["tier0"].base[:, 10:12].view(np.int32)

    @property
    def arrays(self):
        return (self.pane, self.ports, self.target_hi, self.target_lo, self.target_n,
                self.target_sketch, self.attempts, self.touched, self.n_touched, self.sensitive,
                self.sketch_live, self.tier_n, self.tier)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


@inline
def popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@inline
def clear_panes(ps, slot):
    """Empty both panes' ports and attempt counts (only the touched bitmap words)."""
    (pane_a, ports, target_hi, target_lo, target_n, target_sketch, attempts, touched,
     n_touched, sensitive, sketch_live, tier_n, tier) = ps
    if tier_n[slot] == IN_BITMAPS:
        nt = n_touched[slot]
        if nt <= TOUCHED:
            for k in range(nt):
                e = touched[slot, k]
                ports[slot, e >> 10, e & 1023] = 0
        else:
            for w in range(PORT_WORDS):
                ports[slot, 0, w] = 0
                ports[slot, 1, w] = 0
        n_touched[slot] = 0
    tier_n[slot] = 0
    attempts[slot, 0] = 0
    attempts[slot, 1] = 0
    sensitive[slot] = 0


@inline
def clear_slot(ps, slot, pane):
    (pane_a, ports, target_hi, target_lo, target_n, target_sketch, attempts, touched,
     n_touched, sensitive, sketch_live, tier_n, tier) = ps
    pane_a[slot] = pane
    target_n[slot] = 0
    sketch_live[slot] = 0
    clear_panes(ps, slot)


@inline
def advance_pane(ps, count, slot, pane, count_attempts, sens_bits):
    (pane_a, ports, target_hi, target_lo, target_n, target_sketch, attempts, touched,
     n_touched, sensitive, sketch_live, tier_n, tier) = ps
    old = pane_a[slot]
    if pane <= old:
        return
    cur_new = pane & 1
    nt = n_touched[slot]
    tn = tier_n[slot]
    if pane == old + 1:
        total = 0
        sens = 0
        if tn >= 0:
            # inline: keep the previous pane's entries (distinct ports)
            for k in range(tn):
                e = tier[slot, k]
                if (e >> 16) != cur_new:
                    p = e & 0xFFFF
                    if (sens_bits[p >> 6] >> np.uint64(p & 63)) & np.uint64(1):
                        sens += 1
                    tier[slot, total] = e
                    total += 1
            tier_n[slot] = total
        elif nt <= TOUCHED:
            keep = 0
            for k in range(nt):
                e = touched[slot, k]
                if (e >> 10) == cur_new:
                    ports[slot, cur_new, e & 1023] = 0
                else:
                    total += popcount64(ports[slot, 1 - cur_new, e & 1023])
                    sens += popcount64(ports[slot, 1 - cur_new, e & 1023] & sens_bits[e & 1023])
                    touched[slot, keep] = e
                    keep += 1
            n_touched[slot] = keep
        else:
            for w in range(PORT_WORDS):
                ports[slot, cur_new, w] = 0
                total += popcount64(ports[slot, 1 - cur_new, w])
                sens += popcount64(ports[slot, 1 - cur_new, w] & sens_bits[w])
        sensitive[slot] = sens
        attempts[slot, cur_new] = 0
        count[slot] = attempts[slot, 1 - cur_new] if count_attempts else total
    else:
        clear_panes(ps, slot)
        count[slot] = 0
    pane_a[slot] = pane


@inline
def set_port_bit(ports, touched, n_touched, slot, pane_bit, port):
    """Set ``port`` in the bitmap of pane ``pane_bit``, remembering the word."""
    word = port >> 6
    if ports[slot, pane_bit, word] == 0:
        nt = n_touched[slot]
        if nt < TOUCHED:
            touched[slot, nt] = (pane_bit << 10) | word
        if nt <= TOUCHED:
            n_touched[slot] = nt + 1
    ports[slot, pane_bit, word] |= np.uint64(1) << np.uint64(port & 63)


@inline
def to_bitmaps(ports, touched, n_touched, tier_n, tier, slot):
    """Move a key's inline entries into its (empty) bitmaps."""
    for k in range(tier_n[slot]):
        e = tier[slot, k]
        set_port_bit(ports, touched, n_touched, slot, e >> 16, e & 0xFFFF)
    tier_n[slot] = IN_BITMAPS


@inline
def sketch_bit(hi, lo, seed):
    """A target's bit in the 4,096-bit target sketch."""
    return np.int64(mix64(mix64(hi ^ seed) ^ lo) & np.uint64(SKETCH_BITS - 1))


@inline
def add_target(ps, slot, hi, lo, list_len, seed):
    """Record a target; returns True if it was not seen before (exactly while the
    list has room, then per the sketch). The sketch is only cleared and filled
    (with the listed targets) when the list overflows, so a new key costs no
    sketch writes."""
    (pane_a, ports, target_hi, target_lo, target_n, target_sketch, attempts, touched,
     n_touched, sensitive, sketch_live, tier_n, tier) = ps
    if sketch_live[slot] == 0:
        n = target_n[slot]
        for k in range(n):
            if target_hi[slot, k] == hi and target_lo[slot, k] == lo:
                return False
        if n < list_len:
            target_hi[slot, n] = hi
            target_lo[slot, n] = lo
            target_n[slot] = n + 1
            return True
        for w in range(SKETCH_WORDS):
            target_sketch[slot, w] = 0
        for k in range(n):
            b = sketch_bit(target_hi[slot, k], target_lo[slot, k], seed)
            target_sketch[slot, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
        sketch_live[slot] = 1
    bit = sketch_bit(hi, lo, seed)
    word = bit >> 6
    mask = np.uint64(1) << np.uint64(bit & 63)
    seen_bit = (target_sketch[slot, word] & mask) != 0
    target_sketch[slot, word] |= mask
    return not seen_bit


@kernel
def port_set_update(cols, cls, start, n, lc, ps, params, excluded_ports, seed, outcome,
                    sens_bits):
    """Feed rows [start, n) of a batch. Returns (next_row, event, slot)."""
    (keys, last_seen_ns, first_seen_ns, pinned, seq, reported_count, last_report_ns,
     due_ns, count, probes, dir_mask, evidence, new_target, pending, meta, fps) = lc
    (pane_a, ports, target_hi, target_lo, target_n, target_sketch, attempts, touched,
     n_touched, sensitive, sketch_live, tier_n, tier) = ps
    (c_ts, c_src_hi, c_src_lo, c_dst_hi, c_dst_lo, c_sport, c_dport, c_proto, c_tcp_flags,
     c_icmp_type, c_icmp_code, c_pkt_flags, c_inner_proto, c_inner_src_hi, c_inner_src_lo,
     c_inner_dst_hi, c_inner_dst_lo, c_inner_sport, c_inner_dport, c_vlan, c_wire_len) = cols
    mode = params[P_MODE]
    pair_scope = params[P_PAIR_SCOPE] != 0
    count_attempts = params[P_COUNT_ATTEMPTS] != 0
    window_ns = params[P_WINDOW_NS]
    suppress_ns = params[P_SUPPRESS_NS]
    ways = params[P_WAYS]
    list_len = params[P_LIST]
    dir_allowed = params[P_DIR_MASK]
    sens_threshold = params[P_SENSITIVE]
    stale_ns = 2 * window_ns
    pane = np.int64(0)
    pane_start = np.int64(0)
    pane_end = np.int64(0)       # span of ``pane``: none yet
    for i in range(start, n):
        ts = c_ts[i]
        due = due_slot(lc, ts)
        if due >= 0:
            return i, EV_DUE, due
        take, k0, k1, k2, k3, port, t_hi, t_lo, d, ev_bits = select_port_row(
            mode, pair_scope, cls[i], c_pkt_flags[i], c_proto[i], c_tcp_flags[i],
            c_icmp_type[i], c_icmp_code[i], c_inner_proto[i], c_src_hi[i], c_src_lo[i],
            c_dst_hi[i], c_dst_lo[i], c_dport[i], c_inner_src_hi[i], c_inner_src_lo[i],
            c_inner_dst_hi[i], c_inner_dst_lo[i], c_inner_dport[i], outcome[i])
        if not take:
            continue
        if (d & dir_allowed) == 0:
            meta[M_DIR_FILTERED] += 1
            continue
        if (excluded_ports[port >> 6] >> np.uint64(port & 63)) & np.uint64(1):
            meta[M_PORT_FILTERED] += 1
            continue
        if mode == PS_UDP_PROBES:
            # udp_scan: a datagram *from* an excluded (service) port is a service's
            # reply whose request the sensor did not see, not a probe
            sp = np.int64(c_sport[i])
            if (excluded_ports[sp >> 6] >> np.uint64(sp & 63)) & np.uint64(1):
                meta[M_PORT_FILTERED] += 1
                continue
        full, slot, fresh = claim_slot(lc, k0, k1, k2, k3, ts, stale_ns, suppress_ns, ways, seed)
        if full:
            return i, EV_FORCED, slot
        pane, pane_start, pane_end = pane_at(ts, window_ns, pane, pane_start, pane_end)
        if fresh:
            clear_slot(ps, slot, pane)
        if pane > pane_a[slot]:
            advance_pane(ps, count, slot, pane, count_attempts, sens_bits)
        word = port >> 6
        mask = np.uint64(1) << np.uint64(port & 63)
        cur = pane_a[slot] & 1
        tn = tier_n[slot]
        if tn >= 0:
            in_cur = False
            in_prev = False
            for k in range(tn):
                e = tier[slot, k]
                if (e & 0xFFFF) == port:
                    if (e >> 16) == cur:
                        in_cur = True
                    else:
                        in_prev = True
            if not in_cur:
                if not in_prev and not count_attempts:
                    count[slot] += 1
                    if (sens_bits[word] & mask) != 0:
                        sensitive[slot] += 1
                if tn < TIER:
                    tier[slot, tn] = np.int32(port | (cur << 16))
                    tier_n[slot] = tn + 1
                else:
                    to_bitmaps(ports, touched, n_touched, tier_n, tier, slot)
                    set_port_bit(ports, touched, n_touched, slot, cur, port)
        elif (ports[slot, cur, word] & mask) == 0:
            if (ports[slot, 1 - cur, word] & mask) == 0 and not count_attempts:
                count[slot] += 1
                if (sens_bits[word] & mask) != 0:
                    sensitive[slot] += 1
            set_port_bit(ports, touched, n_touched, slot, cur, port)
        if count_attempts:
            attempts[slot, cur] += 1
            count[slot] = attempts[slot, 0] + attempts[slot, 1]
        evidence[slot] |= ev_bits
        is_new = add_target(ps, slot, t_hi, t_lo, list_len, seed)
        sens_due = sens_threshold > 0 and sensitive[slot] >= sens_threshold
        forced = row_counted(lc, slot, ts, d, is_new, params, sens_due)
        if forced >= 0:
            return i + 1, EV_FORCED, forced
    return n, EV_NONE, -1
