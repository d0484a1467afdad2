"""The frame decoder's spec (kernels/decode_frame.py docstring), one rule per case.

Each case is a hand-built frame with the row fields (or the skip counter) the
spec promises, written down from the spec rather than from either decoder;
both the kernel and the reference decoder must give exactly that."""
import struct

import pytest

from fixtures_decode import (
    assert_same_decode, ethernet, icmp, ipv4, ipv6, kernel_decode, pcap_bytes, reference_decode,
    tcp, udp,
)
from kernels.batch import (
    PF_FIRST_FRAGMENT, PF_HAS_ICMP, PF_HAS_INNER, PF_HAS_PORTS, PF_HAS_TCP_FLAGS, PF_HAS_VLAN,
    PF_ARP, PF_INNER_HAS_PORTS, PF_IPV6,
)

A4, B4 = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
A6, B6 = bytes.fromhex("fd770000000000000000000000000001"), bytes.fromhex("fd770000000000000000000000000002")
MAPPED = 0xFFFF_0000_0000
KA, KB = MAPPED | 0x0A4D0001, MAPPED | 0x0A4D0002
KA6 = (0xFD77_0000_0000_0000, 1)
SYN = tcp(40000, 22)
TCPF = PF_HAS_PORTS | PF_HAS_TCP_FLAGS


def ext(nxt, body_words=0):
    """An 8-byte-unit IPv6 extension header (hop-by-hop, routing, dest opts...)."""
    return bytes([nxt, body_words]) + b"\0" * (6 + 8 * body_words)


def ah(nxt, length=4):
    return bytes([nxt, length]) + b"\0" * ((length + 2) * 4 - 2)


def frag6(nxt, offset=0, more=False):
    return struct.pack(">BBHI", nxt, 0, (offset << 3) | int(more), 1234)


def chain(headers, last, payload):
    """headers: (kind, arg) list -> IPv6 payload bytes and first next-header value."""
    kinds = [k for k, _ in headers]
    out = b""
    nexts = kinds[1:] + [last]
    for (kind, arg), nxt in zip(headers, nexts):
        if kind == 51:
            out += ah(nxt)
        elif kind == 44:
            out += frag6(nxt, *arg)
        else:
            out += ext(nxt, arg)
    return (kinds[0] if kinds else last), out + payload


def v6_with(headers, last=6, payload=SYN, plen=None):
    first, body = chain(headers, last, payload)
    return ipv6(body, src=A6, dst=B6, nxt=first, plen=plen)


def sll(payload, ethertype=0x0800):
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, ethertype) + payload


def sll2(payload, ethertype=0x0800):
    return struct.pack(">HHiHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02" * 8) + payload


def arp(op=1, sha=b"\x02\0\0\0\0\x01", spa=A4, tha=bytes(6), tpa=B4, hrd=1, pro=0x0800,
        hln=6, pln=4):
    return struct.pack(">HHBBH", hrd, pro, hln, pln, op) + sha + spa + tha + tpa


def ndp(kind, target):
    """ICMPv6 neighbour solicitation (135) / advertisement (136) for ``target``."""
    return bytes([kind, 0, 0, 0, 0, 0, 0, 0]) + target


MAC_A, MAC_B = 0x0200_0000_0001, 0x0200_0000_0002
V4 = ipv4(SYN)
V6 = ipv6(SYN, src=A6, dst=B6)
QUOTE_UDP = ipv4(udp(40000, 161)[:8], proto=17, src=B4, dst=A4, total=128)

