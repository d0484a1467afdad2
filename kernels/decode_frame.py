"""Frame decoder: one captured frame -> one batch row (or a counted reason to skip it).

Shared by every capture path (pcap and pcapng walkers now, the AF_PACKET ring
later): each walker finds a frame's bytes, time and link type, calls
``parse_frame`` (inlined into its loop; scalars out) and then either counts
the skip reason or writes the row with ``store_row``.

What a row holds is documented in ``kernels/batch.py``. The rules:

* Link layer: Ethernet (any number of VLAN tags of TPID 0x8100/0x88a8/0x9100/
  0x9200, as many as the frame holds; the outermost VLAN id is kept), Linux SLL and SLL2, raw IP (101, 12, 14,
  228, 229), BSD null (0, host byte order) and loop (108, network order).
* IPv4 options are skipped by IHL; a total length of 0 (TSO captures) means
  "to the end of the capture". IPv6 extension headers (hop-by-hop, routing,
  destination options, fragment, AH, mobility, HIP, shim6) are walked to the
  end of the chain, however long (each is at least 8 bytes, so the walk is
  bounded by the packet): no chain length hides a packet from the rules.
* Fragments after the first are counted and skipped: they carry no ports.
  A first fragment (PF_FIRST_FRAGMENT) whose TCP header is split across
  fragments (RFC 1858 tiny fragment, ``nmap -f``) still gives a row when its
  first 4 TCP bytes are there: ports without PF_HAS_TCP_FLAGS (the flags are
  in the next fragment), so fragmenting a probe does not hide it.
* A frame is skipped, with one counter incremented, when a header the sensor
  needs is cut (``truncated_*``: the capture was shorter than the packet said
  it was) or inconsistent (``malformed_*``). Needed means: the IP header, 14
  bytes of TCP (up to the flags), 4 bytes of UDP/SCTP/UDP-Lite/DCCP (ports),
  2 bytes of ICMP (type, code). Whether a short header is cut or malformed is
  decided by the IP length fields alone: shorter than the IP packet says it is
  means cut by the snap length; an IP packet whose own length leaves no room
  for the header is malformed (an IPv4 total length of 0 takes the capture
  end as the packet end). The header quoted inside an ICMP error is
  optional evidence: if it is cut, malformed or a non-first fragment the row
  is still emitted without it.

* ARP (Ethernet or SLL, EtherType 0x0806) for IPv4 over Ethernet (htype 1,
  ptype 0x0800, 6/4-byte addresses), requests and replies: one row with
  PF_ARP, src/dst = sender/target protocol address (IPv4-mapped),
  ``icmp_type`` = the opcode (1 request, 2 reply; PF_HAS_ICMP is not set),
  ``inner_src_lo``/``inner_dst_lo`` = sender/target hardware address (48 bits;
  PF_HAS_INNER is not set), ``proto`` 0. ARP for other hardware or protocol
  types, and other opcodes, is ``non_ip``; an ARP body shorter than 28 bytes is
  ``truncated_link``.
* ICMPv6 neighbour solicitations and advertisements (135, 136) with their 16-byte
  target address: the target in ``inner_dst_hi``/``inner_dst_lo`` (PF_HAS_INNER
  not set), since the destination of a solicitation is a multicast group; a
  solicitation whose first option is the source link-layer address (type 1,
  length 1) has that MAC in ``inner_src_lo``.

Memory: none; writes one row of the batch given to it.
"""
import numpy as np

from kernels.batch import (
    S_FRAGMENT, S_LINKTYPE, S_MALFORMED_IP, S_MALFORMED_L4,
    S_NON_IP, S_TRUNC_IP, S_TRUNC_L4, S_TRUNC_LINK,
    PF_FIRST_FRAGMENT, PF_HAS_ICMP, PF_HAS_INNER, PF_HAS_PORTS,
    PF_ARP, PF_HAS_TCP_FLAGS, PF_HAS_VLAN, PF_INNER_HAS_PORTS, PF_IPV6,
)
from kernels.jit import inline

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_DLT_RAW_12 = 12
LINKTYPE_DLT_RAW_14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276)

