"""Probe table: what happened to each connection attempt.

Keyed by (initiator, responder, responder port, protocol), fed by every row
of a batch:

* TCP SYN (no ACK) from I to R:port, or a UDP datagram that answers nothing,
  opens a probe, ``SENT``, and queues it for its timeout. So do *stealth*
  probes: TCP segments with none of SYN, ACK, RST (FIN, NULL, Xmas), and an
  ACK or FIN+ACK that belongs to no flow the table knows (nmap -sA, -sM; a
  segment of a flow that began before the sensor looks the same until the
  peer answers it with anything but a RST, which marks it an ongoing flow).
  The probe's TCP flags are kept and written into its outcome row, so rules
  can tell connection attempts from stealth probes. A later SYN or
  datagram from a different initiator port, once the probe is decided, is a
  new attempt (reopened); the same port again is a retransmission (ignored).
* SYN-ACK from R:port to I, or a UDP reply from R:port -> ``OPEN``; the
  initiator's ACK that completes the handshake -> ``ESTABLISHED`` (still open).
* RST from R:port to I, or an ICMP port unreachable quoting a UDP probe ->
  ``CLOSED``.
* ICMP admin-prohibited, host/net unreachable (and the ICMPv6 equivalents)
  quoting a probe -> ``FILTERED``.
* ICMP time exceeded (ICMPv4 type 11, ICMPv6 type 3) quoting a probe ->
  ``TRACED``: the probe's TTL ran out on the way (traceroute, mtr). It also
  marks the prober+target pair as *being traced* (see below).
* An ICMP error answers a probe only if the table saw that probe; one that
  answers none is counted as ICMP backscatter (forged, or a reply to a
  spoofed source) and attributed to nobody. An ICMPv4 error quoting an IPv6
  header, or an ICMPv6 error quoting IPv4, is malformed: counted, ignored.
* No answer within ``timeout_ns`` of packet time -> ``FILTERED`` if the
  sensor has matched at least one reply so far (it sees both directions),
  else ``UNKNOWN`` (one-directional capture, common on SPAN ports).
* An ARP request from I for R (sender / target protocol address), or an IPv6
  neighbour solicitation from I for target R, opens a probe of R with protocol
  ``PROTO_ARP`` / ``PROTO_NDP`` (above any IP protocol number) and no port; R's ARP
  reply to I, or its neighbour advertisement to I for target R -> ``OPEN`` (a host
  found); no answer -> filtered/unknown as below. A repeat while waiting is a
  retransmission; asking again once decided is a new probe. Gratuitous ARP and
  announcements (sender = target), address-conflict probes (sender 0.0.0.0, RFC
  5227) and duplicate address detection (from ::) are no probes; replies nobody
  asked for are ignored. Having no ports or flags, such a probe keeps the
  requester's 48-bit MAC in its row's sport / pflags / spare columns; its outcome
  row looks like the request's packet row (ARP: PF_ARP, icmp_type 1; NDP: ICMPv6
  135) with the MAC in ``inner_src_lo``.
* A SYN-ACK or RST that answers no probe the sensor saw is *backscatter*
  (a victim's reply to a spoofed flood): counted, never attributed to its
  receiver or sender as scanning.

Traceroute: a time-exceeded answer marks the pair (initiator, responder) in
the *trace table* for ``trace_hold_ns`` (3 x timeout) with the range of
probe ports its time-exceeded answers quoted. While the mark lives, a probe
of that pair and protocol whose port lies in [lowest - TRACE_PORTS_BELOW,
highest + TRACE_PORTS_ABOVE] that would be decided closed, filtered or
unknown (the last hops' port unreachables and RSTs, the unanswered probes
past a dropping hop) is decided ``TRACED`` instead, and refreshes the mark.
No rule counts ``TRACED``; the ``PM_TRACED`` counter does. A UDP scan with
a fixed TTL gets no time-exceeded answer and stays a scan; one that mixes in
low-TTL probes hides at most the ports of that window (256 above the
highest quoted port) per pair, and shows in the counter.
Every decision is written as one row of an *outcome batch* (same columns as
a packet batch: src = initiator, dst = responder, dport = port, ``outcome``
and an ``outcome`` code beside it), which the outcome rules (failed_connections, trw_scanner,
arp_sweep, ...) consume. The
kernel returns early when the outcome batch is full; the caller drains it
and resumes.

Timeouts use FIFOs of (slot, sent time): packet time is (nearly) monotonic,
so a queue is ordered and only its head is checked per row. A probe whose
slot was reused before its timeout is dropped from the queue silently (its
eviction is counted).

Under a spoofed flood that overflows the table. Each probe carries a weight,
the number of probes its initiator opened lately (``count_initiator``: a
count-min sketch of initiators, halved every INITIATOR_AGE_PROBES probes). A
full bucket gives up the probe of lowest weight, the oldest among equals; and
probes of weight HOT_WEIGHT or more wait for their timeout in a queue of their
own (``queue_timeout``). A flood's every source has opened one probe: its
probes are the ones evicted, and the ones whose timers the overflowing main
queue drops. A scanner hidden in the flood has opened many: its probes keep
their slots and their timers and reach the outcome rules (failed_connections,
stealth_scan, udp_scan, slow_scan, ...). Before, the oldest probe went first
and the queue, as long as the table, dropped the timer of every probe older
than one table's worth of probes, the scanner's too.

Memory (fixed): capacity * (40 B key + 8 B key hash + 8 B last seen + 8 B
sent time + 8 B weight + 1 B pin + 8 B row of state, initiator port and probe
flags + 16 B queue entry + 4 B of the busy initiators' queue) = 101 B per probe
slot (25.3 MiB at the default 262,144 slots), plus the initiator sketch
(2 x 131,072 uint16: 512 KiB) and the trace table: TRACE_SLOTS (1,024, 4-way) * (32 B pair + 8 B expiry +
24 B port range and protocol) = 64 KiB. A mark evicted early (more than
1,024 pairs traced within a hold) is counted (``PM_TRACE_EVICTIONS``).
"""
import numpy as np

