"""Kernel decode == reference decode on generated captures.

Strategies build frames for every supported link type (and an unsupported
one), IPv4 with options and fragments, IPv6 with extension-header chains,
TCP/UDP/SCTP/UDP-Lite/DCCP/ICMP/ICMPv6 including ICMP errors that quote a
packet, mapped and compatible IPv6 addresses, random snap-length cuts and
plain garbage; they are written as classic pcap (both byte orders, us and ns)
and as pcapng (several sections of either byte order, several interfaces with
different if_tsresol/if_tsoffset, EPB/PB/SPB and other blocks). The fuzz
tests put arbitrary bytes after a valid file header.

Runs are reproducible (derandomize=True, no example database). Budgets are
small; with NUMBA_DISABLE_JIT=1 (kernels run as Python) they are smaller.
"""
import gzip
import struct
import zlib

from hypothesis import HealthCheck, assume, example, given, settings, strategies as st
import pytest

import naive
from fixtures_decode import (
    JIT_DISABLED, assert_same_decode, kernel_decode, ng_block, ng_epb, ng_idb, ng_pb,
    ng_shb, ng_spb, pcap_bytes, reference_decode,
)
from sensor.capture.files import MAX_DAMAGE_REPORTS, CaptureError


# kernels compute timestamps in int64 and wrap like the reference's to_int64; run
# as plain Python (NUMBA_DISABLE_JIT=1) numpy scalars warn when they do
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def budget(n):
    return settings(max_examples=max(5, n // 10) if JIT_DISABLED else n, deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------- addresses

addr4 = st.one_of(st.binary(min_size=4, max_size=4),
                  st.sampled_from([b"\0\0\0\0", b"\0\0\0\1", b"\0\0\0\2", b"\xff\xff\xff\xff"]))
addr6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    addr4.map(lambda a: bytes(10) + b"\xff\xff" + a),       # IPv4-mapped
    addr4.map(lambda a: bytes(12) + a),                     # IPv4-compatible (and ::, ::1)
    st.sampled_from([bytes.fromhex("fd770000000000000000000000000001"),
                     bytes.fromhex("fe800000000000000000000000000001")]),
)

PORT_PROTOS = [6, 17, 132, 136, 33]
ICMP4_ERRORS = [3, 4, 5, 11, 12]
ICMP6_ERRORS = [1, 2, 3, 4]


def chance(draw, percent):
    """True about ``percent`` % of the time; shrinks towards False (the plain case)."""
    return draw(st.integers(0, 99)) >= 100 - percent


def maybe_cut(draw, data, percent=15):
    """Sometimes cut ``data`` short (snap length, quoted packets, lying lengths)."""
    if data and chance(draw, percent):
        return data[:draw(st.integers(0, len(data) - 1))]
    return data


# ---------------------------------------------------------------- transports

@st.composite
def transport(draw, proto, depth):
    if proto == 6:
        offset = draw(st.sampled_from([4, 0, 15, 3])) if chance(draw, 10) else \
            draw(st.sampled_from([5, 5, 6, 8]))
        head = struct.pack(">HHIIBBHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                           draw(st.integers(0, 2**32 - 1)), 0, (offset << 4) | draw(st.integers(0, 15)),
                           draw(st.integers(0, 255)), 1024, 0, 0)
        return head + b"\0" * (max(offset, 5) * 4 - 20) + draw(st.binary(max_size=8))
    if proto in PORT_PROTOS:
        return struct.pack(">HH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535))) + \
            draw(st.binary(min_size=4, max_size=12))
    if proto in (1, 58):
        errors = ICMP4_ERRORS if proto == 1 else ICMP6_ERRORS
        is_error = chance(draw, 60)
        icmp_type = draw(st.sampled_from(errors) if is_error else st.integers(0, 255))
        head = struct.pack(">BBH", icmp_type, draw(st.integers(0, 255)), 0) + \
            draw(st.binary(min_size=4, max_size=4))
        if proto == 58 and chance(draw, 10):          # neighbour discovery: a target address
            head = bytes([draw(st.sampled_from([135, 136]))]) + head[1:]
            return head + maybe_cut(draw, draw(addr6), 30)
        if depth == 0 and chance(draw, 80):
            quote = draw(ip_packet(depth=1))
            # an error quotes the start of the offending packet (RFC 792: IP header
            # + 8 bytes; RFC 1812 and RFC 4443: as much as fits)
            ihl = (quote[0] & 15) * 4 if quote[0] >> 4 == 4 else 40
            quote = quote[:draw(st.sampled_from([ihl + 8, ihl + 8, ihl + 4, len(quote)]))]
            return head + maybe_cut(draw, quote, 20)
        return head + draw(st.binary(max_size=12))
    return draw(st.binary(max_size=24))


def protocol(draw, depth):
    if chance(draw, 10):
        return draw(st.integers(0, 255))
    if depth == 0 and chance(draw, 20):
        return draw(st.sampled_from([1, 58]))
    return draw(st.sampled_from([6, 6, 6, 17, 17, 132, 136, 33, 1, 58, 47, 50, 59]))


# ---------------------------------------------------------------- IP

@st.composite
def ipv4_packet(draw, depth=0):
    proto = protocol(draw, depth)
    payload = draw(transport(proto, depth))
    options = draw(st.binary(max_size=40)) if chance(draw, 20) else b""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    if chance(draw, 4):
        ihl = draw(st.integers(0, 15))
    total = 4 * (5 + len(options) // 4) + len(payload)
    if chance(draw, 15):
        total = draw(st.one_of(st.just(0), st.integers(0, 65535),
                               st.integers(max(0, total - 8), total + 8)))
    flags_frag = draw(st.sampled_from([0, 0x4000]))
    if chance(draw, 20):
        flags_frag = draw(st.one_of(st.sampled_from([0x2000, 0x6000, 0x8000, 0x1000, 0x1FFF, 0x3000, 1]),
                                    st.integers(0, 0xFFFF)))
    first = 0x40 | ihl
    if chance(draw, 2):
        first = (draw(st.integers(0, 15)) << 4) | ihl      # wrong version nibble
    return struct.pack(">BBHHHBBH4s4s", first, 0, total & 0xFFFF, 7, flags_frag, 64, proto, 0,
                       draw(addr4), draw(addr4)) + options + payload


EXT_KINDS = [0, 43, 60, 44, 51, 135, 139, 140]


@st.composite
def ipv6_packet(draw, depth=0):
    kinds = []
    if chance(draw, 50):
        kinds = draw(st.lists(st.sampled_from(EXT_KINDS), min_size=1,
                              max_size=10 if chance(draw, 20) else 3))
    proto = protocol(draw, depth)
    payload = draw(transport(proto, depth))
    nexts = kinds[1:] + [proto]
    exts = b""
    for kind, nxt in zip(kinds, nexts):
        if kind == 44:
            offset = draw(st.integers(1, 8191)) if chance(draw, 30) else 0
            exts += struct.pack(">BBHI", nxt, 0, (offset << 3) | draw(st.integers(0, 7)), 99)
        elif kind == 51:
            n = draw(st.integers(0, 4))
            exts += bytes([nxt, n]) + draw(st.binary(min_size=(n + 2) * 4 - 2, max_size=(n + 2) * 4 - 2))
        else:
            n = draw(st.integers(0, 2))
            exts += bytes([nxt, n]) + draw(st.binary(min_size=6 + 8 * n, max_size=6 + 8 * n))
    body = exts + payload
    plen = len(body)
    if chance(draw, 15):
        plen = draw(st.one_of(st.just(0), st.integers(0, 65535),
                              st.integers(max(0, len(body) - 16), len(body) + 8)))
    first_nxt = kinds[0] if kinds else proto
    word = 0x60000000 | draw(st.integers(0, 0x0FFFFFFF))
    if chance(draw, 2):
        word = draw(st.integers(0, 15)) << 28
    return struct.pack(">IHBB16s16s", word, plen & 0xFFFF, first_nxt, 64, draw(addr6), draw(addr6)) + body


def ip_packet(depth=0):
    return st.one_of(ipv4_packet(depth), ipv6_packet(depth))


# ---------------------------------------------------------------- link layers

LINKTYPES = [1, 1, 1, 113, 276, 101, 12, 14, 228, 229, 0, 108, 147]
VLAN_TPIDS = [0x8100, 0x88A8, 0x9100, 0x9200]
FAMILIES = [2, 24, 28, 30, 10, 0]


@st.composite
def arp_body(draw):
    """Ethernet/IPv4 ARP, mostly well-formed: odd types, opcodes and lengths now and then."""
    hrd, pro, hln, pln = 1, 0x0800, 6, 4
    if chance(draw, 15):
        hrd, pro, hln, pln = draw(st.sampled_from([(6, 0x0800, 6, 4), (1, 0x86DD, 6, 16),
                                                   (1, 0x0800, 8, 4), (1, 0x0800, 6, 6)]))
    op = draw(st.sampled_from([1, 1, 2, 2, 3, 8, 0]))
    body = struct.pack(">HHBBH", hrd, pro, hln, pln, op) + draw(st.binary(min_size=20, max_size=20))
    return maybe_cut(draw, body)


@st.composite
def frame(draw, linktype):
    """-> (captured bytes, wire length)."""
    if chance(draw, 5):
        data = draw(st.binary(max_size=120))                # garbage
    elif linktype in (1, 113, 276) and chance(draw, 8):
        body = draw(arp_body())
        if linktype == 1:
            tags = draw(st.lists(st.tuples(st.sampled_from(VLAN_TPIDS), st.integers(0, 0xFFFF)),
                                 max_size=2))
            data = b"\x02" * 12 + b"".join(struct.pack(">HH", *t) for t in tags) + \
                struct.pack(">H", 0x0806) + body
        elif linktype == 113:
            data = struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0806) + body
        else:
            data = struct.pack(">HHiHBB8s", 0x0806, 0, 2, 1, 0, 6, b"\x02" * 8) + body
    else:
        packet = draw(ip_packet())
        v6 = packet[0] >> 4 == 6
        ethertype = 0x86DD if v6 else 0x0800
        if chance(draw, 10):
            ethertype = draw(st.one_of(st.sampled_from([0x0800, 0x86DD, 0x0806, 0x88CC, 0x0042]),
                                       st.integers(0, 0xFFFF)))
        if linktype == 1:
            tags = []
            if chance(draw, 40):
                tags = draw(st.lists(st.tuples(st.sampled_from(VLAN_TPIDS), st.integers(0, 0xFFFF)),
                                     min_size=1, max_size=12 if chance(draw, 20) else 3))
            data = b"\x02" * 12 + b"".join(struct.pack(">HH", *t) for t in tags) + \
                struct.pack(">H", ethertype) + packet
            if chance(draw, 20):
                data += draw(st.binary(max_size=24))              # padding, FCS
        elif linktype == 113:
            data = struct.pack(">HHH8sH", draw(st.integers(0, 4)), 1, 6, b"\x02" * 8, ethertype) + packet
        elif linktype == 276:
            data = struct.pack(">HHiHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02" * 8) + packet
        elif linktype in (0, 108):
            family = draw(st.sampled_from([24, 28, 30])) if v6 else 2
            if chance(draw, 10):
                family = draw(st.one_of(st.sampled_from(FAMILIES), st.integers(0, 2**32 - 1)))
            order = draw(st.sampled_from("<>")) if linktype == 0 else ">"
            if chance(draw, 5):
                order = "<"
            data = struct.pack(order + "I", family) + packet
        else:
            data = packet
    wire_len = len(data)
    if chance(draw, 15):
        data = data[:draw(st.integers(0, len(data)))]       # snap length
    if chance(draw, 5):
        wire_len = draw(st.integers(0, 2**32 - 1))
    return data, wire_len


# ---------------------------------------------------------------- containers

@st.composite
def pcap_file(draw):
    linktype = draw(st.sampled_from(LINKTYPES))
    big, nano = draw(st.booleans()), draw(st.booleans())
    frac_max = 10**9 - 1 if nano else 10**6 - 1
    records = []
    for data, wire_len in draw(st.lists(frame(linktype), max_size=6)):
        frac = draw(st.one_of(st.integers(0, frac_max), st.integers(0, 2**32 - 1)))
        records.append((draw(st.integers(0, 2**32 - 1)), frac, data, wire_len))
    return pcap_bytes(records, linktype, big=big, nano=nano)


TSRESOL = st.one_of(st.none(), st.sampled_from([0, 3, 6, 9, 10, 12, 18, 19, 0x80 | 10, 0x80 | 20,
                                                0x80 | 30, 0x80 | 31, 0x80 | 32, 0x80 | 62, 0x80 | 63]),
                    st.integers(0, 255))
TSOFFSET = st.one_of(st.none(), st.integers(-2**31, 2**31), st.integers(-2**63, 2**63 - 1))
TICKS = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2**53),
                  st.integers(1_600_000_000 * 10**6, 1_800_000_000 * 10**6))