# parse_ip outcomes
IP_OK = 0
IP_TRUNCATED = 1
IP_MALFORMED = 2
IP_FRAGMENT = 3

LINK_ARP = -1          # link_payload: an ARP body at ip_off
ETH_P_ARP = 0x0806
ARP_BYTES = 28         # Ethernet/IPv4 ARP: 8-byte header, 2 x (6 + 4) addresses

U64_ZERO = np.uint64(0)
MAPPED_V4 = np.uint64(0xFFFF_0000_0000)


@inline
def be16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@inline
def be32(buf, p):
    return ((np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
            | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3]))


@inline
def be64u(buf, p):
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[p + k])
    return v


@inline
def canonical_v6(hi, lo):
    """IPv4-compatible ::a.b.c.d (not :: or ::1) -> IPv4-mapped ::ffff:a.b.c.d."""
    if hi == U64_ZERO and (lo >> np.uint64(32)) == U64_ZERO and lo > np.uint64(1):
        lo = lo | MAPPED_V4
    return hi, lo


@inline
def is_ext_header(nh):
    """IPv6 extension headers walked to reach the transport header."""
    return (nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135
            or nh == 139 or nh == 140)


@inline
def is_port_proto(proto):
    return proto == 6 or proto == 17 or proto == 132 or proto == 136 or proto == 33


@inline
def parse_ip(buf, p, end, want_version):
    """Parse an IPv4/IPv6 header at buf[p:end].

    want_version: 4 or 6 to require it, 0 to take the version nibble.
    Returns (status, version, src_hi, src_lo, dst_hi, dst_lo, proto,
    l4_off, l4_end, first_fragment, cut) where l4_end is where the IP packet
    ends inside the capture, and cut tells that the capture ended before the
    packet's declared end.
    """
    z = U64_ZERO
    if end - p < 1:
        return IP_TRUNCATED, 0, z, z, z, z, 0, 0, 0, False, True
    version = np.int64(buf[p]) >> 4
    if want_version != 0 and version != want_version:
        return IP_MALFORMED, version, z, z, z, z, 0, 0, 0, False, False
    if version == 4:
        if end - p < 20:
            return IP_TRUNCATED, 4, z, z, z, z, 0, 0, 0, False, True
        ihl = (np.int64(buf[p]) & 15) * 4
        if ihl < 20:
            return IP_MALFORMED, 4, z, z, z, z, 0, 0, 0, False, False
        total = be16(buf, p + 2)
        if total != 0 and total < ihl:
            return IP_MALFORMED, 4, z, z, z, z, 0, 0, 0, False, False
        if end - p < ihl:
            return IP_TRUNCATED, 4, z, z, z, z, 0, 0, 0, False, True
        declared_end = end if total == 0 else p + total
        cut = declared_end > end
        ip_end = end if cut else declared_end
        frag = be16(buf, p + 6)
        if (frag & 0x1FFF) != 0:
            return IP_FRAGMENT, 4, z, z, z, z, 0, 0, 0, False, cut
        first_fragment = (frag & 0x2000) != 0
        proto = np.int64(buf[p + 9])
        src_lo = MAPPED_V4 | np.uint64(be32(buf, p + 12))
        dst_lo = MAPPED_V4 | np.uint64(be32(buf, p + 16))
        return (IP_OK, 4, z, src_lo, z, dst_lo, proto, p + ihl, ip_end,
                first_fragment, cut)
    if version == 6:
        if end - p < 40:
            return IP_TRUNCATED, 6, z, z, z, z, 0, 0, 0, False, True
        plen = be16(buf, p + 4)
        declared_end = end if plen == 0 else p + 40 + plen
        cut = declared_end > end
        ip_end = end if cut else declared_end
        if ip_end < p + 40:
            ip_end = p + 40
        src_hi, src_lo = canonical_v6(be64u(buf, p + 8), be64u(buf, p + 16))
        dst_hi, dst_lo = canonical_v6(be64u(buf, p + 24), be64u(buf, p + 32))
        nh = np.int64(buf[p + 6])
        q = p + 40
        first_fragment = False
        # the whole chain is walked (no limit to hide behind): each header takes at
        # least 8 bytes of the packet
        while is_ext_header(nh):
            if nh == 44:
                hlen = 8
                if ip_end - q < 8:
                    st = IP_TRUNCATED if cut else IP_MALFORMED
                    return st, 6, z, z, z, z, 0, 0, 0, False, cut
                fo = be16(buf, q + 2)
                if (fo >> 3) != 0:
                    return IP_FRAGMENT, 6, z, z, z, z, 0, 0, 0, False, cut
                if (fo & 1) != 0:
                    first_fragment = True
            else:
                if ip_end - q < 2:
                    st = IP_TRUNCATED if cut else IP_MALFORMED
                    return st, 6, z, z, z, z, 0, 0, 0, False, cut
                if nh == 51:
                    hlen = (np.int64(buf[q + 1]) + 2) * 4
                else:
                    hlen = (np.int64(buf[q + 1]) + 1) * 8
            if ip_end - q < hlen:
                st = IP_TRUNCATED if cut else IP_MALFORMED
                return st, 6, z, z, z, z, 0, 0, 0, False, cut
            nh = np.int64(buf[q])
            q += hlen
        return (IP_OK, 6, src_hi, src_lo, dst_hi, dst_lo, nh, q, ip_end,
                first_fragment, cut)
    return IP_MALFORMED, version, z, z, z, z, 0, 0, 0, False, False


