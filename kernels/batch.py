"""Fixed-width packet batch: the one record shape between decode and detectors.

A batch is a struct of arrays, one row per decoded IP packet. Every capture
path (pcap, pcapng, AF_PACKET ring) fills the same columns through the same
frame decoder, so detectors never know where packets came from.

Addresses are 128-bit values split into (hi, lo) uint64 halves. IPv4 is held
as IPv4-mapped IPv6 (``::ffff:a.b.c.d``: hi=0, lo=0xffff_0000_0000 | addr), and
an IPv6 header carrying an IPv4-mapped or IPv4-compatible address gives the
same value, so one host has one key whatever header carried it.

Memory: ``capacity * ROW_BYTES`` bytes, allocated once.
"""
import numpy as np

# Column names, in the order kernels unpack them, with their dtypes.
COLUMNS = (
    ("ts_ns", np.int64),          # packet time, ns since the epoch
    ("src_hi", np.uint64),        # source address, high 64 bits
    ("src_lo", np.uint64),        # source address, low 64 bits
    ("dst_hi", np.uint64),
    ("dst_lo", np.uint64),
    ("sport", np.uint16),         # TCP/UDP/SCTP/UDP-Lite/DCCP ports (HAS_PORTS)
    ("dport", np.uint16),
    ("proto", np.uint8),          # transport protocol number after IPv6 ext headers
    ("tcp_flags", np.uint8),      # TCP header byte 13: CWR ECE URG ACK PSH RST SYN FIN
    ("icmp_type", np.uint8),      # ICMP / ICMPv6 type and code (HAS_ICMP)
    ("icmp_code", np.uint8),
    ("pkt_flags", np.uint16),     # PF_* bits below
    ("inner_proto", np.uint8),    # header quoted inside an ICMP error (HAS_INNER)
    ("inner_src_hi", np.uint64),
    ("inner_src_lo", np.uint64),
    ("inner_dst_hi", np.uint64),
    ("inner_dst_lo", np.uint64),
    ("inner_sport", np.uint16),   # (INNER_HAS_PORTS)
    ("inner_dport", np.uint16),
    ("vlan", np.uint16),          # outermost 802.1Q/802.1ad VLAN id (HAS_VLAN)
    ("wire_len", np.uint32),      # original frame length on the wire
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
_COLUMN_SET = frozenset(COLUMN_NAMES)
ROW_BYTES = sum(np.dtype(dt).itemsize for _, dt in COLUMNS)

# pkt_flags bits
PF_HAS_PORTS = 1
PF_HAS_TCP_FLAGS = 2
PF_HAS_ICMP = 4
PF_HAS_INNER = 8
PF_INNER_HAS_PORTS = 16
PF_IPV6 = 32            # the outer IP header was IPv6 (even if addresses are mapped IPv4)
PF_FIRST_FRAGMENT = 64  # offset 0 with more fragments to follow
PF_HAS_VLAN = 128
PF_ARP = 256            # an ARP request or reply (kernels/decode_frame.py says what the row holds)

# TCP flag bits (names as in RFC 793 / dpkt)
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PUSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80

MAPPED_V4_PREFIX = 0xFFFF_0000_0000


class PacketBatch:
    """Preallocated columns plus the number of rows currently filled."""

    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("batch capacity must be >= 1")
        self.capacity = int(capacity)
        self.n = 0
        for name, dtype in COLUMNS:
            setattr(self, name, np.zeros(self.capacity, dtype=dtype))

    def __setattr__(self, name, value):
        if name in _COLUMN_SET:
            self.__dict__.pop("_columns", None)     # a column replaced: build the tuple anew
        object.__setattr__(self, name, value)

    @property
    def columns(self):
        """All columns as one tuple, in COLUMNS order, for passing to kernels (built
        once: kernels are called dozens of times per batch)."""
        cols = self.__dict__.get("_columns")
        if cols is None:
            cols = self.__dict__["_columns"] = tuple(getattr(self, name) for name in COLUMN_NAMES)
        return cols

    def rows(self):
        """The filled part as a dict of column name -> array view (tests, debugging)."""
        return {name: getattr(self, name)[: self.n] for name in COLUMN_NAMES}


# Decode counters: one int64 slot per reason; indices are fixed.
STATS = (
    "records",               # capture records (frames) read
    "decoded",               # rows emitted into batches
    "non_ip",                # frames that carry no IPv4/IPv6 or Ethernet/IPv4 ARP (LLC, other EtherTypes)
    "truncated_link",        # frame shorter than its link-layer header (or an ARP body under 28 bytes)
    "truncated_ip",          # IP header (or an IPv6 extension header) cut by the snap length
    "malformed_ip",          # bad version, IHL < 5, total length < header, bad ext-header chain
    "fragment_noninitial",   # IP fragments after the first: no transport header to read
    "truncated_l4",          # transport header cut before the fields the sensor needs
    "malformed_l4",          # TCP data offset < 5, or a transport header longer than its IP packet
    "unsupported_linktype",  # frames from an interface whose link type is not decoded
    "bad_record",            # corrupt record/block header: decoding of that file stopped there
    "truncated_record",      # the file ended in the middle of a record
    "other_blocks",          # pcapng blocks that carry no packet (ISB, NRB, custom, ...)
)
STAT_INDEX = {name: i for i, name in enumerate(STATS)}
(S_RECORDS, S_DECODED, S_NON_IP, S_TRUNC_LINK, S_TRUNC_IP, S_MALFORMED_IP,
 S_FRAGMENT, S_TRUNC_L4, S_MALFORMED_L4, S_LINKTYPE, S_BAD_RECORD,
 S_TRUNC_RECORD, S_OTHER_BLOCKS) = range(len(STATS))


def new_stats():
    return np.zeros(len(STATS), dtype=np.int64)


def stats_dict(stats):
    return {name: int(stats[i]) for i, name in enumerate(STATS)}
