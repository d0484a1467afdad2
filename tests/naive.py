"""Plain-Python references for every kernel (tests only).

Each reference re-implements, slowly and independently, the spec written in a
kernel's docstring, so a test can run both on the same input and demand equal
results. References favour obvious code over speed: Python ints (no overflow
until a value is stored into a fixed-width column), one dict per row, no numpy.

Decode (``kernels/decode_frame.py``, ``kernels/walk_pcap.py``,
``kernels/walk_pcapng.py``, ``sensor/capture/files.py``)::

    rows, stats = decode_reference(path)

``rows`` is a list of dicts keyed by ``kernels.batch.COLUMN_NAMES``; ``stats``
a dict keyed by ``kernels.batch.STATS``. Container headers come from dpkt's
header classes where dpkt's layout is all that is needed (``dpkt.pcap``,
``dpkt.ethernet``, ``dpkt.sll``, ``dpkt.sll2``, ``dpkt.ip``, ``dpkt.ip6``);
dpkt's readers are not used because they turn timestamps into floats and do
not report truncation, and ``dpkt.pcapng.Reader`` reads one section with one
interface only, so pcapng is walked here with ``struct``. Everything the spec
decides (what counts as cut or malformed, which counter) is written out here.
"""
import math
import ipaddress
import struct
import zlib

import dpkt

STATS = (
    "records", "decoded", "non_ip", "truncated_link", "truncated_ip",
    "malformed_ip", "fragment_noninitial", "truncated_l4", "malformed_l4",
    "unsupported_linktype", "bad_record", "truncated_record", "other_blocks",
)
COLUMN_NAMES = (
    "ts_ns", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto",
    "tcp_flags", "icmp_type", "icmp_code", "pkt_flags", "inner_proto",
    "inner_src_hi", "inner_src_lo", "inner_dst_hi", "inner_dst_lo",
    "inner_sport", "inner_dport", "vlan", "wire_len",
)
# skip reasons: every record is either decoded or counted under exactly one of these
SKIP_REASONS = ("non_ip", "truncated_link", "truncated_ip", "malformed_ip",
                "fragment_noninitial", "truncated_l4", "malformed_l4",
                "unsupported_linktype")

PF_HAS_PORTS = 1
PF_HAS_TCP_FLAGS = 2
PF_HAS_ICMP = 4
PF_HAS_INNER = 8
PF_INNER_HAS_PORTS = 16
PF_IPV6 = 32
PF_FIRST_FRAGMENT = 64
PF_HAS_VLAN = 128
PF_ARP = 256


class NotACapture(ValueError):
    """The reference's counterpart of sensor.capture.files.CaptureError."""


def header(cls, buf):
    """The fixed header fields of dpkt class ``cls`` at the start of ``buf``.

    Only the header is unpacked (``dpkt.Packet.unpack``): dpkt's own decoding
    of what follows has rules of its own, and the spec's rules are below.
    """
    h = cls.__new__(cls)
    dpkt.Packet.unpack(h, bytes(buf[:cls.__hdr_len__]))
    return h


def to_int64(v):
    """Store a Python int into an int64 column (two's complement wrap)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


# ---------------------------------------------------------------- addresses

def addr_key(raw):
    """4 or 16 address bytes -> (hi, lo) of the one 128-bit key for the host."""
    if len(raw) == 4:
        addr = ipaddress.IPv6Address("::ffff:" + str(ipaddress.IPv4Address(raw)))
    else:
        addr = ipaddress.IPv6Address(raw)
        value = int(addr)
        # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291) names the same host as
        # ::ffff:a.b.c.d; :: (unspecified) and ::1 (loopback) are not IPv4 hosts
        if value >> 32 == 0 and value not in (0, 1):
            addr = ipaddress.IPv6Address("::ffff:" + str(ipaddress.IPv4Address(value)))
    value = int(addr)
    return value >> 64, value & ((1 << 64) - 1)


# ---------------------------------------------------------------- IP layer

IPV6_EXT_HEADERS = {
    0: "hop-by-hop", 43: "routing", 44: "fragment", 51: "AH", 60: "destination options",
    135: "mobility", 139: "HIP", 140: "shim6",
}
PORT_PROTOS = {6: "TCP", 17: "UDP", 33: "DCCP", 132: "SCTP", 136: "UDP-Lite"}
ICMP4_ERRORS = {dpkt.icmp.ICMP_UNREACH, dpkt.icmp.ICMP_SRCQUENCH, dpkt.icmp.ICMP_REDIRECT,
                dpkt.icmp.ICMP_TIMEXCEED, dpkt.icmp.ICMP_PARAMPROB}
ICMP6_ERRORS = {dpkt.icmp6.ICMP6_DST_UNREACH, dpkt.icmp6.ICMP6_PACKET_TOO_BIG,
                dpkt.icmp6.ICMP6_TIME_EXCEEDED, dpkt.icmp6.ICMP6_PARAM_PROB}


class IPResult:
    """What parse_ip found: ``status`` is "ok" or the counter that explains why not."""

    def __init__(self, status, version=0, src=(0, 0), dst=(0, 0), proto=0,
                 l4=b"", cut=False, first_fragment=False):
        self.status = status
        self.version = version
        self.src = src
        self.dst = dst
        self.proto = proto
        self.l4 = l4                 # transport bytes up to the IP packet's end (or the capture's)
        self.cut = cut               # the capture ends before the IP packet's declared end
        self.first_fragment = first_fragment


def parse_ip(data, want_version):
    """``data``: the captured bytes from the IP header on. want_version 4, 6 or 0 (any)."""
    if len(data) < 1:
        return IPResult("truncated_ip")
    version = data[0] >> 4
    if want_version and version != want_version:
        return IPResult("malformed_ip")
    if version == 4:
        return parse_ipv4(data)
    if version == 6:
        return parse_ipv6(data)
    return IPResult("malformed_ip")


def parse_ipv4(data):
    if len(data) < 20:
        return IPResult("truncated_ip")
    ip = header(dpkt.ip.IP, data)
    hlen = ip.hl * 4
    if hlen < 20 or (ip.len != 0 and ip.len < hlen):
        return IPResult("malformed_ip")
    if len(data) < hlen:
        return IPResult("truncated_ip")
    packet_len = ip.len if ip.len != 0 else len(data)   # 0: TSO capture, to the end
    cut = packet_len > len(data)
    packet = data[:packet_len]                           # drops Ethernet padding
    if ip.offset != 0:
        return IPResult("fragment_noninitial", cut=cut)
    return IPResult("ok", 4, addr_key(ip.src), addr_key(ip.dst), ip.p, packet[hlen:],
                    cut, first_fragment=bool(ip.mf))


def parse_ipv6(data):
    if len(data) < 40:
        return IPResult("truncated_ip")
    ip6 = header(dpkt.ip6.IP6, data)
    packet_len = 40 + ip6.plen if ip6.plen != 0 else len(data)  # 0: jumbogram
    cut = packet_len > len(data)
    packet = data[:packet_len]
    src, dst = addr_key(ip6.src), addr_key(ip6.dst)
    # a header that does not fit: the snap length cut it, or the packet lies
    short = "truncated_ip" if cut else "malformed_ip"
    nxt, at, walked, first_fragment = ip6.nxt, 40, 0, False
    while nxt in IPV6_EXT_HEADERS:        # the whole chain, however long
        rest = packet[at:]
        if nxt == dpkt.ip.IP_PROTO_FRAGMENT:
            if len(rest) < 8:
                return IPResult(short, cut=cut)
            frag = header(dpkt.ip6.IP6FragmentHeader, rest)
            if frag.frag_off != 0:
                return IPResult("fragment_noninitial", cut=cut)
            first_fragment = first_fragment or bool(frag.m_flag)
            length = 8
        else:
            if len(rest) < 2:
                return IPResult(short, cut=cut)
            if nxt == dpkt.ip.IP_PROTO_AH:
                length = (rest[1] + 2) * 4     # AH counts 4-byte words, minus 2
            else:
                length = (rest[1] + 1) * 8     # the others: 8-byte words, minus 1
            if len(rest) < length:
                return IPResult(short, cut=cut)
        nxt = rest[0]
        at += length
        walked += 1
    return IPResult("ok", 6, src, dst, nxt, packet[at:], cut, first_fragment)


# ---------------------------------------------------------------- link layer

VLAN_TPIDS = {dpkt.ethernet.ETH_TYPE_8021Q, dpkt.ethernet.ETH_TYPE_8021AD,
              dpkt.ethernet.ETH_TYPE_QINQ1, dpkt.ethernet.ETH_TYPE_QINQ2}
AF_INET = 2
AF_INET6_VALUES = {24, 28, 30}   # NetBSD/OpenBSD, FreeBSD, Darwin
IP_BY_ETHERTYPE = {dpkt.ethernet.ETH_TYPE_IP: 4, dpkt.ethernet.ETH_TYPE_IP6: 6}
ETH_TYPE_ARP = dpkt.ethernet.ETH_TYPE_ARP

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP = 0, 1, 108
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
RAW_IP_LINKTYPES = {101: 0, 12: 0, 14: 0, 228: 4, 229: 6}   # -> required IP version (0: any)
SUPPORTED_LINKTYPES = {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                       LINKTYPE_LINUX_SLL2, *RAW_IP_LINKTYPES}


def link_layer(frame, linktype):
    """-> ("ok", ip_bytes, want_version, vlan or None) or (counter, ...)."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return "truncated_link", b"", 0, None
        ethertype = header(dpkt.ethernet.Ethernet, frame).type
        at, vlan = 14, None
        while ethertype in VLAN_TPIDS:       # every tag, as many as the frame holds
            if len(frame) - at < 4:
                return "truncated_link", b"", 0, None
            tag = header(dpkt.ethernet.VLANtag8021Q, frame[at:])
            if vlan is None:
                vlan = tag.id                 # the outermost tag names the VLAN
            ethertype = tag.type
            at += 4
        if ethertype == ETH_TYPE_ARP:
            return "arp", frame[at:], 0, vlan
        if ethertype not in IP_BY_ETHERTYPE:
            return "non_ip", b"", 0, None      # LLC, other EtherTypes
        return "ok", frame[at:], IP_BY_ETHERTYPE[ethertype], vlan
    if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        cls = dpkt.sll.SLL if linktype == LINKTYPE_LINUX_SLL else dpkt.sll2.SLL2
        if len(frame) < cls.__hdr_len__:
            return "truncated_link", b"", 0, None
        ethertype = header(cls, frame).ethtype
        if ethertype == ETH_TYPE_ARP:
            return "arp", frame[cls.__hdr_len__:], 0, None
        if ethertype not in IP_BY_ETHERTYPE:
            return "non_ip", b"", 0, None
        return "ok", frame[cls.__hdr_len__:], IP_BY_ETHERTYPE[ethertype], None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return "truncated_link", b"", 0, None
        if linktype == LINKTYPE_LOOP:
            family = struct.unpack(">I", frame[:4])[0]      # network byte order
        else:
            # the writer's host byte order: address families are small numbers,
            # so a value with bits in the upper half was written big-endian
            family = struct.unpack("<I", frame[:4])[0]
            if family >> 16:
                family = struct.unpack(">I", frame[:4])[0]
        if family == AF_INET:
            return "ok", frame[4:], 4, None
        if family in AF_INET6_VALUES:
            return "ok", frame[4:], 6, None
        return "non_ip", b"", 0, None
    if linktype in RAW_IP_LINKTYPES:
        return "ok", frame, RAW_IP_LINKTYPES[linktype], None
    return "unsupported_linktype", b"", 0, None


