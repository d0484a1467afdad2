"""Capture containers, byte by byte: timestamps exact to the ns in every pcap and
pcapng flavour, sections and interfaces, damaged and non-capture files, gzip.

Files are written here with struct (fixtures_decode), not taken from pcaps/.
Each test states the expected values from the format's definition and also
checks the kernel against the reference decoder."""
import gzip
import re
import struct

import pytest

from fixtures_decode import (
    assert_same_decode, ethernet, ipv4, ipv6, kernel_decode, ng_block, ng_epb, ng_idb,
    ng_option, ng_pb, ng_shb, ng_spb, pcap_bytes, reference_decode, sample_pcap, sample_pcapng,
    tcp, udp,
)
from kernels.batch import PacketBatch, new_stats, stats_dict
from sensor.capture.files import CaptureError, CaptureFile

SYN = ethernet(ipv4(tcp(40000, 22)))
RAW_SYN = ipv4(tcp(40001, 23))
RAW_SYN6 = ipv6(tcp(40002, 24))


def write(tmp_path, data, name="c.pcap"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decode_both(path, **kw):
    got = kernel_decode(path, **kw)
    assert_same_decode(got, reference_decode(path))
    return got


def ts_list(decoded):
    return [int(t) for t in decoded.columns["ts_ns"]]


# ---------------------------------------------------------------- classic pcap

@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
def test_pcap_microsecond_timestamps_exact(tmp_path, big):
    records = [(1_700_000_000, 123_456, SYN, len(SYN)),
               (0xFFFFFFFF, 999_999, SYN, len(SYN)),
               (0, 0, SYN, len(SYN)),
               (1, 1, SYN, 1514)]
    got = decode_both(write(tmp_path, pcap_bytes(records, 1, big=big)))
    assert ts_list(got) == [1_700_000_000_123_456_000, 0xFFFFFFFF * 10**9 + 999_999_000, 0, 1_000_001_000]
    assert list(got.columns["wire_len"]) == [len(SYN)] * 3 + [1514]
    assert list(got.columns["dport"]) == [22] * 4


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
def test_pcap_nanosecond_timestamps_exact(tmp_path, big):
    records = [(1_700_000_000, 123_456_789, SYN, len(SYN)),
               (0xFFFFFFFF, 999_999_999, SYN, len(SYN)),
               (1_700_000_001, 1, SYN, len(SYN))]
    got = decode_both(write(tmp_path, pcap_bytes(records, 1, big=big, nano=True)))
    assert ts_list(got) == [1_700_000_000_123_456_789, 0xFFFFFFFF * 10**9 + 999_999_999,
                            1_700_000_001_000_000_001]


def test_pcap_linktype_upper_bits_are_fcs_flags(tmp_path):
    # bits 26-31 of the link-type word say "frames end with an FCS"; the type is the low 16
    data = pcap_bytes([(1, 0, SYN + b"\xde\xad\xbe\xef", len(SYN) + 4)], 1 | 0x14000000)
    got = decode_both(write(tmp_path, data))
    assert got.n == 1 and got.warnings == []


def test_pcap_unsupported_linktype_is_counted_and_warned(tmp_path):
    data = pcap_bytes([(1, 0, SYN, len(SYN))] * 3, 147)    # LINKTYPE_USER0
    got = decode_both(write(tmp_path, data))
    assert got.n == 0
    assert got.stats["records"] == 3 and got.stats["unsupported_linktype"] == 3
    assert any("link type 147" in w for w in got.warnings)


# ---------------------------------------------------------------- pcapng

@pytest.mark.parametrize("e", ["<", ">"], ids=["le", "be"])
def test_pcapng_tsresol_and_tsoffset_exact(tmp_path, e):
    t = 1_700_000_000
    blocks = [
        ng_shb(e),
        ng_idb(e, 1),                                     # 0: default 10^-6
        ng_idb(e, 1, tsresol=9),                          # 1: ns
        ng_idb(e, 1, tsresol=0x80 | 20),                  # 2: 2^-20 s
        ng_idb(e, 1, tsresol=6, tsoffset=t),              # 3: offset seconds
        ng_idb(e, 1, tsresol=9, tsoffset=-5),             # 4: negative offset
        ng_idb(e, 1, tsresol=0),                          # 5: whole seconds
        ng_idb(e, 1, tsresol=3, tsoffset=t),              # 6: ms + offset
        ng_idb(e, 1, tsresol=0x80 | 32),                  # 7: 2^-32 s, after 2038 needs bit 63
        ng_idb(e, 1, tsresol=10),                         # 8: 10^-10 s, today needs bit 63
        ng_idb(e, 1, tsresol=18),                         # 9: 10^-18 s
        ng_idb(e, 1, tsresol=19),                         # 10: unrepresentable -> default 10^-6
        ng_idb(e, 1, tsresol=0x80 | 62),                  # 11: 2^-62 s
    ]
    packets = [
        (0, t * 10**6 + 123_456),
        (1, t * 10**9 + 123_456_789),
        (2, (t << 20) | 0xFFFFF),
        (3, 123_456),
        (4, 10**9 + 7),
        (5, t),
        (6, 1_234),
        (7, (2_200_000_000 << 32) | 0x80000000),
        (8, t * 10**10 + 12_345_678_901),
        (9, 18_446_744_073_709_551_615),
        (10, t * 10**6 + 1),
        (11, (3 << 61) | 1),
    ]
    blocks += [ng_epb(e, iface, ticks, SYN) for iface, ticks in packets]
    got = decode_both(write(tmp_path, b"".join(blocks), "c.pcapng"))
    assert ts_list(got) == [
        t * 10**9 + 123_456_000,
        t * 10**9 + 123_456_789,
        t * 10**9 + 0xFFFFF * 10**9 // 2**20,             # floor, exact
        t * 10**9 + 123_456_000,
        10**9 + 7 - 5 * 10**9,
        t * 10**9,
        t * 10**9 + 1_234_000_000,
        2_200_000_000 * 10**9 + 500_000_000,
        (t + 1) * 10**9 + 234_567_890,
        18_446_744_073,
        t * 10**9 + 1_000,
        1_500_000_000,                                     # (3 * 2^61 + 1) / 2^62 s, floored
    ]
    assert got.stats["records"] == len(packets) == got.n


def test_pcapng_two_sections_different_byte_orders(tmp_path):
    data = b"".join([
        ng_shb("<"),
        ng_idb("<", 1, tsresol=9),
        ng_epb("<", 0, 1_000_000_001, SYN),
        ng_shb(">"),                                       # new section: interfaces start over
        ng_idb(">", 101),
        ng_idb(">", 229, tsresol=3),
        ng_epb(">", 1, 2_000, RAW_SYN6),
        ng_epb(">", 0, 3_000_000, RAW_SYN),
        ng_epb(">", 2, 1, RAW_SYN),                        # interface 2 not described here
        ng_shb("<"),
        ng_epb("<", 0, 1, SYN),                            # no interface in this section yet
        ng_idb("<", 1),
        ng_pb("<", 0, 4_000_000, SYN),                     # obsolete Packet Block
        ng_spb("<", SYN),                                  # Simple Packet Block: previous time
        ng_block("<", 4, b"\0" * 4),                       # Name Resolution Block
        ng_block("<", 5, struct.pack("<III", 0, 0, 0)),    # Interface Statistics Block
        ng_block("<", 0x40000BAD, b"custom"),              # custom block
    ])
    got = decode_both(write(tmp_path, data, "c.pcapng"))
    assert ts_list(got) == [1_000_000_001, 2_000_000_000, 3_000_000_000,
                            4_000_000_000, 4_000_000_000]
    assert list(got.columns["dport"]) == [22, 24, 23, 22, 22]
    assert [bool(f & 32) for f in got.columns["pkt_flags"]] == [False, True, False, False, False]
    assert got.stats["records"] == 7
    assert got.stats["unsupported_linktype"] == 2
    assert got.stats["other_blocks"] == 3
    # issue 14 item 12: packets on an interface with no IDB are said, not dropped silently
    assert len(got.warnings) == 1
    assert "2 packets were not decoded" in got.warnings[0]
    assert "no Interface Description Block in their section" in got.warnings[0]


def test_pcapng_spb_is_cut_to_snaplen(tmp_path):
    # an SPB holds min(original length, snaplen of interface 0) bytes
    udp_frame = ethernet(ipv4(udp(1, 2, b"p" * 100), proto=17))
    tcp_frame = ethernet(ipv4(tcp(3, 4, payload=b"p" * 100)))
    data = b"".join([ng_shb("<"), ng_idb("<", 1, snaplen=40), ng_spb("<", udp_frame),
                     ng_spb("<", tcp_frame)])
    got = decode_both(write(tmp_path, data, "c.pcapng"))
    # 40 bytes: Ethernet + IPv4 + 6 bytes of the transport header: UDP ports are
    # there, the TCP flags are not
    assert got.n == 1 and int(got.columns["wire_len"][0]) == len(udp_frame)
    assert (int(got.columns["sport"][0]), int(got.columns["dport"][0])) == (1, 2)
    assert got.stats["truncated_l4"] == 1


def test_pcapng_idb_options_stop_at_end_of_options(tmp_path):
    e = "<"
    opts = (ng_option(e, 2, b"eth0") + ng_option(e, 0, b"")
            + ng_option(e, 9, b"\x09"))                        # after opt_endofopt: ignored
    data = b"".join([ng_shb(e), ng_idb(e, 1, options=opts), ng_epb(e, 0, 5_000_001, SYN)])
    got = decode_both(write(tmp_path, data, "c.pcapng"))
    assert ts_list(got) == [5_000_001_000]


# ---------------------------------------------------------------- damage

def _warning_offset(warnings, text):
    matches = [w for w in warnings if text in w]
    assert matches, f"no warning containing {text!r} in {warnings}"
    return int(re.search(r"byte offset (\d+)", matches[0]).group(1))


@pytest.mark.parametrize("use_mmap", [True, False], ids=["mmap", "stream"])
def test_pcap_truncated_file_keeps_earlier_packets(tmp_path, use_mmap):
    good = pcap_bytes([(i, 0, SYN, len(SYN)) for i in range(3)], 1)
    for cut in (5, 16 + 10):                  # inside the record header, inside the frame
        data = good + pcap_bytes([(9, 0, SYN, len(SYN))], 1)[24:24 + cut]
        path = write(tmp_path, data)
        got = decode_both(path, chunk_bytes=13, use_mmap=use_mmap)
        assert got.n == 3 and got.stats["truncated_record"] == 1
        assert _warning_offset(got.warnings, "ends in the middle of a record") == len(good)
        assert str(path) in got.warnings[0]


@pytest.mark.parametrize("use_mmap", [True, False], ids=["mmap", "stream"])
def test_pcap_corrupt_record_keeps_earlier_packets(tmp_path, use_mmap):
    good = pcap_bytes([(i, 0, SYN, len(SYN)) for i in range(2)], 1)
    bad = struct.pack("<IIII", 5, 0, 262145, 262145) + SYN * 10     # caplen above libpcap's max
    path = write(tmp_path, good + bad + good[24:])
    got = decode_both(path, chunk_bytes=29, use_mmap=use_mmap)
    # issue 14 item 13: the reader resynchronises on the next plausible record
    assert got.n == 4 and got.stats["bad_record"] == 1 and got.stats["records"] == 4
    assert _warning_offset(got.warnings, "corrupt record header") == len(good)
    assert f"skipped {len(bad)} bytes" in got.warnings[0]
    assert f"next plausible record, at byte offset {len(good) + len(bad)}" in got.warnings[0]
    assert str(path) in got.warnings[0]


def test_pcap_record_at_the_size_limit_is_not_corrupt(tmp_path):
    frame = SYN + b"\0" * (262144 - len(SYN))
    got = decode_both(write(tmp_path, pcap_bytes([(1, 0, frame, len(frame))] * 2, 1)))
    assert got.n == 2 and got.stats["bad_record"] == 0


@pytest.mark.parametrize("damage", ["length not multiple of 4", "length below 12",
                                    "trailing length differs", "packet longer than block",
                                    "bad byte-order magic", "truncated"])
def test_pcapng_damage_keeps_earlier_packets(tmp_path, damage):
    e = "<"
    head = ng_shb(e) + ng_idb(e, 1) + ng_epb(e, 0, 1, SYN) + ng_epb(e, 0, 2, SYN)
    block = ng_epb(e, 0, 3, SYN)
    if damage == "length not multiple of 4":
        block = block[:4] + struct.pack("<I", len(block) + 2) + block[8:]
    elif damage == "length below 12":
        block = block[:4] + struct.pack("<I", 8) + block[8:]
    elif damage == "trailing length differs":
        block = block[:-4] + struct.pack("<I", len(block) + 4)
    elif damage == "packet longer than block":
        block = block[:20] + struct.pack("<I", len(SYN) + 64) + block[24:]
    elif damage == "bad byte-order magic":
        block = ng_shb(e)[:8] + b"\x01\x02\x03\x04" + ng_shb(e)[12:]
    elif damage == "truncated":
        block = block[:-1]
    path = write(tmp_path, head + block + ng_epb(e, 0, 4, SYN), "c.pcapng")
    if damage == "truncated":
        path = write(tmp_path, head + block, "c.pcapng")
    for kw in ({}, dict(chunk_bytes=11, use_mmap=False)):
        got = decode_both(path, **kw)
        # issue 14 item 13: the block after the damaged one is found again
        assert got.n == (2 if damage == "truncated" else 3)
        if damage == "truncated":
            assert got.stats["truncated_record"] == 1 and got.stats["bad_record"] == 0
            assert _warning_offset(got.warnings, "ends in the middle of a record") == len(head)
        else:
            assert got.stats["bad_record"] == 1 and got.stats["truncated_record"] == 0
            assert _warning_offset(got.warnings, "corrupt record header") == len(head)
            assert f"at byte offset {len(head) + len(block)}" in got.warnings[0]


def test_pcapng_first_section_header_with_bad_magic(tmp_path):
    shb = ng_shb("<")
    data = shb[:8] + b"\x4d\x3c\x2b\x1b" + shb[12:] + ng_idb("<", 1) + ng_epb("<", 0, 1, SYN)
    got = decode_both(write(tmp_path, data, "c.pcapng"))
    assert got.n == 0 and got.stats["bad_record"] == 1
    assert _warning_offset(got.warnings, "corrupt record header") == 0


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\xd4\xc3", "too short"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a pcap or pcapng"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "header cut short"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 20, "read failed"),   # corrupt gzip
    (gzip.compress(b"plain text, not a capture" * 3), "not a pcap or pcapng"),
])
@pytest.mark.parametrize("use_mmap", [True, False], ids=["mmap", "stream"])
def test_not_a_capture_raises_capture_error_naming_the_file(tmp_path, content, message, use_mmap):
    path = write(tmp_path, content, "weird name.bin")
    with pytest.raises(CaptureError) as err:
        kernel_decode(path, use_mmap=use_mmap)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_file_raises_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureFile(str(tmp_path / "nope.pcap"))