from kernels.addr_table import (
    EMPTY, LOOKUP_EVICTED, LOOKUP_HIT, bucket_of, find_slot_hashed, hash_key,
    lookup_slot, lookup_slot_hashed, mix64, prefetch_bucket, slot_columns,
)
from kernels.batch import (
    PF_ARP, PF_HAS_ICMP, PF_HAS_INNER, PF_HAS_PORTS, PF_HAS_TCP_FLAGS, PF_INNER_HAS_PORTS,
    PF_IPV6, TH_ACK, TH_RST, TH_SYN, PacketBatch,
)
from kernels.jit import inline, kernel
from kernels.prefetch import prefetch

U0 = np.uint64(0)

# outcome codes written beside each outcome row
OUT_NONE = 0
OUT_OPEN = 1
OUT_CLOSED = 2
OUT_FILTERED = 3
OUT_UNKNOWN = 4
OUT_TRACED = 5          # part of a traceroute: counted by no rule
OUTCOME_NAMES = {OUT_OPEN: "open", OUT_CLOSED: "closed", OUT_FILTERED: "filtered",
                 OUT_UNKNOWN: "unknown", OUT_TRACED: "traced"}


def hot_queue_len(capacity):
    """Entries of the busy initiators' timeout queue for a table of ``capacity``."""
    return 64 + capacity // HOT_QUEUE_PER_SLOTS      # (linear: sensor/memory_budget.py)


class OutcomeBatch(PacketBatch):
    """A packet batch whose rows are decided probes, plus their outcome codes."""

    def __init__(self, capacity):
        super().__init__(capacity)
        self.outcome = np.zeros(self.capacity, np.uint8)

# probe states
ST_SENT = 1
ST_OPEN = 2
ST_ESTABLISHED = 3
ST_CLOSED = 4
ST_FILTERED = 5
ST_UNKNOWN = 6
ST_TRACED = 7
STATE_NAMES = {ST_SENT: "pending", ST_OPEN: "open", ST_ESTABLISHED: "open",
               ST_CLOSED: "closed", ST_FILTERED: "filtered", ST_UNKNOWN: "unknown",
               ST_TRACED: "traced"}

# meta counters
PM_HEAD = 0
PM_TAIL = 1
PM_REPLIES = 2          # replies matched to a probe (proves both directions are seen)
PM_BACKSCATTER_SYNACK = 3
PM_BACKSCATTER_RST = 4
PM_EVICTIONS = 5
PM_OPEN = 6
PM_CLOSED = 7
PM_FILTERED = 8
PM_UNKNOWN = 9
PM_PROBES = 10
PM_TIME_EXCEEDED = 11   # time-exceeded answers to a probe the table saw
PM_TRACED = 12          # probes decided TRACED (time exceeded, or of a traced pair)
PM_BACKSCATTER_ICMP = 13   # ICMP errors quoting no probe the table saw
PM_ICMP_MISQUOTED = 14  # ICMPv4 errors quoting IPv6, ICMPv6 errors quoting IPv4
PM_TRACE_UNTIL = 15     # latest expiry in the trace table (skip lookups past it)
PM_TRACE_EVICTIONS = 16 # live trace marks replaced by another pair's
PM_SKETCH_AGE = 17      # probes counted in the initiator sketch since it was last halved
PM_HOT_HEAD = 18        # the timeout queue of busy initiators' probes
PM_HOT_TAIL = 19
PM_QUEUE_DROPS = 20     # entries a full timeout queue dropped (their probes, if still
                        # waiting, lost their timers)
N_PMETA = 21

# params
PP_TIMEOUT_NS = 0
PP_WAYS = 1
PP_STALE_NS = 2
PP_TRACE_HOLD_NS = 3
PP_SEED = 4             # the hash seed of the last probe_update (expire_probes has none)
N_PPARAMS = 5

# protocol numbers of link-layer probes in a probe key's port word (above any IP protocol)
PROTO_ARP = 256
PROTO_NDP = 257

TRACE_SLOTS = 1024
TRACE_WAYS = 4
TRACE_PORTS_BELOW = 32     # a hop that did not answer before the first that did
TRACE_PORTS_ABOVE = 256    # traceroute: 30 hops x 3 probes past the last answering hop
TRACE_TAG = np.uint64(0x7472616365)     # fifth hash word of a trace key

# initiator sketch: how many probes each initiator opened lately (a count-min sketch of
# two rows, conservative update, halved every INITIATOR_AGE_PROBES probes). It is the
# weight by which a full bucket chooses its victim, and it sends the probes of busy
# initiators (HOT_WEIGHT or more) to a timeout queue of their own
INITIATOR_BITS = 17                     # 2 x 131,072 uint16 counters: 512 KiB
INITIATOR_WIDTH = 1 << INITIATOR_BITS
INITIATOR_MASK = np.uint64(INITIATOR_WIDTH - 1)
INITIATOR_MAX = 0xFFFF
INITIATOR_AGE_PROBES = 1 << 18
INITIATOR_SALT = np.uint64(0x1A17A7012)
HOT_WEIGHT = 16           # well above a spoofed flood's noise in the sketch (~2-4)
HOT_QUEUE_PER_SLOTS = 4   # the busy initiators' queue: one entry per 4 table slots