@inline
def is_icmp_error(proto, icmp_type):
    if proto == 1:
        return (icmp_type == 3 or icmp_type == 4 or icmp_type == 5
                or icmp_type == 11 or icmp_type == 12)
    return icmp_type == 1 or icmp_type == 2 or icmp_type == 3 or icmp_type == 4


@inline
def link_payload(buf, off, caplen, linktype):
    """Find the IP header behind the link layer.

    Returns (status, ip_off, want_version, vlan, has_vlan) with status 0 = IP
    found, else the stats index to count.
    """
    end = off + caplen
    if linktype == LINKTYPE_ETHERNET:
        if caplen < 14:
            return S_TRUNC_LINK, 0, 0, 0, False
        ethertype = be16(buf, off + 12)
        p = off + 14
        vlan = 0
        has_vlan = False
        # every tag is walked (no limit to hide behind): each takes 4 bytes of the frame
        while ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100 or ethertype == 0x9200:
            if end - p < 4:
                return S_TRUNC_LINK, 0, 0, 0, False
            if not has_vlan:
                vlan = be16(buf, p) & 0xFFF
                has_vlan = True
            ethertype = be16(buf, p + 2)
            p += 4
        if ethertype == 0x0800:
            return 0, p, 4, vlan, has_vlan
        if ethertype == 0x86DD:
            return 0, p, 6, vlan, has_vlan
        if ethertype == ETH_P_ARP:
            return LINK_ARP, p, 0, vlan, has_vlan
        return S_NON_IP, 0, 0, 0, False
    if linktype == LINKTYPE_LINUX_SLL or linktype == LINKTYPE_LINUX_SLL2:
        hdr = 16 if linktype == LINKTYPE_LINUX_SLL else 20
        if caplen < hdr:
            return S_TRUNC_LINK, 0, 0, 0, False
        proto_at = off + 14 if linktype == LINKTYPE_LINUX_SLL else off
        ethertype = be16(buf, proto_at)
        if ethertype == 0x0800:
            return 0, off + hdr, 4, 0, False
        if ethertype == 0x86DD:
            return 0, off + hdr, 6, 0, False
        if ethertype == ETH_P_ARP:
            return LINK_ARP, off + hdr, 0, 0, False
        return S_NON_IP, 0, 0, 0, False
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if caplen < 4:
            return S_TRUNC_LINK, 0, 0, 0, False
        fam_be = be32(buf, off)
        fam_le = ((np.int64(buf[off + 3]) << 24) | (np.int64(buf[off + 2]) << 16)
                  | (np.int64(buf[off + 1]) << 8) | np.int64(buf[off]))
        fam = fam_be
        if linktype == LINKTYPE_NULL and fam_le < 65536:
            fam = fam_le
        if fam == 2:
            return 0, off + 4, 4, 0, False
        if fam == 24 or fam == 28 or fam == 30:
            return 0, off + 4, 6, 0, False
        return S_NON_IP, 0, 0, 0, False
    if linktype == LINKTYPE_RAW or linktype == LINKTYPE_DLT_RAW_12 or linktype == LINKTYPE_DLT_RAW_14:
        return 0, off, 0, 0, False
    if linktype == LINKTYPE_IPV4:
        return 0, off, 4, 0, False
    if linktype == LINKTYPE_IPV6:
        return 0, off, 6, 0, False
    return S_LINKTYPE, 0, 0, 0, False


