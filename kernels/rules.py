"""Which rows each rule counts, under which key, and what each row adds.

Every rule is a *mode* of one of two counter kernels:

* port-set rules (``kernels/port_set.py``): a key collects distinct
  destination ports (exact 65,536-bit bitmaps) or, for exposed_host_probe,
  attempts;
* host-set rules (``kernels/host_set.py``): a key collects distinct hosts
  (or host+port pairs).

failed_connections, trw_scanner, stealth_scan, udp_scan, exposed_host_probe,
arp_sweep, ndp_sweep (and host_sweep / port_sweep unless ``count_open``) read *outcome rows*
(``kernels/probes.py``: src = initiator, dst = responder, sport = initiator
port, dport = port, with an outcome code) instead of packets. No rule counts
the ``traced`` outcome (probes of a traceroute).

``select_*`` decide for one row whether the rule counts it and return the
key words, the item, the *prober* (the side doing the scanning) and the
*target*. The prober is the source of a packet row, and the initiator of an
outcome row (replies are matched to their probes by the probe table). Direction is from the prober's point of view:

  internal  prober and target both in home_net
  outbound  prober in home_net, target outside
  inbound   prober outside, target in home_net
  external  neither in home_net

Common filters: probers in the allow-list or special (loopback/unspecified)
are never counted; targets in the ignore-list and ignored ports never count.
"""
import numpy as np

from kernels.batch import (
    PF_ARP, PF_HAS_ICMP, PF_HAS_TCP_FLAGS, TH_ACK, TH_FIN, TH_PUSH, TH_RST, TH_SYN, TH_URG,
)
from kernels.classify import (
    C_DPORT_IGNORED, C_DST_HOME, C_DST_IGNORED, C_DST_EXPOSED, C_SRC_ALLOWED, C_SRC_HOME,
    C_SRC_SPECIAL,
)
from kernels.jit import inline

# port-set modes
PS_PORT_SCAN = 0        # TCP SYN probes; key = prober (scope source) or prober+target (scope pair)
PS_EXPOSED_PROBE = 1    # decided TCP attempts (outcome rows) to exposed hosts from outside
PS_STEALTH = 2          # stealth probes (outcome rows): FIN, NULL, Xmas; ACK, Maimon if reset
PS_UDP_PROBES = 3       # decided UDP probes (outcome rows) not answered by UDP: closed,
                        # filtered or unknown; the initiator port is also checked against
                        # the excluded ports (a datagram from a service port is a reply)

# host-set modes
HS_HOST_SWEEP = 0       # TCP SYN probes; key = prober + port; item = target
HS_PORT_SWEEP = 1       # TCP SYN probes; key = port; item = target; contributors = probers
HS_ICMP_SWEEP = 2       # ICMP/ICMPv6 echo requests; key = prober; item = target
HS_FAILED = 3           # probe outcomes closed/filtered; key = prober; item = target + port
HS_TRW = 4              # probe outcomes; key = prober; item = target (first contacts)
HS_ARP_SWEEP = 5        # ARP requests unanswered (outcome rows); key = sender; item = target;
                        # contributors = the sender's MACs
HS_NDP_SWEEP = 6        # neighbour solicitations unanswered (outcome rows); as HS_ARP_SWEEP

# outcome codes (kernels/probes.py) that rules read from outcome rows
OUT_OPEN = 1
OUT_CLOSED = 2
OUT_FILTERED = 3
OUT_UNKNOWN = 4
OUT_TRACED = 5

DIR_INTERNAL = 1
DIR_OUTBOUND = 2
DIR_INBOUND = 4
DIR_EXTERNAL = 8
DIRECTION_NAMES = {DIR_INTERNAL: "internal", DIR_OUTBOUND: "outbound",
                   DIR_INBOUND: "inbound", DIR_EXTERNAL: "external"}

# stealth probe kinds (evidence bits)
ST_NULL = 1
ST_FIN = 2
ST_XMAS = 4
ST_OTHER = 8
ST_ACK = 16
ST_MAIMON = 32
STEALTH_NAMES = {ST_NULL: "null", ST_FIN: "fin", ST_XMAS: "xmas", ST_OTHER: "other",
                 ST_ACK: "ack", ST_MAIMON: "maimon"}

U0 = np.uint64(0)


@inline
def direction(prober_home, target_home):
    if prober_home:
        return DIR_INTERNAL if target_home else DIR_OUTBOUND
    return DIR_INBOUND if target_home else DIR_EXTERNAL