# ---------------------------------------------------------------- one frame

def empty_row():
    return {name: 0 for name in COLUMN_NAMES}


def decode_arp(body, vlan, ts_ns, wire_len):
    """Ethernet/IPv4 ARP request or reply -> its row (layout: dpkt.arp.ARP)."""
    if len(body) < 8:
        return None, "truncated_link"
    arp = header(dpkt.arp.ARP, body + bytes(dpkt.arp.ARP.__hdr_len__))   # fixed part only
    if (arp.hrd, arp.pro, arp.hln, arp.pln) != (dpkt.arp.ARP_HRD_ETH, dpkt.arp.ARP_PRO_IP, 6, 4):
        return None, "non_ip"
    if arp.op not in (dpkt.arp.ARP_OP_REQUEST, dpkt.arp.ARP_OP_REPLY):
        return None, "non_ip"
    if len(body) < dpkt.arp.ARP.__hdr_len__:
        return None, "truncated_link"
    row = empty_row()
    row["src_hi"], row["src_lo"] = addr_key(arp.spa)
    row["dst_hi"], row["dst_lo"] = addr_key(arp.tpa)
    row["icmp_type"] = arp.op
    row["inner_src_lo"] = int.from_bytes(arp.sha, "big")
    row["inner_dst_lo"] = int.from_bytes(arp.tha, "big")
    row["pkt_flags"] = PF_ARP | (PF_HAS_VLAN if vlan is not None else 0)
    row["vlan"] = vlan or 0
    row["ts_ns"] = to_int64(ts_ns)
    row["wire_len"] = wire_len
    return row, None


def decode_frame(frame, linktype, ts_ns, wire_len):
    """One captured frame -> (row dict, None) or (None, counter name)."""
    status, ip_bytes, want, vlan = link_layer(bytes(frame), linktype)
    if status == "arp":
        return decode_arp(ip_bytes, vlan, ts_ns, wire_len)
    if status != "ok":
        return None, status
    ip = parse_ip(ip_bytes, want)
    if ip.status != "ok":
        return None, ip.status
    row = empty_row()
    flags = 0
    if ip.version == 6:
        flags |= PF_IPV6
    if ip.first_fragment:
        flags |= PF_FIRST_FRAGMENT
    if vlan is not None:
        flags |= PF_HAS_VLAN
        row["vlan"] = vlan
    l4, proto = ip.l4, ip.proto
    short = "truncated_l4" if ip.cut else "malformed_l4"
    if proto == dpkt.ip.IP_PROTO_TCP:
        if len(l4) >= 14:
            sport, dport, _seq, _ack, offset_byte, tcp_flags = struct.unpack(">HHIIBB", l4[:14])
            if offset_byte >> 4 < 5 or (not ip.cut and not ip.first_fragment
                                        and (offset_byte >> 4) * 4 > len(l4)):
                return None, "malformed_l4"      # data offset below 5 or past the packet
            row.update(sport=sport, dport=dport, tcp_flags=tcp_flags)
            flags |= PF_HAS_PORTS | PF_HAS_TCP_FLAGS
        elif ip.first_fragment and not ip.cut and len(l4) >= 4:
            # TCP header split over fragments: ports here, flags in the next one
            sport, dport = struct.unpack(">HH", l4[:4])
            row.update(sport=sport, dport=dport)
            flags |= PF_HAS_PORTS
        else:
            return None, short
    elif proto in PORT_PROTOS:
        if len(l4) < 4:
            return None, short
        row["sport"], row["dport"] = struct.unpack(">HH", l4[:4])
        flags |= PF_HAS_PORTS
    elif proto in (dpkt.ip.IP_PROTO_ICMP, dpkt.ip.IP_PROTO_ICMP6):
        if len(l4) < 2:
            return None, short
        icmp_type, icmp_code = l4[0], l4[1]
        row.update(icmp_type=icmp_type, icmp_code=icmp_code)
        flags |= PF_HAS_ICMP
        if (proto == dpkt.ip.IP_PROTO_ICMP6 and icmp_type in (dpkt.icmp6.ND_NEIGHBOR_SOLICIT,
                                                              dpkt.icmp6.ND_NEIGHBOR_ADVERT)
                and len(l4) >= 24):
            row["inner_dst_hi"], row["inner_dst_lo"] = addr_key(l4[8:24])   # the target
            if (icmp_type == dpkt.icmp6.ND_NEIGHBOR_SOLICIT and len(l4) >= 32
                    and l4[24] == 1 and l4[25] == 1):
                # source link-layer address option (RFC 4861 4.6.1) first: the asker's MAC
                row["inner_src_lo"] = int.from_bytes(l4[26:32], "big")
        errors = ICMP4_ERRORS if proto == dpkt.ip.IP_PROTO_ICMP else ICMP6_ERRORS
        if icmp_type in errors and len(l4) > 8:
            inner = parse_ip(l4[8:], 0)     # type, code, checksum, 4 bytes, then the quote
            if inner.status == "ok":
                flags |= PF_HAS_INNER
                row["inner_proto"] = inner.proto
                row["inner_src_hi"], row["inner_src_lo"] = inner.src
                row["inner_dst_hi"], row["inner_dst_lo"] = inner.dst
                if inner.proto in PORT_PROTOS and len(inner.l4) >= 4:
                    row["inner_sport"], row["inner_dport"] = struct.unpack(">HH", inner.l4[:4])
                    flags |= PF_INNER_HAS_PORTS
    row["src_hi"], row["src_lo"] = ip.src
    row["dst_hi"], row["dst_lo"] = ip.dst
    row["proto"] = proto
    row["pkt_flags"] = flags
    row["ts_ns"] = to_int64(ts_ns)
    row["wire_len"] = wire_len
    return row, None