@inline
def parse_frame(buf, off, caplen, linktype):
    """Parse one frame. Returns (skip, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
    proto, tcp_flags, icmp_type, icmp_code, pkt_flags, inner_proto, inner_src_hi,
    inner_src_lo, inner_dst_hi, inner_dst_lo, inner_sport, inner_dport, vlan):
    ``skip`` is 0 for a row, else the stats index of the reason it is skipped.

    Only scalars go in and out (besides the buffer): walkers store the row
    themselves. (Handing column arrays to a per-packet helper used to cost
    reference counting on every call; kernels are now built without it,
    ``kernels/jit.py``, but the scalar interface stayed.)"""
    lstat, p, want, vlan, has_vlan = link_payload(buf, off, caplen, linktype)
    end = off + caplen
    if lstat == LINK_ARP:
        return parse_arp(buf, p, end, vlan, has_vlan)
    if lstat != 0:
        return skip_row(lstat)
    (st, version, src_hi, src_lo, dst_hi, dst_lo, proto, l4, l4_end,
     first_frag, cut) = parse_ip(buf, p, end, want)
    if st != IP_OK:
        if st == IP_TRUNCATED:
            return skip_row(np.int64(S_TRUNC_IP))
        if st == IP_FRAGMENT:
            return skip_row(np.int64(S_FRAGMENT))
        return skip_row(np.int64(S_MALFORMED_IP))

    flags = 0
    if version == 6:
        flags |= PF_IPV6
    if first_frag:
        flags |= PF_FIRST_FRAGMENT
    if has_vlan:
        flags |= PF_HAS_VLAN
    sport = 0
    dport = 0
    tcp_flags = 0
    icmp_type = 0
    icmp_code = 0
    inner_proto = 0
    i_src_hi = U64_ZERO
    i_src_lo = U64_ZERO
    i_dst_hi = U64_ZERO
    i_dst_lo = U64_ZERO
    i_sport = 0
    i_dport = 0
    avail = l4_end - l4
    if proto == 6:
        if avail < 14:
            if not (first_frag and not cut and avail >= 4):
                return skip_row(S_TRUNC_L4 if cut else S_MALFORMED_L4)
            # tiny first fragment (RFC 1858, nmap -f): the ports are here, the
            # flags are in the next fragment
            sport = be16(buf, l4)
            dport = be16(buf, l4 + 2)
            flags |= PF_HAS_PORTS
        elif (np.int64(buf[l4 + 12]) >> 4) < 5 or (
                not cut and not first_frag and (np.int64(buf[l4 + 12]) >> 4) * 4 > avail):
            # data offset below the header, or past the end of a whole, unfragmented
            # IP packet (a first fragment may hold the rest of the header in the next)
            return skip_row(np.int64(S_MALFORMED_L4))
        else:
            sport = be16(buf, l4)
            dport = be16(buf, l4 + 2)
            tcp_flags = np.int64(buf[l4 + 13])
            flags |= PF_HAS_PORTS | PF_HAS_TCP_FLAGS
    elif is_port_proto(proto):
        if avail < 4:
            return skip_row(S_TRUNC_L4 if cut else S_MALFORMED_L4)
        sport = be16(buf, l4)
        dport = be16(buf, l4 + 2)
        flags |= PF_HAS_PORTS
    elif proto == 1 or proto == 58:
        if avail < 2:
            return skip_row(S_TRUNC_L4 if cut else S_MALFORMED_L4)
        icmp_type = np.int64(buf[l4])
        icmp_code = np.int64(buf[l4 + 1])
        flags |= PF_HAS_ICMP
        if proto == 58 and (icmp_type == 135 or icmp_type == 136) and avail >= 24:
            # neighbour solicitation / advertisement: the target address
            i_dst_hi, i_dst_lo = canonical_v6(be64u(buf, l4 + 8), be64u(buf, l4 + 16))
            if (icmp_type == 135 and avail >= 32 and np.int64(buf[l4 + 24]) == 1
                    and np.int64(buf[l4 + 25]) == 1):
                # a source link-layer address option first: the asker's MAC
                for k in range(6):
                    i_src_lo = (i_src_lo << np.uint64(8)) | np.uint64(buf[l4 + 26 + k])
        if is_icmp_error(proto, icmp_type) and avail > 8:
            (ist, iversion, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, iproto,
             il4, il4_end, ifirst, icut) = parse_ip(buf, l4 + 8, l4_end, np.int64(0))
            if ist == IP_OK:
                flags |= PF_HAS_INNER
                inner_proto = iproto
                if is_port_proto(iproto) and il4_end - il4 >= 4:
                    i_sport = be16(buf, il4)
                    i_dport = be16(buf, il4 + 2)
                    flags |= PF_INNER_HAS_PORTS
            if (flags & PF_HAS_INNER) == 0:
                i_src_hi = U64_ZERO
                i_src_lo = U64_ZERO
                i_dst_hi = U64_ZERO
                i_dst_lo = U64_ZERO

    return (0, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, tcp_flags, icmp_type,
            icmp_code, flags, inner_proto, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, i_sport,
            i_dport, vlan)


