"""Classic BPF for the capture socket: tcpdump expressions compiled by libpcap,
the default kernel filter, and attach/detach on a socket.

Programs are lists of ``(code, jt, jf, k)`` tuples (``struct sock_filter``,
the same layout as libpcap's ``struct bpf_insn``). Expressions are compiled
by libpcap through ctypes (``pcap_open_dead(DLT_EN10MB, snaplen)`` +
``pcap_compile``): never by a hand-written assembler. A compiled program
returns the snap length for a packet it passes, and the kernel cuts the
packet to that length, so the filter is also what applies ``snaplen`` on a
TPACKET_V3 ring.

VLAN: the kernel strips the outermost VLAN tag before socket filters run, so
the filter sees the frame as if it had not carried it. A program compiled
for a dead handle (no Linux VLAN extensions) reads ``vlan`` as a tag that is
still in the packet: ``vlan`` matches an *inner* tag (QinQ) only, and
``vlan 100`` names that inner tag. The default filter is written for this.
Compiled for a live interface (``ifname=``), ``vlan`` means what it means
to tcpdump there: the stripped tag (ancillary data) or one in the packet.
"""
import ctypes
import ctypes.util
import socket
import struct

DLT_EN10MB = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
BPF_RET_K = 0x06

# The payload length of a TCP segment, from the IP lengths and TCP data offset.
_V4_PAYLOAD = "ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)"
_V6_PAYLOAD = "ip6[4:2] - ((ip6[52] & 0xf0) >> 2)"
# Keep a TCP segment unless it is a data segment of an established flow:
# SYN, RST or FIN set (handshakes, refusals, closes, SYN/FIN/Xmas/Maimon
# probes), no ACK (NULL scans and other flag-odd probes), or no payload
# (bare ACKs: ACK-scan and window-scan probes, and the answers to them).
_V4_TCP_KEEP = (f"(tcp[13] & 0x07 > 0 or tcp[13] & 0x10 == 0 or {_V4_PAYLOAD} == 0)")
# ("> 0", not "!= 0": libpcap compiles "!=" as the negation of the whole
# relation, protocol test included, which would pass non-TCP and fragments.)
# IPv6: libpcap's tcp[] indexing is IPv4-only, so the TCP header is read at the
# fixed offset 40 when the next header is TCP (ip6[6] == 6); IPv6 with
# extension headers in front of TCP is passed whole.
_V6_TCP_KEEP = (f"(ip6[53] & 0x07 > 0 or ip6[53] & 0x10 == 0 or {_V6_PAYLOAD} == 0)")
# One frame with its (remaining) tag in the packet or none. IPv4 TCP: a first
# fragment (more-fragments set, offset 0) passes whole, so a probe split over
# fragments (nmap -f) is kept even when its flags are not in the first one;
# later fragments of TCP carry no flags and are dropped (tested explicitly:
# libpcap's tcp[] flag tests exclude fragments, its arithmetic does not).
_V4 = (f"ip and (not tcp or ip[6:2] & 0x3fff == 0x2000 or "
       f"(ip[6:2] & 0x1fff == 0 and {_V4_TCP_KEEP}))")
_V6 = f"ip6 and (ip6[6] != 6 or {_V6_TCP_KEEP})"
_BASE = f"arp or ({_V4}) or ({_V6})"

# What the detectors need; established-flow TCP data segments are dropped in
# the kernel. The first part sees frames without a tag or whose only tag the
# kernel stripped; the "vlan and" part repeats it behind one tag still in the
# packet (QinQ: the inner tag; libpcap shifts the offsets by 4 after "vlan").
DEFAULT_FILTER = f"({_BASE}) or (vlan and ({_BASE}))"


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _PcapPkthdr(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
                ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_LIB = None


def libpcap():
    """The loaded libpcap (ctypes.CDLL) with the prototypes used here; OSError if absent."""
    global _LIB
    if _LIB is not None:
        return _LIB
    name = ctypes.util.find_library("pcap")
    candidates = [name] if name else []
    candidates += ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]
    last = None
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError as exc:
            last = exc
    else:
        raise OSError(f"libpcap not found (install libpcap0.8): {last}")
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_create.restype = ctypes.c_void_p
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    for name in ("pcap_set_snaplen", "pcap_set_buffer_size"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.pcap_activate.argtypes = [ctypes.c_void_p]
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PcapPkthdr),
                                        ctypes.c_char_p]
    _LIB = lib
    return lib


