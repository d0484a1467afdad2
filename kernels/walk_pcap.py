"""Classic pcap record walker: capture bytes -> batch rows.

Walks ``buf[pos:end]`` record by record (16-byte header, then captured bytes),
decoding each frame into the batch until the batch is full or the buffer
holds no complete record. The file header (24 bytes) is parsed in Python.

Returns (pos, rows, status):
  WALK_OK        stopped at ``end`` or with a full batch; resume at ``pos``
  WALK_NEED_MORE ``buf[pos:end]`` holds only part of a record (streams: read
                 more; at end of file: the file ends mid-record)
  WALK_BAD       the record header at ``pos`` is corrupt (captured length
                 above ``MAX_RECORD_BYTES``); decoding this file stops

``last_record_sec`` walks record headers only (no decode) and gives the
seconds field of the last record of a run: the time reference for
resynchronising after a corrupt record (``sensor/capture/resync.py``).

Memory: none beyond the batch and stats it is given.
"""
import numpy as np

from kernels.batch import S_DECODED, S_RECORDS
from kernels.decode_frame import parse_frame, store_row
from kernels.jit import inline, kernel

WALK_OK = 0
WALK_NEED_MORE = 1
WALK_BAD = 2

# libpcap refuses records larger than this (MAXIMUM_SNAPLEN)
MAX_RECORD_BYTES = 262144


@inline
def u32_at(buf, p, swap):
    if swap:
        return ((np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
                | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3]))
    return ((np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16)
            | (np.int64(buf[p + 1]) << 8) | np.int64(buf[p]))


@inline
def u16_at(buf, p, swap):
    if swap:
        return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
    return (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@kernel
def walk_pcap(buf, pos, end, swap, nanosecond, linktype, cols, row, stats):
    """Fill ``cols`` from row ``row`` on with records starting at ``buf[pos]``.

    ``swap`` is True when the file's byte order is big-endian (the record
    fields are read as big-endian), False for little-endian.
    """
    capacity = cols[0].shape[0]
    frac_mult = 1 if nanosecond else 1000
    while row < capacity:
        if end - pos < 16:
            if pos == end:
                return pos, row, WALK_OK
            return pos, row, WALK_NEED_MORE
        sec = u32_at(buf, pos, swap)
        frac = u32_at(buf, pos + 4, swap)
        caplen = u32_at(buf, pos + 8, swap)
        wire_len = u32_at(buf, pos + 12, swap)
        if caplen > MAX_RECORD_BYTES:
            return pos, row, WALK_BAD
        if end - pos - 16 < caplen:
            return pos, row, WALK_NEED_MORE
        stats[S_RECORDS] += 1
        ts_ns = sec * 1_000_000_000 + frac * frac_mult
        (skip, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, tcp_flags, icmp_type,
         icmp_code, pkt_flags, inner_proto, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, i_sport,
         i_dport, vlan) = parse_frame(buf, pos + 16, caplen, linktype)
        if skip != 0:
            stats[skip] += 1
        else:
            store_row(cols, row, ts_ns, wire_len, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
                      proto, tcp_flags, icmp_type, icmp_code, pkt_flags, inner_proto, i_src_hi,
                      i_src_lo, i_dst_hi, i_dst_lo, i_sport, i_dport, vlan)
            stats[S_DECODED] += 1
            row += 1
        pos += 16 + caplen
    return pos, row, WALK_OK


@kernel
def last_record_sec(buf, start, stop, swap):
    """Seconds field of the last record starting in ``buf[start:stop]``, where
    records follow each other from ``start`` (a record boundary); -1 if none."""
    sec = np.int64(-1)
    pos = start
    while stop - pos >= 16:
        sec = u32_at(buf, pos, swap)
        caplen = u32_at(buf, pos + 8, swap)
        if caplen > MAX_RECORD_BYTES:
            break
        pos += 16 + caplen
    return sec
