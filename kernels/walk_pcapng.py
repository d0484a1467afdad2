"""pcapng block walker: capture bytes -> batch rows.

Handles Section Header (re-detecting byte order at every SHB), Interface
Description (link type, snap length, ``if_tsresol``, ``if_tsoffset``),
Enhanced Packet, Simple Packet and the obsolete Packet block. Other blocks
are counted (``other_blocks``) and skipped.

Walker state lives in arrays the caller owns, so a stream can be fed in
chunks: ``section`` = [byte_order (-1 none yet, 0 little, 1 big),
interface count, last timestamp ns, packets naming an interface with no
Interface Description in their section, packets whose time does not fit
int64 ns (years 1677-2262; their ``ts_ns`` wraps as the reference's
``to_int64`` does), the first link type whose packets were not decoded (-1
none), whether packets of another such link type followed (0/1), Interface
Description Blocks read in all sections]; the
caller reports all but the first three. Per interface: link type, time units per
second, whether units are a power of two (and its exponent), offset seconds.

Returns (pos, rows, status) with the same statuses as ``walk_pcap``; WALK_BAD
means a block header is corrupt (length < 12, not a multiple of 4, above
``MAX_BLOCK_BYTES``, the trailing copy of the length differs (as libpcap and
Wireshark check), or a packet that does not fit its block), or a block other
than a section header before the first section header.

Timestamps: ``if_tsresol`` 10^-k (k <= 18) or 2^-k (k <= 62), default 10^-6
(also for a resolution outside those ranges); the 64-bit tick count is
unsigned and converted exactly (floor) to ns, then ``if_tsoffset`` seconds
are added. A Simple Packet Block has no timestamp: it gets the time of the
previous packet block in the stream (0 before any). A packet whose interface
id has no Interface Description in its section counts as
``unsupported_linktype``.

Memory: ``MAX_INTERFACES`` entries per array (about 40 KiB), fixed.
"""
import numpy as np

from kernels.batch import S_DECODED, S_LINKTYPE, S_OTHER_BLOCKS, S_RECORDS
from kernels.decode_frame import parse_frame, store_row
from kernels.jit import inline, kernel
from kernels.walk_pcap import WALK_BAD, WALK_NEED_MORE, WALK_OK, u16_at, u32_at

MAX_INTERFACES = 1024
MAX_BLOCK_BYTES = 16 * 1024 * 1024

BT_SHB = 0x0A0D0D0A
BT_IDB = 1
BT_PB = 2
BT_SPB = 3
BT_EPB = 6

SEC_ORDER = 0
SEC_NIF = 1
SEC_LAST_TS = 2
SEC_NO_IFACE = 3
SEC_TS_OVERFLOW = 4
SEC_LT_FIRST = 5
SEC_LT_OTHERS = 6
SEC_IDBS = 7

# packet times are int64 ns: whole seconds must stay within +-(2**63 - 1) // 10**9
MAX_TS_S = 9_223_372_035


class PcapngState:
    """Per-stream walker state (arrays handed to the kernel)."""

    def __init__(self):
        self.section = np.array([-1, 0, 0, 0, 0, -1, 0, 0], dtype=np.int64)
        self.if_linktype = np.zeros(MAX_INTERFACES, dtype=np.int64)
        self.if_snaplen = np.zeros(MAX_INTERFACES, dtype=np.int64)
        self.if_units = np.zeros(MAX_INTERFACES, dtype=np.int64)
        self.if_pow2 = np.zeros(MAX_INTERFACES, dtype=np.int64)   # exponent, or -1 for decimal
        self.if_offset_s = np.zeros(MAX_INTERFACES, dtype=np.int64)

    @property
    def arrays(self):
        return (self.section, self.if_linktype, self.if_snaplen, self.if_units,
                self.if_pow2, self.if_offset_s)


@inline
def ticks_to_ns(ts_hi, ts_lo, units, pow2):
    """Exact floor(ticks * 1e9 / units) without 128-bit overflow.

    ticks = ts_hi:ts_lo is unsigned (at 10^-10 s or 2^-32 s resolution
    today's dates already need the 64th bit), so the division by the unit is
    done in uint64 and only the quotient and remainder come back to int64.
    """
    ticks = (np.uint64(ts_hi) << np.uint64(32)) | np.uint64(ts_lo)
    units_u = np.uint64(units)
    sec_u = ticks // units_u
    frac = np.int64(ticks - sec_u * units_u)
    sec = np.int64(sec_u)
    if units <= 1_000_000_000:
        return sec * 1_000_000_000 + (frac * 1_000_000_000) // units
    if pow2 < 0:
        return sec * 1_000_000_000 + frac // (units // 1_000_000_000)
    a = (frac >> 30) * 1_000_000_000
    b = (frac & ((1 << 30) - 1)) * 1_000_000_000
    return sec * 1_000_000_000 + ((a + (b >> 30)) >> (pow2 - 30))


@inline
def ts_overflows(ts_hi, ts_lo, units, offset_s):
    """True when ticks / units + offset_s seconds is outside int64 ns."""
    ticks = (np.uint64(ts_hi) << np.uint64(32)) | np.uint64(ts_lo)
    sec_u = ticks // np.uint64(units)
    if sec_u > np.uint64(MAX_TS_S) or offset_s > MAX_TS_S or offset_s < -MAX_TS_S:
        return True
    total = np.int64(sec_u) + offset_s
    return total > MAX_TS_S or total < -MAX_TS_S