# ---------------------------------------------------------------- gzip

@pytest.mark.parametrize("e", ["<", ">"])
def test_gzip_of_pcapng(tmp_path, e):
    plain = write(tmp_path, sample_pcapng(e), "c.pcapng")
    packed = write(tmp_path, gzip.compress(plain.read_bytes()), "c.pcapng.gz")
    want = decode_both(plain)
    for kw in ({}, dict(chunk_bytes=5, capacity=2)):
        got = decode_both(packed, **kw)
        assert_same_decode(got, want, "gzip vs plain")
    assert want.n > 0


def test_gzip_multi_member(tmp_path):
    data = sample_pcap()
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    got = decode_both(write(tmp_path, packed, "c.pcap.gz"), chunk_bytes=100)
    assert_same_decode(got, kernel_decode(write(tmp_path, data)), "two gzip members vs plain")


def test_gzip_cut_short_keeps_what_was_decompressed(tmp_path):
    data = pcap_bytes([(i, 0, SYN, len(SYN)) for i in range(2000)], 1)
    packed = gzip.compress(data)
    path = write(tmp_path, packed[:len(packed) // 2], "c.pcap.gz")
    got = decode_both(path, chunk_bytes=1000)
    assert 0 < got.n < 2000
    assert any("compressed data ends early" in w for w in got.warnings)


# ---------------------------------------------------------------- CaptureFile

def test_close_with_a_suspended_generator(tmp_path):
    path = write(tmp_path, sample_pcap())
    cf = CaptureFile(str(path))
    gen = cf.batches(PacketBatch(1), new_stats())
    next(gen)
    cf.close()          # used to raise BufferError: the generator held a view of the map
    with pytest.raises(StopIteration):
        next(gen)


def test_exception_inside_loop_is_not_masked(tmp_path):
    path = write(tmp_path, sample_pcap())
    with pytest.raises(KeyboardInterrupt):
        with CaptureFile(str(path)) as cf:
            gen = cf.batches(PacketBatch(2), new_stats())
            for _ in gen:
                raise KeyboardInterrupt


def test_counters_accumulate_across_files(tmp_path):
    a = write(tmp_path, sample_pcap(), "a.pcap")
    b = write(tmp_path, sample_pcapng(), "b.pcapng")
    stats = new_stats()
    batch = PacketBatch(8)
    for p in (a, b):
        with CaptureFile(str(p)) as cf:
            for _ in cf.batches(batch, stats):
                pass
    total = stats_dict(stats)
    ra, rb = reference_decode(a).stats, reference_decode(b).stats
    assert total == {k: ra[k] + rb[k] for k in total}
