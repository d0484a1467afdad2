#!/usr/bin/env python3
"""Write tiny, deterministic edge-case captures next to this script.

    python3 pcaps/edge/make_edge_cases.py

Packets are built with scapy (checksums, header fields) and the capture files
are written byte by byte with ``struct`` so that every header field (magic,
byte order, link type, snaplen, caplen/len, timestamps) is exactly what the
README documents.  Nothing depends on the clock, the host or randomness:
re-running the script produces byte-identical files (gzip members are written
with mtime=0 and no file name).

Timestamp rule for the classic pcap files unless stated otherwise: record i
(0-based) has ts = 1700000000 s + i * 1000 us  (1700000000 = 2023-11-14T22:13:20Z).
See pcaps/README.md for what each file exercises.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import sys

import logging

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z

# link types
LT_NULL = 0
LT_EN10MB = 1
LT_RAW = 101
LT_LOOP = 108
LT_LINUX_SLL = 113
LT_IPV4 = 228
LT_IPV6 = 229
LT_LINUX_SLL2 = 276

MAC_A = bytes.fromhex("020000000001")  # "client"/scanner side
MAC_B = bytes.fromhex("020000000002")  # "server"/target side

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806


# --------------------------------------------------------------------------
# packet helpers (all fields fixed: IP id=1, TCP seq=0, window 1024 ...)
# --------------------------------------------------------------------------
def syn4(src: str, dst: str, sport: int, dport: int, **ip_kw) -> bytes:
    return bytes(IP(src=src, dst=dst, id=1, ttl=64, **ip_kw)
                 / TCP(sport=sport, dport=dport, flags="S", seq=1000, window=1024))


def syn6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(IPv6(src=src, dst=dst, hlim=64)
                 / TCP(sport=sport, dport=dport, flags="S", seq=1000, window=1024))


def eth(payload: bytes, ethertype: int, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def eth_ip(ip_bytes: bytes, **kw) -> bytes:
    ver = ip_bytes[0] >> 4
    return eth(ip_bytes, ETH_IPV6 if ver == 6 else ETH_IPV4, **kw)


def default_ts(i: int) -> tuple[int, int]:
    """(seconds, microseconds) for record i under the default rule."""
    return T0 + (i * 1000) // 1_000_000, (i * 1000) % 1_000_000


# --------------------------------------------------------------------------
# classic pcap writer
# --------------------------------------------------------------------------
MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


def pcap_bytes(records, linktype: int, *, snaplen: int = 65535, endian: str = "<",
               magic: int = MAGIC_US) -> bytes:
    """records: iterable of (sec, frac, data[, orig_len]); frac is usec or nsec
    depending on the magic.  data is written as-is (caplen=len(data))."""
    out = io.BytesIO()
    out.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for rec in records:
        sec, frac, data = rec[0], rec[1], rec[2]
        orig = rec[3] if len(rec) > 3 else len(data)
        out.write(struct.pack(endian + "IIII", sec, frac, len(data), orig))
        out.write(data)
    return out.getvalue()


def write(name: str, blob: bytes) -> None:
    path = os.path.join(HERE, name)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    print(f"{name:28s} {len(blob):7d} bytes")


def simple(pkts, linktype: int, **kw) -> bytes:
    return pcap_bytes([(*default_ts(i), p) for i, p in enumerate(pkts)], linktype, **kw)


def gz(blob: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(blob)
    return buf.getvalue()


# --------------------------------------------------------------------------
# pcapng writer (by hand: scapy cannot write multi-section / big-endian /
# SPB / obsolete PB)
# --------------------------------------------------------------------------
def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def ng_opts(e: str, opts) -> bytes:
    if not opts:
        return b""
    body = b"".join(struct.pack(e + "HH", code, len(val)) + _pad4(val) for code, val in opts)
    return body + struct.pack(e + "HH", 0, 0)  # opt_endofopt


def ng_block(e: str, btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    assert total % 4 == 0
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def ng_shb(e: str, opts=()) -> bytes:
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + ng_opts(e, opts)
    return ng_block(e, 0x0A0D0D0A, body)


def ng_idb(e: str, linktype: int, snaplen: int = 262144, opts=()) -> bytes:
    return ng_block(e, 0x00000001, struct.pack(e + "HHI", linktype, 0, snaplen) + ng_opts(e, opts))


def ng_epb(e: str, if_id: int, ts_units: int, data: bytes, orig_len: int | None = None) -> bytes:
    orig = len(data) if orig_len is None else orig_len
    body = struct.pack(e + "IIIII", if_id, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), orig)
    return ng_block(e, 0x00000006, body + _pad4(data))


def ng_spb(e: str, data: bytes) -> bytes:
    return ng_block(e, 0x00000003, struct.pack(e + "I", len(data)) + _pad4(data))


def ng_pb(e: str, if_id: int, ts_units: int, data: bytes, drops: int = 0) -> bytes:
    """Obsolete Packet Block (type 2)."""
    body = struct.pack(e + "HHIIII", if_id, drops, ts_units >> 32, ts_units & 0xFFFFFFFF,
                       len(data), len(data))
    return ng_block(e, 0x00000002, body + _pad4(data))


# --------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------
def make_vlan_qinq() -> None:
    ip = lambda dport: syn4("10.0.0.1", "10.0.0.2", 40000, dport)  # noqa: E731
    ip6 = syn6("2001:db8::1", "2001:db8::2", 40000, 8080)

    def tagged(tags, ethertype, payload):
        # tags: [(tpid, vid, pcp)] outermost first; the first TPID sits in the
        # Ethernet type field.
        b = MAC_B + MAC_A
        for tpid, vid, pcp in tags:
            b += struct.pack("!HH", tpid, (pcp << 13) | vid)
        return b + struct.pack("!H", ethertype) + payload

    pkts = [
        tagged([(0x8100, 100, 0)], ETH_IPV4, ip(22)),                      # single 802.1Q
        tagged([(0x88A8, 200, 0), (0x8100, 100, 0)], ETH_IPV4, ip(80)),    # 802.1ad QinQ
        tagged([(0x9100, 300, 0)], ETH_IPV4, ip(443)),                     # 0x9100 single
        tagged([(0x9100, 300, 0), (0x8100, 100, 5)], ETH_IPV6, ip6),       # 0x9100 + 802.1Q, IPv6
    ]
    write("vlan_qinq.pcap", simple(pkts, LT_EN10MB))


def make_sll() -> None:
    v4 = syn4("10.0.0.1", "10.0.0.2", 40000, 22)
    v6 = syn6("2001:db8::1", "2001:db8::2", 40000, 22)

    def sll(pkttype, proto, payload, addr=MAC_A):
        return struct.pack("!HHH", pkttype, 1, len(addr)) + addr.ljust(8, b"\x00") \
            + struct.pack("!H", proto) + payload

    # pkttype 0 = to us (incoming), 4 = outgoing
    write("linux_sll.pcap", simple([sll(0, ETH_IPV4, v4), sll(0, ETH_IPV6, v6),
                                    sll(4, ETH_IPV4, syn4("10.0.0.2", "10.0.0.1", 22, 40000), addr=MAC_B)],
                                   LT_LINUX_SLL))

    def sll2(pkttype, proto, payload, ifindex=2, addr=MAC_A):
        return struct.pack("!HHIHBB", proto, 0, ifindex, 1, pkttype, len(addr)) \
            + addr.ljust(8, b"\x00") + payload

    write("linux_sll2.pcap", simple([sll2(0, ETH_IPV4, v4), sll2(0, ETH_IPV6, v6),
                                     sll2(4, ETH_IPV4, syn4("10.0.0.2", "10.0.0.1", 22, 40000), addr=MAC_B)],
                                    LT_LINUX_SLL2))


def make_raw() -> None:
    v4 = [syn4("10.0.0.1", "10.0.0.2", 40000, p) for p in (22, 80)]
    v6 = [syn6("2001:db8::1", "2001:db8::2", 40000, p) for p in (22, 80)]
    write("raw_ip.pcap", simple([v4[0], v6[0], v4[1], v6[1]], LT_RAW))
    write("raw_ipv4.pcap", simple(v4, LT_IPV4))
    write("raw_ipv6.pcap", simple(v6, LT_IPV6))


def make_loopback() -> None:
    v4 = syn4("127.0.0.1", "127.0.0.1", 40000, 22)
    v6 = syn6("::1", "::1", 40000, 22)
    fams = [(2, v4), (24, v6), (28, v6), (30, v6)]
    # DLT_NULL: family in the byte order of the writing host; the file is
    # little-endian, so the family is little-endian too.
    write("null_loopback.pcap", simple([struct.pack("<I", f) + p for f, p in fams], LT_NULL))
    # DLT_LOOP: family always in network byte order (file still little-endian)
    write("loop.pcap", simple([struct.pack("!I", f) + p for f, p in fams], LT_LOOP))


def make_ipv4_options_fragments() -> None:
    p0 = syn4("10.0.0.1", "10.0.0.2", 40000, 22, options=[IPOption_Router_Alert()])  # IHL 6
    p1 = syn4("10.0.0.1", "10.0.0.2", 40000, 23,
              options=[IPOption_RR(routers=["0.0.0.0"] * 9)])                          # IHL 15
    # a 48-byte TCP segment (SYN with 28 payload bytes) split in two fragments
    seg = bytes(IP(src="10.0.0.1", dst="10.0.0.2") /
                TCP(sport=40000, dport=80, flags="S", seq=1000, window=1024)
                / Raw(b"fragmented-syn-payload-28by"[:28].ljust(28, b".")))[20:]
    assert len(seg) == 48
    f1 = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, flags="MF", frag=0, proto=6, ttl=64)
               / Raw(seg[:24]))
    f2 = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, flags=0, frag=3, proto=6, ttl=64)
               / Raw(seg[24:]))
    write("ipv4_options_fragments.pcap",
          simple([eth_ip(p) for p in (p0, p1, f1, f2)], LT_EN10MB))


def make_ipv6_ext_headers() -> None:
    s, d = "2001:db8::1", "2001:db8::2"
    p0 = bytes(IPv6(src=s, dst=d, hlim=64) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
               / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[])
               / TCP(sport=40000, dport=22, flags="S", seq=1000, window=1024))
    seg = bytes(IPv6(src=s, dst=d)
                / TCP(sport=40000, dport=80, flags="S", seq=1000, window=1024)
                / Raw(b"x" * 28))[40:]
    assert len(seg) == 48
    f1 = bytes(IPv6(src=s, dst=d, hlim=64)
               / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=0xABCDEF01) / Raw(seg[:24]))
    f2 = bytes(IPv6(src=s, dst=d, hlim=64)
               / IPv6ExtHdrFragment(nh=6, offset=3, m=0, id=0xABCDEF01) / Raw(seg[24:]))
    write("ipv6_ext_headers.pcap", simple([eth_ip(p) for p in (p0, f1, f2)], LT_EN10MB))


def make_icmp_errors() -> None:
    udp_probe = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=1, ttl=64)
                      / UDP(sport=40000, dport=33434))
    err1 = bytes(IP(src="10.0.0.2", dst="10.0.0.1", id=2, ttl=64)
                 / ICMP(type=3, code=3) / Raw(udp_probe))           # quotes whole datagram
    syn = syn4("10.0.0.1", "10.0.0.3", 40001, 445)
    err2 = bytes(IP(src="10.0.0.254", dst="10.0.0.1", id=3, ttl=64)
                 / ICMP(type=3, code=13) / Raw(syn[:28]))            # IP hdr + 8 bytes (RFC 792)
    udp6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=64)
                 / UDP(sport=40002, dport=33434))
    err3 = bytes(IPv6(src="2001:db8::2", dst="2001:db8::1", hlim=64)
                 / ICMPv6DestUnreach(code=4) / Raw(udp6))
    echo_req = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=4, ttl=64)
                     / ICMP(type=8, code=0, id=0x1234, seq=1) / Raw(b"scan-sensor-ping"))
    echo_rep = bytes(IP(src="10.0.0.2", dst="10.0.0.1", id=5, ttl=64)
                     / ICMP(type=0, code=0, id=0x1234, seq=1) / Raw(b"scan-sensor-ping"))
    fwd = dict(src=MAC_A, dst=MAC_B)   # from the client 10.0.0.1 / 2001:db8::1
    rev = dict(src=MAC_B, dst=MAC_A)   # towards the client
    pkts = [eth_ip(udp_probe, **fwd), eth_ip(err1, **rev), eth_ip(syn, **fwd), eth_ip(err2, **rev),
            eth_ip(udp6, **fwd), eth_ip(err3, **rev), eth_ip(echo_req, **fwd), eth_ip(echo_rep, **rev)]
    write("icmp_errors.pcap", simple(pkts, LT_EN10MB))


def make_mapped() -> None:
    ports = range(1, 61)
    ts = [(T0 + (i * 10_000) // 1_000_000, (i * 10_000) % 1_000_000) for i in range(60)]
    v6 = [eth_ip(syn6("::ffff:10.1.2.3", "::ffff:10.1.2.4", 50000, p)) for p in ports]
    v4 = [eth_ip(syn4("10.1.2.3", "10.1.2.4", 50000, p)) for p in ports]
    write("mapped_ipv6.pcap", pcap_bytes([(*t, p) for t, p in zip(ts, v6)], LT_EN10MB))
    write("ipv4_twin_scan.pcap", pcap_bytes([(*t, p) for t, p in zip(ts, v4)], LT_EN10MB))


def make_truncated_snaplen() -> None:
    snap = 40
    full = [
        eth_ip(syn4("10.0.0.1", "10.0.0.2", 40000, 22)),      # 54 B: cut 6 bytes into TCP
        eth_ip(syn4("10.0.0.1", "10.0.0.2", 40000, 23,        # IHL 8: cut inside IP options
                    options=[IPOption_RR(routers=["0.0.0.0"]), IPOption_Router_Alert()])),
        eth_ip(syn6("2001:db8::1", "2001:db8::2", 40000, 22)),  # cut inside the IPv6 header
        eth_ip(bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=1, ttl=64)
                     / UDP(sport=40000, dport=53) / Raw(b"Q" * 30))),  # UDP hdr whole, payload cut
    ]
    recs = [(*default_ts(i), p[:snap], len(p)) for i, p in enumerate(full)]
    write("truncated_snaplen.pcap", pcap_bytes(recs, LT_EN10MB, snaplen=snap))


def make_truncated_file() -> None:
    pkts = [eth_ip(syn4("10.0.0.1", "10.0.0.2", 40000, p)) for p in (21, 22, 23)]
    blob = simple(pkts, LT_EN10MB)
    write("truncated_file.pcap", blob[:-34])  # last record: header + 20 of 54 data bytes


def make_corrupt_record() -> None:
    pkts = [eth_ip(syn4("10.0.0.1", "10.0.0.2", 40000, p)) for p in (21, 22, 23, 24)]
    hdr = struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, 65535, LT_EN10MB)
    rec = lambda i, p: struct.pack("<IIII", *default_ts(i), len(p), len(p)) + p  # noqa: E731
    bad = struct.pack("<IIII", *default_ts(2), 0x7FFFFFFF, 0x7FFFFFFF)
    blob = hdr + rec(0, pkts[0]) + rec(1, pkts[1]) + bad + rec(3, pkts[2]) + rec(4, pkts[3])
    write("corrupt_record.pcap", blob)


def make_big_endian() -> None:
    pkts = [eth_ip(syn4("10.0.0.1", "10.0.0.2", 40000, p)) for p in (22, 80, 443)]
    ns = [(T0, 123_456_789), (T0 + 1, 1), (T0 + 2, 999_999_999)]
    us = [(T0, 123_456), (T0 + 1, 1), (T0 + 2, 999_999)]
    write("nanosecond_be.pcap",
          pcap_bytes([(*t, p) for t, p in zip(ns, pkts)], LT_EN10MB, endian=">", magic=MAGIC_NS))
    write("microsecond_be.pcap",
          pcap_bytes([(*t, p) for t, p in zip(us, pkts)], LT_EN10MB, endian=">", magic=MAGIC_US))


def make_multi_section() -> None:
    s, d = "10.5.0.1", "10.5.0.2"
    e1, e2 = "<", ">"
    sec1 = (
        ng_shb(e1, [(4, b"scan-sensor make_edge_cases.py")])            # shb_userappl
        + ng_idb(e1, LT_EN10MB, opts=[(2, b"eth0")])                    # if 0: usec (default)
        + ng_idb(e1, LT_RAW, opts=[(2, b"rawip0"), (9, bytes([9]))])    # if 1: if_tsresol=9 (ns)
        + ng_epb(e1, 0, 1_700_000_000_000_001, eth_ip(syn4(s, d, 40000, 1001)))
        + ng_epb(e1, 1, 1_700_000_001_000_000_002, syn4(s, d, 40000, 1002))
        + ng_spb(e1, eth_ip(syn4(s, d, 40000, 1003)))                  # SPB -> if 0, no ts
        + ng_pb(e1, 0, 1_700_000_002_500_000, eth_ip(syn4(s, d, 40000, 1004)))  # obsolete PB
        + ng_epb(e1, 1, 1_700_000_002_750_000_000, syn6("2001:db8::1", "2001:db8::2", 40000, 1005))
    )
    sec2 = (
        ng_shb(e2)
        + ng_idb(e2, LT_EN10MB, opts=[(2, b"eth1"), (9, bytes([0x80 | 20]))])  # 2^-20 s
        + ng_epb(e2, 0, (1_700_000_003 << 20) + (1 << 19), eth_ip(syn4(s, d, 40000, 1006)))
        + ng_epb(e2, 0, (1_700_000_004 << 20) + 1, eth_ip(syn4(s, d, 40000, 1007)))
    )
    write("multi_section.pcapng", sec1 + sec2)


def syn_scan_packets():
    return [eth_ip(syn4("10.9.9.9", "10.9.9.10", 40000, p)) for p in range(1, 101)]


def make_syn_scan_gz() -> None:
    pkts = syn_scan_packets()
    write("syn_scan.pcap.gz", gz(simple(pkts, LT_EN10MB)))
    e = "<"
    ng = ng_shb(e) + ng_idb(e, LT_EN10MB)
    for i, p in enumerate(pkts):
        sec, usec = default_ts(i)
        ng += ng_epb(e, 0, sec * 1_000_000 + usec, p)
    write("syn_scan.pcapng.gz", gz(ng))


def make_malformed() -> None:
    garbage = bytes(range(0xF0, 0x100)) * 2 + b"\xde\xad\xbe\xef" * 4       # 48 bytes
    good = syn4("10.0.0.1", "10.0.0.2", 40000, 22)

    ihl3 = bytearray(good)
    ihl3[0] = 0x43                                                          # IHL=3 (<5)
    short_total = bytearray(good)
    short_total[2:4] = struct.pack("!H", 12)                                # total_length 12 < 20
    v6 = bytearray(syn6("2001:db8::1", "2001:db8::2", 40000, 22))
    v6[4:6] = struct.pack("!H", 1000)                                       # payload len 1000 > 20 present
    doff = bytearray(good)
    doff[20 + 12] = 0x20                                                    # TCP data offset 2 (<5)

    pkts = [
        eth(garbage, 0x88B5),                 # 0: unknown/local-experimental ethertype, garbage
        eth(garbage, ETH_IPV4),               # 1: ethertype IPv4 but payload garbage (version 15)
        eth(bytes(ihl3), ETH_IPV4),           # 2: IPv4 IHL=3
        eth(bytes(short_total), ETH_IPV4),    # 3: IPv4 total_length 12
        eth(bytes(v6), ETH_IPV6),             # 4: IPv6 payload_length beyond capture
        eth(bytes(doff), ETH_IPV4),           # 5: TCP data offset 2
        b"",                                  # 6: zero-length record
        (MAC_B + MAC_A)[:10],                 # 7: 10-byte "Ethernet" frame
        eth(good, ETH_IPV4),                  # 8: one valid SYN at the end
    ]
    write("malformed.pcap", simple(pkts, LT_EN10MB))


def main() -> int:
    make_vlan_qinq()
    make_sll()
    make_raw()
    make_loopback()
    make_ipv4_options_fragments()
    make_ipv6_ext_headers()
    make_icmp_errors()
    make_mapped()
    make_truncated_snaplen()
    make_truncated_file()
    make_corrupt_record()
    make_big_endian()
    make_multi_section()
    make_syn_scan_gz()
    make_malformed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
