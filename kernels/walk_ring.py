"""TPACKET_V3 block walker: one retired AF_PACKET ring block -> batch rows.

Walks the ``tpacket3_hdr`` records of one ring block in place (``ring`` is a
writable ``np.uint8`` view of the memory-mapped RX ring; nothing is copied):
from the record at ``ring[pkt_off]``, ``pkts_left`` records are decoded, each
frame with ``parse_frame(ring, pkt_off + tp_mac, tp_snaplen,
LINKTYPE_ETHERNET)`` and ``store_row``, until the block is done or the batch
is full. It is resumable: the returned ``(pkt_off, pkts_left, row)`` go into
the next call (with a fresh batch and ``row=0``) when a block spans batches.

Row fields taken from the record header (little-endian host fields):

* ``ts_ns = tp_sec * 10**9 + tp_nsec`` (TPACKET_V3 stamps are nanoseconds);
* ``wire_len = tp_len``, plus 4 when the kernel stripped a VLAN tag (the
  length on the wire, as libpcap and tcpdump report it after putting the tag
  back);
* the VLAN tag the kernel stripped is restored: when ``tp_status`` has
  ``TP_STATUS_VLAN_VALID``, ``vlan = tp_vlan_tci & 0xfff`` and
  ``PF_HAS_VLAN``. The kernel strips the *outermost* tag, so that tag wins
  over any tag still inside the frame (the inner tag of QinQ, which
  ``parse_frame`` would otherwise report): the row's ``vlan`` is the
  outermost tag, as in a file decode of the same frame with its tag in place.

Every record is counted in ``stats`` as the file walkers count it
(``records == decoded + the skip reasons``). A record header that points
outside the block (``tp_mac + tp_snaplen`` or ``tp_next_offset`` beyond
``block_end``; only a corrupted ring could do that) is counted as
``bad_record`` and ends the block (``pkts_left`` 0).

Handing the block back to the kernel (``block_status = TP_STATUS_KERNEL``)
is done by the caller after the call returns with ``pkts_left == 0``.

Memory: none beyond the ring view, the batch and the stats it is given.
"""
import numpy as np

from kernels.batch import PF_HAS_VLAN, S_BAD_RECORD, S_DECODED, S_RECORDS
from kernels.decode_frame import LINKTYPE_ETHERNET, parse_frame, store_row
from kernels.jit import inline, kernel

TP_STATUS_VLAN_VALID = 16
VLAN_TAG_BYTES = 4
TPACKET3_HDR_BYTES = 48       # struct tpacket3_hdr, before the sockaddr_ll


@inline
def le32(buf, p):
    return ((np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16)
            | (np.int64(buf[p + 1]) << 8) | np.int64(buf[p]))


@inline
def le16(buf, p):
    return (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@kernel
def walk_ring_block(ring, block_end, pkt_off, pkts_left, cols, row, stats):
    """Decode up to ``pkts_left`` records from ``ring[pkt_off]`` into ``cols``
    from row ``row`` on; ``block_end`` is the byte after the block.

    Returns (pkt_off, pkts_left, row): where to resume, how many records of
    the block are still to decode (0: the block is done), rows filled."""
    capacity = cols[0].shape[0]
    while pkts_left > 0 and row < capacity:
        if block_end - pkt_off < TPACKET3_HDR_BYTES:
            stats[S_BAD_RECORD] += 1
            return pkt_off, 0, row
        next_offset = le32(ring, pkt_off)
        sec = le32(ring, pkt_off + 4)
        nsec = le32(ring, pkt_off + 8)
        snaplen = le32(ring, pkt_off + 12)
        wire_len = le32(ring, pkt_off + 16)
        status = le32(ring, pkt_off + 20)
        mac = le16(ring, pkt_off + 24)
        tci = le32(ring, pkt_off + 32)
        frame = pkt_off + mac
        if frame + snaplen > block_end or (pkts_left > 1 and (
                next_offset < TPACKET3_HDR_BYTES or pkt_off + next_offset >= block_end)):
            stats[S_BAD_RECORD] += 1
            return pkt_off, 0, row
        stats[S_RECORDS] += 1
        (skip, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, tcp_flags, icmp_type,
         icmp_code, pkt_flags, inner_proto, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, i_sport,
         i_dport, vlan) = parse_frame(ring, frame, snaplen, np.int64(LINKTYPE_ETHERNET))
        if skip != 0:
            stats[skip] += 1
        else:
            if status & TP_STATUS_VLAN_VALID:
                vlan = tci & 0xFFF
                pkt_flags |= PF_HAS_VLAN
                wire_len += VLAN_TAG_BYTES
            store_row(cols, row, sec * 1_000_000_000 + nsec, wire_len, src_hi, src_lo, dst_hi,
                      dst_lo, sport, dport, proto, tcp_flags, icmp_type, icmp_code, pkt_flags,
                      inner_proto, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, i_sport, i_dport,
                      vlan)
            stats[S_DECODED] += 1
            row += 1
        pkts_left -= 1
        pkt_off += next_offset
    return pkt_off, pkts_left, row