@st.composite
def pcapng_file(draw):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        e = draw(st.sampled_from("<>"))
        out.append(ng_shb(e))
        interfaces = []

        def add_interface():
            lt = draw(st.sampled_from(LINKTYPES))
            interfaces.append(lt)
            out.append(ng_idb(e, lt, snaplen=draw(st.sampled_from([0, 0, 65535, 60, 54, 40, 20])),
                              tsresol=draw(TSRESOL), tsoffset=draw(TSOFFSET)))

        for _ in range(draw(st.integers(1, 3)) if not chance(draw, 5) else 0):
            add_interface()
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(["epb", "epb", "epb", "epb", "pb", "spb", "spb", "other", "idb"]))
            if kind == "idb":
                add_interface()
                continue
            if kind == "other":
                out.append(ng_block(e, draw(st.sampled_from([4, 5, 0x0BAD, 0x40000BAD, 7, 0x80000001])),
                                    draw(st.binary(max_size=16))))
                continue
            iface = draw(st.integers(0, max(0, len(interfaces) - 1)))
            if not interfaces or chance(draw, 5):
                iface = draw(st.integers(len(interfaces), len(interfaces) + 2))   # undescribed
            lt = interfaces[iface] if iface < len(interfaces) else 1
            data, wire_len = draw(frame(lt))
            if kind == "spb":
                out.append(ng_spb(e, data, wire_len=draw(st.sampled_from([len(data), wire_len]))))
            elif kind == "pb":
                out.append(ng_pb(e, iface, draw(TICKS), data, wire_len))
            else:
                out.append(ng_epb(e, iface, draw(TICKS), data, wire_len))
    return b"".join(out)