# ---------------------------------------------------------------- containers
#
# A walker yields ("frame", linktype, ts_ns, wire_len, bytes) for every packet
# record, ("unsupported_linktype",) for a packet on an unknown interface,
# ("other_blocks",), ("bad_record",) for each corrupt record (the walk goes on
# at the next plausible record, or ends when there is none) and finally
# ("truncated_record",) when the file ends inside a record.

PCAP_MAX_RECORD = 262144          # libpcap's MAXIMUM_SNAPLEN
PCAPNG_MAX_BLOCK = 16 * 1024 * 1024
PCAP_MAGICS = {                   # magic read big-endian -> (little-endian file, ns)
    dpkt.pcap.TCPDUMP_MAGIC: (False, False),
    dpkt.pcap.TCPDUMP_MAGIC_NANO: (False, True),
    dpkt.pcap.PMUDPCT_MAGIC: (True, False),
    dpkt.pcap.PMUDPCT_MAGIC_NANO: (True, True),
}
PCAPNG_SHB = 0x0A0D0D0A


# Resynchronising after a corrupt record (sensor/capture/resync.py): the first
# later offset where a record plausibly starts; the walk goes on from there.
RESYNC_WINDOW_S = 86400
PCAPNG_KNOWN_BLOCKS = {PCAPNG_SHB, 1, 2, 3, 4, 5, 6, 9, 10, 0xBAD, 0x40000BAD}


def pcap_plausible(data, p, order, nano, ref_sec):
    """(sec, caplen) of a believable record header at ``p``, else None."""
    if len(data) - p < 16:
        return None
    sec, frac, caplen, wire_len = struct.unpack(order + "IIII", data[p:p + 16])
    if not 0 < caplen <= wire_len <= PCAP_MAX_RECORD:
        return None
    if frac >= (10**9 if nano else 10**6):
        return None
    if ref_sec >= 0 and abs(sec - ref_sec) > RESYNC_WINDOW_S:
        return None
    return sec, caplen


def pcap_resync(data, start, order, nano, ref_sec):
    """A plausible header whose frame fits and which is followed by another
    plausible header."""
    for q in range(start, len(data)):
        head = pcap_plausible(data, q, order, nano, ref_sec)
        if head is None:
            continue
        sec, caplen = head
        after = q + 16 + caplen
        if pcap_plausible(data, after, order, nano, sec):
            return q
    return None


