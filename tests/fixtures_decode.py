"""Helpers for the decode tests: capture writers, frame builders, and running
the kernel path (CaptureFile) and the reference (naive.py) side by side."""
import os
import pathlib
import struct

import numpy as np

from kernels.batch import COLUMNS, COLUMN_NAMES, PacketBatch, new_stats, stats_dict
from sensor.capture.files import CaptureFile

REPO = pathlib.Path(__file__).resolve().parent.parent
PCAP_DIR = REPO / "pcaps"
JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def shipped_captures():
    """Every capture under pcaps/ (whatever is there right now), sorted."""
    found = set()
    for pattern in ("*.pcap", "*.pcapng", "*.gz"):
        found.update(p for p in PCAP_DIR.rglob(pattern) if p.is_file())
    return sorted(found)


# ---------------------------------------------------------------- decoding

class Decoded:
    """Columns (name -> array over all rows), counters, warnings of one decode."""

    def __init__(self, columns, stats, warnings):
        self.columns = columns
        self.stats = stats
        self.warnings = warnings

    @property
    def n(self):
        return len(self.columns["ts_ns"])

    def row(self, i):
        return {name: int(self.columns[name][i]) for name in COLUMN_NAMES}


def kernel_decode(path, capacity=4096, chunk_bytes=4 << 20, use_mmap=True):
    batch = PacketBatch(capacity)
    stats = new_stats()
    parts = {name: [] for name in COLUMN_NAMES}
    with CaptureFile(str(path), chunk_bytes=chunk_bytes, use_mmap=use_mmap) as cf:
        for b in cf.batches(batch, stats):
            assert 1 <= b.n <= capacity
            for name, col in b.rows().items():
                parts[name].append(col.copy())
        warnings = [str(w) for w in cf.warnings]
    columns = {name: (np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype))
               for name, dtype in COLUMNS}
    return Decoded(columns, stats_dict(stats), warnings)


def reference_decode(path):
    import naive
    rows, stats = naive.decode_reference(path)
    columns = {name: np.array([r[name] for r in rows], dtype=dtype) for name, dtype in COLUMNS}
    return Decoded(columns, stats, [])


def assert_same_decode(got, want, label="kernel vs reference"):
    """Column arrays equal field by field, and counters equal."""
    for name, _ in COLUMNS:
        assert got.columns[name].dtype == want.columns[name].dtype, name
    if got.n != want.n:
        first = next((i for i in range(min(got.n, want.n)) if got.row(i) != want.row(i)),
                     min(got.n, want.n))
        raise AssertionError(
            f"{label}: {got.n} rows vs {want.n}; first difference at row {first}:\n"
            f"  got  {got.row(first) if first < got.n else None}\n"
            f"  want {want.row(first) if first < want.n else None}\n"
            f"  counters got {got.stats}\n  counters want {want.stats}")
    for name in COLUMN_NAMES:
        a, b = got.columns[name], want.columns[name]
        if not np.array_equal(a, b):
            i = int(np.flatnonzero(a != b)[0])
            raise AssertionError(
                f"{label}: row {i} field {name}: {int(a[i])} != {int(b[i])}\n"
                f"  got  {got.row(i)}\n  want {want.row(i)}")
    assert got.stats == want.stats, f"{label}: counters\n  got  {got.stats}\n  want {want.stats}"


# ---------------------------------------------------------------- writers

def pcap_bytes(records, linktype, big=False, nano=False, snaplen=262144):
    """records: iterable of (sec, frac, frame, wire_len) -> a classic pcap file."""
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, frame, wire_len in records:
        out.append(struct.pack(e + "IIII", sec, frac, len(frame), wire_len))
        out.append(bytes(frame))
    return b"".join(out)


def _pad4(b):
    return bytes(b) + b"\0" * (-len(b) % 4)


def ng_block(e, btype, body):
    blen = 12 + len(_pad4(body))
    return struct.pack(e + "II", btype, blen) + _pad4(body) + struct.pack(e + "I", blen)