@inline
def read_idb(buf, pos, blen, swap, state):
    (section, if_linktype, if_snaplen, if_units, if_pow2, if_offset_s) = state
    nif = section[SEC_NIF]
    section[SEC_NIF] = nif + 1
    if nif >= MAX_INTERFACES:
        return
    if_linktype[nif] = u16_at(buf, pos + 8, swap)
    if_snaplen[nif] = u32_at(buf, pos + 12, swap)
    if_units[nif] = 1_000_000
    if_pow2[nif] = -1
    if_offset_s[nif] = 0
    p = pos + 16
    stop = pos + blen - 4
    while stop - p >= 4:
        code = u16_at(buf, p, swap)
        olen = u16_at(buf, p + 2, swap)
        if code == 0 or p + 4 + olen > stop:
            break
        if code == 9 and olen >= 1:
            v = np.int64(buf[p + 4])
            if v & 0x80:
                e = v & 0x7F
                if e <= 62:
                    if_units[nif] = np.int64(1) << e
                    if_pow2[nif] = e
            elif v <= 18:
                u = np.int64(1)
                for _ in range(v):
                    u *= 10
                if_units[nif] = u
        elif code == 14 and olen == 8:
            lo = u32_at(buf, p + 4, swap)
            hi = u32_at(buf, p + 8, swap)
            if swap:
                lo, hi = hi, lo
            if_offset_s[nif] = (hi << 32) | lo
        p += 4 + ((olen + 3) & ~3)


@kernel
def walk_pcapng(buf, pos, end, state, cols, row, stats):
    (section, if_linktype, if_snaplen, if_units, if_pow2, if_offset_s) = state
    capacity = cols[0].shape[0]
    while row < capacity:
        if end - pos < 12:
            if pos == end:
                return pos, row, WALK_OK
            return pos, row, WALK_NEED_MORE
        swap = section[SEC_ORDER] == 1
        btype = u32_at(buf, pos, np.bool_(False))
        if btype == BT_SHB:
            magic_le = u32_at(buf, pos + 8, np.bool_(False))
            if magic_le == 0x1A2B3C4D:
                swap = False
            elif magic_le == 0x4D3C2B1A:
                swap = True
            else:
                return pos, row, WALK_BAD
        elif section[SEC_ORDER] < 0:
            return pos, row, WALK_BAD
        else:
            btype = u32_at(buf, pos, swap)
        blen = u32_at(buf, pos + 4, swap)
        if blen < 12 or (blen & 3) != 0 or blen > MAX_BLOCK_BYTES:
            return pos, row, WALK_BAD
        if end - pos < blen:
            return pos, row, WALK_NEED_MORE
        if u32_at(buf, pos + blen - 4, swap) != blen:
            return pos, row, WALK_BAD
        if btype == BT_SHB:
            section[SEC_ORDER] = 1 if swap else 0
            section[SEC_NIF] = 0
        elif btype == BT_IDB:
            if blen < 20:
                return pos, row, WALK_BAD
            read_idb(buf, pos, blen, swap, state)
            section[SEC_IDBS] += 1
        elif btype == BT_EPB or btype == BT_PB or btype == BT_SPB:
            if btype == BT_SPB:
                if blen < 16:
                    return pos, row, WALK_BAD
                iface = 0
                wire_len = u32_at(buf, pos + 8, swap)
                data = pos + 12
                caplen = min(wire_len, blen - 16)
                if iface < section[SEC_NIF] and iface < MAX_INTERFACES and if_snaplen[iface] > 0:
                    caplen = min(caplen, if_snaplen[iface])
                ts_ns = section[SEC_LAST_TS]
            else:
                if blen < 32:
                    return pos, row, WALK_BAD
                if btype == BT_EPB:
                    iface = u32_at(buf, pos + 8, swap)
                else:
                    iface = u16_at(buf, pos + 8, swap)
                ts_hi = u32_at(buf, pos + 12, swap)
                ts_lo = u32_at(buf, pos + 16, swap)
                caplen = u32_at(buf, pos + 20, swap)
                wire_len = u32_at(buf, pos + 24, swap)
                data = pos + 28
                if caplen > blen - 32:
                    return pos, row, WALK_BAD
                ts_ns = 0
                if iface < section[SEC_NIF] and iface < MAX_INTERFACES:
                    ts_ns = (ticks_to_ns(ts_hi, ts_lo, if_units[iface], if_pow2[iface])
                             + if_offset_s[iface] * 1_000_000_000)
                    if ts_overflows(ts_hi, ts_lo, if_units[iface], if_offset_s[iface]):
                        section[SEC_TS_OVERFLOW] += 1
                section[SEC_LAST_TS] = ts_ns
            stats[S_RECORDS] += 1
            if iface >= section[SEC_NIF] or iface >= MAX_INTERFACES:
                stats[S_LINKTYPE] += 1
                section[SEC_NO_IFACE] += 1
            else:
                (skip, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, tcp_flags,
                 icmp_type, icmp_code, pkt_flags, inner_proto, i_src_hi, i_src_lo, i_dst_hi,
                 i_dst_lo, i_sport, i_dport, vlan) = parse_frame(buf, data, caplen,
                                                                 if_linktype[iface])
                if skip == S_LINKTYPE:
                    lt = if_linktype[iface]
                    if section[SEC_LT_FIRST] < 0:
                        section[SEC_LT_FIRST] = lt
                    elif lt != section[SEC_LT_FIRST]:
                        section[SEC_LT_OTHERS] = 1
                if skip != 0:
                    stats[skip] += 1
                else:
                    store_row(cols, row, ts_ns, wire_len, src_hi, src_lo, dst_hi, dst_lo, sport,
                              dport, proto, tcp_flags, icmp_type, icmp_code, pkt_flags,
                              inner_proto, i_src_hi, i_src_lo, i_dst_hi, i_dst_lo, i_sport,
                              i_dport, vlan)
                    stats[S_DECODED] += 1
                    row += 1
        else:
            stats[S_OTHER_BLOCKS] += 1
        pos += blen
    return pos, row, WALK_OK