def pcapng_resync(data, start, order):
    """A block of a known type (before any section: a Section Header) whose
    length is sane, inside the data, and repeated at its end."""
    for q in range(start, len(data) - 11):
        if struct.unpack("<I", data[q:q + 4])[0] == PCAPNG_SHB:
            bom = data[q + 8:q + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                block_order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                block_order = ">"
            else:
                continue
        elif order is None:
            continue
        else:
            block_order = order
            if struct.unpack(order + "I", data[q:q + 4])[0] not in PCAPNG_KNOWN_BLOCKS:
                continue
        blen = struct.unpack(block_order + "I", data[q + 4:q + 8])[0]
        if blen < 12 or blen % 4 or blen > PCAPNG_MAX_BLOCK or q + blen > len(data):
            continue
        if struct.unpack(block_order + "I", data[q + blen - 4:q + blen])[0] == blen:
            return q
    return None


def last_record_sec(data, start, stop, little):
    """Reference of kernels.walk_pcap.last_record_sec: the seconds field of the
    last record of the run of records from ``start`` that begins before ``stop``."""
    order = "<" if little else ">"
    sec, pos = -1, start
    while stop - pos >= 16:
        sec, _frac, caplen, _wire = struct.unpack(order + "IIII", data[pos:pos + 16])
        if caplen > PCAP_MAX_RECORD:
            break
        pos += 16 + caplen
    return sec


def walk_pcap(data):
    if len(data) < 24:
        raise NotACapture("pcap file header cut short")
    little, nano = PCAP_MAGICS[header(dpkt.pcap.FileHdr, data).magic]
    file_hdr = header(dpkt.pcap.LEFileHdr if little else dpkt.pcap.FileHdr, data)
    rec_cls = dpkt.pcap.LEPktHdr if little else dpkt.pcap.PktHdr
    order = "<" if little else ">"
    linktype = file_hdr.linktype & 0xFFFF        # upper bits: FCS length flags
    pos = 24
    ref_sec = -1                                  # seconds of the last record walked
    while pos < len(data):
        rec = header(rec_cls, data[pos:]) if len(data) - pos >= 16 else None
        if rec is None or (rec.caplen <= PCAP_MAX_RECORD and len(data) - pos - 16 < rec.caplen):
            # runs past the end: cut off while written, unless a record follows
            q = pcap_resync(data, pos + 1, order, nano, ref_sec)
            if q is None:
                yield ("truncated_record",)
                return
            yield ("bad_record",)
            pos = q
            continue
        if rec.caplen > PCAP_MAX_RECORD:
            yield ("bad_record",)
            q = pcap_resync(data, pos + 1, order, nano, ref_sec)
            if q is None:
                return
            pos = q
            continue
        ts_ns = rec.tv_sec * 10**9 + rec.tv_usec * (1 if nano else 1000)
        yield ("frame", linktype, ts_ns, rec.len, data[pos + 16:pos + 16 + rec.caplen])
        ref_sec = rec.tv_sec
        pos += 16 + rec.caplen


class Interface:
    def __init__(self, linktype, snaplen):
        self.linktype = linktype
        self.snaplen = snaplen
        self.units_per_s = 10**6      # if_tsresol default: microseconds
        self.offset_s = 0             # if_tsoffset

    def ts_ns(self, ticks):
        return ticks * 10**9 // self.units_per_s + self.offset_s * 10**9


def pcapng_options(body, order):
    """(code, value) for each option in ``body``, until opt_endofopt or one that overruns."""
    at = 0
    while len(body) - at >= 4:
        code, length = struct.unpack(order + "HH", body[at:at + 4])
        if code == 0 or at + 4 + length > len(body):
            return
        yield code, body[at + 4:at + 4 + length]
        at += 4 + (length + 3) // 4 * 4


def read_idb(block, order):
    linktype, _reserved, snaplen = struct.unpack(order + "HHI", block[8:16])
    iface = Interface(linktype, snaplen)
    for code, value in pcapng_options(block[16:-4], order):
        if code == 9 and len(value) >= 1:              # if_tsresol
            v = value[0]
            if v & 0x80 and (v & 0x7F) <= 62:
                iface.units_per_s = 2 ** (v & 0x7F)
            elif not v & 0x80 and v <= 18:
                iface.units_per_s = 10 ** v
            # else: a resolution that cannot be held; keep microseconds
        elif code == 14 and len(value) == 8:           # if_tsoffset, signed seconds
            iface.offset_s = struct.unpack(order + "q", value)[0]
    return iface


def walk_pcapng(data, max_interfaces=1024):
    order = None            # "<" or ">" once a section header was read
    interfaces = []         # of the current section
    last_ts = 0             # for Simple Packet Blocks, which carry no time
    pos = 0
    while pos < len(data):
        event, pos_next, state = _pcapng_block(data, pos, order, interfaces, last_ts,
                                               max_interfaces)
        if event == "bad":
            yield ("bad_record",)
            q = pcapng_resync(data, pos + 1, order)
            if q is None:
                return
            pos = q
            continue
        if event == "short":
            q = pcapng_resync(data, pos + 1, order)
            if q is not None:
                yield ("bad_record",)
                pos = q
                continue
            if order is None:
                raise NotACapture("pcapng file cut short inside its first section header")
            yield ("truncated_record",)
            return
        order, interfaces, last_ts = state
        if event is not None:
            yield event
        pos = pos_next


def _pcapng_block(data, pos, order, interfaces, last_ts, max_interfaces):
    """One block at ``pos`` -> (event or "bad"/"short"/None, next pos, (order, interfaces, last_ts))."""
    state = (order, interfaces, last_ts)
    if len(data) - pos < 12:
        return "short", pos, state
    if struct.unpack("<I", data[pos:pos + 4])[0] == PCAPNG_SHB:   # same in both orders
        bom = data[pos + 8:pos + 12]
        if bom == b"\x4d\x3c\x2b\x1a":
            block_order = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            block_order = ">"
        else:
            return "bad", pos, state
        btype = PCAPNG_SHB
    elif order is None:
        return "bad", pos, state
    else:
        block_order = order
        btype = struct.unpack(order + "I", data[pos:pos + 4])[0]
    blen = struct.unpack(block_order + "I", data[pos + 4:pos + 8])[0]
    if blen < 12 or blen % 4 or blen > PCAPNG_MAX_BLOCK:
        return "bad", pos, state
    if len(data) - pos < blen:
        return "short", pos, state
    block = data[pos:pos + blen]
    if struct.unpack(block_order + "I", block[-4:])[0] != blen:
        return "bad", pos, state
    event = None
    if btype == PCAPNG_SHB:
        order, interfaces = block_order, []
    elif btype == 1:                                   # Interface Description
        if blen < 20:
            return "bad", pos, state
        interfaces = interfaces + [read_idb(block, order)]
    elif btype in (2, 6):                              # obsolete Packet, Enhanced Packet
        if blen < 32:
            return "bad", pos, state
        if btype == 6:
            if_id, ts_hi, ts_lo, caplen, wire_len = struct.unpack(order + "5I", block[8:28])
        else:
            if_id, _drops, ts_hi, ts_lo, caplen, wire_len = struct.unpack(order + "HH4I", block[8:28])
        if caplen > blen - 32:
            return "bad", pos, state
        known = if_id < min(len(interfaces), max_interfaces)
        last_ts = interfaces[if_id].ts_ns((ts_hi << 32) | ts_lo) if known else 0
        if known:
            event = ("frame", interfaces[if_id].linktype, last_ts, wire_len, block[28:28 + caplen])
        else:
            event = ("unsupported_linktype",)
    elif btype == 3:                                   # Simple Packet
        if blen < 16:
            return "bad", pos, state
        wire_len = struct.unpack(order + "I", block[8:12])[0]
        if interfaces:
            caplen = min(wire_len, blen - 16)
            if interfaces[0].snaplen:
                caplen = min(caplen, interfaces[0].snaplen)
            event = ("frame", interfaces[0].linktype, last_ts, wire_len, block[12:12 + caplen])
        else:
            event = ("unsupported_linktype",)
    else:
        event = ("other_blocks",)
    return event, pos + blen, (order, interfaces, last_ts)


def gunzip(data):
    """Decompress gzip members one after another -> (bytes, cut_short).

    A stream that ends early (a capture killed while writing) gives what it
    held, as files.py decodes it; corrupt data raises zlib.error.
    """
    out = []
    while data:
        member = zlib.decompressobj(wbits=31)
        out.append(member.decompress(data))
        if not member.eof:
            return b"".join(out), True
        data = member.unused_data.lstrip(b"\0")   # zero padding may follow a member
    return b"".join(out), False


def read_bytes(path):
    """The (decompressed) bytes of a capture file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data, _cut_short = gunzip(data)
    return data


def decode_bytes(data):
    """Decode a whole capture held in ``data`` -> (rows, stats)."""
    if len(data) < 4:
        raise NotACapture("too short to be a capture file")
    magic_be = struct.unpack(">I", data[:4])[0]
    if magic_be == PCAPNG_SHB:
        events = walk_pcapng(data)
    elif magic_be in PCAP_MAGICS:
        events = walk_pcap(data)
    else:
        raise NotACapture("not a pcap or pcapng file")
    rows, stats = [], {name: 0 for name in STATS}
    for event in events:
        if event[0] == "frame":
            _, linktype, ts_ns, wire_len, frame = event
            stats["records"] += 1
            row, reason = decode_frame(frame, linktype, ts_ns, wire_len)
            if row is None:
                stats[reason] += 1
            else:
                stats["decoded"] += 1
                rows.append(row)
        else:
            if event[0] == "unsupported_linktype":
                stats["records"] += 1
            stats[event[0]] += 1
    return rows, stats


def decode_reference(path):
    """Reference decode of the capture at ``path`` (pcap, pcapng, or gzip of either)."""
    return decode_bytes(read_bytes(path))


# --- detector references (see tests/test_rules.py, tests/test_probes.py) ---

#
# Plain-Python versions of kernels/classify.py, kernels/rules.py and the two
# counter kernels (port-set, host-set) with the alert lifecycle of
# kernels/alert_slots.py. Unbounded dicts and sets stand in for the bounded
# tables, so kernel and reference agree whenever the kernel's table and lists
# have room (tests size them so).


_TH_FIN, _TH_SYN, _TH_RST, _TH_PUSH, _TH_ACK, _TH_URG = 1, 2, 4, 8, 16, 32
_PF_HAS_TCP_FLAGS, _PF_HAS_ICMP, _PF_HAS_INNER, _PF_INNER_HAS_PORTS = 2, 4, 8, 16


def _addr(hi, lo):
    v = (int(hi) << 64) | int(lo)
    ip = ipaddress.IPv6Address(v)
    return ip.ipv4_mapped or ip


def _in_any(addr, nets):
    return any(addr.version == n.version and addr in n for n in nets)


def _special(addr):
    return addr.is_loopback or addr.is_unspecified


def _direction(prober_home, target_home):
    if prober_home:
        return "internal" if target_home else "outbound"
    return "inbound" if target_home else "external"


def rule_item(rule, r, net):
    """What one decoded row means to a rule, or None.

    Returns dict(key=tuple, item=hashable, port=int|None, target=(hi, lo)|None,
    prober=(hi, lo), direction=str, evidence=str|None).
    ``net`` = dict(home, allow, ignore, exposed: lists of ip_network; ignore_ports: set;
    scope: "source"|"pair").
    """
    src = _addr(r["src_hi"], r["src_lo"])
    dst = _addr(r["dst_hi"], r["dst_lo"])
    src_w = (int(r["src_hi"]), int(r["src_lo"]))
    dst_w = (int(r["dst_hi"]), int(r["dst_lo"]))
    home = lambda a: _in_any(a, net["home"])
    flags = r["pkt_flags"]
    tcp = r["tcp_flags"]

    def forward_ok():
        return not (_in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"])
                    or int(r["dport"]) in net["ignore_ports"])

    is_syn = bool(flags & _PF_HAS_TCP_FLAGS) and (tcp & (_TH_SYN | _TH_ACK | _TH_RST)) == _TH_SYN
    if rule == "udp_scan":
        # decided UDP probes (outcome rows) that were not answered by UDP
        if r["proto"] != 17 or r.get("outcome", 0) not in (OUT_CLOSED, OUT_FILTERED, OUT_UNKNOWN):
            return None
        if not forward_ok():
            return None
        port = int(r["dport"])
        key = src_w + (dst_w if net["scope"] == "pair" else ())
        return dict(key=key, item=port, port=port, target=dst_w, prober=src_w,
                    direction=_direction(home(src), home(dst)), evidence=None,
                    sport=int(r["sport"]))
    is_attempt = r["proto"] == 17 or (r["proto"] == 6 and tcp == _TH_SYN)
    if rule == "stealth_scan":
        if r.get("outcome", 0) in (0, OUT_TRACED) or r["proto"] != 6 or tcp & (_TH_SYN | _TH_RST):
            return None
        if not forward_ok():
            return None
        if tcp & _TH_ACK:
            if r["outcome"] != OUT_CLOSED or tcp not in (_TH_ACK, _TH_ACK | _TH_FIN):
                return None
            evidence = "ack" if tcp == _TH_ACK else "maimon"
        elif tcp == 0:
            evidence = "null"
        elif tcp == _TH_FIN:
            evidence = "fin"
        elif (tcp & (_TH_FIN | _TH_PUSH | _TH_URG)) == (_TH_FIN | _TH_PUSH | _TH_URG):
            evidence = "xmas"
        else:
            evidence = "other"
        port = int(r["dport"])
        return dict(key=src_w, item=port, port=port, target=dst_w, prober=src_w,
                    direction=_direction(home(src), home(dst)), evidence=evidence)
    if rule == "exposed_host_probe":
        if r.get("outcome", 0) in (0, OUT_TRACED) or r["proto"] != 6 or tcp != _TH_SYN or not forward_ok():
            return None
        if not _in_any(dst, net["exposed"]) or home(src):
            return None
        port = int(r["dport"])
        return dict(key=src_w, item=port, port=port, target=dst_w, prober=src_w,
                    direction=_direction(False, home(dst)), evidence=None)
    if rule in ("host_sweep", "port_sweep") and net.get("from_outcomes"):
        if (r.get("outcome", 0) in (0, OUT_OPEN, OUT_TRACED) or r["proto"] != 6 or tcp != _TH_SYN
                or not forward_ok()):
            return None
        d = _direction(home(src), home(dst))
        port = int(r["dport"])
        key = src_w + (port,) if rule == "host_sweep" else (port,)
        return dict(key=key, item=(dst_w, 0), port=port, target=dst_w, prober=src_w,
                    direction=d, evidence=None)
    if rule in ("failed_connections", "trw_scanner"):
        wanted = (OUT_CLOSED, OUT_FILTERED) if rule == "failed_connections" else \
            (OUT_OPEN, OUT_CLOSED, OUT_FILTERED)
        if rule == "failed_connections" and not net.get("count_filtered", True):
            wanted = (OUT_CLOSED,)
        if r.get("outcome", 0) not in wanted or not is_attempt or not forward_ok():
            return None
        port = int(r["dport"]) if rule == "failed_connections" else 0
        return dict(key=src_w, item=(dst_w, port), port=port if rule == "failed_connections" else None,
                    target=dst_w, prober=src_w, direction=_direction(home(src), home(dst)),
                    evidence=None, outcome=r["outcome"])
    if rule in ("arp_sweep", "ndp_sweep"):
        # an ARP request / neighbour solicitation the probe table decided unanswered
        if rule == "arp_sweep" and not flags & PF_ARP:
            return None
        if rule == "ndp_sweep" and not (r["proto"] == 58 and r["icmp_type"] == 135
                                        and flags & _PF_HAS_ICMP):
            return None
        if r.get("outcome", 0) in (0, OUT_OPEN, OUT_TRACED):
            return None
        if _in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"]):
            return None
        return dict(key=src_w, item=(dst_w, 0), port=None, target=dst_w, prober=src_w,
                    direction=_direction(home(src), home(dst)), evidence=None,
                    mac=int(r["inner_src_lo"]))
    if rule == "icmp_sweep":
        if not (flags & _PF_HAS_ICMP):
            return None
        if not ((r["proto"] == 1 and r["icmp_type"] == 8) or (r["proto"] == 58 and r["icmp_type"] == 128)):
            return None
        if _in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"]):
            return None
        return dict(key=src_w, item=(dst_w, 0), port=None, target=dst_w, prober=src_w,
                    direction=_direction(home(src), home(dst)), evidence=None)
    if not (flags & _PF_HAS_TCP_FLAGS):
        return None
    if not is_syn or not forward_ok():
        return None
    d = _direction(home(src), home(dst))
    port = int(r["dport"])
    if rule == "port_scan":
        key = src_w + (dst_w if net["scope"] == "pair" else ())
        return dict(key=key, item=port, port=port, target=dst_w, prober=src_w, direction=d,
                    evidence=None)
    if rule == "host_sweep":
        return dict(key=src_w + (port,), item=(dst_w, 0), port=port, target=dst_w, prober=src_w,
                    direction=d, evidence=None)
    if rule == "port_sweep":
        return dict(key=(port,), item=(dst_w, 0), port=port, target=dst_w, prober=src_w,
                    direction=d, evidence=None)
    raise ValueError(rule)


_MASK64 = (1 << 64) - 1
SOURCE_HOST_BITS = 64       # kernels/host_set.py HOST_BITS


def mix64(x):
    """splitmix64 finaliser (kernels/addr_table.py)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def host_hash(hi, lo):
    """kernels/host_set.py host_hash: unseeded, for a source's hosts past the mask."""
    return mix64(mix64(hi) ^ lo)


GOLDEN = 0x9E3779B97F4A7C15


def hash_key(words, seed):
    """kernels/addr_table.py hash_key: each of the five words mixed with its own
    offset of the seed, combined, mixed again."""
    h = 0
    for k, w in enumerate(words):
        h ^= mix64((w ^ ((seed + k * GOLDEN) & _MASK64)) & _MASK64)
    return mix64(h)


HIT, NEW, EVICTED, FULL = 0, 1, 2, 3     # kernels/addr_table.py LOOKUP_*


def find_slot_reference(table, words, now_ns, stale_ns, ways, seed, use_pins=True):
    """kernels/addr_table.py find_slot on a table of plain lists (``fps``, ``keys``,
    ``last_seen``, ``pinned``, ``weight``; empty slots have last_seen -1): the key's
    slot if present; else the first empty way, else the first way idle for
    ``stale_ns``, else the unpinned way of lowest weight, least recently seen among
    equals (the first such); else, every way pinned, FULL with the pinned way seen
    longest ago. Returns (outcome, slot) and writes the key where it claims one."""
    h = hash_key(words, seed)
    nbuckets = len(table["fps"]) // ways
    base = (((h >> 32) * nbuckets) >> 32) * ways
    bucket = range(base, base + ways)
    for s in bucket:
        if (table["last_seen"][s] != -1 and table["fps"][s] == h
                and table["keys"][s] == list(words)):
            return HIT, s
    live = [s for s in bucket if table["last_seen"][s] != -1]
    pinned = [s for s in live if use_pins and table["pinned"][s]]
    free = [s for s in bucket if table["last_seen"][s] == -1]
    idle = [s for s in live if s not in pinned and now_ns - table["last_seen"][s] >= stale_ns]
    others = [s for s in live if s not in pinned and s not in idle]
    if free or idle:
        outcome, slot = NEW, (free or idle)[0]
    elif others:
        outcome = EVICTED
        slot = min(others, key=lambda s: (table["weight"][s], table["last_seen"][s], s))
    else:
        return FULL, min(pinned, key=lambda s: (table["last_seen"][s], s))
    table["fps"][slot] = h
    table["keys"][slot] = list(words)
    table["last_seen"][slot] = now_ns
    return outcome, slot


def small_linear_count(word):
    zeros = 64 - bin(word).count("1")
    return int(round(-64 * math.log(max(zeros, 1) / 64)))


def sweep_sources(s):
    """port_sweep evidence of an episode state: (sources most probes first, each
    (prober, probes, hosts in episode order, host_count); distinct probers;
    complete)."""
    out = []
    for prober, src in s["sources"].items():
        hosts = [h for j, h in enumerate(s["ep_hosts"]) if j in src["positions"]]
        beyond = 0
        for h in src["beyond"]:
            beyond |= 1 << (host_hash(*h) & 63)
        out.append((prober, src["probes"], hosts,
                    len(hosts) + (small_linear_count(beyond) if beyond else 0)))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out, len(s["all_sources"]), s["unlisted"] == 0


def _report_done(s, count):
    """The lifecycle's ``release_slot`` (kernels/alert_slots.py): a key was reported."""
    s["seq"] += 1
    s["reported"] = max(count, 1)
    s["last_report"] = s["last"]
    s["new_target"] = False
    s["pinned"] = False


def _falls_due(s, c, first_due, ts, growth, update_ns, new_target_updates):
    """The lifecycle's ``maybe_schedule``: whether key ``s`` (count ``c``) is pinned
    now; ``first_due``: the first report's condition (threshold, the rule's own)."""
    if s["seq"] == 0:
        return first_due
    grown = growth > 0 and c >= growth * s["reported"]
    fresh_target = new_target_updates and s["new_target"]
    return (grown or fresh_target) and ts - s["last_report"] >= update_ns


def counter_reference(rule, rows, net, threshold, window_ns, delay_ns, directions,
                      exclude_ports=(), growth=0, update_ns=0, suppress_ns=1 << 62,
                      new_target_updates=False, count_attempts=False, trw=None,
                      sensitive=(), sensitive_threshold=0, max_sources=256):
    """Reference for every counter rule. Returns report dicts in emission order:
    key, seq, count, items (set in window), targets (first-seen order), first_seen_ns,
    last_seen_ns, probes, directions (set), evidence (set), and for port_sweep
    ``sources`` (``sweep_sources``: every prober of the episode up to
    ``max_sources``, in order of first probe, with its probes and the hosts it
    touched among the episode's first 64), ``source_count`` (distinct probers,
    listed or not) and ``sources_complete``."""
    port_set = rule in ("port_scan", "stealth_scan", "udp_scan", "exposed_host_probe")
    count_attempts = count_attempts or rule == "exposed_host_probe"
    keys = {}
    pending = []      # [due, order, key]
    out = []
    order = 0

    def count_of(s):
        if rule == "trw_scanner":
            return s["fails"] if s["llr"] >= trw["upper"] else 0
        if count_attempts:
            return s["att_cur"] + s["att_prev"]
        return len(s["cur"] | s["prev"]) if port_set else len(s["items"])

    def report(key, now):
        s = keys[key]
        ports = sorted(s["cur"] | s["prev"]) if port_set else None
        out.append(dict(key=key, seq=s["seq"] + 1, count=count_of(s), ports=ports,
                        items=set(s["items"]) if not port_set else None,
                        targets=list(s["targets"]), first_seen_ns=s["first"],
                        last_seen_ns=s["last"], probes=s["probes"], directions=set(s["dirs"]),
                        evidence=set(s["evidence"]), contributors=dict(s["contrib"]),
                        **(dict(zip(("sources", "source_count", "sources_complete"),
                                    sweep_sources(s))) if rule == "port_sweep" else {})))
        _report_done(s, count_of(s))

    def fresh(ts):
        return dict(first=ts, last=ts, pane=ts // window_ns, cur=set(), prev=set(), items={},
                    probes=0, attempts=0, targets=[], seq=0, reported=0, last_report=0,
                    pinned=False, new_target=False, dirs=set(), evidence=set(),
                    sources={}, ep_hosts=[], all_sources=set(), unlisted=0, contrib={},
                    llr=0, fails=0, benign=False, att_cur=0, att_prev=0)

    for r in rows:
        ts = int(r["ts_ns"])
        while pending and ts >= min(p[0] for p in pending):
            p = min(pending)
            pending.remove(p)
            report(p[2], ts)
        it = rule_item(rule, r, net)
        if it is None or it["direction"] not in directions:
            continue
        if it["port"] is not None and it["port"] in exclude_ports:
            continue
        if it.get("sport") is not None and it["sport"] in exclude_ports:
            continue        # udp_scan: a datagram from a service port is a reply
        key = it["key"]
        s = keys.get(key)
        pane = ts // window_ns
        if s is None or (not s["pinned"] and (ts - s["last"] >= 2 * window_ns or
                                              (s["seq"] > 0 and ts - s["first"] >= suppress_ns))):
            s = keys[key] = fresh(ts)
        if pane == s["pane"] + 1:
            s["prev"], s["cur"] = s["cur"], set()
            s["att_prev"], s["att_cur"] = s["att_cur"], 0
            s["items"] = {k: v for k, v in s["items"].items() if v >= pane - 1}
        elif pane > s["pane"] + 1:
            s["prev"], s["cur"] = set(), set()
            s["att_prev"], s["att_cur"] = 0, 0
            s["items"] = {}
        s["pane"] = max(s["pane"], pane)
        is_new_item = False
        if port_set:
            s["cur"].add(it["item"])
        else:
            is_new_item = it["item"] not in s["items"]
            s["items"][it["item"]] = max(s["items"].get(it["item"], pane), s["pane"])
        if rule == "trw_scanner" and is_new_item and not s["benign"]:
            if it["outcome"] == OUT_OPEN:
                s["llr"] += trw["success"]
            else:
                s["llr"] += trw["fail"]
                s["fails"] += 1
            if s["llr"] <= trw["lower"]:
                s["benign"] = True
        s["probes"] += 1
        s["att_cur"] += 1
        s["last"] = max(s["last"], ts)
        s["dirs"].add(it["direction"])
        if it["evidence"]:
            s["evidence"].add(it["evidence"])
        if rule == "port_sweep":
            target = it["item"][0]
            if target not in s["ep_hosts"] and len(s["ep_hosts"]) < SOURCE_HOST_BITS:
                s["ep_hosts"].append(target)
            s["all_sources"].add(it["prober"])
            src = s["sources"].get(it["prober"])
            if src is None and len(s["sources"]) < max_sources:
                src = s["sources"][it["prober"]] = dict(probes=0, positions=set(), beyond=set())
                is_new_item = True        # a new listed source is worth an update too
            if src is None:
                s["unlisted"] += 1
            else:
                src["probes"] += 1
                if target in s["ep_hosts"]:
                    src["positions"].add(s["ep_hosts"].index(target))
                else:
                    src["beyond"].add(target)
        if rule in ("arp_sweep", "ndp_sweep") and it["mac"]:
            s["contrib"][it["mac"]] = s["contrib"].get(it["mac"], 0) + 1     # sender MACs
        if port_set:
            if it["target"] not in s["targets"]:
                s["targets"].append(it["target"])
                if s["seq"] > 0:
                    s["new_target"] = True
        else:
            if it["item"][0] not in s["targets"]:
                s["targets"].append(it["item"][0])
            if is_new_item and s["seq"] > 0:
                s["new_target"] = True
        if s["pinned"]:
            continue
        c = count_of(s)
        sens_due = (port_set and sensitive_threshold > 0
                    and len((s["cur"] | s["prev"]) & set(sensitive)) >= sensitive_threshold)
        if not _falls_due(s, c, c >= threshold or sens_due, ts, growth, update_ns,
                          new_target_updates):
            continue
        s["pinned"] = True
        pending.append([ts + delay_ns, order, key])
        order += 1
    for p in sorted(pending):
        report(p[2], p[0])
    if rule == "port_sweep":      # held updates of grown episodes, at the end of input
        grown = [k for k, s in keys.items() if s["seq"] > 0 and s["new_target"]]
        for key in sorted(grown, key=lambda k: (keys[k]["last"], k)):
            report(key, keys[key]["last"])
    return out



# --- probe table reference (kernels/probes.py) ---

OUT_OPEN, OUT_CLOSED, OUT_FILTERED, OUT_UNKNOWN, OUT_TRACED = 1, 2, 3, 4, 5
PROTO_ARP, PROTO_NDP = 256, 257     # link-layer probes' protocol numbers in probe keys
TRACE_PORTS_BELOW, TRACE_PORTS_ABOVE = 32, 256


def _is_v4(hi, lo):
    return hi == 0 and (lo >> 32) == 0xFFFF


def probe_reference(rows, timeout_ns, counters=None):
    """Plain-Python probe table. Returns (outcome_rows, probes) where outcome rows are
    dicts with the batch columns plus ``outcome``, in emission order (including the
    end-of-input decisions), and probes maps (init, resp, port, proto) -> state name.
    ``counters`` (a dict), if given, receives time_exceeded, traced, backscatter_icmp
    and icmp_misquoted.

    Traceroute: a time-exceeded answer to a known probe decides it traced (7) and marks
    its (initiator, responder) pair until ts + 3 x timeout with the quoted ports' range;
    a failure of that pair and protocol within the port window while marked is traced
    too and refreshes the mark (kernels/probes.py; the kernel's table is bounded, this
    one is not)."""
    state = {}         # key -> [state, sent_ns, initiator port, probe TCP flags]
    queue = []         # FIFO of (key, sent_ns)
    trace = {}         # (initiator, responder) -> [until_ns, lowest port, highest, proto]
    hold_ns = max(timeout_ns, 1) * 3
    out = []
    replies = [0]
    n = dict(time_exceeded=0, traced=0, backscatter_icmp=0, icmp_misquoted=0)
    names = {1: "pending", 2: "open", 3: "open", 4: "closed", 5: "filtered", 6: "unknown",
             7: "traced"}
    code = {2: OUT_OPEN, 4: OUT_CLOSED, 5: OUT_FILTERED, 6: OUT_UNKNOWN, 7: OUT_TRACED}

    def emit(ts, key, st):
        (ih, il), (rh, rl), port, proto = key
        row = {n: 0 for n in _ROW_NAMES}
        if proto in (PROTO_ARP, PROTO_NDP):
            # an ARP / NDP probe: the request's row shape, the asker's MAC in inner_src_lo
            ndp = proto == PROTO_NDP
            row.update(ts_ns=ts, src_hi=ih, src_lo=il, dst_hi=rh, dst_lo=rl,
                       proto=58 if ndp else 0, icmp_type=135 if ndp else 1,
                       pkt_flags=(PF_HAS_ICMP | PF_IPV6) if ndp else PF_ARP,
                       inner_src_lo=state[key][2], outcome=code[st])
            out.append(row)
            return
        row.update(ts_ns=ts, src_hi=ih, src_lo=il, dst_hi=rh, dst_lo=rl, dport=port,
                   sport=state[key][2], proto=proto, pkt_flags=1, tcp_flags=state[key][3],
                   outcome=code[st])
        out.append(row)

    def settle(key, verdict, ts):
        m = trace.get((key[0], key[1]))
        if (verdict not in (2, 7) and m is not None and m[0] >= ts and key[3] == m[3]
                and m[1] - TRACE_PORTS_BELOW <= key[2] <= m[2] + TRACE_PORTS_ABOVE):
            m[0] = max(m[0], ts + hold_ns)
            verdict = 7
        if verdict == 7:
            n["traced"] += 1
        state[key][0] = verdict
        emit(ts, key, verdict)

    def mark(key, ts):
        pair, port, proto = (key[0], key[1]), key[2], key[3]
        m = trace.get(pair)
        if m is None:
            m = trace[pair] = [-1, port, port, proto]
        if m[0] < ts or m[3] != proto:
            m[1:] = [port, port, proto]
        else:
            m[1], m[2] = min(m[1], port), max(m[2], port)
        m[0] = max(m[0], ts + hold_ns)

    def expire(now):
        while queue and queue[0][1] + timeout_ns <= now:
            key, sent = queue.pop(0)
            if state[key][0] == 1 and state[key][1] == sent:
                settle(key, 5 if replies[0] > 0 else 6, sent + timeout_ns)

    def open_probe(key, ts, sport, flags):
        if key in state and (state[key][0] == 1 or state[key][2] == sport):
            return          # still waiting, or a retransmission of a decided attempt
        state[key] = [1, ts, sport, flags]
        queue.append((key, ts))

    def answer(key, ts, verdict, late_ok):
        st = state[key][0]
        if st == 1 or (late_ok and st in (5, 6)):
            replies[0] += 1
            if verdict == 2:
                state[key][0] = verdict
                emit(ts, key, verdict)
            else:
                settle(key, verdict, ts)

    def open_l2(key, ts, mac):
        if key in state and state[key][0] == 1:
            return          # a retransmission; once decided, asking again is a new probe
        state[key] = [1, ts, mac, 0]
        queue.append((key, ts))

    def answer_l2(key, ts):
        if key in state and state[key][0] == 1:
            replies[0] += 1
            state[key][0] = 2
            emit(ts, key, 2)

    for r in rows:
        ts = int(r["ts_ns"])
        expire(ts)
        src = (int(r["src_hi"]), int(r["src_lo"]))
        dst = (int(r["dst_hi"]), int(r["dst_lo"]))
        flags = r["pkt_flags"]
        if flags & PF_ARP:
            # sender/target protocol address; gratuitous ARP and DAD probes are no probes
            if src == dst or (src[1] & 0xFFFFFFFF) == 0:
                continue
            if r["icmp_type"] == 1:
                open_l2((src, dst, 0, PROTO_ARP), ts, int(r["inner_src_lo"]))
            else:
                answer_l2((dst, src, 0, PROTO_ARP), ts)
            continue
        if r["proto"] == 58 and flags & _PF_HAS_ICMP and r["icmp_type"] in (135, 136):
            target = (int(r["inner_dst_hi"]), int(r["inner_dst_lo"]))
            if r["icmp_type"] == 135:
                if src == (0, 0) or src == target:
                    continue
                open_l2((src, target, 0, PROTO_NDP), ts, int(r["inner_src_lo"]))
            else:
                answer_l2((dst, target, 0, PROTO_NDP), ts)
            continue
        if flags & _PF_HAS_TCP_FLAGS:
            f = r["tcp_flags"]
            syn, ack, rst = bool(f & _TH_SYN), bool(f & _TH_ACK), bool(f & _TH_RST)
            fwd = (src, dst, int(r["dport"]), 6)
            rev = (dst, src, int(r["sport"]), 6)
            if (syn and not ack and not rst) or (not syn and not ack and not rst):
                open_probe(fwd, ts, int(r["sport"]), int(f))
            elif (syn and ack) or rst:
                if rev in state:
                    answer(rev, ts, 4 if rst else 2, True)
            elif fwd in state and (state[fwd][2] == int(r["sport"]) or state[fwd][0] == 1):
                if state[fwd][0] == 2:
                    state[fwd][0] = 3
            elif fwd in state:
                open_probe(fwd, ts, int(r["sport"]), int(f))
            elif rev in state:
                if state[rev][0] == 1 and state[rev][3] & _TH_ACK:
                    state[rev][0] = 3           # answered, not reset: an ongoing flow
            else:
                open_probe(fwd, ts, int(r["sport"]), int(f))
            continue
        if r["proto"] == 17 and flags & 1:
            rev = (dst, src, int(r["sport"]), 17)
            if rev in state:
                answer(rev, ts, 2, False)
                continue
            open_probe((src, dst, int(r["dport"]), 17), ts, int(r["sport"]), 0)
            continue
        need = _PF_HAS_ICMP | _PF_HAS_INNER | _PF_INNER_HAS_PORTS
        if (flags & need) != need:
            continue
        t, c, iproto = r["icmp_type"], r["icmp_code"], int(r["inner_proto"])
        v4_inner = [_is_v4(int(r["inner_src_hi"]), int(r["inner_src_lo"])),
                    _is_v4(int(r["inner_dst_hi"]), int(r["inner_dst_lo"]))]
        if (r["proto"] == 1) != all(v4_inner) or (r["proto"] == 58 and any(v4_inner)):
            n["icmp_misquoted"] += 1
            continue
        key = ((int(r["inner_src_hi"]), int(r["inner_src_lo"])),
               (int(r["inner_dst_hi"]), int(r["inner_dst_lo"])), int(r["inner_dport"]), iproto)
        if ((r["proto"] == 1 and t == 11) or (r["proto"] == 58 and t == 3)) and c == 0:
            if key not in state:
                n["backscatter_icmp"] += 1
                continue
            n["time_exceeded"] += 1
            mark(key, ts)
            if state[key][0] == 1:
                replies[0] += 1
                settle(key, 7, ts)
            continue
        if r["proto"] == 1 and t == 3:
            if c == 3:
                verdict = 4 if iproto == 17 else 5
            elif c in (0, 1, 9, 10, 13):
                verdict = 5
            else:
                continue
        elif r["proto"] == 58 and t == 1:
            if c == 4:
                verdict = 4 if iproto == 17 else 5
            elif c in (0, 1, 3):
                verdict = 5
            else:
                continue
        else:
            continue
        if key in state:
            answer(key, ts, verdict, False)
        else:
            n["backscatter_icmp"] += 1
    expire(1 << 62)
    if counters is not None:
        counters.update(n)
    return out, {k: names[v[0]] for k, v in state.items()}


_ROW_NAMES = ("ts_ns", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto",
              "tcp_flags", "icmp_type", "icmp_code", "pkt_flags", "inner_proto", "inner_src_hi",
              "inner_src_lo", "inner_dst_hi", "inner_dst_lo", "inner_sport", "inner_dport",
              "vlan", "wire_len")


# --- TPACKET_V3 ring block reference (kernels/walk_ring.py) ---
#
# A ring block is a run of tpacket3_hdr records; each record header gives the
# frame's place (tp_mac from the header), captured and wire length, time, and
# the VLAN tag the kernel stripped (tp_status bit 16, tp_vlan_tci).

TPACKET3_HDR = struct.Struct("<IIIIIIHHIIHH8x")     # 48 bytes, little-endian host
TP_STATUS_VLAN_VALID = 16


def walk_ring_block(ring, block_end, pkt_off, pkts_left, capacity):
    """-> (pkt_off, pkts_left, rows, stats): decode records of a block until it is
    done or ``capacity`` rows are out (then resume at the returned place)."""
    ring = bytes(ring)
    rows, stats = [], {name: 0 for name in STATS}
    while pkts_left > 0 and len(rows) < capacity:
        if block_end - pkt_off < TPACKET3_HDR.size:
            stats["bad_record"] += 1
            return pkt_off, 0, rows, stats
        (next_offset, sec, nsec, snaplen, wire_len, status, mac, _net, _rxhash, tci,
         _tpid, _pad) = TPACKET3_HDR.unpack_from(ring, pkt_off)
        if pkt_off + mac + snaplen > block_end or (
                pkts_left > 1 and not (TPACKET3_HDR.size <= next_offset < block_end - pkt_off)):
            stats["bad_record"] += 1
            return pkt_off, 0, rows, stats
        stats["records"] += 1
        frame = ring[pkt_off + mac: pkt_off + mac + snaplen]
        if status & TP_STATUS_VLAN_VALID:
            # the stripped tag was the outermost one: it names the VLAN, and the
            # frame on the wire was 4 bytes longer
            row, reason = decode_frame(frame, LINKTYPE_ETHERNET, sec * 10**9 + nsec, wire_len + 4)
            if row is not None:
                row["vlan"] = tci & 0xFFF
                row["pkt_flags"] |= PF_HAS_VLAN
        else:
            row, reason = decode_frame(frame, LINKTYPE_ETHERNET, sec * 10**9 + nsec, wire_len)
        if row is None:
            stats[reason] += 1
        else:
            stats["decoded"] += 1
            rows.append(row)
        pkts_left -= 1
        pkt_off += next_offset
    return pkt_off, pkts_left, rows, stats


# --- fanout key reference (sensor/capture/bpf.py FANOUT_KEY_PROGRAM) ---
#
# The key the fanout program returns for a frame as the kernel sees it (outer
# VLAN tag stripped): the probing side's address (IPv6: its last 32 bits).
# A read past the end of the packet ends a classic BPF program with 0.

FANOUT_ICMP4_REQUESTS = {8, 10, 13, 15, 17}
FANOUT_EXT_HEADERS = 8            # sensor/capture/bpf.py walks this many, then keys symmetrically
FANOUT_ICMP6_REQUESTS = {128, 133, 135, 139}


def fanout_key(frame, walk_extension_headers=True):
    """The fanout program's key (sensor/capture/bpf.py); ``walk_extension_headers=False``
    gives the earlier program's, which keyed IPv6 behind extension headers symmetrically."""
    def u32(b):
        if len(b) < 4:
            raise IndexError
        return struct.unpack(">I", b[:4])[0]
    try:
        ethertype = struct.unpack(">H", frame[12:14])[0]
        net = frame[14:]
        if ethertype == 0x0800:
            proto, src, dst = net[9], u32(net[12:16]), u32(net[16:20])
            if struct.unpack(">H", net[6:8])[0] & 0x1FFF:
                return src ^ dst
            l4 = net[(net[0] & 0xF) * 4:]
        elif ethertype == 0x86DD:
            proto, src, dst = net[6], u32(net[20:24]), u32(net[36:40])
            q = 40
            for _ in range(FANOUT_EXT_HEADERS if walk_extension_headers else 0):
                if proto == 44:
                    if struct.unpack(">H", net[q + 2:q + 4])[0] & 0xFFF8:
                        return src ^ dst           # a later fragment
                    proto, q = net[q], q + 8
                elif proto == 51:
                    proto, q = net[q], q + (net[q + 1] + 2) * 4
                elif proto in (0, 43, 60, 135, 139, 140):
                    proto, q = net[q], q + (net[q + 1] + 1) * 8
                else:
                    break
            l4 = net[q:]
            if proto == 58:
                return src if l4[0] in FANOUT_ICMP6_REQUESTS else dst
        else:
            return 0
        if proto == 6:
            flags = l4[13]
            ack, syn, rst = flags & 0x10, flags & 0x02, flags & 0x04
            if not ack:
                return src if syn or not rst else dst
            return dst if rst or syn else src
        if proto == 17:
            sport, dport = struct.unpack(">HH", l4[:4]) if len(l4) >= 4 else l4[4]
            if sport > dport:
                return src
            return src ^ dst if sport == dport else dst
        if proto == 1:
            return src if l4[0] in FANOUT_ICMP4_REQUESTS else dst
        return src ^ dst
    except (IndexError, struct.error):
        return 0


# ---------------------------------------------------------------- time order

def first_regression(ts_ns, start, n, latest_ns, tolerance_ns):
    """Reference for kernels/time_order.py: (first row of ``start..n-1`` more than
    ``tolerance_ns`` behind the latest time before it, or n; that latest time)."""
    latest = latest_ns
    for i in range(start, n):
        t = int(ts_ns[i])
        if t > latest:
            latest = t
        elif latest - t > tolerance_ns:
            return i, latest
    return n, latest


# --- long-horizon tier reference (kernels/slow_tier.py) ---

def slow_tier_reference(rows, net, threshold, horizon_ns, min_span_ns, delay_ns, directions,
                        list_len=128, exclude_ports=(), growth=0, update_ns=0,
                        suppress_ns=1 << 62, new_target_updates=False, vertical_only=False,
                        doorkeeper=True):
    """slow_scan (or, ``vertical_only``, vertical_scan) on outcome rows, with an
    ideal doorkeeper (a prober with no slot is admitted at its second failed
    attempt; the first only marks it; none if not ``doorkeeper``) and an
    unbounded table. Returns report dicts in emission order: key, seq, count,
    pairs (list of ((hi, lo), port) in list order), shape, target, port,
    first_seen_ns, last_seen_ns, probes, dropped, directions."""
    keys, marked = {}, set()
    pending, out = [], []
    order = 0

    def count_of(s):
        return s["vbest"] if vertical_only else max(s["vbest"], s["hbest"])

    def recount(s):
        s["vbest"] = s["hbest"] = 0
        for host, port in s["pairs"]:
            same_host = sum(1 for h, _ in s["pairs"] if h == host)
            same_port = sum(1 for _, p in s["pairs"] if p == port)
            if same_host > s["vbest"]:
                s["vbest"], s["vtarget"] = same_host, host
            if same_port > s["hbest"]:
                s["hbest"], s["hport"] = same_port, port

    def report(key):
        s = keys[key]
        vertical = s["vbest"] >= s["hbest"]
        out.append(dict(key=key, seq=s["seq"] + 1, count=count_of(s),
                        pairs=[pp for pp in s["pairs"]],
                        shape="ports_on_target" if vertical else "targets_on_port",
                        target=s["vtarget"] if vertical else None,
                        port=None if vertical else s["hport"], first_seen_ns=s["first"],
                        last_seen_ns=s["last"], probes=s["probes"], dropped=s["dropped"],
                        directions=set(s["dirs"])))
        _report_done(s, count_of(s))

    def fresh(ts):
        return dict(first=ts, last=ts, pane=ts // horizon_ns, pairs=[], pane_of={}, dropped=0,
                    vbest=0, hbest=0, vtarget=(0, 0), hport=0, probes=0, seq=0, reported=0,
                    last_report=0, pinned=False, new_target=False, dirs=set())

    for r in rows:
        ts = int(r["ts_ns"])
        while pending and ts >= min(p[0] for p in pending):
            p = min(pending)
            pending.remove(p)
            report(p[2])
        if (r["proto"] != 6 or r["tcp_flags"] != _TH_SYN
                or r.get("outcome", 0) not in (OUT_CLOSED, OUT_FILTERED, OUT_UNKNOWN)):
            continue
        src, dst = _addr(r["src_hi"], r["src_lo"]), _addr(r["dst_hi"], r["dst_lo"])
        if (_in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"])
                or int(r["dport"]) in net["ignore_ports"]):
            continue
        d = _direction(_in_any(src, net["home"]), _in_any(dst, net["home"]))
        port = int(r["dport"])
        if d not in directions or port in exclude_ports:
            continue
        key = (int(r["src_hi"]), int(r["src_lo"]))
        host = (int(r["dst_hi"]), int(r["dst_lo"]))
        if doorkeeper and key not in keys:
            if key not in marked:
                marked.add(key)
                continue
            marked.discard(key)
        s = keys.get(key)
        pane = ts // horizon_ns
        if s is None or (not s["pinned"] and (ts - s["last"] >= 2 * horizon_ns or
                                              (s["seq"] > 0 and ts - s["first"] >= suppress_ns))):
            s = keys[key] = fresh(ts)
        elif pane > s["pane"]:
            s["pairs"] = [pp for pp in s["pairs"] if s["pane_of"][pp] >= pane - 1]
            s["pane"] = pane
            recount(s)
        pp = (host, port)
        if pp in s["pairs"]:
            s["pane_of"][pp] = s["pane"]
            is_new = False
        elif len(s["pairs"]) >= list_len:
            s["dropped"] += 1
            is_new = True
        else:
            same_host = 1 + sum(1 for h, _ in s["pairs"] if h == host)
            same_port = 1 + sum(1 for _, p in s["pairs"] if p == port)
            s["pairs"].append(pp)
            s["pane_of"][pp] = s["pane"]
            if same_host > s["vbest"]:
                s["vbest"], s["vtarget"] = same_host, host
            if same_port > s["hbest"]:
                s["hbest"], s["hport"] = same_port, port
            is_new = True
        s["probes"] += 1
        s["last"] = max(s["last"], ts)
        s["dirs"].add(d)
        if is_new and s["seq"] > 0:
            s["new_target"] = True
        if s["pinned"]:
            continue
        c = count_of(s)
        if not _falls_due(s, c, c >= threshold and ts - s["first"] >= min_span_ns, ts, growth,
                          update_ns, new_target_updates):
            continue
        s["pinned"] = True
        pending.append([ts + delay_ns, order, key])
        order += 1
    for p in sorted(pending):
        report(p[2])
    return out