# ---------------------------------------------------------------- checks

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hypothesis_decode")


def counters_add_up(stats):
    assert stats["records"] == stats["decoded"] + sum(stats[k] for k in naive.SKIP_REASONS), stats


def check(workdir, data, name="h.cap", streams=((5, 2),)):
    """Kernel == reference on ``data``; the stream path with tiny chunks == mmap."""
    path = workdir / name
    path.write_bytes(data)
    try:
        want = reference_decode(path)
    except (naive.NotACapture, zlib.error):
        with pytest.raises(CaptureError):
            kernel_decode(path)
        return None
    got = kernel_decode(path, capacity=7)
    assert_same_decode(got, want)
    counters_add_up(got.stats)
    assert got.n == got.stats["decoded"]
    # a corrupt record is skipped to the next plausible one (issue 14): several
    # may be reported, the first MAX_DAMAGE_REPORTS one by one; a cut-off end once
    assert got.stats["truncated_record"] <= 1
    assert sum("corrupt record header" in w for w in got.warnings) == min(
        got.stats["bad_record"], MAX_DAMAGE_REPORTS)
    assert sum("ends in the middle" in w for w in got.warnings) == got.stats["truncated_record"]
    for chunk, capacity in streams:
        streamed = kernel_decode(path, chunk_bytes=chunk, capacity=capacity, use_mmap=False)
        assert_same_decode(streamed, got, f"stream chunk {chunk} capacity {capacity} vs mmap")
        assert streamed.warnings == got.warnings
    return got


