"""Finding the next plausible record after a corrupt one (as pcapfix does).

When a record header is corrupt (or claims more bytes than the file has left),
``find_pcap_record`` / ``find_pcapng_block`` scan forward, byte by byte, for
the first offset where a record plausibly starts, so one bad record does not
lose the rest of a file. The bytes in between are skipped and reported.

Classic pcap, a candidate at ``q``: a full 16-byte header with
``0 < caplen <= wire_len <= MAX_RECORD_BYTES``, a fraction below 10^6 (10^9
in nanosecond files) and seconds within ``RESYNC_WINDOW_S`` of the last good
record's (any seconds when there was none); its frame fits in the data; and
it is followed by a full header that passes the same checks against its
own seconds (so a file cut off inside its last record is not mistaken for
damage; a lone record just before the end after damage is not recovered).

pcapng, a candidate at ``q``: a known block type (in the section's byte
order; before any section only a Section Header, in the order of its
byte-order magic), a total length ``12 <= len <= MAX_BLOCK_BYTES``, a
multiple of 4, inside the data, with the trailing copy of the length equal.

Each decision uses only the bytes from ``q`` to the end of what it needs and
whether the data ends there, so a stream read in chunks resynchronises at the
same offset as a mapped file. The scan is vectorised with numpy over slices
of ``SLICE_BYTES``; only offsets that pass the per-header test are looked at
one by one.

Each function returns ``(found, keep_from, need)``: ``found`` the offset of
the record, or None; then ``keep_from`` is the first offset not yet decided
(the caller must keep the data from there and call again with ``need`` bytes
from it), or ``fill`` when everything held was rejected.
"""
import numpy as np

from kernels.walk_pcap import MAX_RECORD_BYTES
from kernels.walk_pcapng import BT_SHB, MAX_BLOCK_BYTES

RESYNC_WINDOW_S = 86400
SLICE_BYTES = 1 << 20
# Section Header, Interface Description, Packet, Simple Packet, Name Resolution,
# Interface Statistics, Enhanced Packet, systemd Journal Export, Decryption
# Secrets, Custom (copyable, not copyable)
PCAPNG_KNOWN_BLOCKS = frozenset({BT_SHB, 1, 2, 3, 4, 5, 6, 9, 10, 0xBAD, 0x40000BAD})
_BOM_LE = 0x1A2B3C4D
_BOM_BE = 0x4D3C2B1A


def _u32(buf, start, count, swap):
    """u32 at every offset start .. start+count-1 (needs count + 3 bytes)."""
    b = [buf[start + i:start + i + count].astype(np.uint32) for i in range(4)]
    if swap:
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    return (b[3] << 24) | (b[2] << 16) | (b[1] << 8) | b[0]


def _pcap_header_ok(buf, p, swap, nano, ref_sec):
    sec, frac, caplen, wire = (int(_u32(buf, p + 4 * i, 1, swap)[0]) for i in range(4))
    return (0 < caplen <= wire <= MAX_RECORD_BYTES and frac < (10**9 if nano else 10**6)
            and (ref_sec < 0 or abs(sec - ref_sec) <= RESYNC_WINDOW_S)), sec, caplen


def find_pcap_record(buf, start, fill, eof, swap, nano, ref_sec):
    """First plausible classic-pcap record at or after ``start`` in ``buf[:fill]``."""
    frac_max = 10**9 if nano else 10**6
    q0 = start
    while q0 < fill:
        count = min(SLICE_BYTES, fill - 16 - q0 + 1)
        if count <= 0:
            break
        sec = _u32(buf, q0, count, swap).astype(np.int64)
        frac = _u32(buf, q0 + 4, count, swap)
        caplen = _u32(buf, q0 + 8, count, swap)
        wire = _u32(buf, q0 + 12, count, swap)
        ok = (caplen > 0) & (caplen <= wire) & (wire <= MAX_RECORD_BYTES) & (frac < frac_max)
        if ref_sec >= 0:
            ok &= np.abs(sec - ref_sec) <= RESYNC_WINDOW_S
        for i in np.flatnonzero(ok):
            q = q0 + int(i)
            r = q + 16 + int(caplen[i])
            if fill - r < 16:
                if eof:
                    continue
                return None, q, r + 16 - q
            good, _, _ = _pcap_header_ok(buf, r, swap, nano, int(sec[i]))
            if good:
                return q, q, 0
        q0 += count
    # offsets from max(q0, fill - 15) on have no full header yet
    keep = max(start, fill - 15) if not eof else fill
    return None, min(keep, fill), 16


def find_pcapng_block(buf, start, fill, eof, order):
    """First plausible pcapng block at or after ``start``; ``order`` is the
    section's byte order (-1 before any section, 0 little, 1 big)."""
    q0 = start
    while q0 < fill:
        count = min(SLICE_BYTES, fill - 12 - q0 + 1)
        if count <= 0:
            break
        btype_le = _u32(buf, q0, count, False)
        shb = (btype_le == BT_SHB)
        bom = _u32(buf, q0 + 8, count, False)
        shb_le = shb & (bom == _BOM_LE)
        shb_be = shb & (bom == _BOM_BE)
        len_le = _u32(buf, q0 + 4, count, False)
        len_be = _u32(buf, q0 + 4, count, True)
        if order < 0:
            known = shb_le | shb_be
            blen = np.where(shb_be, len_be, len_le)
            swap = shb_be
        else:
            btype = _u32(buf, q0, count, order == 1)
            known = np.isin(btype, np.array(sorted(PCAPNG_KNOWN_BLOCKS), dtype=np.uint32))
            # a Section Header carries its own byte order
            known &= ~shb | shb_le | shb_be
            swap = np.where(shb, shb_be, order == 1)
            blen = np.where(swap, len_be, len_le)
        ok = known & (blen >= 12) & ((blen & 3) == 0) & (blen <= MAX_BLOCK_BYTES)
        for i in np.flatnonzero(ok):
            q = q0 + int(i)
            n = int(blen[i])
            if q + n > fill:
                if eof:
                    continue
                return None, q, n
            tail = int(_u32(buf, q + n - 4, 1, bool(swap[i]))[0])
            if tail == n:
                return q, q, 0
        q0 += count
    keep = max(start, fill - 11) if not eof else fill
    return None, min(keep, fill), 12
