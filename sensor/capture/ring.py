"""Live capture from a Linux AF_PACKET TPACKET_V3 memory-mapped RX ring.

``RingCapture(ifname, ...)`` opens the socket and ring; ``read(batch, stats,
timeout_s)`` fills a ``PacketBatch`` from the blocks the kernel has retired,
each block decoded in place by one jitted ``walk_ring_block`` call (no
per-packet copy, no per-packet Python), then handed back to the kernel.

Set-up order, so that no packet reaches the ring before the filter is in
place: the socket is created with protocol 0 (it receives nothing until it is
bound), the filter is attached (a compiled program, or one passing every
packet: the filter's return value is also what cuts packets to ``snaplen``),
the ring is set up and mapped, and only then is the socket bound to the
interface with ETH_P_ALL; promiscuous mode and the fanout group follow. So
nothing queued before the filter needs draining. With a fanout group, a
member receives everything between its bind and its join (a few
microseconds): duplicates of what the other members get, never a loss.

A partly filled block reaches user space when it fills or when the block
retire timeout (``block_timeout_ms``, default 50 ms) fires, so an idle link
still delivers its packets within that time.

Start-up failures raise ``CaptureSetupError`` (one line; ``kind`` and
``exit_code`` for the daemon).

Memory: the ring (``ring_bytes``, kernel pages mapped into the process).
"""
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import threading
import time

import numpy as np

from kernels.walk_ring import walk_ring_block
from sensor.capture import bpf
from sensor.capture.buffers import read_only

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TPACKET3_HDRLEN = 68
BLOCK_DESC_BYTES = 48
SO_TIMESTAMPNS = 35                 # asm-generic/socket.h (SO_TIMESTAMPNS_OLD)
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
MAX_SNAPLEN = 262144
PAGE_BYTES = mmap.PAGESIZE

# exit codes: 2 for a setting the operator gave that cannot work, 1 for the
# machine's state (permissions, a link that is down, no AF_PACKET)
EXIT_CODES = {"no_interface": 2, "bad_setting": 2, "ring_size": 2,
              "interface_down": 1, "permission": 1, "unavailable": 1}


