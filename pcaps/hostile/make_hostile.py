#!/usr/bin/env python3
"""Write the small damaged and hostile captures of issue 14 next to this script.

    python3 pcaps/hostile/make_hostile.py

Every file is written byte by byte with ``struct`` (Ethernet/IPv4/TCP SYNs,
checksums zero: the sensor does not check them), deterministically: re-running
the script gives byte-identical files (gzip with mtime=0, no name). The scan
in them is ``SCANNER`` probing ``TARGET`` on ``SCAN_PORTS`` ports, one SYN per
millisecond from T0; the default ``port_scan`` threshold (50) is crossed only
when every SYN after the damage is read. ``tests/test_capture_hostile.py``
runs each through ``scan-sensor replay``.

| file | what is wrong with it |
|---|---|
| `corrupt_length_midfile.pcap` | record 10's captured length is 200000 (in range, longer than the rest of the file); 60 SYNs follow |
| `corrupt_block_midfile.pcapng` | block 10 (an EPB) has a trailing length that differs from its leading one; 60 SYNs follow |
| `undecoded_linktype.pcapng` | one interface of link type 147 (USER0) with 3 packets, one Ethernet interface with 2 |
| `missing_interface.pcapng` | one Ethernet interface; 2 packets name interface 3 |
| `no_idb.pcapng` | a section header, then 3 Enhanced Packet Blocks and no Interface Description at all |
| `four_bytes.pcapng` | the first 4 bytes of a pcapng file (the section header's type) |
| `four_bytes.pcap` | the first 4 bytes of a classic pcap file (its magic) |
| `gzip_header_cut.pcap.gz` | the first 6 bytes of a gzip member: its header cut short, nothing to decompress |
| `time_overflow.pcapng` | 2 packets whose time (2^64-1 microseconds) is past 2262, the end of int64 ns; 1 fine packet |
"""
import gzip
import io
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_700_000_000                  # 2023-11-14T22:13:20Z
SCANNER = bytes([10, 66, 0, 1])
TARGET = bytes([10, 66, 0, 2])
SCAN_PORTS = 60


def syn(dport, sport=40000, src=SCANNER, dst=TARGET):
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 1024, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst) + tcp
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip


def scan_frames():
    return [syn(1000 + i) for i in range(SCAN_PORTS)]


def pcap_header(linktype=1):
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


def pcap_record(i, frame, caplen=None):
    sec, usec = T0 + i // 1000, (i % 1000) * 1000
    caplen = len(frame) if caplen is None else caplen
    return struct.pack("<IIII", sec, usec, caplen, len(frame)) + frame


def ng_block(btype, body, trailing=None):
    body += b"\0" * (-len(body) % 4)
    blen = 12 + len(body)
    return struct.pack("<II", btype, blen) + body + struct.pack(
        "<I", blen if trailing is None else trailing)


def ng_shb():
    return ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(linktype=1):
    return ng_block(1, struct.pack("<HHI", linktype, 0, 0))


def ng_epb(iface, i, frame, ticks=None, trailing=None):
    ticks = (T0 * 1_000_000 + i * 1000) if ticks is None else ticks
    body = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return ng_block(6, body + frame, trailing)


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as fh:
        fh.write(data)


def make_corrupt_length_midfile():
    frames = scan_frames()
    out = [pcap_header()]
    for i, frame in enumerate(frames[:10]):
        out.append(pcap_record(i, frame))
    out.append(pcap_record(10, frames[10], caplen=200000))
    for i, frame in enumerate(frames[11:], start=11):
        out.append(pcap_record(i, frame))
    write("corrupt_length_midfile.pcap", b"".join(out))


def make_corrupt_block_midfile():
    frames = scan_frames()
    out = [ng_shb(), ng_idb()]
    for i, frame in enumerate(frames):
        bad = i == 10
        out.append(ng_epb(0, i, frame, trailing=0x1234 if bad else None))
    write("corrupt_block_midfile.pcapng", b"".join(out))


def make_interface_problems():
    frames = scan_frames()
    write("undecoded_linktype.pcapng", b"".join(
        [ng_shb(), ng_idb(147), ng_idb(1)]
        + [ng_epb(0, i, frames[i]) for i in range(3)]
        + [ng_epb(1, i, frames[i]) for i in range(3, 5)]))
    write("missing_interface.pcapng", b"".join(
        [ng_shb(), ng_idb(1)]
        + [ng_epb(0, i, frames[i]) for i in range(3)]
        + [ng_epb(3, i, frames[i]) for i in range(3, 5)]))
    write("no_idb.pcapng", b"".join([ng_shb()] + [ng_epb(0, i, frames[i]) for i in range(3)]))


def make_short_files():
    write("four_bytes.pcapng", ng_shb()[:4])
    write("four_bytes.pcap", pcap_header()[:4])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(pcap_header() + pcap_record(0, syn(80)))
    write("gzip_header_cut.pcap.gz", buf.getvalue()[:6])


def make_time_overflow():
    write("time_overflow.pcapng", b"".join([
        ng_shb(), ng_idb(),
        ng_epb(0, 0, syn(80)),
        ng_epb(0, 1, syn(81), ticks=(1 << 64) - 1),
        ng_epb(0, 2, syn(82), ticks=(1 << 63) + 5),
    ]))


def main():
    make_corrupt_length_midfile()
    make_corrupt_block_midfile()
    make_interface_problems()
    make_short_files()
    make_time_overflow()


if __name__ == "__main__":
    main()