class ProbeState:
    def __init__(self, capacity, ways, timeout_ns):
        self.keys = np.zeros((capacity, 5), np.uint64)
        self.fps = np.zeros(capacity, np.uint64)          # hash of each key
        self.last_seen_ns = np.full(capacity, EMPTY, np.int64)
        self.pinned = np.zeros(capacity, np.uint8)        # probes are never pinned
        self.sent_ns = np.zeros(capacity, np.int64)
        # one 8-byte row per slot for what is read after the lookup
        row = slot_columns(capacity, ("state", "sport", "pflags", "spare"), np.uint16)
        self.state = row["state"]
        self.sport = row["sport"]        # initiator port of the last attempt
        self.pflags = row["pflags"]      # TCP flags of the probe (0 for UDP)
        # ARP/NDP probes have no ports or flags: sport, pflags and spare hold the
        # requester's 48-bit MAC instead (``l2_mac``)
        self.spare = row["spare"]
        self.fifo_slot = np.zeros(capacity, np.int64)
        self.fifo_ts = np.zeros(capacity, np.int64)
        self.meta = np.zeros(N_PMETA, np.int64)
        self.params = np.zeros(N_PPARAMS, np.int64)
        self.params[PP_TIMEOUT_NS] = timeout_ns
        self.params[PP_WAYS] = ways
        # a decided probe may be reused after this long without packets
        self.params[PP_STALE_NS] = max(timeout_ns, 1) * 12
        self.params[PP_TRACE_HOLD_NS] = max(timeout_ns, 1) * 3
        # pairs being traced: (initiator, responder), expiry, [lowest port, highest, proto]
        self.trace_keys = np.zeros((TRACE_SLOTS, 4), np.uint64)
        self.trace_until_ns = np.full(TRACE_SLOTS, EMPTY, np.int64)
        self.trace_ports = np.zeros((TRACE_SLOTS, 3), np.int64)
        # scratch: the key hashes of the rows ahead, computed once for their prefetch
        # and used again by their lookup (probe_update); nothing to save
        self.hash_ring = np.zeros((2, HASH_RING), np.uint64)   # key hash, initiator hash
        # eviction weight of each probe: its initiator's count when it was opened
        self.weight = np.zeros(capacity, np.int64)
        self.initiator_sketch = np.zeros(2 << INITIATOR_BITS, np.uint16)   # two rows
        # the timeout queue of probes of busy initiators (weight >= HOT_WEIGHT)
        self.hot_slot = np.zeros(hot_queue_len(capacity), np.int64)
        self.hot_ts = np.zeros(hot_queue_len(capacity), np.int64)
        # the main queue's tail when each entry was queued: the two queues are taken
        # in the order the probes were opened, as one queue would be
        self.hot_mark = np.zeros(hot_queue_len(capacity), np.int64)

    @property
    def arrays(self):
        return (self.keys, self.last_seen_ns, self.pinned, self.sent_ns, self.state,
                self.fifo_slot, self.fifo_ts, self.meta, self.params, self.sport, self.pflags,
                self.fps, self.trace_keys, self.trace_until_ns, self.trace_ports, self.spare,
                self.weight, self.initiator_sketch, self.hot_slot, self.hot_ts, self.hot_mark)

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


@inline
def is_v4(hi, lo):
    """An IPv4 address in the kernels' IPv4-mapped form."""
    return hi == U0 and (lo >> np.uint64(32)) == np.uint64(0xFFFF)


@inline
def port_word(port, proto):
    return np.uint64(port) | (np.uint64(proto) << np.uint64(16))


@inline
def emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot, outcome):
    """Write one outcome row; returns the next free row."""
    if np.int64(keys[slot, 4] >> np.uint64(16)) >= PROTO_ARP:
        return emit_l2(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot, outcome)
    o_ts = out[0]
    o_src_hi = out[1]
    o_src_lo = out[2]
    o_dst_hi = out[3]
    o_dst_lo = out[4]
    o_sport = out[5]
    o_dport = out[6]
    o_proto = out[7]
    o_tcp_flags = out[8]
    o_pkt_flags = out[11]
    word = keys[slot, 4]
    o_ts[orow] = ts
    o_src_hi[orow] = keys[slot, 0]
    o_src_lo[orow] = keys[slot, 1]
    o_dst_hi[orow] = keys[slot, 2]
    o_dst_lo[orow] = keys[slot, 3]
    o_sport[orow] = sport_a[slot]       # the initiator's port
    o_dport[orow] = np.int64(word & np.uint64(0xFFFF))
    o_proto[orow] = np.int64(word >> np.uint64(16))
    o_tcp_flags[orow] = pflags[slot]
    o_pkt_flags[orow] = PF_HAS_PORTS
    out_code[orow] = outcome
    return orow + 1


@inline
def emit_l2(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot, outcome):
    """The outcome row of an ARP or NDP probe: shaped like the request's packet row
    (ARP: PF_ARP, proto 0, icmp_type 1; NDP: ICMPv6 135), dst = the target address,
    inner_src_lo = the requester's MAC, no ports."""
    o_inner_src_hi = out[13]
    o_inner_src_lo = out[14]
    ndp = np.int64(keys[slot, 4] >> np.uint64(16)) == PROTO_NDP
    out[0][orow] = ts
    out[1][orow] = keys[slot, 0]
    out[2][orow] = keys[slot, 1]
    out[3][orow] = keys[slot, 2]
    out[4][orow] = keys[slot, 3]
    out[5][orow] = 0
    out[6][orow] = 0
    out[7][orow] = 58 if ndp else 0
    out[8][orow] = 0
    out[9][orow] = 135 if ndp else 1
    out[10][orow] = 0
    out[11][orow] = (PF_HAS_ICMP | PF_IPV6) if ndp else PF_ARP
    o_inner_src_hi[orow] = U0
    o_inner_src_lo[orow] = l2_mac(sport_a, pflags, spare, slot)
    out_code[orow] = outcome
    return orow + 1


@inline
def l2_mac(sport_a, pflags, spare, slot):
    """The requester's MAC of an ARP/NDP probe (48 bits in three uint16 columns)."""
    return ((np.uint64(sport_a[slot]) << np.uint64(32)) | (np.uint64(pflags[slot]) << np.uint64(16))
            | np.uint64(spare[slot]))