class CaptureSetupError(Exception):
    """A live capture cannot start. ``kind``: no_interface, interface_down,
    permission, ring_size, bad_setting, unavailable (no AF_PACKET: use the
    libpcap fallback); ``exit_code`` from EXIT_CODES."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.exit_code = EXIT_CODES[kind]


class FanoutSpec:
    """Join PACKET_FANOUT group ``group_id`` (0-65535) of ``workers`` members with
    the probing-side key program (``bpf.FANOUT_KEY_PROGRAM``)."""

    def __init__(self, group_id, workers):
        if not 0 <= int(group_id) <= 0xFFFF:
            raise ValueError(f"fanout group id {group_id} is not in 0-65535")
        if not 1 <= int(workers) <= 0xFFFF:
            raise ValueError(f"fanout workers {workers} is not in 1-65535")
        self.group_id = int(group_id)
        self.workers = int(workers)

    def __repr__(self):
        return f"FanoutSpec({self.group_id}, {self.workers})"


def interface_names():
    return sorted(name for _, name in socket.if_nameindex())


def interface_flags(sock, ifname):
    ifreq = struct.pack("16sH14x", ifname.encode()[:15], 0)
    return struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]


def _available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _mib(n):
    return f"{n / (1 << 20):g} MiB"


def _check_settings(ifname, ring_bytes, block_bytes, snaplen, block_timeout_ms):
    def bad(message):
        raise CaptureSetupError("bad_setting", message)
    if not ifname or len(ifname.encode()) > 15 or "/" in ifname:
        bad(f"interface name {ifname!r} is not valid")
    if block_bytes < PAGE_BYTES or block_bytes & (block_bytes - 1):
        bad(f"capture block size {block_bytes} bytes must be a power of two of at least "
            f"{PAGE_BYTES} (the page size)")
    if ring_bytes < block_bytes or ring_bytes % block_bytes:
        bad(f"capture ring size {ring_bytes} bytes must be a multiple of the block size "
            f"({block_bytes} bytes)")
    if not 64 <= snaplen <= MAX_SNAPLEN:
        bad(f"snap length {snaplen} must be between 64 and {MAX_SNAPLEN} bytes")
    if snaplen + TPACKET3_HDRLEN + 16 > block_bytes - BLOCK_DESC_BYTES:
        bad(f"snap length {snaplen} does not fit a capture block of {block_bytes} bytes")
    if not 1 <= block_timeout_ms <= 60000:
        bad(f"block retire timeout {block_timeout_ms} ms must be between 1 and 60000")


class RingCapture:
    """AF_PACKET TPACKET_V3 capture on one interface (see the module docstring).

    ``bpf``: a program (list of (code, jt, jf, k)) from ``bpf.compile_filter``,
    compiled with this ``snaplen``; None passes everything. ``fanout``: a
    FanoutSpec or None."""

    def __init__(self, ifname, *, ring_bytes=64 << 20, block_bytes=1 << 20, snaplen=256,
                 block_timeout_ms=50, promisc=True, bpf=None, fanout=None):
        self.ifname = ifname
        self.ring_bytes = int(ring_bytes)
        self.block_bytes = int(block_bytes)
        self.snaplen = int(snaplen)
        self.block_timeout_ms = int(block_timeout_ms)
        self.promisc = bool(promisc)
        self.fanout = fanout
        self.block_count = self.ring_bytes // max(self.block_bytes, 1)
        self.link_errors = 0          # ENETDOWN and other socket errors seen while reading
        self.last_error = None
        self._sock = None
        self._mmap = None
        self._ring = self._ring_ro = None
        self._totals = [0, 0, 0]
        self._block = 0               # index of the next block to read
        self._pkt_off = 0             # resume point inside the current block
        self._pkts_left = 0
        self._in_block = False
        self._barrier = threading.Lock()
        _check_settings(ifname, self.ring_bytes, self.block_bytes, self.snaplen,
                        self.block_timeout_ms)
        try:
            self._open(bpf)
        except BaseException:
            self.close()
            raise

    # --- set-up ------------------------------------------------------------
    def _open(self, program):
        try:
            ifindex = socket.if_nametoindex(self.ifname)
        except OSError:
            names = ", ".join(interface_names()) or "none"
            raise CaptureSetupError("no_interface", f"interface {self.ifname} does not exist "
                                    f"(interfaces here: {names})") from None
        if not hasattr(socket, "AF_PACKET"):
            raise CaptureSetupError("unavailable", "AF_PACKET sockets exist on Linux only; "
                                    "use the libpcap capture")
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureSetupError("permission", f"no permission to capture on {self.ifname}: "
                                    "raw packet sockets need CAP_NET_RAW") from None
        except OSError as exc:
            raise CaptureSetupError("unavailable", f"AF_PACKET sockets are not available "
                                    f"({exc.strerror}); use the libpcap capture") from None
        if not interface_flags(self._sock, self.ifname) & IFF_UP:
            raise CaptureSetupError("interface_down", f"interface {self.ifname} is down "
                                    f"(bring it up: ip link set {self.ifname} up)")
        sock = self._sock
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # Stamp packets when the stack receives them, for every socket alike: without
        # it each packet socket reads the clock itself as it queues a copy, so two
        # sensors (or a sensor and tcpdump) on one link see different nanoseconds,
        # and alert ids (which include the first packet time) differ. (Packets a
        # local TCP socket sent through a veth keep their departure time instead,
        # and are still stamped per socket.)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        bpf.attach(sock, bpf.accept_all(self.snaplen) if program is None
                   else bpf.cap_snaplen(program, self.snaplen))
        self._setup_ring()
        sock.bind((self.ifname, ETH_P_ALL))
        if self.promisc:
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            try:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            except PermissionError:
                raise CaptureSetupError("permission", f"no permission to put {self.ifname} in "
                                        "promiscuous mode: needs CAP_NET_ADMIN") from None
        if self.fanout is not None:
            self._join_fanout()
        self._read_kernel_stats()     # counters start at the open

    def _setup_ring(self):
        avail = _available_memory_bytes()
        if avail is not None and self.ring_bytes > avail:
            raise CaptureSetupError("ring_size", f"capture ring of {_mib(self.ring_bytes)} "
                                    f"(ring_bytes) is more than the {_mib(avail)} of memory "
                                    "available; lower it")
        frame_bytes = (TPACKET3_HDRLEN + 16 + self.snaplen + 15) & ~15
        frames_per_block = self.block_bytes // frame_bytes
        req = struct.pack("7I", self.block_bytes, self.block_count, frame_bytes,
                          frames_per_block * self.block_count, self.block_timeout_ms, 0, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            why = ("not enough memory for it" if exc.errno == errno.ENOMEM else exc.strerror)
            raise CaptureSetupError("ring_size", f"the kernel refused a capture ring of "
                                    f"{self.block_count} blocks of {_mib(self.block_bytes)} "
                                    f"({_mib(self.ring_bytes)}, ring_bytes / block_bytes): {why}"
                                    ) from None
        try:
            self._mmap = mmap.mmap(self._sock.fileno(), self.ring_bytes, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise CaptureSetupError("ring_size", f"cannot map the capture ring of "
                                    f"{_mib(self.ring_bytes)} (ring_bytes): {exc.strerror}") from None
        self._ring = np.frombuffer(self._mmap, dtype=np.uint8)
        self._ring_ro = read_only(self._ring)          # what the walker reads (one compiled type)
        self._status = np.frombuffer(self._mmap, dtype=np.uint32)   # u32 view for block headers

    def _join_fanout(self):
        spec = self.fanout
        type_flags = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_DEFRAG
        args = struct.pack("HHI", spec.group_id, type_flags, spec.workers)   # struct fanout_args
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT, args)
        except OSError as exc:
            raise CaptureSetupError("bad_setting", f"cannot join fanout group {spec.group_id} "
                                    f"on {self.ifname} ({spec.workers} workers): {exc.strerror} "
                                    "(a group in use with other settings, or full?)") from None
        fprog, buf = bpf.sock_fprog(bpf.FANOUT_KEY_PROGRAM)
        self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
        del buf

    # --- reading -----------------------------------------------------------
    def fileno(self):
        return self._sock.fileno()

    def _block_status_index(self, block):
        return (block * self.block_bytes + 8) // 4

    def _start_block(self):
        """True when the next block is ours: set the resume point to its first packet."""
        base = self._block * self.block_bytes
        if not self._status[self._block_status_index(self._block)] & TP_STATUS_USER:
            return False
        with self._barrier:           # the status load before the kernel's reads of the block
            pass
        words = self._status[base // 4: base // 4 + 6]
        self._pkts_left = int(words[3])
        self._pkt_off = base + int(words[4])
        self._in_block = True
        return True

    def _release_block(self):
        with self._barrier:           # the kernel's reads before the store handing it back
            pass
        self._status[self._block_status_index(self._block)] = TP_STATUS_KERNEL
        self._block = (self._block + 1) % self.block_count
        self._in_block = False

    def read(self, batch, stats, timeout_s):
        """Fill ``batch`` from the ring; -> rows (also in ``batch.n``).

        Returns as soon as rows are in the batch and no further block is
        ready, or the batch is full; waits for a block at most ``timeout_s``
        seconds (0 rows then). Decode counters are added to ``stats``."""
        cols = batch.columns
        capacity = batch.capacity
        row = 0
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        while row < capacity:
            if not self._in_block and not self._start_block():
                if row:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._wait(left):
                    break
                continue
            block_end = self._block * self.block_bytes + self.block_bytes
            self._pkt_off, self._pkts_left, row = walk_ring_block(
                self._ring_ro, block_end, self._pkt_off, self._pkts_left, cols, row, stats)
            if self._pkts_left == 0:
                self._release_block()
        batch.n = row
        return row

    def _wait(self, timeout_s):
        """poll() until the socket is readable or the time is up; False on timeout."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN | select.POLLERR)
        try:
            events = poller.poll(max(1, int(timeout_s * 1000 + 0.999)))
        except InterruptedError:
            return True
        if not events:
            return False
        if events[0][1] & select.POLLERR:
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.link_errors += 1
                self.last_error = os.strerror(err)
                # ENETDOWN: the link went down; the kernel resumes delivery when
                # it comes back up. Do not spin meanwhile.
                time.sleep(min(timeout_s, 0.05))
        return True

    # --- statistics --------------------------------------------------------
    def _read_kernel_stats(self):
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        for i, v in enumerate(struct.unpack("3I", raw)):
            self._totals[i] += v

    def kernel_stats(self):
        """Cumulative kernel counters since open: ``packets`` that passed the
        filter (drops included, as tcpdump's "received by filter"), ``drops``
        (ring full), ``freeze_q`` (times the ring queue froze)."""
        if self._sock is not None:
            self._read_kernel_stats()
        packets, drops, freeze_q = self._totals
        return dict(packets=packets, drops=drops, freeze_q=freeze_q)

    # --- closing -----------------------------------------------------------
    def close(self):
        self._ring = self._ring_ro = None
        self._status = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass                  # a view is still held by the caller; freed with it
            self._mmap = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def warm_up():
    """Compile (or load from the cache) the ring walker with the types ``read`` uses,
    on an empty block: the daemon calls it before READY, ``scan-sensor compile`` at
    install time, so the first ring block never waits for the compiler."""
    from kernels.batch import PacketBatch, new_stats
    ring = read_only(np.zeros(BLOCK_DESC_BYTES, np.uint8))
    walk_ring_block(ring, int(BLOCK_DESC_BYTES), int(BLOCK_DESC_BYTES), 0,
                    PacketBatch(64).columns, 0, new_stats())