def _live_handle(lib, ifname, snaplen):
    """An activated libpcap handle on ``ifname`` (its small ring is never read)."""
    errbuf = ctypes.create_string_buffer(256)
    handle = lib.pcap_create(ifname.encode(), errbuf)
    if not handle:
        raise ValueError(f"cannot compile a filter for {ifname}: {errbuf.value.decode(errors='replace')}")
    lib.pcap_set_snaplen(handle, int(snaplen))
    lib.pcap_set_buffer_size(handle, 1 << 16)
    if lib.pcap_activate(handle) < 0:
        message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
        lib.pcap_close(handle)
        raise ValueError(f"cannot compile a filter for {ifname}: {message}")
    return handle


def compile_filter(expression, snaplen=262144, optimize=True, ifname=None):
    """Compile a tcpdump expression for Ethernet -> list of (code, jt, jf, k).

    Without ``ifname`` the program is compiled for a dead Ethernet handle:
    ``vlan`` then means a tag still in the packet (see the module docstring;
    DEFAULT_FILTER is written for that). With ``ifname`` (a live Linux
    interface; needs CAP_NET_RAW) libpcap compiles as tcpdump does on that
    interface: ``vlan 100`` also matches the outer tag the kernel stripped
    (ancillary loads). Use that for operator-given ``--filter`` expressions.

    Raises ValueError naming the expression and libpcap's message when it does
    not compile."""
    lib = libpcap()
    if ifname is None:
        handle = lib.pcap_open_dead(DLT_EN10MB, int(snaplen))
    else:
        handle = _live_handle(lib, ifname, snaplen)
    if not handle:
        raise OSError("pcap_open_dead failed")
    try:
        return compile_on_handle(handle, expression, optimize)
    finally:
        lib.pcap_close(handle)


def compile_on_handle(handle, expression, optimize=True):
    """Compile ``expression`` for an open libpcap handle (its link type and snap
    length) -> list of (code, jt, jf, k); ValueError when it does not compile."""
    lib = libpcap()
    prog = _BpfProgram()
    rc = lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1 if optimize else 0,
                          PCAP_NETMASK_UNKNOWN)
    if rc != 0:
        message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
        raise ValueError(f"filter expression {expression!r} does not compile: {message}")
    try:
        return [(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf,
                 prog.bf_insns[i].k) for i in range(prog.bf_len)]
    finally:
        lib.pcap_freecode(ctypes.byref(prog))


def filter_program(expression, snaplen, ifname=None):
    """The program for a capture filter setting: DEFAULT_FILTER (also for None or
    "") compiled for no interface, as it is written; an operator's expression
    compiled as tcpdump would on ``ifname`` (``vlan 100`` matching the stripped
    tag). If ``ifname`` cannot be opened by libpcap, the expression is compiled
    for no interface: the capture's own open then reports why.

    ValueError (one line, naming the expression) when it does not compile."""
    if not expression or expression == DEFAULT_FILTER:
        return compile_filter(DEFAULT_FILTER, snaplen)
    if ifname is not None:
        compile_filter(expression, snaplen)          # a syntax error is reported as such
        try:
            return compile_filter(expression, snaplen, ifname=ifname)
        except ValueError as exc:
            if "cannot compile a filter for" not in str(exc):
                raise
    return compile_filter(expression, snaplen)


def cap_snaplen(program, snaplen):
    """``program`` with every accepting ``ret #k`` lowered to at most ``snaplen``
    (the return value is the number of bytes the kernel keeps)."""
    return [(c, jt, jf, min(k, int(snaplen)) if c == BPF_RET_K and k else k)
            for c, jt, jf, k in program]


def accept_all(snaplen):
    """The program passing every packet, cut to ``snaplen`` bytes."""
    return [(BPF_RET_K, 0, 0, int(snaplen))]


def drop_all():
    return [(BPF_RET_K, 0, 0, 0)]


def pack_program(program):
    """-> (bytes of the sock_filter array, instruction count)."""
    if not program or len(program) > 4096:
        raise ValueError(f"a classic BPF program has 1-4096 instructions, not {len(program)}")
    return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in program), len(program)