@inline
def initiator_hash(i_hi, i_lo, seed):
    return mix64(mix64(i_hi ^ (seed + INITIATOR_SALT)) ^ i_lo)


@inline
def initiator_counters(h):
    """The initiator's two counters in the (flat, two-row) sketch."""
    return (np.int64(h & INITIATOR_MASK),
            INITIATOR_WIDTH + np.int64((h >> np.uint64(32)) & INITIATOR_MASK))


@inline
def count_initiator(isketch, meta, h):
    """One more probe of the initiator whose ``initiator_hash`` is ``h``: its count in
    the sketch (conservative update: only the smaller of its two counters grows),
    which is returned. Every INITIATOR_AGE_PROBES probes every counter is halved,
    so the counts say "lately"."""
    a, b = initiator_counters(h)
    c = min(np.int64(isketch[a]), np.int64(isketch[b]))
    if c < INITIATOR_MAX:
        c += 1
        if isketch[a] < c:
            isketch[a] = c
        if isketch[b] < c:
            isketch[b] = c
    meta[PM_SKETCH_AGE] += 1
    if meta[PM_SKETCH_AGE] >= INITIATOR_AGE_PROBES:
        meta[PM_SKETCH_AGE] = 0
        for k in range(isketch.shape[0]):
            isketch[k] >>= 1
    return c


@inline
def queue_timeout(st, slot, ts):
    """Queue probe ``slot`` (opened at ``ts``, its weight set) for its timeout: in the
    busy initiators' queue if its weight is HOT_WEIGHT or more, else in the main one.
    A full queue drops its oldest entry: that probe, if still waiting, loses its
    timer (PM_QUEUE_DROPS counts the entries dropped). Under a spoofed flood the main
    queue overflows and its probes lose their timers (they are the first evicted
    too), while a scanner's probes, in the other queue, time out as they should."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    if weight[slot] >= HOT_WEIGHT:
        cap = hot_slot.shape[0]
        if meta[PM_HOT_TAIL] - meta[PM_HOT_HEAD] >= cap:
            drop_oldest(meta, np.int64(PM_HOT_HEAD))
        at = meta[PM_HOT_TAIL] % cap
        hot_slot[at] = slot
        hot_ts[at] = ts
        hot_mark[at] = meta[PM_TAIL]
        meta[PM_HOT_TAIL] += 1
    else:
        cap = fifo_slot.shape[0]
        if meta[PM_TAIL] - meta[PM_HEAD] >= cap:
            drop_oldest(meta, np.int64(PM_HEAD))
        fifo_slot[meta[PM_TAIL] % cap] = slot
        fifo_ts[meta[PM_TAIL] % cap] = ts
        meta[PM_TAIL] += 1


@inline
def drop_oldest(meta, head):
    """A full queue: its oldest entry goes (its probe, if still waiting, loses its
    timer; not looked up, which would cost a cache miss per probe of a flood)."""
    meta[head] += 1
    meta[PM_QUEUE_DROPS] += 1


@inline
def due_queue(fifo_ts, hot_ts, hot_mark, meta, timeout_ns, now_ns):
    """The queue whose head is the probe opened first, if its timeout passed by
    ``now_ns`` (0: none, 1: the main queue, 2: the busy initiators'), so the two are
    taken exactly as one queue of every probe would be."""
    main = meta[PM_HEAD] < meta[PM_TAIL]
    if meta[PM_HOT_HEAD] < meta[PM_HOT_TAIL]:
        h = meta[PM_HOT_HEAD] % hot_ts.shape[0]
        if not main or hot_mark[h] <= meta[PM_HEAD]:
            return 2 if hot_ts[h] + timeout_ns <= now_ns else 0
    if main:
        return 1 if fifo_ts[meta[PM_HEAD] % fifo_ts.shape[0]] + timeout_ns <= now_ns else 0
    return 0


@inline
def open_l2_probe(st, i_hi, i_lo, r_hi, r_lo, word, mac, ts, seed):
    """An ARP request or neighbour solicitation from I for R: a probe of R, waiting
    for R's reply. A repeat while waiting is a retransmission; one after the
    probe was decided asks again (a new probe)."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    found, slot = find_slot_hashed(fps, keys, last_seen_ns, pinned, weight, i_hi, i_lo, r_hi,
                                   r_lo, word, ts, params[PP_STALE_NS], params[PP_WAYS],
                                   hash_key(i_hi, i_lo, r_hi, r_lo, word, seed), False)
    if found == LOOKUP_EVICTED:
        meta[PM_EVICTIONS] += 1
    if found == LOOKUP_HIT:
        last_seen_ns[slot] = max(last_seen_ns[slot], ts)
        if state[slot] == ST_SENT:
            return
    weight[slot] = count_initiator(isketch, meta, initiator_hash(i_hi, i_lo, seed))
    state[slot] = ST_SENT
    sent_ns[slot] = ts
    sport_a[slot] = np.uint16((mac >> np.uint64(32)) & np.uint64(0xFFFF))
    pflags[slot] = np.uint16((mac >> np.uint64(16)) & np.uint64(0xFFFF))
    spare[slot] = np.uint16(mac & np.uint64(0xFFFF))
    meta[PM_PROBES] += 1
    queue_timeout(st, slot, ts)