@budget(300)
@given(data=pcap_file())
def test_generated_pcap(workdir, data):
    check(workdir, data, "h.pcap")


@budget(300)
@given(data=pcapng_file())
def test_generated_pcapng(workdir, data):
    check(workdir, data, "h.pcapng")


@budget(40)
@given(data=st.one_of(pcap_file(), pcapng_file()), level=st.integers(1, 9))
def test_generated_gzip(workdir, data, level):
    plain = check(workdir, data, "g.cap")
    packed = check(workdir, gzip.compress(data, compresslevel=level), "g.cap.gz",
                   streams=((3, 1), (100, 5)))
    assert_same_decode(packed, plain, "gzip vs plain")


# ---------------------------------------------------------------- fuzz

PCAP_HEADERS = st.builds(
    lambda magic, e, lt: struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, lt),
    st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]), st.sampled_from("<>"), st.sampled_from(LINKTYPES))


@st.composite
def pcapng_prefix(draw):
    e = draw(st.sampled_from("<>"))
    out = ng_shb(e)
    for _ in range(draw(st.integers(0, 2))):
        out += ng_idb(e, draw(st.sampled_from(LINKTYPES)), tsresol=draw(TSRESOL))
    return out


@budget(300)
@given(head=st.one_of(PCAP_HEADERS, pcapng_prefix()), tail=st.binary(max_size=600))
@example(head=struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1),
         tail=struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 0))
