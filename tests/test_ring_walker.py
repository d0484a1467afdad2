"""TPACKET_V3 block walker (kernels/walk_ring.py) == its reference (naive.walk_ring_block).

Blocks are built here byte for byte as the kernel lays them out (block
descriptor, then ``tpacket3_hdr`` records 8-byte aligned, frames at
``tp_mac``) from the Ethernet frames of the shipped captures, with and
without a VLAN tag the "kernel" stripped into ``tp_vlan_tci``, and walked
with batches small enough that a block spans several of them.

A second property ties the ring to the file path: a frame whose outer tag
was stripped into ``tp_vlan_tci`` decodes to the same row as the frame with
its tag in place read from a pcap file (the kernel strips, the walker restores).
"""
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import naive
from fixtures_decode import JIT_DISABLED, PCAP_DIR
from kernels.batch import COLUMN_NAMES, PacketBatch, new_stats, stats_dict
from kernels.walk_ring import walk_ring_block

BLOCK_DESC_BYTES = 48
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100, 0x9200)
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 16
TP_STATUS_VLAN_TPID_VALID = 64


def _align8(n):
    return (n + 7) & ~7


def ethernet_frames():
    """(ts_ns, wire_len, frame) of every Ethernet record in the shipped pcaps."""
    out = []
    for path in sorted(PCAP_DIR.rglob("*.pcap")):
        data = path.read_bytes()
        try:
            for event in naive.walk_pcap(data):
                if event[0] == "frame" and event[1] == naive.LINKTYPE_ETHERNET:
                    _, _, ts_ns, wire_len, frame = event
                    out.append((ts_ns, wire_len, frame))
        except naive.NotACapture:
            continue
    return out


FRAMES = ethernet_frames()
TAGGED = [i for i, (_, _, f) in enumerate(FRAMES)
          if len(f) >= 18 and struct.unpack(">H", f[12:14])[0] in VLAN_TPIDS]


def strip_outer_tag(frame):
    """What the kernel does on receive: -> (frame without its outer tag, tci)."""
    tci = struct.unpack(">H", frame[14:16])[0]
    return frame[:12] + frame[16:], tci


def build_ring(records, block_bytes, block_index=1, nblocks=3, mac_extra=0):
    """A ring of ``nblocks`` blocks whose block ``block_index`` holds ``records``:
    (ts_ns, wire_len, frame, tci or None). -> (ring array, block_off, block_end,
    first_pkt_off, num_pkts)."""
    ring = np.zeros(block_bytes * nblocks, dtype=np.uint8)
    block_off = block_index * block_bytes
    pos = block_off + BLOCK_DESC_BYTES
    first = pos
    placed = []
    for ts_ns, wire_len, frame, tci in records:
        mac = 68 + 2 + mac_extra          # TPACKET3_HDRLEN, then the kernel's padding
        length = _align8(mac + len(frame))
        if pos + length > block_off + block_bytes:
            break
        placed.append((pos, length))
        status = TP_STATUS_USER
        if tci is not None:
            status |= TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID
        sec, nsec = divmod(ts_ns, 10**9)
        hdr = naive.TPACKET3_HDR.pack(0, sec & 0xFFFFFFFF, nsec, len(frame), wire_len, status, mac,
                                      mac + 14, 0x5A5A5A5A, tci or 0, 0x8100 if tci is not None else 0, 0)
        ring[pos:pos + 48] = np.frombuffer(hdr, np.uint8)
        ring[pos + mac:pos + mac + len(frame)] = np.frombuffer(frame, np.uint8)
        pos += length
    for i, (p, length) in enumerate(placed[:-1]):
        ring[p:p + 4] = np.frombuffer(struct.pack("<I", length), np.uint8)
    desc = struct.pack("<IIIIII", 3, 0, TP_STATUS_USER, len(placed), BLOCK_DESC_BYTES, pos - block_off)
    ring[block_off:block_off + len(desc)] = np.frombuffer(desc, np.uint8)
    return ring, block_off, block_off + block_bytes, first, len(placed)


def kernel_walk(ring, block_end, pkt_off, pkts_left, capacity):
    """Walk a whole block with batches of ``capacity``; -> (rows, stats, resume points)."""
    batch = PacketBatch(capacity)
    stats = new_stats()
    rows, resumes = [], []
    while True:
        pkt_off, pkts_left, n = walk_ring_block(ring, block_end, pkt_off, pkts_left,
                                                batch.columns, 0, stats)
        assert 0 <= n <= capacity
        cols = batch.columns
        rows.extend({name: int(cols[k][i]) for k, name in enumerate(COLUMN_NAMES)}
                    for i in range(n))
        resumes.append((pkt_off, pkts_left, n))
        if pkts_left == 0:
            return rows, stats_dict(stats), resumes
        assert n == capacity, "the walker stops early only with a full batch"


def reference_walk(ring, block_end, pkt_off, pkts_left, capacity):
    rows, resumes = [], []
    total = {name: 0 for name in naive.STATS}
    while True:
        pkt_off, pkts_left, part, stats = naive.walk_ring_block(ring, block_end, pkt_off,
                                                                pkts_left, capacity)
        rows.extend(part)
        resumes.append((pkt_off, pkts_left, len(part)))
        for k, v in stats.items():
            total[k] += v
        if pkts_left == 0:
            return rows, total, resumes