def ng_option(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + _pad4(value)


def ng_shb(e):
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(e, linktype, snaplen=0, tsresol=None, tsoffset=None, options=b""):
    opts = b""
    if tsresol is not None:
        opts += ng_option(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += ng_option(e, 14, struct.pack(e + "q", tsoffset))
    opts += options
    if opts:
        opts += ng_option(e, 0, b"")
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(e, iface, ticks, frame, wire_len=None, caplen=None):
    wire_len = len(frame) if wire_len is None else wire_len
    caplen = len(frame) if caplen is None else caplen
    return ng_block(e, 6, struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                      caplen, wire_len) + bytes(frame))


def ng_pb(e, iface, ticks, frame, wire_len=None):
    wire_len = len(frame) if wire_len is None else wire_len
    return ng_block(e, 2, struct.pack(e + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                      len(frame), wire_len) + bytes(frame))


def ng_spb(e, frame, wire_len=None):
    wire_len = len(frame) if wire_len is None else wire_len
    return ng_block(e, 3, struct.pack(e + "I", wire_len) + bytes(frame))


# ---------------------------------------------------------------- frames

def ethernet(payload, ethertype=None, vlans=()):
    """vlans: (tpid, tci) pairs, outermost first; ethertype defaults to the IP version's."""
    if ethertype is None:
        ethertype = 0x86DD if payload and payload[0] >> 4 == 6 else 0x0800
    out = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    for tpid, tci in vlans:
        out += struct.pack(">HH", tpid, tci)
    return out + struct.pack(">H", ethertype) + bytes(payload)


def ipv4(payload, src=b"\x0a\x4d\x00\x01", dst=b"\x0a\x4d\x00\x02", proto=6, options=b"",
         total=None, flags_frag=0):
    options = _pad4(options)
    ihl = 5 + len(options) // 4
    total = 4 * ihl + len(payload) if total is None else total
    return (struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, flags_frag, 64, proto, 0,
                        src, dst) + options + bytes(payload))


def ipv6(payload, src=b"\xfd\x77" + b"\0" * 13 + b"\x01", dst=b"\xfd\x77" + b"\0" * 13 + b"\x02",
         nxt=6, plen=None):
    plen = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, plen, nxt, 64, src, dst) + bytes(payload)


def tcp(sport=40000, dport=80, flags=0x02, offset=5, payload=b""):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 1024, 0, 0) + \
        b"\0" * max(0, 4 * offset - 20) + payload


def udp(sport=40000, dport=53, payload=b""):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type, code=0, rest=b"\0\0\0\0", quote=b""):
    return struct.pack(">BBH", icmp_type, code, 0) + rest + quote


def sample_frames():
    """A small mix of Ethernet frames: decoded ones and every common skip reason."""
    v6a = b"\xfd\x77" + b"\0" * 13 + b"\x01"
    v6b = b"\xfd\x77" + b"\0" * 13 + b"\x02"
    quote = ipv4(udp(40000, 161)[:8], proto=17, src=b"\x0a\x4d\x00\x02", dst=b"\x0a\x4d\x00\x01",
                 total=28 + 100)
    frames = [
        ethernet(ipv4(tcp(40000, 22))),
        ethernet(ipv4(tcp(40000, 80, flags=0x12)), vlans=[(0x8100, 7)]),
        ethernet(ipv4(udp(5353, 53, b"x" * 30), proto=17)),
        ethernet(ipv4(icmp(3, 3, quote=quote), proto=1)),
        ethernet(ipv6(tcp(40001, 443), src=v6a, dst=v6b)),
        ethernet(ipv6(icmp(128, 0), nxt=58, src=v6a, dst=v6b)),
        ethernet(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, ethertype=0x0806),   # ARP
        ethernet(ipv4(b"\0" * 8, proto=6, flags_frag=0x0010)),                          # non-first fragment
        ethernet(ipv4(tcp(40000, 25)))[:14 + 20 + 6],                                 # cut TCP header
        ethernet(ipv4(tcp(40000, 25), total=30)),                                     # malformed TCP
    ]
    return frames * 3


def sample_pcap(big=False, nano=False):
    frames = sample_frames()
    return pcap_bytes([(1_700_000_000 + i, 1000 * i, f, len(f) + (i % 3)) for i, f in enumerate(frames)],
                      1, big=big, nano=nano)


def sample_pcapng(e="<"):
    out = [ng_shb(e), ng_idb(e, 1, tsresol=9), ng_idb(e, 1)]
    for i, f in enumerate(sample_frames()):
        out.append(ng_epb(e, i % 2, 1_700_000_000 * (10**9 if i % 2 == 0 else 10**6) + i, f))
    return b"".join(out)