@example(head=ng_shb("<"), tail=struct.pack("<II", 6, 0xFFFFFFFC))
def test_fuzz_arbitrary_bytes_after_a_valid_header(workdir, head, tail):
    """Only CaptureError may escape, counters add up, and kernel == reference."""
    check(workdir, head + tail, "f.cap", streams=((7, 3),))


@budget(150)
@given(blob=st.binary(max_size=200), packed=st.booleans())
def test_fuzz_arbitrary_files(workdir, blob, packed):
    if packed:
        blob = gzip.compress(blob)[:len(blob) + 10] if blob else b"\x1f\x8b" + blob
    path = workdir / "any.bin"
    path.write_bytes(blob)
    try:
        kernel_decode(path, capacity=3)
    except CaptureError as err:
        assert str(path) in str(err)
    check(workdir, blob, "any.bin", streams=((4, 1),))


@budget(100)
@given(data=st.one_of(pcap_file(), pcapng_file()), where=st.floats(0, 1, exclude_max=True))
def test_truncated_anywhere_keeps_the_packets_before(workdir, data, where):
    """Any prefix of a capture decodes to a prefix of its rows, with at most one warning."""
    cut = max(int(len(data) * where), 24 if data[:4] != b"\n\r\r\n" else 0)
    full = check(workdir, data, "full.cap")
    part = check(workdir, data[:cut], "part.cap", streams=((11, 2),))
    assume(full is not None and part is not None)
    for name, column in part.columns.items():
        assert list(column) == list(full.columns[name][:part.n])
    assert len(part.warnings) <= 1 + len(full.warnings)