def assert_walks_equal(ring, block_end, first, num, capacity):
    got = kernel_walk(ring, block_end, first, num, capacity)
    want = reference_walk(ring, block_end, first, num, capacity)
    assert got[1] == want[1]
    assert got[2] == want[2]
    for i, (a, b) in enumerate(zip(got[0], want[0])):
        assert a == b, f"row {i}: kernel {a} reference {b}"
    assert len(got[0]) == len(want[0])
    stats = got[1]
    skipped = sum(stats[name] for name in naive.SKIP_REASONS)
    assert stats["records"] == stats["decoded"] + skipped
    return got


def test_frames_available():
    assert len(FRAMES) > 1000, "the shipped captures give the walker tests their frames"
    assert TAGGED, "pcaps/edge/vlan_qinq.pcap gives tagged frames"


@pytest.mark.parametrize("capacity", [1, 7, 4096])
def test_all_shipped_frames_through_blocks(capacity):
    """Every shipped Ethernet frame, untagged and with its outer tag stripped, in
    blocks of 64 KiB; a batch of 1 or 7 makes every block span batches."""
    records = []
    for ts_ns, wire_len, frame in FRAMES:
        etype = struct.unpack(">H", frame[12:14])[0] if len(frame) >= 14 else 0
        if etype in VLAN_TPIDS and len(frame) >= 18:
            stripped, tci = strip_outer_tag(frame)
            records.append((ts_ns, wire_len - 4, stripped, tci))
        else:
            records.append((ts_ns, wire_len, frame, None))
    total_rows = 0
    while records:
        ring, _, block_end, first, num = build_ring(records, 1 << 16)
        assert num > 0
        rows, stats, _ = assert_walks_equal(ring, block_end, first, num, capacity)
        total_rows += len(rows)
        records = records[num:]
        if capacity == 1:
            break                # one block is enough at one row per call
    assert total_rows > 0


def test_stripped_tag_restored_like_the_file_decode():
    """Outer tag stripped into tp_vlan_tci, restored by the walker: the row equals
    the file decode of the tagged frame (QinQ: the outer tag is the row's vlan)."""
    assert TAGGED
    records, want = [], []
    for i in TAGGED:
        ts_ns, wire_len, frame = FRAMES[i]
        if wire_len != len(frame):
            continue                          # cut frames: stripping moves the cut
        stripped, tci = strip_outer_tag(frame)
        records.append((ts_ns, wire_len - 4, stripped, tci))
        row, _ = naive.decode_frame(frame, naive.LINKTYPE_ETHERNET, ts_ns, wire_len)
        want.append(row)
    ring, _, block_end, first, num = build_ring(records, 1 << 20)
    assert num == len(records)
    rows, _, _ = kernel_walk(ring, block_end, first, num, 4096)
    want = [r for r in want if r is not None]
    assert want and rows == want
    assert any(r["vlan"] for r in rows)


def test_tci_overrides_inner_tag_and_keeps_priority_bits_out():
    frame = next(FRAMES[i][2] for i in TAGGED)
    stripped, _tci = strip_outer_tag(frame)
    ring, _, block_end, first, num = build_ring([(5 * 10**9 + 7, len(frame), stripped, 0xE123)], 4096)
    rows, _, _ = kernel_walk(ring, block_end, first, num, 8)
    if rows:
        assert rows[0]["vlan"] == 0x123 and rows[0]["pkt_flags"] & naive.PF_HAS_VLAN
        assert rows[0]["wire_len"] == len(frame) + 4
        assert rows[0]["ts_ns"] == 5 * 10**9 + 7


def test_corrupt_record_header_ends_the_block():
    records = [(10**9, len(f), f, None) for _, _, f in FRAMES[:5]]
    ring, _, block_end, first, num = build_ring(records, 1 << 16)
    second = first + int(ring[first:first + 4].view("<u4")[0])
    ring[second + 12:second + 16] = np.frombuffer(struct.pack("<I", 1 << 20), np.uint8)  # tp_snaplen
    rows, stats, resumes = assert_walks_equal(ring, block_end, first, num, 64)
    assert stats["bad_record"] == 1 and stats["records"] == 1
    assert resumes[-1][1] == 0


def budget(n):
    return settings(max_examples=max(5, n // 10) if JIT_DISABLED else n, deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


record_spec = st.tuples(
    st.integers(0, len(FRAMES) - 1),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),        # tp_vlan_tci
    st.integers(0, 2**32 - 1),                           # tp_sec
    st.integers(0, 999_999_999),                         # tp_nsec
    st.integers(0, 300),                                 # cut the frame to this many bytes
)


@budget(150)
@given(specs=st.lists(record_spec, min_size=1, max_size=40),
       capacity=st.integers(1, 50), mac_extra=st.sampled_from([0, 2, 6, 14]),
       block_index=st.integers(0, 2))
def test_random_blocks(specs, capacity, mac_extra, block_index):
    records = []
    for idx, tci, sec, nsec, cut in specs:
        _, wire_len, frame = FRAMES[idx]
        frame = frame[:cut] if cut < len(frame) else frame
        records.append((sec * 10**9 + nsec, max(wire_len, len(frame)), frame, tci))
    ring, _, block_end, first, num = build_ring(records, 1 << 15, block_index=block_index,
                                                mac_extra=mac_extra)
    assert_walks_equal(ring, block_end, first, num, capacity)