@inline
def answer_l2(st, i_hi, i_lo, r_hi, r_lo, word, ts, out, out_code, orow, seed):
    """An ARP reply or neighbour advertisement from R to I: the probe is open
    (the host is there). Returns the next outcome row."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    slot = lookup_slot(fps, keys, last_seen_ns, i_hi, i_lo, r_hi, r_lo, word, params[PP_WAYS],
                       seed)
    if slot < 0:
        return orow             # unsolicited (gratuitous, or its request was not seen)
    last_seen_ns[slot] = max(last_seen_ns[slot], ts)
    if state[slot] != ST_SENT:
        return orow
    meta[PM_REPLIES] += 1
    return emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot,
                decide(state, meta, slot, np.int64(ST_OPEN)))


@inline
def decide(state, meta, slot, new_state):
    state[slot] = new_state
    if new_state == ST_OPEN:
        meta[PM_OPEN] += 1
        return OUT_OPEN
    if new_state == ST_CLOSED:
        meta[PM_CLOSED] += 1
        return OUT_CLOSED
    if new_state == ST_FILTERED:
        meta[PM_FILTERED] += 1
        return OUT_FILTERED
    if new_state == ST_TRACED:
        meta[PM_TRACED] += 1
        return OUT_TRACED
    meta[PM_UNKNOWN] += 1
    return OUT_UNKNOWN


@inline
def trace_find(tkeys, tuntil, i_hi, i_lo, r_hi, r_lo, seed):
    """Trace-table slot of pair (initiator, responder), live or expired, or -1."""
    base = bucket_of(hash_key(i_hi, i_lo, r_hi, r_lo, TRACE_TAG, seed),
                     tkeys.shape[0] // TRACE_WAYS) * TRACE_WAYS
    for w in range(TRACE_WAYS):
        s = base + w
        if (tuntil[s] != EMPTY and tkeys[s, 0] == i_hi and tkeys[s, 1] == i_lo
                and tkeys[s, 2] == r_hi and tkeys[s, 3] == r_lo):
            return s
    return -1


@inline
def trace_mark(tkeys, tuntil, tports, meta, i_hi, i_lo, r_hi, r_lo, word, ts, hold_ns, seed):
    """A time-exceeded answer to the probe of pair (i, r) with port word ``word``:
    mark the pair traced until ``ts + hold_ns``, widening its port range."""
    port = np.int64(word & np.uint64(0xFFFF))
    proto = np.int64(word >> np.uint64(16))
    s = trace_find(tkeys, tuntil, i_hi, i_lo, r_hi, r_lo, seed)
    if s < 0:
        base = bucket_of(hash_key(i_hi, i_lo, r_hi, r_lo, TRACE_TAG, seed),
                         tkeys.shape[0] // TRACE_WAYS) * TRACE_WAYS
        s = base
        for w in range(1, TRACE_WAYS):
            if tuntil[base + w] < tuntil[s]:
                s = base + w
        if tuntil[s] != EMPTY and tuntil[s] >= ts:
            meta[PM_TRACE_EVICTIONS] += 1
        tkeys[s, 0] = i_hi
        tkeys[s, 1] = i_lo
        tkeys[s, 2] = r_hi
        tkeys[s, 3] = r_lo
        tuntil[s] = EMPTY
    if tuntil[s] < ts or tports[s, 2] != proto:
        tports[s, 0] = port       # a new trace of this pair
        tports[s, 1] = port
        tports[s, 2] = proto
    else:
        tports[s, 0] = min(tports[s, 0], port)
        tports[s, 1] = max(tports[s, 1], port)
    tuntil[s] = max(tuntil[s], ts + hold_ns)
    meta[PM_TRACE_UNTIL] = max(meta[PM_TRACE_UNTIL], tuntil[s])


@inline
def trace_excuses(tkeys, tuntil, tports, meta, keys, slot, ts, hold_ns, seed):
    """True if probe ``slot``, decided at ``ts``, belongs to a pair being traced
    (and its port to the trace's window); refreshes the mark."""
    if ts > meta[PM_TRACE_UNTIL]:
        return False
    s = trace_find(tkeys, tuntil, keys[slot, 0], keys[slot, 1], keys[slot, 2], keys[slot, 3],
                   seed)
    if s < 0 or tuntil[s] < ts:
        return False
    word = keys[slot, 4]
    port = np.int64(word & np.uint64(0xFFFF))
    if (np.int64(word >> np.uint64(16)) != tports[s, 2] or port < tports[s, 0] - TRACE_PORTS_BELOW
            or port > tports[s, 1] + TRACE_PORTS_ABOVE):
        return False
    tuntil[s] = max(tuntil[s], ts + hold_ns)
    meta[PM_TRACE_UNTIL] = max(meta[PM_TRACE_UNTIL], tuntil[s])
    return True


@inline
def settle(st, slot, verdict, ts, seed):
    """Decide probe ``slot`` as ``verdict`` at ``ts``; a failure (closed, filtered,
    unknown) of a pair being traced is decided TRACED. Returns the outcome code."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    if verdict != ST_OPEN and verdict != ST_TRACED and trace_excuses(
            tkeys, tuntil, tports, meta, keys, slot, ts, params[PP_TRACE_HOLD_NS], seed):
        verdict = ST_TRACED
    return decide(state, meta, slot, verdict)


@inline
def open_probe(st, i_hi, i_lo, r_hi, r_lo, word, sport, flags, ts, h, h_init):
    """A probe (TCP SYN, UDP datagram, or stealth segment with its ``flags``); ``h``:
    the hash of its key (``hash_key``), ``h_init`` its initiator's
    (``initiator_hash``)."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    # probes are never pinned: the bucket scan skips the pin bytes; a full bucket gives
    # up the probe whose initiator opened the fewest lately (``count_initiator``)
    found, slot = find_slot_hashed(fps, keys, last_seen_ns, pinned, weight, i_hi, i_lo, r_hi,
                                   r_lo, word, ts, params[PP_STALE_NS], params[PP_WAYS], h, False)
    if found == LOOKUP_EVICTED:
        meta[PM_EVICTIONS] += 1
    if found == LOOKUP_HIT and state[slot] != 0:
        last_seen_ns[slot] = max(last_seen_ns[slot], ts)
        if state[slot] == ST_SENT or sport_a[slot] == sport:
            return      # still waiting, or a retransmission of a decided attempt
    if h_init == U0:        # not hashed ahead (only SYNs are)
        h_init = initiator_hash(i_hi, i_lo, np.uint64(params[PP_SEED]))
    weight[slot] = count_initiator(isketch, meta, h_init)
    state[slot] = ST_SENT
    sent_ns[slot] = ts
    sport_a[slot] = sport
    pflags[slot] = flags
    meta[PM_PROBES] += 1
    queue_timeout(st, slot, ts)


@kernel
def expire_probes(st, now_ns, out, out_code, orow):
    """Decide probes whose timeout passed by ``now_ns``. Returns the next outcome row."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    return expire(st, now_ns, out, out_code, orow, np.uint64(params[PP_SEED]))


@inline
def expire(st, now_ns, out, out_code, orow, seed):
    """Decide the probes whose timeout passed by ``now_ns``, from both queues in the
    order of their timeouts. Returns the next outcome row."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    timeout_ns = params[PP_TIMEOUT_NS]
    out_cap = out[0].shape[0]
    while orow < out_cap:
        which = due_queue(fifo_ts, hot_ts, hot_mark, meta, timeout_ns, now_ns)
        if which == 0:
            break
        if which == 1:
            h = meta[PM_HEAD] % fifo_slot.shape[0]
            slot = fifo_slot[h]
            sent = fifo_ts[h]
            meta[PM_HEAD] += 1
        else:
            h = meta[PM_HOT_HEAD] % hot_slot.shape[0]
            slot = hot_slot[h]
            sent = hot_ts[h]
            meta[PM_HOT_HEAD] += 1
        if state[slot] == ST_SENT and sent_ns[slot] == sent:
            verdict = ST_FILTERED if meta[PM_REPLIES] > 0 else ST_UNKNOWN
            at = sent + timeout_ns
            outcome = settle(st, slot, verdict, at, seed)
            orow = emit(out, out_code, orow, at, keys, pflags, sport_a, spare, slot, outcome)
    return orow


PREFETCH_AHEAD = 6     # rows between a bucket prefetch and its lookup
HASH_RING = 8          # > PREFETCH_AHEAD, a power of two
RING_MASK = HASH_RING - 1


@inline
def opens_probe(pf, f):
    """The row is a TCP segment with SYN but not ACK or RST: it opens a probe (its
    source is the initiator) unless it repeats one."""
    return (pf & PF_HAS_TCP_FLAGS) != 0 and (f & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN


@inline
def row_probe_hash(pf, proto, f, src_hi, src_lo, dst_hi, dst_lo, sport, dport, seed):
    """Hash of the probe key a row will most likely look up (0: none): the
    reversed key for a TCP reply, the forward key otherwise."""
    if (pf & PF_HAS_TCP_FLAGS) != 0:
        if (f & TH_RST) != 0 or (f & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
            return hash_key(dst_hi, dst_lo, src_hi, src_lo, port_word(sport, 6), seed)
        return hash_key(src_hi, src_lo, dst_hi, dst_lo, port_word(dport, 6), seed)
    if proto == 17 and (pf & PF_HAS_PORTS) != 0:
        return hash_key(src_hi, src_lo, dst_hi, dst_lo, port_word(dport, 17), seed)
    return U0


@kernel
def probe_update(cols, start, n, st, seed, out, out_code, orow, ring):
    """Feed rows [start, n); write outcome rows from ``orow``. ``ring``: the probe
    table's ``hash_ring`` (scratch: key and initiator hashes of the rows ahead).

    Returns (next_row, next_outcome_row). Stops early when the outcome batch
    has fewer than 2 free rows.

    Each row's likely key (``row_probe_hash``) is hashed once, PREFETCH_AHEAD
    rows early, to prefetch its bucket; the hash waits in ``ring`` for the row's
    own lookup.
    """
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    timeout_ns = params[PP_TIMEOUT_NS]
    ways = params[PP_WAYS]
    params[PP_SEED] = np.int64(seed)
    out_cap = out[0].shape[0]
    ts_col = cols[0]
    src_hi = cols[1]
    src_lo = cols[2]
    dst_hi = cols[3]
    dst_lo = cols[4]
    sport_c = cols[5]
    dport_c = cols[6]
    proto_c = cols[7]
    tcp_flags = cols[8]
    icmp_type = cols[9]
    icmp_code = cols[10]
    pkt_flags = cols[11]
    inner_proto = cols[12]
    for j in range(start, min(n, start + PREFETCH_AHEAD)):
        ring[0, j & RING_MASK] = row_probe_hash(pkt_flags[j], proto_c[j], tcp_flags[j],
                                                src_hi[j], src_lo[j], dst_hi[j], dst_lo[j],
                                                sport_c[j], dport_c[j], seed)
        ring[1, j & RING_MASK] = U0
    for i in range(start, n):
        if out_cap - orow < 2:
            return i, orow
        j = i + PREFETCH_AHEAD
        if j < n:
            h = row_probe_hash(pkt_flags[j], proto_c[j], tcp_flags[j], src_hi[j], src_lo[j],
                               dst_hi[j], dst_lo[j], sport_c[j], dport_c[j], seed)
            ring[0, j & RING_MASK] = h
            if h != U0:
                prefetch_bucket(fps, last_seen_ns, weight, h, ways)
            ring[1, j & RING_MASK] = U0          # (open_probe hashes it if need be)
            if opens_probe(pkt_flags[j], tcp_flags[j]):
                # a SYN opens a probe: its initiator's counters are wanted too
                h_init = initiator_hash(src_hi[j], src_lo[j], seed)
                ring[1, j & RING_MASK] = h_init
                a, b = initiator_counters(h_init)
                prefetch(isketch, a)
                prefetch(isketch, b)
        h_row = ring[0, i & RING_MASK]      # this row's likely key (row_probe_hash)
        h_init = ring[1, i & RING_MASK]     # a SYN's initiator_hash (else 0)
        ts = ts_col[i]
        if due_queue(fifo_ts, hot_ts, hot_mark, meta, timeout_ns, ts) != 0:
            orow = expire(st, ts, out, out_code, orow, seed)
        if out_cap - orow < 2:
            return i, orow
        pf = pkt_flags[i]
        proto = np.int64(proto_c[i])
        if (pf & PF_HAS_TCP_FLAGS) != 0:
            f = tcp_flags[i]
            syn = (f & TH_SYN) != 0
            ack = (f & TH_ACK) != 0
            rst = (f & TH_RST) != 0
            if syn and not ack and not rst:
                open_probe(st, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                           port_word(dport_c[i], 6), sport_c[i], f, ts, h_row, h_init)
                continue
            if not syn and not ack and not rst:
                # FIN, NULL, Xmas: no real connection sends these
                open_probe(st, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                           port_word(dport_c[i], 6), sport_c[i], f, ts, h_row, h_init)
                continue
            if (syn and ack) or rst:
                # a reply from the responder: look up the probe it answers
                slot = lookup_slot_hashed(fps, keys, last_seen_ns, dst_hi[i], dst_lo[i],
                                          src_hi[i], src_lo[i], port_word(sport_c[i], 6), ways,
                                          h_row)
                if slot < 0:
                    if rst:
                        # the initiator's own RST (e.g. nmap -sS after a SYN-ACK) is no reply
                        if lookup_slot(fps, keys, last_seen_ns, src_hi[i], src_lo[i], dst_hi[i],
                                       dst_lo[i], port_word(dport_c[i], 6), ways, seed) < 0:
                            meta[PM_BACKSCATTER_RST] += 1
                    else:
                        meta[PM_BACKSCATTER_SYNACK] += 1
                    continue
                last_seen_ns[slot] = max(last_seen_ns[slot], ts)
                if state[slot] == ST_SENT or state[slot] == ST_FILTERED or state[slot] == ST_UNKNOWN:
                    meta[PM_REPLIES] += 1
                    verdict = ST_CLOSED if rst else ST_OPEN
                    if state[slot] != ST_SENT:
                        # a late answer corrects a timeout verdict
                        if state[slot] == ST_FILTERED:
                            meta[PM_FILTERED] -= 1
                        else:
                            meta[PM_UNKNOWN] -= 1
                    orow = emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot,
                                settle(st, slot, verdict, ts, seed))
                continue
            # ACK without SYN/RST: part of a flow we know, or an ACK/Maimon probe
            slot = lookup_slot_hashed(fps, keys, last_seen_ns, src_hi[i], src_lo[i], dst_hi[i],
                                      dst_lo[i], port_word(dport_c[i], 6), ways, h_row)
            if slot >= 0 and (sport_a[slot] == sport_c[i] or state[slot] == ST_SENT):
                last_seen_ns[slot] = max(last_seen_ns[slot], ts)
                if state[slot] == ST_OPEN:
                    state[slot] = ST_ESTABLISHED
                continue
            if slot >= 0:
                # a decided probe to this port, from another initiator port: a new probe
                open_probe(st, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                           port_word(dport_c[i], 6), sport_c[i], f, ts, h_row, h_init)
                continue
            slot = lookup_slot(fps, keys, last_seen_ns, dst_hi[i], dst_lo[i], src_hi[i],
                               src_lo[i], port_word(sport_c[i], 6), ways, seed)
            if slot >= 0:
                last_seen_ns[slot] = max(last_seen_ns[slot], ts)
                if state[slot] == ST_SENT and (pflags[slot] & TH_ACK) != 0:
                    state[slot] = ST_ESTABLISHED     # answered, not reset: an ongoing flow
                continue
            open_probe(st, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                       port_word(dport_c[i], 6), sport_c[i], f, ts, h_row, h_init)
            continue
        if proto == 17 and (pf & PF_HAS_PORTS) != 0:
            # a reply to an earlier datagram?
            slot = lookup_slot(fps, keys, last_seen_ns, dst_hi[i], dst_lo[i], src_hi[i], src_lo[i],
                               port_word(sport_c[i], 17), ways, seed)
            if slot >= 0:
                last_seen_ns[slot] = max(last_seen_ns[slot], ts)
                if state[slot] == ST_SENT:
                    meta[PM_REPLIES] += 1
                    orow = emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot,
                                decide(state, meta, slot, np.int64(ST_OPEN)))
                continue
            open_probe(st, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i],
                       port_word(dport_c[i], 17), sport_c[i], np.uint8(0), ts, h_row, h_init)
            continue
        if (pf & PF_ARP) != 0:
            # ARP: src/dst = sender/target protocol address, icmp_type = opcode
            s_lo = src_lo[i]
            t_lo = dst_lo[i]
            if s_lo == t_lo or (s_lo & np.uint64(0xFFFFFFFF)) == U0:
                continue        # gratuitous ARP / announcement, or a DAD probe (RFC 5227)
            if icmp_type[i] == 1:
                open_l2_probe(st, src_hi[i], s_lo, dst_hi[i], t_lo, port_word(0, PROTO_ARP),
                              cols[14][i], ts, seed)
            else:
                orow = answer_l2(st, dst_hi[i], t_lo, src_hi[i], s_lo, port_word(0, PROTO_ARP),
                                 ts, out, out_code, orow, seed)
            continue
        if proto == 58 and (pf & PF_HAS_ICMP) != 0 and (icmp_type[i] == 135
                                                        or icmp_type[i] == 136):
            # neighbour solicitation / advertisement: the target address in inner_dst
            t_hi = cols[15][i]
            t_lo = cols[16][i]
            if icmp_type[i] == 135:
                if (src_hi[i] == U0 and src_lo[i] == U0) or (src_hi[i] == t_hi
                                                             and src_lo[i] == t_lo):
                    continue    # DAD (from ::), or a node asking for itself
                open_l2_probe(st, src_hi[i], src_lo[i], t_hi, t_lo, port_word(0, PROTO_NDP),
                              cols[14][i], ts, seed)
            else:
                orow = answer_l2(st, dst_hi[i], dst_lo[i], t_hi, t_lo, port_word(0, PROTO_NDP),
                                 ts, out, out_code, orow, seed)
            continue
        need = PF_HAS_ICMP | PF_HAS_INNER | PF_INNER_HAS_PORTS
        if (pf & need) == need:
            t = icmp_type[i]
            c = icmp_code[i]
            iproto = np.int64(inner_proto[i])
            is_hi = cols[13][i]
            is_lo = cols[14][i]
            id_hi = cols[15][i]
            id_lo = cols[16][i]
            if (proto == 1) != (is_v4(is_hi, is_lo) and is_v4(id_hi, id_lo)) or (
                    proto == 58 and (is_v4(is_hi, is_lo) or is_v4(id_hi, id_lo))):
                meta[PM_ICMP_MISQUOTED] += 1      # the other IP version quoted
                continue
            if ((proto == 1 and t == 11) or (proto == 58 and t == 3)) and c == 0:
                # time exceeded: the probe's TTL ran out on the way (traceroute)
                word = port_word(cols[18][i], iproto)
                slot = lookup_slot(fps, keys, last_seen_ns, is_hi, is_lo, id_hi, id_lo, word,
                                   ways, seed)
                if slot < 0:
                    meta[PM_BACKSCATTER_ICMP] += 1
                    continue
                last_seen_ns[slot] = max(last_seen_ns[slot], ts)
                meta[PM_TIME_EXCEEDED] += 1
                trace_mark(tkeys, tuntil, tports, meta, is_hi, is_lo, id_hi, id_lo, word, ts,
                           params[PP_TRACE_HOLD_NS], seed)
                if state[slot] == ST_SENT:
                    meta[PM_REPLIES] += 1
                    orow = emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot,
                                decide(state, meta, slot, np.int64(ST_TRACED)))
                continue
            if proto == 1 and t == 3:
                if c == 3:
                    verdict = ST_CLOSED if iproto == 17 else ST_FILTERED
                elif c == 1 or c == 0 or c == 9 or c == 10 or c == 13:
                    verdict = ST_FILTERED
                else:
                    continue
            elif proto == 58 and t == 1:
                if c == 4:
                    verdict = ST_CLOSED if iproto == 17 else ST_FILTERED
                elif c == 1 or c == 3 or c == 0:
                    verdict = ST_FILTERED
                else:
                    continue
            else:
                continue
            slot = lookup_slot(fps, keys, last_seen_ns, is_hi, is_lo, id_hi, id_lo,
                               port_word(cols[18][i], iproto), ways, seed)
            if slot < 0:
                meta[PM_BACKSCATTER_ICMP] += 1      # answers no probe: forged, or backscatter
                continue
            last_seen_ns[slot] = max(last_seen_ns[slot], ts)
            if state[slot] == ST_SENT:
                meta[PM_REPLIES] += 1
                orow = emit(out, out_code, orow, ts, keys, pflags, sport_a, spare, slot,
                            settle(st, slot, verdict, ts, seed))
    return n, orow