@inline
def is_syn_probe(pkt_flags, tcp_flags):
    return ((pkt_flags & PF_HAS_TCP_FLAGS) != 0
            and (tcp_flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN)


@inline
def is_attempt(proto, flags):
    """An outcome row of a connection attempt (TCP SYN or UDP), not of a stealth probe."""
    return proto == 17 or (proto == 6 and flags == TH_SYN)


@inline
def forward_ok(c):
    """Filters for a row whose source is the prober."""
    return (c & (C_SRC_ALLOWED | C_SRC_SPECIAL | C_DST_IGNORED | C_DPORT_IGNORED)) == 0


@inline
def select_port_row(mode, pair_scope, c, pkt_flags, proto, flags, t, code, iproto,
                    s_hi, s_lo, d_hi, d_lo, dport, is_hi, is_lo, id_hi, id_lo, idport, outc):
    """For port-set rules, from one row's values (scalars, read from the columns by
    the calling kernel). Returns (take, k0, k1, k2, k3, port,
    target_hi, target_lo, direction, evidence_bits)."""
    if mode == PS_EXPOSED_PROBE:
        # one decided TCP connection attempt (retransmissions are one attempt)
        if outc == 0 or outc == OUT_TRACED or proto != 6 or flags != TH_SYN or not forward_ok(c):
            return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
        if (c & C_DST_EXPOSED) == 0 or (c & C_SRC_HOME) != 0:
            return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
        d = direction(False, (c & C_DST_HOME) != 0)
        return True, s_hi, s_lo, U0, U0, np.int64(dport), d_hi, d_lo, d, 0
    if mode == PS_UDP_PROBES:
        # a UDP probe decided closed (ICMP port unreachable), filtered (other ICMP
        # unreachables) or unknown (no answer by probes.timeout_s); never open
        # (answered by UDP) nor traced
        if proto != 17 or (outc != OUT_CLOSED and outc != OUT_FILTERED and outc != OUT_UNKNOWN):
            return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
        if not forward_ok(c):
            return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
        d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
        port = np.int64(dport)
        if pair_scope:
            return True, s_hi, s_lo, d_hi, d_lo, port, d_hi, d_lo, d, 0
        return True, s_hi, s_lo, U0, U0, port, d_hi, d_lo, d, 0
    if mode == PS_STEALTH:
        # outcome rows of stealth probes; ACK and FIN+ACK count only when reset
        if (outc == 0 or outc == OUT_TRACED or proto != 6 or (flags & (TH_SYN | TH_RST)) != 0
                or not forward_ok(c)):
            return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
        if (flags & TH_ACK) != 0:
            if outc != OUT_CLOSED or (flags != TH_ACK and flags != (TH_ACK | TH_FIN)):
                return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
            evidence = ST_ACK if flags == TH_ACK else ST_MAIMON
        elif flags == 0:
            evidence = ST_NULL
        elif flags == TH_FIN:
            evidence = ST_FIN
        elif (flags & (TH_FIN | TH_PUSH | TH_URG)) == (TH_FIN | TH_PUSH | TH_URG):
            evidence = ST_XMAS
        else:
            evidence = ST_OTHER
        d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
        return True, s_hi, s_lo, U0, U0, np.int64(dport), d_hi, d_lo, d, evidence
    if (pkt_flags & PF_HAS_TCP_FLAGS) == 0:
        return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
    evidence = 0
    if (flags & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN:
        return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
    if not forward_ok(c):
        return False, U0, U0, U0, U0, 0, U0, U0, 0, 0
    d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
    port = np.int64(dport)
    if pair_scope:
        return True, s_hi, s_lo, d_hi, d_lo, port, d_hi, d_lo, d, evidence
    return True, s_hi, s_lo, U0, U0, port, d_hi, d_lo, d, evidence


@inline
def select_host_row(mode, c, pkt_flags, proto, flags, t, s_hi, s_lo, d_hi, d_lo, dport, outc,
                    count_filtered, from_outcomes):
    """For host-set rules, from one row's values (scalars only). Returns (take, k0,
    k1, k2, item_hi, item_lo, item_port, prober_hi, prober_lo, direction)."""
    if mode == HS_FAILED or mode == HS_TRW:
        if not is_attempt(proto, flags):
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        o = outc
        if mode == HS_FAILED and o != OUT_CLOSED and not (o == OUT_FILTERED and count_filtered):
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if mode == HS_TRW and o != OUT_OPEN and o != OUT_CLOSED and o != OUT_FILTERED:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if not forward_ok(c):
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
        port = np.int64(dport) if mode == HS_FAILED else np.int64(0)
        return True, s_hi, s_lo, U0, d_hi, d_lo, port, s_hi, s_lo, d
    if mode == HS_ARP_SWEEP or mode == HS_NDP_SWEEP:
        # an ARP request / neighbour solicitation decided unanswered by the probe
        # table (gratuitous ARP and DAD probes never become probes)
        if mode == HS_ARP_SWEEP:
            if (pkt_flags & PF_ARP) == 0:
                return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        elif proto != 58 or t != 135 or (pkt_flags & PF_HAS_ICMP) == 0:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if outc == 0 or outc == OUT_OPEN or outc == OUT_TRACED:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if (c & (C_SRC_ALLOWED | C_SRC_SPECIAL | C_DST_IGNORED)) != 0:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
        return True, s_hi, s_lo, U0, d_hi, d_lo, 0, s_hi, s_lo, d
    if mode == HS_ICMP_SWEEP:
        if (pkt_flags & PF_HAS_ICMP) == 0:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if not ((proto == 1 and t == 8) or (proto == 58 and t == 128)):
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        if (c & (C_SRC_ALLOWED | C_SRC_SPECIAL | C_DST_IGNORED)) != 0:
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
        d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
        return True, s_hi, s_lo, U0, d_hi, d_lo, 0, s_hi, s_lo, d
    if (pkt_flags & PF_HAS_TCP_FLAGS) == 0 and not from_outcomes:
        return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
    if from_outcomes:
        # host_sweep / port_sweep on decided attempts: count those that did not succeed
        if (outc == 0 or outc == OUT_OPEN or outc == OUT_TRACED or proto != 6 or flags != TH_SYN
                or not forward_ok(c)):
            return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
    elif (flags & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN or not forward_ok(c):
        return False, U0, U0, U0, U0, U0, 0, U0, U0, 0
    d = direction((c & C_SRC_HOME) != 0, (c & C_DST_HOME) != 0)
    port = np.int64(dport)
    if mode == HS_HOST_SWEEP:
        return True, s_hi, s_lo, np.uint64(port), d_hi, d_lo, 0, s_hi, s_lo, d
    # HS_PORT_SWEEP: key is the port alone; the probers are the contributors
    return True, U0, U0, np.uint64(port), d_hi, d_lo, 0, s_hi, s_lo, d