CASES = [
    # --- link layers
    ("ethernet", 1, ethernet(V4), dict(src_lo=KA, dst_lo=KB, sport=40000, dport=22, proto=6,
                                       tcp_flags=0x02, pkt_flags=TCPF)),
    ("ethernet short", 1, ethernet(V4)[:13], "truncated_link"),
    ("ethernet arp of another hardware type", 1, ethernet(b"\0" * 28, ethertype=0x0806),
     "non_ip"),
    # --- ARP
    ("arp request", 1, ethernet(arp(), ethertype=0x0806),
     dict(src_lo=KA, dst_lo=KB, icmp_type=1, inner_src_lo=MAC_A, inner_dst_lo=0, proto=0,
          pkt_flags=PF_ARP)),
    ("arp reply", 1, ethernet(arp(2, sha=b"\x02\0\0\0\0\x02", spa=B4,
                                  tha=b"\x02\0\0\0\0\x01", tpa=A4), ethertype=0x0806),
     dict(src_lo=KB, dst_lo=KA, icmp_type=2, inner_src_lo=MAC_B, inner_dst_lo=MAC_A,
          pkt_flags=PF_ARP)),
    ("arp probe from 0.0.0.0", 1, ethernet(arp(spa=bytes(4)), ethertype=0x0806),
     dict(src_lo=MAPPED, dst_lo=KB, icmp_type=1)),
    ("arp padded to 60 bytes", 1, ethernet(arp() + bytes(18), ethertype=0x0806),
     dict(src_lo=KA, icmp_type=1)),
    ("arp in a vlan", 1, ethernet(arp(), ethertype=0x0806, vlans=[(0x8100, 7)]),
     dict(vlan=7, pkt_flags=PF_ARP | PF_HAS_VLAN, icmp_type=1)),
    ("arp over sll", 113, sll(arp(), 0x0806), dict(src_lo=KA, dst_lo=KB, pkt_flags=PF_ARP)),
    ("arp cut in its addresses", 1, ethernet(arp()[:27], ethertype=0x0806), "truncated_link"),
    ("arp cut in its header", 1, ethernet(arp()[:7], ethertype=0x0806), "truncated_link"),
    ("arp for another protocol", 1, ethernet(arp(pro=0x86DD), ethertype=0x0806), "non_ip"),
    ("arp with 8-byte addresses", 1, ethernet(arp(hln=8), ethertype=0x0806), "non_ip"),
    ("inverse arp opcode", 1, ethernet(arp(op=8), ethertype=0x0806), "non_ip"),
    # --- neighbour discovery: the target address
    ("neighbour solicitation", 101, ipv6(ndp(135, B6), src=A6, dst=bytes.fromhex(
        "ff0200000000000000000001ff000002"), nxt=58),
     dict(icmp_type=135, inner_dst_hi=0xFD77_0000_0000_0000, inner_dst_lo=2,
          pkt_flags=PF_HAS_ICMP | PF_IPV6)),
    ("neighbour advertisement", 101, ipv6(ndp(136, B6), src=B6, dst=A6, nxt=58),
     dict(icmp_type=136, inner_dst_lo=2)),
    ("neighbour solicitation with source link-layer address", 101,
     ipv6(ndp(135, B6) + b"\x01\x01\x02\0\0\0\0\x01", src=A6, nxt=58,
          dst=bytes.fromhex("ff0200000000000000000001ff000002")),
     dict(icmp_type=135, inner_dst_lo=2, inner_src_hi=0, inner_src_lo=MAC_A)),
    ("neighbour solicitation, option cut", 101,
     ipv6(ndp(135, B6) + b"\x01\x01\x02\0\0", src=A6, dst=B6, nxt=58),
     dict(icmp_type=135, inner_dst_lo=2, inner_src_lo=0)),
    ("neighbour solicitation, other option first", 101,
     ipv6(ndp(135, B6) + b"\x0e\x01\x02\0\0\0\0\x01", src=A6, dst=B6, nxt=58),
     dict(icmp_type=135, inner_src_lo=0)),
    ("neighbour advertisement with target link-layer address", 101,
     ipv6(ndp(136, B6) + b"\x02\x01\x02\0\0\0\0\x02", src=B6, dst=A6, nxt=58),
     dict(icmp_type=136, inner_dst_lo=2, inner_src_lo=0)),
    ("neighbour solicitation cut", 101, ipv6(ndp(135, B6)[:20], src=A6, dst=B6, nxt=58),
     dict(icmp_type=135, inner_dst_hi=0, inner_dst_lo=0)),
    ("ethernet 802.3 length", 1, ethernet(b"\xaa\xaa\x03" + b"\0" * 40, ethertype=43), "non_ip"),
    ("vlan 802.1Q", 1, ethernet(V4, vlans=[(0x8100, 0x2000 | 42)]),
     dict(vlan=42, pkt_flags=TCPF | PF_HAS_VLAN, dport=22)),
    ("qinq keeps outer id", 1, ethernet(V6, vlans=[(0x88A8, 100), (0x8100, 200)]),
     dict(vlan=100, pkt_flags=TCPF | PF_HAS_VLAN | PF_IPV6)),
    ("vlan 0x9100 0x9200", 1, ethernet(V4, vlans=[(0x9100, 5), (0x9200, 6)]), dict(vlan=5)),
    ("four tags", 1, ethernet(V4, vlans=[(0x8100, 1), (0x8100, 2), (0x88A8, 3), (0x9100, 4)]),
     dict(vlan=1, dport=22)),
    # no tag count hides a packet (issue 14): every tag is walked, outermost id kept
    ("five tags", 1, ethernet(V4, vlans=[(0x8100, 7)] + [(0x8100, i) for i in range(4)]),
     dict(vlan=7, dport=22, pkt_flags=TCPF | PF_HAS_VLAN)),
    ("forty tags", 1, ethernet(V4, vlans=[(0x88A8, 9)] * 40), dict(vlan=9, dport=22)),
    ("forty tags, the last cut", 1, ethernet(V4, vlans=[(0x8100, 9)] * 40)[:14 + 4 * 39 + 2],
     "truncated_link"),
    ("vlan tag cut", 1, ethernet(V4, vlans=[(0x8100, 1)])[:16], "truncated_link"),
    ("vlan id 0 still a tag", 1, ethernet(V4, vlans=[(0x8100, 0xE000)]),
     dict(vlan=0, pkt_flags=TCPF | PF_HAS_VLAN)),
    ("ipv6 in 0x0800", 1, ethernet(V6, ethertype=0x0800), "malformed_ip"),
    ("sll", 113, sll(V4), dict(src_lo=KA, dport=22)),
    ("sll ipv6", 113, sll(V6, 0x86DD), dict(src_hi=KA6[0], src_lo=KA6[1], pkt_flags=TCPF | PF_IPV6)),
    ("sll short", 113, sll(V4)[:15], "truncated_link"),
    ("sll arp of another hardware type", 113, sll(b"\0" * 28, 0x0806), "non_ip"),
    ("sll2", 276, sll2(V4), dict(src_lo=KA, dport=22)),
    ("sll2 short", 276, sll2(V4)[:19], "truncated_link"),
    ("null little-endian", 0, struct.pack("<I", 2) + V4, dict(dport=22)),
    ("null big-endian", 0, struct.pack(">I", 2) + V4, dict(dport=22)),
    ("null ipv6 24", 0, struct.pack("<I", 24) + V6, dict(pkt_flags=TCPF | PF_IPV6)),
    ("null ipv6 28 be", 0, struct.pack(">I", 28) + V6, dict(pkt_flags=TCPF | PF_IPV6)),
    ("null ipv6 30", 0, struct.pack("<I", 30) + V6, dict(pkt_flags=TCPF | PF_IPV6)),
    ("null other family", 0, struct.pack("<I", 7) + V4, "non_ip"),
    ("null short", 0, b"\x02\0\0", "truncated_link"),
    ("loop network order", 108, struct.pack(">I", 2) + V4, dict(dport=22)),
    ("loop host order is wrong", 108, struct.pack("<I", 2) + V4, "non_ip"),
    ("raw 101 v4", 101, V4, dict(dport=22)),
    ("raw 101 v6", 101, V6, dict(pkt_flags=TCPF | PF_IPV6)),
    ("raw 12", 12, V4, dict(dport=22)),
    ("raw 14", 14, V6, dict(dport=22)),
    ("raw empty", 101, b"", "truncated_ip"),
    ("raw version 5", 101, b"\x50" + V4[1:], "malformed_ip"),
    ("ipv4 228", 228, V4, dict(dport=22)),
    ("ipv4 228 carrying v6", 228, V6, "malformed_ip"),
    ("ipv6 229", 229, V6, dict(dport=22)),
    ("ipv6 229 carrying v4", 229, V4, "malformed_ip"),
    ("unsupported link type", 147, V4, "unsupported_linktype"),
    # --- IPv4
    ("ipv4 options skipped", 101, ipv4(SYN, options=b"\x01" * 12), dict(dport=22, sport=40000)),
    ("ipv4 ihl 4", 101, bytes([0x44]) + V4[1:], "malformed_ip"),
    ("ipv4 total < ihl", 101, ipv4(SYN, total=19), "malformed_ip"),
    ("ipv4 header cut", 101, V4[:19], "truncated_ip"),
    ("ipv4 options cut", 101, ipv4(SYN, options=b"\x01" * 12)[:28], "truncated_ip"),
    ("ipv4 tso total 0", 101, ipv4(SYN, total=0), dict(dport=22)),
    ("ipv4 tso total 0 short tcp", 101, ipv4(SYN, total=0)[:30], "malformed_l4"),
    ("ethernet padding ignored", 1, ethernet(ipv4(udp(1, 2), proto=17)) + b"\0" * 18,
     dict(sport=1, dport=2, wire_len=60)),
    ("ipv4 df set is not a fragment", 101, ipv4(SYN, flags_frag=0x4000), dict(pkt_flags=TCPF)),
    ("ipv4 first fragment", 101, ipv4(SYN, flags_frag=0x2000),
     dict(pkt_flags=TCPF | PF_FIRST_FRAGMENT, tcp_flags=2)),
    ("ipv4 later fragment", 101, ipv4(SYN, flags_frag=0x0001), "fragment_noninitial"),
    ("ipv4 last fragment", 101, ipv4(SYN, flags_frag=0x00FF), "fragment_noninitial"),
    ("ipv4 fragment offset bit 12", 101, ipv4(SYN, flags_frag=0x1000), "fragment_noninitial"),
    ("ipv4 reserved flag is not a fragment", 101, ipv4(SYN, flags_frag=0x8000), dict(pkt_flags=TCPF)),
    ("ipv4 tiny first fragment", 101, ipv4(SYN[:8], flags_frag=0x2000),
     dict(sport=40000, dport=22, tcp_flags=0, pkt_flags=PF_HAS_PORTS | PF_FIRST_FRAGMENT)),
    ("ipv4 tiny first fragment 3 bytes", 101, ipv4(SYN[:3], flags_frag=0x2000), "malformed_l4"),
    ("ipv4 tiny unfragmented", 101, ipv4(SYN[:8]), "malformed_l4"),
    ("ipv4 tiny first fragment cut", 101, ipv4(SYN, flags_frag=0x2000)[:28], "truncated_l4"),
    # --- transports
    ("tcp cut before flags", 101, V4[:20 + 13], "truncated_l4"),
    ("tcp flags reached", 101, V4[:20 + 14], dict(tcp_flags=2, pkt_flags=TCPF)),
    ("tcp data offset 4", 101, ipv4(tcp(1, 2, offset=4)), "malformed_l4"),
    # a data offset past the end of a whole packet (issue 14): not a TCP segment
    ("tcp data offset past the packet", 101, ipv4(tcp(1, 2, offset=5)[:12] + bytes([15 << 4])
                                                  + tcp(1, 2)[13:]), "malformed_l4"),
    ("tcp data offset 6 in 20 bytes", 101, ipv4(tcp(1, 2)[:12] + bytes([6 << 4]) + tcp(1, 2)[13:]),
     "malformed_l4"),
    ("tcp data offset 15, options cut by the snap length", 101,
     ipv4(tcp(1, 2, offset=15))[:20 + 30], dict(dport=2, tcp_flags=2)),
    ("tcp data offset past a first fragment", 101,
     ipv4(tcp(1, 2, offset=8)[:24], flags_frag=0x2000), dict(dport=2, tcp_flags=2)),
    ("tcp total too short", 101, ipv4(SYN, total=30), "malformed_l4"),
    ("tcp all flags", 101, ipv4(tcp(1, 2, flags=0xFF)), dict(tcp_flags=0xFF)),
    ("udp", 101, ipv4(udp(53, 5353), proto=17), dict(sport=53, dport=5353, pkt_flags=PF_HAS_PORTS, proto=17)),
    ("udp cut", 101, ipv4(udp(53, 5353), proto=17)[:23], "truncated_l4"),
    ("udp ports only", 101, ipv4(udp(53, 5353), proto=17)[:24], dict(dport=5353)),
    ("sctp", 101, ipv4(struct.pack(">HHI", 7, 9, 0), proto=132), dict(sport=7, dport=9, proto=132)),
    ("udp-lite", 101, ipv4(struct.pack(">HH", 7, 9), proto=136), dict(sport=7, dport=9)),
    ("dccp", 101, ipv4(struct.pack(">HH", 7, 9) + b"\0" * 8, proto=33), dict(sport=7, dport=9)),
    ("gre has no ports", 101, ipv4(b"\0" * 8, proto=47), dict(proto=47, pkt_flags=0, sport=0)),
    ("esp", 101, ipv4(b"\0" * 8, proto=50), dict(proto=50, pkt_flags=0)),
    # --- ICMP
    ("icmp echo", 101, ipv4(icmp(8), proto=1), dict(icmp_type=8, pkt_flags=PF_HAS_ICMP, proto=1)),
    ("icmp cut", 101, ipv4(icmp(8), proto=1)[:21], "truncated_l4"),
    ("icmp total says 1 byte", 101, ipv4(icmp(8), proto=1, total=21), "malformed_l4"),
    ("icmp port unreachable", 101, ipv4(icmp(3, 3, quote=QUOTE_UDP), proto=1, src=B4, dst=A4),
     dict(icmp_type=3, icmp_code=3, src_lo=KB, inner_proto=17, inner_src_lo=KB, inner_dst_lo=KA,
          inner_sport=40000, inner_dport=161,
          pkt_flags=PF_HAS_ICMP | PF_HAS_INNER | PF_INNER_HAS_PORTS)),
    ("icmp quote without ports", 101, ipv4(icmp(11, 0, quote=QUOTE_UDP[:23]), proto=1),
     dict(inner_proto=17, inner_sport=0, inner_dst_lo=KA, pkt_flags=PF_HAS_ICMP | PF_HAS_INNER)),
    ("icmp quote cut", 101, ipv4(icmp(3, 1, quote=QUOTE_UDP[:12]), proto=1),
     dict(icmp_type=3, icmp_code=1, inner_proto=0, inner_src_lo=0, pkt_flags=PF_HAS_ICMP)),
    ("icmp quote fragment", 101, ipv4(icmp(3, 1, quote=ipv4(SYN, flags_frag=3)), proto=1),
     dict(inner_proto=0, pkt_flags=PF_HAS_ICMP)),
    ("icmp error no quote", 101, ipv4(icmp(3, 1), proto=1), dict(pkt_flags=PF_HAS_ICMP)),
    ("icmp redirect quote", 101, ipv4(icmp(5, 1, quote=ipv4(SYN[:8])), proto=1),
     dict(inner_proto=6, inner_dport=22, pkt_flags=PF_HAS_ICMP | PF_HAS_INNER | PF_INNER_HAS_PORTS)),
    ("icmp echo reply has no quote", 101, ipv4(icmp(0, quote=QUOTE_UDP), proto=1),
     dict(inner_proto=0, pkt_flags=PF_HAS_ICMP)),
    ("icmpv6 unreachable quoting v6", 101,
     ipv6(icmp(1, 4, quote=ipv6(udp(40000, 53), src=B6, dst=A6, nxt=17)), src=A6, dst=B6, nxt=58),
     dict(icmp_type=1, icmp_code=4, inner_proto=17, inner_dport=53, inner_src_hi=KA6[0],
          inner_dst_lo=1, pkt_flags=PF_IPV6 | PF_HAS_ICMP | PF_HAS_INNER | PF_INNER_HAS_PORTS)),
    ("icmpv6 echo", 101, ipv6(icmp(128), src=A6, dst=B6, nxt=58),
     dict(icmp_type=128, pkt_flags=PF_IPV6 | PF_HAS_ICMP)),
    ("icmpv6 type 3 is an error", 101,
     ipv6(icmp(3, 0, quote=ipv6(SYN, src=B6, dst=A6)), src=A6, dst=B6, nxt=58),
     dict(inner_proto=6, inner_dport=22)),
    # --- IPv6 addresses
    ("ipv4-mapped source", 101, ipv6(SYN, src=bytes(10) + b"\xff\xff" + A4, dst=B6),
     dict(src_hi=0, src_lo=KA, pkt_flags=TCPF | PF_IPV6)),
    ("ipv4-compatible source", 101, ipv6(SYN, src=bytes(12) + A4, dst=bytes(12) + B4),
     dict(src_hi=0, src_lo=KA, dst_lo=KB)),
    ("unspecified and loopback kept", 101, ipv6(SYN, src=bytes(16), dst=bytes(15) + b"\x01"),
     dict(src_hi=0, src_lo=0, dst_hi=0, dst_lo=1)),
    ("::2 is ipv4-compatible 0.0.0.2", 101, ipv6(SYN, src=bytes(15) + b"\x02", dst=B6),
     dict(src_lo=MAPPED | 2)),
    # --- IPv6 extension headers
    ("ipv6 hop-by-hop", 101, v6_with([(0, 0)]), dict(proto=6, dport=22)),
    ("ipv6 routing dstopts", 101, v6_with([(43, 2), (60, 1)]), dict(proto=6, dport=22)),
    ("ipv6 ah", 101, v6_with([(51, None)]), dict(proto=6, dport=22)),
    ("ipv6 eight ext headers", 101, v6_with([(0, 0), (60, 0), (43, 0), (44, (0, False)), (51, None),
                                             (60, 1), (135, 0), (139, 0)]), dict(proto=6, dport=22)),
    # no chain length hides a packet (issue 14): the whole chain is walked
    ("ipv6 nine ext headers", 101, v6_with([(60, 0)] * 9), dict(proto=6, dport=22)),
    ("ipv6 thirty ext headers", 101, v6_with([(0, 0), (60, 1), (43, 0)] * 10),
     dict(proto=6, dport=22)),
    ("ipv6 thirty ext headers, packet ends", 101, v6_with([(60, 0)] * 30, plen=29 * 8 + 4),
     "malformed_ip"),
    ("ipv6 first fragment", 101, v6_with([(44, (0, True))]),
     dict(pkt_flags=TCPF | PF_IPV6 | PF_FIRST_FRAGMENT)),
    ("ipv6 atomic fragment", 101, v6_with([(44, (0, False))]), dict(pkt_flags=TCPF | PF_IPV6)),
    ("ipv6 later fragment", 101, v6_with([(44, (1, True))]), "fragment_noninitial"),
    ("ipv6 tiny first fragment", 101, v6_with([(44, (0, True))], payload=SYN[:8]),
     dict(sport=40000, dport=22, pkt_flags=PF_HAS_PORTS | PF_IPV6 | PF_FIRST_FRAGMENT)),
    ("ipv6 ext header cut", 101, v6_with([(43, 2)])[:40 + 10], "truncated_ip"),
    ("ipv6 ext header past payload length", 101, v6_with([(43, 2)], payload=b"", plen=10),
     "malformed_ip"),
    ("ipv6 header cut", 101, V6[:39], "truncated_ip"),
    ("ipv6 jumbo plen 0", 101, ipv6(SYN, src=A6, dst=B6, plen=0), dict(dport=22)),
    ("ipv6 no next header", 101, ipv6(b"", src=A6, dst=B6, nxt=59), dict(proto=59, pkt_flags=PF_IPV6)),
    ("ipv6 esp stops the walk", 101, v6_with([(0, 0)], last=50, payload=b"\0" * 16),
     dict(proto=50, pkt_flags=PF_IPV6)),
    ("ipv6 tcp cut", 101, V6[:40 + 10], "truncated_l4"),
]


@pytest.mark.parametrize("linktype, frame, expected",
                         [pytest.param(lt, f, e, id=name) for name, lt, f, e in CASES])
def test_frame_rule(tmp_path, linktype, frame, expected):
    wire = max(len(frame), 60)
    path = tmp_path / "one.pcap"
    path.write_bytes(pcap_bytes([(1_700_000_000, 1, frame, wire)], linktype))
    got = kernel_decode(path)
    assert_same_decode(got, reference_decode(path))
    assert got.stats["records"] == 1
    if isinstance(expected, str):
        assert got.n == 0
        assert got.stats[expected] == 1, got.stats
        return
    assert got.n == 1, got.stats
    row = got.row(0)
    assert row["ts_ns"] == 1_700_000_000_000_001_000
    assert row["wire_len"] == wire
    wrong = {k: (row[k], v) for k, v in expected.items() if row[k] != v}
    assert not wrong, f"field: (got, want) {wrong}\nrow {row}"