@kernel
def outcomes_of(st, k0, k1, t0, t1, by_target, port, proto, stealth, open_ports, probed):
    """Outcome counts of the probes by initiator (k0, k1) -- only to target (t0, t1)
    if ``by_target``, only to ``port`` if >= 0, only of ``proto`` if > 0 -- as
    (open, closed, filtered, unknown, pending, n_open), counting connection attempts
    (TCP SYN, UDP) or, if ``stealth``, stealth probes. Open ports are written to
    ``open_ports`` (up to its length); ``probed[port]`` (uint8[65536]) is set to 1 for
    the port of every such probe but the traced ones. Scans the whole table: called
    per alert."""
    (keys, last_seen_ns, pinned, sent_ns, state, fifo_slot, fifo_ts, meta, params, sport_a,
     pflags, fps, tkeys, tuntil, tports, spare, weight, isketch, hot_slot, hot_ts,
     hot_mark) = st
    n_open = 0
    n_closed = 0
    n_filtered = 0
    n_unknown = 0
    n_pending = 0
    n_ports = 0
    for s in range(keys.shape[0]):
        if last_seen_ns[s] == EMPTY or keys[s, 0] != k0 or keys[s, 1] != k1:
            continue
        if by_target and (keys[s, 2] != t0 or keys[s, 3] != t1):
            continue
        word = keys[s, 4]
        if port >= 0 and np.int64(word & np.uint64(0xFFFF)) != port:
            continue
        wproto = np.int64(word >> np.uint64(16))
        if (proto > 0 and wproto != proto) or (proto == 0 and wproto >= PROTO_ARP):
            continue
        is_stealth = np.int64(word >> np.uint64(16)) == 6 and pflags[s] != TH_SYN
        if is_stealth != stealth:
            continue
        st_ = state[s]
        if st_ != ST_TRACED:
            probed[np.int64(word & np.uint64(0xFFFF))] = 1
        if st_ == ST_OPEN or st_ == ST_ESTABLISHED:
            n_open += 1
            if n_ports < open_ports.shape[0]:
                open_ports[n_ports] = np.int64(keys[s, 4] & np.uint64(0xFFFF))
            n_ports += 1
        elif st_ == ST_CLOSED:
            n_closed += 1
        elif st_ == ST_FILTERED:
            n_filtered += 1
        elif st_ == ST_UNKNOWN:
            n_unknown += 1
        elif st_ == ST_SENT:
            n_pending += 1
    return n_open, n_closed, n_filtered, n_unknown, n_pending, n_ports
