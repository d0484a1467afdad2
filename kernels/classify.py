"""Address and port classes of every row of a batch, computed once per batch.

For each row, one uint16 of class bits: whether the source and destination
are in ``home_net``, in the source allow-list (never flagged), in the
destination ignore-list (never counted), in the exposed-hosts list, or
special (loopback or unspecified: ignored as sources); and whether the
destination port is in the ignored-ports set. Every detector reads these
bits instead of matching CIDRs itself.

CIDR lists are arrays of (net_hi, net_lo, mask_hi, mask_lo, list id); IPv4
networks are held IPv4-mapped (prefix + 96), like the addresses. Matching is
a linear scan, so cost grows with the number of CIDRs (fine for the tens to
hundreds a site configures).

Memory: the output column (2 bytes per batch row) and the lists given.
"""
import numpy as np

from kernels.jit import inline, kernel

LIST_HOME = 0
LIST_SRC_ALLOW = 1
LIST_DST_IGNORE = 2
LIST_EXPOSED = 3

C_SRC_HOME = 1 << 0
C_DST_HOME = 1 << 1
C_SRC_ALLOWED = 1 << 2       # source in allow-list: never flagged as a scanner
C_DST_ALLOWED = 1 << 3       # destination in allow-list (it is the prober in ICMP errors)
C_SRC_IGNORED = 1 << 4       # source in the destination ignore-list (replies from ignored hosts)
C_DST_IGNORED = 1 << 5       # destination in ignore-list: never counted as a target
C_SRC_EXPOSED = 1 << 6
C_DST_EXPOSED = 1 << 7
C_SRC_SPECIAL = 1 << 8       # loopback or unspecified source
C_DST_SPECIAL = 1 << 9
C_DPORT_IGNORED = 1 << 10
C_SPORT_IGNORED = 1 << 11

U0 = np.uint64(0)
MAPPED = np.uint64(0xFFFF_0000_0000)


@inline
def is_special(hi, lo):
    if hi != U0:
        return False
    if lo == U0 or lo == np.uint64(1):          # :: and ::1
        return True
    if (lo >> np.uint64(32)) == np.uint64(0xFFFF):
        v4 = lo & np.uint64(0xFFFFFFFF)
        return (v4 >> np.uint64(24)) == np.uint64(127) or v4 == U0
    return False


@inline
def lists_of(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_list):
    """Bit set of list ids whose networks contain the address."""
    found = 0
    for j in range(net_hi.shape[0]):
        if (hi & mask_hi[j]) == net_hi[j] and (lo & mask_lo[j]) == net_lo[j]:
            found |= 1 << net_list[j]
    return found


@kernel
def classify_rows(cols, n, nets, ignored_ports, out):
    """Fill ``out[:n]`` with class bits for rows [0, n)."""
    net_hi, net_lo, mask_hi, mask_lo, net_list = nets
    src_hi = cols[1]
    src_lo = cols[2]
    dst_hi = cols[3]
    dst_lo = cols[4]
    sport = cols[5]
    dport = cols[6]
    for i in range(n):
        c = 0
        s = lists_of(src_hi[i], src_lo[i], net_hi, net_lo, mask_hi, mask_lo, net_list)
        d = lists_of(dst_hi[i], dst_lo[i], net_hi, net_lo, mask_hi, mask_lo, net_list)
        if s & (1 << LIST_HOME):
            c |= C_SRC_HOME
        if d & (1 << LIST_HOME):
            c |= C_DST_HOME
        if s & (1 << LIST_SRC_ALLOW):
            c |= C_SRC_ALLOWED
        if d & (1 << LIST_SRC_ALLOW):
            c |= C_DST_ALLOWED
        if s & (1 << LIST_DST_IGNORE):
            c |= C_SRC_IGNORED
        if d & (1 << LIST_DST_IGNORE):
            c |= C_DST_IGNORED
        if s & (1 << LIST_EXPOSED):
            c |= C_SRC_EXPOSED
        if d & (1 << LIST_EXPOSED):
            c |= C_DST_EXPOSED
        if is_special(src_hi[i], src_lo[i]):
            c |= C_SRC_SPECIAL
        if is_special(dst_hi[i], dst_lo[i]):
            c |= C_DST_SPECIAL
        dp = np.int64(dport[i])
        if (ignored_ports[dp >> 6] >> np.uint64(dp & 63)) & np.uint64(1):
            c |= C_DPORT_IGNORED
        sp = np.int64(sport[i])
        if (ignored_ports[sp >> 6] >> np.uint64(sp & 63)) & np.uint64(1):
            c |= C_SPORT_IGNORED
        out[i] = c