def sock_fprog(program):
    """A ctypes ``struct sock_fprog`` for ``program`` and the buffer it points to (keep both)."""
    raw, count = pack_program(program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", count, ctypes.addressof(buf))
    return fprog, buf


def attach(sock, program):
    """Attach ``program`` as the socket filter (replacing any earlier one atomically)."""
    fprog, buf = sock_fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    del buf


def detach(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass                                   # no filter attached


class OfflineFilter:
    """Apply a compiled program to frames in user space (libpcap's pcap_offline_filter):
    ``f(frame_bytes, wire_len) -> bool``. For measuring and testing filters."""

    def __init__(self, program):
        self._lib = libpcap()
        n = len(program)
        self._insns = (_BpfInsn * n)(*[_BpfInsn(c, jt, jf, k) for c, jt, jf, k in program])
        self._prog = _BpfProgram(n, ctypes.cast(self._insns, ctypes.POINTER(_BpfInsn)))
        self._hdr = _PcapPkthdr()

    def __call__(self, frame, wire_len=None):
        self._hdr.caplen = len(frame)
        self._hdr.len = len(frame) if wire_len is None else wire_len
        return self._lib.pcap_offline_filter(ctypes.byref(self._prog), ctypes.byref(self._hdr),
                                             bytes(frame)) != 0


# ---------------------------------------------------------------- fanout key
#
# PACKET_FANOUT_CBPF runs this program on every packet of the interface and
# delivers it to member ``key % members``. The key is the probing side's
# address, so whatever one scanner sends and the answers it gets go to one
# worker. libpcap cannot compile a program that returns a computed value, so
# this one is written out here (and tested against a reference in
# tests/test_live_capture.py on real sockets).
#
# Loads use the kernel's SKF_NET_OFF base (offsets from the network header):
# a fanout program sees received packets from the network header but sent
# ones from the link header, and SKF_NET_OFF reads the same bytes for both.
# The EtherType comes from the ancillary SKF_AD_PROTOCOL (skb->protocol, the
# EtherType after the kernel stripped a VLAN tag).

SKF_AD_PROTOCOL = 0xFFFFF000       # SKF_AD_OFF (-0x1000) + 0, as u32
SKF_NET_OFF = 0xFFF00000           # -0x100000 as u32

_OPS = {
    "ldh_abs": 0x28, "ldb_abs": 0x30, "ld_abs": 0x20, "ldh_ind": 0x48, "ldb_ind": 0x50,
    "ldx_msh": 0xB1, "ldx_imm": 0x01, "ldx_mem": 0x61, "ld_mem": 0x60, "st": 0x02,
    "jeq": 0x15, "jset": 0x45, "jgt_x": 0x2D, "jeq_x": 0x1D, "ja": 0x05,
    "xor_x": 0xAC, "ret_a": 0x16, "ret_k": 0x06,
    "add_k": 0x04, "lsh_k": 0x64, "add_x": 0x0C, "tax": 0x07, "txa": 0x87,
}
ICMP4_REQUESTS = (8, 10, 13, 15, 17)        # echo, router solicitation, timestamp, info, mask
ICMP6_REQUESTS = (128, 133, 135, 139)       # echo, router / neighbour solicitation, node info

IPV6_OPTION_HEADERS = (0, 43, 60, 135, 139, 140)   # hop-by-hop, routing, dest. options, mobility,
                                                   # HIP, shim6: length (n + 1) * 8
N = SKF_NET_OFF
# IPv6 extension headers the fanout program walks (classic BPF has no loops: one
# block each). Real stacks send one or two; a longer chain gets the symmetric key
# (the whole pair on one worker), which the decoder still walks in full.
FANOUT_EXT_HEADERS = 8


def _ipv6_extension_walk(max_headers):
    """Unrolled walk of up to ``max_headers`` IPv6 extension headers, so a probe behind a hop-by-hop or fragment
    header is keyed like one without: X = offset of the current header, M[0] = its
    type. A later fragment has no transport header (symmetric key). Classic BPF
    jumps only forward, hence one block per header."""
    out = []
    for k in range(max_headers):
        nxt = f"ext{k + 1}" if k + 1 < max_headers else "by_protocol6"
        out += [
            f"ext{k}",
            ("ld_mem", 0),
            ("jeq", 44, f"frag{k}", None),
            ("jeq", 51, f"ah{k}", None),
            *[("jeq", t, f"opt{k}", None) for t in IPV6_OPTION_HEADERS],
            ("ja", "by_protocol6"),             # not an extension header: the transport
            f"frag{k}",
            ("ldh_ind", SKF_NET_OFF + 2),
            ("jset", 0xFFF8, None, f"first{k}"),
            ("ja", "symmetric"),                # fragment offset > 0
            f"first{k}",
            ("ldb_ind", SKF_NET_OFF + 0), ("st", 0),
            ("txa",), ("add_k", 8), ("tax",),
            ("ja", nxt),
            f"ah{k}",
            ("ldb_ind", SKF_NET_OFF + 0), ("st", 0),
            ("ldb_ind", SKF_NET_OFF + 1), ("add_k", 2), ("lsh_k", 2), ("add_x",), ("tax",),
            ("ja", nxt),
            f"opt{k}",
            ("ldb_ind", SKF_NET_OFF + 0), ("st", 0),
            ("ldb_ind", SKF_NET_OFF + 1), ("add_k", 1), ("lsh_k", 3), ("add_x",), ("tax",),
            ("ja", nxt),
        ]
    return out


_FANOUT_SOURCE = [
    ("ldh_abs", SKF_AD_PROTOCOL),           # A = EtherType
    ("jeq", 0x0800, "ipv4", None),
    ("jeq", 0x86DD, "ipv6", None),
    ("ret_k", 0),                           # ARP and other non-IP: key 0
    "ipv4",
    ("ldb_abs", N + 9), ("st", 0),          # M[0] = protocol
    ("ld_abs", N + 12), ("st", 1),          # M[1] = source address
    ("ld_abs", N + 16), ("st", 2),          # M[2] = destination address
    ("ldh_abs", N + 6),
    ("jset", 0x1FFF, None, "ipv4_l4"),
    ("ja", "symmetric"),                    # a later fragment has no L4 header
    "ipv4_l4",
    ("ldx_msh", N + 0),                     # X = IPv4 header length (4 * IHL)
    ("ja", "by_protocol"),
    "ipv6",
    ("ldb_abs", N + 6), ("st", 0),          # M[0] = next header
    ("ld_abs", N + 20), ("st", 1),          # M[1] = last 32 bits of the source
    ("ld_abs", N + 36), ("st", 2),          # M[2] = last 32 bits of the destination
    ("ldx_imm", 40),                        # X = 40: the first header after the fixed one
    *_ipv6_extension_walk(FANOUT_EXT_HEADERS),
    "by_protocol6",
    ("ld_mem", 0),
    ("jeq", 58, "icmp6", None),
    "by_protocol",
    ("ld_mem", 0),
    ("jeq", 6, "tcp", None),
    ("jeq", 17, "udp", None),
    ("jeq", 1, "icmp4", None),
    ("ja", "symmetric"),                    # other protocols, too many extension headers
    "tcp",
    ("ldb_ind", N + 13),                    # A = TCP flags
    ("jset", 0x10, "tcp_ack", None),
    ("jset", 0x02, "source", None),         # SYN without ACK: a probe
    ("jset", 0x04, "destination", None),    # RST without ACK: an answer
    ("ja", "source"),                       # FIN / NULL / Xmas and other ACK-less probes
    "tcp_ack",
    ("jset", 0x04, "destination", None),    # RST+ACK: an answer
    ("jset", 0x02, "destination", None),    # SYN+ACK: an answer
    ("ja", "source"),                       # other ACK-bearing segments (ACK probes, data)
    "udp",
    ("ldh_ind", N + 2), ("st", 3),          # M[3] = destination port
    ("ldh_ind", N + 0),                     # A = source port
    ("ldx_mem", 3),
    ("jgt_x", "source", None),              # source port higher: the source is the client
    ("jeq_x", "symmetric", "destination"),
    "icmp4",
    ("ldb_ind", N + 0),                     # A = ICMP type
    *[("jeq", t, "source", None) for t in ICMP4_REQUESTS],
    ("ja", "destination"),                  # replies and errors go to the prober
    "icmp6",
    ("ldb_ind", N + 0),                     # A = ICMPv6 type
    *[("jeq", t, "source", None) for t in ICMP6_REQUESTS],
    ("ja", "destination"),
    "source",
    ("ld_mem", 1), ("ret_a",),
    "destination",
    ("ld_mem", 2), ("ret_a",),
    "symmetric",
    ("ld_mem", 1), ("ldx_mem", 2), ("xor_x",), ("ret_a",),
]
del N


def _assemble(source):
    """Resolve labels of the listing above into (code, jt, jf, k) tuples."""
    labels, count = {}, 0
    for item in source:
        if isinstance(item, str):
            labels[item] = count
        else:
            count += 1
    out = []
    for item in source:
        if isinstance(item, str):
            continue
        op, args = item[0], item[1:]
        here = len(out) + 1

        def rel(label):
            if label is None:
                return 0
            delta = labels[label] - here
            assert 0 <= delta <= 255, (label, delta)
            return delta
        code = _OPS[op]
        if op == "ja":
            out.append((code, 0, 0, labels[args[0]] - here))
        elif op in ("jeq", "jset"):
            out.append((code, rel(args[1]), rel(args[2]), args[0]))
        elif op in ("jgt_x", "jeq_x"):
            out.append((code, rel(args[0]), rel(args[1]), 0))
        else:
            out.append((code, 0, 0, args[0] if args else 0))
    return out


FANOUT_KEY_PROGRAM = _assemble(_FANOUT_SOURCE)