@inline
def parse_arp(buf, p, end, vlan, has_vlan):
    """An ARP body at buf[p:end] -> a row (see the module comment) or a skip."""
    z = U64_ZERO
    if end - p < 8:
        return skip_row(np.int64(S_TRUNC_LINK))
    if (be16(buf, p) != 1 or be16(buf, p + 2) != 0x0800 or np.int64(buf[p + 4]) != 6
            or np.int64(buf[p + 5]) != 4):
        return skip_row(np.int64(S_NON_IP))
    op = be16(buf, p + 6)
    if op != 1 and op != 2:
        return skip_row(np.int64(S_NON_IP))
    if end - p < ARP_BYTES:
        return skip_row(np.int64(S_TRUNC_LINK))
    sha = z
    tha = z
    for k in range(6):
        sha = (sha << np.uint64(8)) | np.uint64(buf[p + 8 + k])
        tha = (tha << np.uint64(8)) | np.uint64(buf[p + 18 + k])
    spa = MAPPED_V4 | np.uint64(be32(buf, p + 14))
    tpa = MAPPED_V4 | np.uint64(be32(buf, p + 24))
    flags = PF_ARP
    if has_vlan:
        flags |= PF_HAS_VLAN
    return (0, z, spa, z, tpa, 0, 0, 0, 0, op, 0, flags, 0, z, sha, z, tha, 0, 0, vlan)


@inline
def skip_row(stat):
    z = U64_ZERO
    return stat, z, z, z, z, 0, 0, 0, 0, 0, 0, 0, 0, z, z, z, z, 0, 0, 0


@inline
def store_row(cols, row, ts_ns, wire_len, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto,
              tcp_flags, icmp_type, icmp_code, pkt_flags, inner_proto, i_src_hi, i_src_lo,
              i_dst_hi, i_dst_lo, i_sport, i_dport, vlan):
    """Write one row (the kernel body indexes the column tuple with constants)."""
    cols[0][row] = ts_ns
    cols[1][row] = src_hi
    cols[2][row] = src_lo
    cols[3][row] = dst_hi
    cols[4][row] = dst_lo
    cols[5][row] = sport
    cols[6][row] = dport
    cols[7][row] = proto
    cols[8][row] = tcp_flags
    cols[9][row] = icmp_type
    cols[10][row] = icmp_code
    cols[11][row] = pkt_flags
    cols[12][row] = inner_proto
    cols[13][row] = i_src_hi
    cols[14][row] = i_src_lo
    cols[15][row] = i_dst_hi
    cols[16][row] = i_dst_lo
    cols[17][row] = i_sport
    cols[18][row] = i_dport
    cols[19][row] = vlan
    cols[20][row] = wire_len
