"""Portable live capture through libpcap (ctypes): the fallback where AF_PACKET
rings are not available.

``LivePcapCapture`` has the API of ``RingCapture`` (``read(batch, stats,
timeout_s)``, ``kernel_stats()``, ``fileno()``, ``close()``, context
manager) and gives the same rows: libpcap puts back the VLAN tag the kernel
stripped (and counts it in the wire length), timestamps are asked for in
nanoseconds, and the same compiled filter programs are installed.

It is clearly slower than the ring: libpcap hands over one packet at a time,
and a Python callback appends each one (16-byte classic-pcap record header
and the captured bytes) to a preallocated buffer; the buffer is then decoded
by the ``walk_pcap`` kernel in one call per read. The per-packet Python is
in the callback only (about a microsecond a packet); nothing else runs per
packet.

Memory: the record buffer, ``capacity * (16 + snaplen + 4)`` bytes for the
largest batch read so far, plus libpcap's own buffer (``buffer_bytes``).
"""
import ctypes
import select
import socket
import struct
import time

import numpy as np

from kernels.decode_frame import LINKTYPE_ETHERNET
from kernels.walk_pcap import walk_pcap
from sensor.capture import bpf as bpf_mod
from sensor.capture.buffers import read_only
from sensor.capture.ring import CaptureSetupError, interface_names

PCAP_ERRBUF_SIZE = 256
PCAP_TSTAMP_PRECISION_NANO = 1
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_PERM_DENIED = -8
PCAP_ERROR_IFACE_NOT_UP = -9
PCAP_ERROR_PROMISC_PERM_DENIED = -11
RECORD_HEADER_BYTES = 16


class _Pkthdr(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
                ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _Stat(ctypes.Structure):
    _fields_ = [("ps_recv", ctypes.c_uint), ("ps_drop", ctypes.c_uint),
                ("ps_ifdrop", ctypes.c_uint)]


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_Pkthdr),
                            ctypes.POINTER(ctypes.c_ubyte))


def _lib():
    lib = bpf_mod.libpcap()
    if getattr(lib, "_live_ready", False):
        return lib
    vp, ci, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in (
            ("pcap_create", vp, [cp, cp]), ("pcap_set_snaplen", ci, [vp, ci]),
            ("pcap_set_promisc", ci, [vp, ci]), ("pcap_set_timeout", ci, [vp, ci]),
            ("pcap_set_immediate_mode", ci, [vp, ci]), ("pcap_set_buffer_size", ci, [vp, ci]),
            ("pcap_set_tstamp_precision", ci, [vp, ci]), ("pcap_activate", ci, [vp]),
            ("pcap_setnonblock", ci, [vp, ci, cp]), ("pcap_get_selectable_fd", ci, [vp]),
            ("pcap_dispatch", ci, [vp, ci, _HANDLER, vp]), ("pcap_datalink", ci, [vp]),
            ("pcap_setfilter", ci, [vp, ctypes.POINTER(bpf_mod._BpfProgram)]),
            ("pcap_stats", ci, [vp, ctypes.POINTER(_Stat)]), ("pcap_statustostr", cp, [ci])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    lib._live_ready = True
    return lib


class LivePcapCapture:
    """libpcap live capture on ``ifname`` (see the module docstring); ``snaplen``
    bytes of each packet are kept. Filter: ``bpf``, a program from
    ``bpf.compile_filter``, or ``filter_expression``, compiled here as
    ``bpf.filter_program`` does (DEFAULT_FILTER as written, an operator's
    expression on this live handle, as tcpdump compiles it); neither: everything."""

    def __init__(self, ifname, *, snaplen=256, promisc=True, bpf=None, filter_expression=None,
                 buffer_bytes=16 << 20, timeout_ms=50):
        self.ifname = ifname
        self.snaplen = int(snaplen)
        self._lib = _lib()
        self._handle = None
        self._buf = np.zeros(0, dtype=np.uint8)
        self._fill = 0
        self._handler = _HANDLER(self._on_packet)
        self._open(promisc, bpf, filter_expression, int(buffer_bytes), int(timeout_ms))

    def _fail(self, rc):
        lib = self._lib
        detail = ""
        if self._handle:
            detail = (lib.pcap_geterr(self._handle) or b"").decode(errors="replace")
        if not detail:
            detail = (lib.pcap_statustostr(rc) or b"").decode(errors="replace")
        if rc == PCAP_ERROR_NO_SUCH_DEVICE:
            names = ", ".join(interface_names()) or "none"
            return CaptureSetupError("no_interface", f"interface {self.ifname} does not exist "
                                     f"(interfaces here: {names})")
        if rc == PCAP_ERROR_PERM_DENIED:
            return CaptureSetupError("permission", f"no permission to capture on {self.ifname}: "
                                     f"needs CAP_NET_RAW ({detail})")
        if rc == PCAP_ERROR_PROMISC_PERM_DENIED:
            return CaptureSetupError("permission", f"no permission to put {self.ifname} in "
                                     "promiscuous mode: needs CAP_NET_ADMIN")
        if rc == PCAP_ERROR_IFACE_NOT_UP:
            return CaptureSetupError("interface_down", f"interface {self.ifname} is down "
                                     f"(bring it up: ip link set {self.ifname} up)")
        return CaptureSetupError("unavailable", f"libpcap cannot capture on {self.ifname}: {detail}")

    def _open(self, promisc, program, expression, buffer_bytes, timeout_ms):
        lib = self._lib
        try:
            socket.if_nametoindex(self.ifname)
        except OSError:
            raise self._fail(PCAP_ERROR_NO_SUCH_DEVICE) from None
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        self._handle = lib.pcap_create(self.ifname.encode(), errbuf)
        if not self._handle:
            raise CaptureSetupError("unavailable", f"libpcap cannot open {self.ifname}: "
                                    f"{errbuf.value.decode(errors='replace')}")
        try:
            lib.pcap_set_snaplen(self._handle, self.snaplen)
            lib.pcap_set_promisc(self._handle, 1 if promisc else 0)
            lib.pcap_set_timeout(self._handle, timeout_ms)
            lib.pcap_set_immediate_mode(self._handle, 1)
            lib.pcap_set_buffer_size(self._handle, buffer_bytes)
            lib.pcap_set_tstamp_precision(self._handle, PCAP_TSTAMP_PRECISION_NANO)
            rc = lib.pcap_activate(self._handle)
            if rc < 0:
                raise self._fail(rc)
            if lib.pcap_datalink(self._handle) != LINKTYPE_ETHERNET:
                raise CaptureSetupError("unavailable", f"{self.ifname} is not an Ethernet "
                                        "interface; only Ethernet is captured live")
            if program is None and expression:
                program = self._compile(expression)
            if program is not None:
                self._set_filter(program)
            if lib.pcap_setnonblock(self._handle, 1, errbuf) != 0:
                raise CaptureSetupError("unavailable", errbuf.value.decode(errors="replace"))
            self._fd = lib.pcap_get_selectable_fd(self._handle)
        except BaseException:
            self.close()
            raise

    def _compile(self, expression):
        try:
            if expression == bpf_mod.DEFAULT_FILTER:
                return bpf_mod.compile_filter(expression, self.snaplen)
            return bpf_mod.compile_on_handle(self._handle, expression)
        except ValueError as exc:
            raise CaptureSetupError("bad_setting", str(exc)) from None

    def _set_filter(self, program):
        n = len(program)
        insns = (bpf_mod._BpfInsn * n)(*[bpf_mod._BpfInsn(c, jt, jf, k) for c, jt, jf, k in program])
        prog = bpf_mod._BpfProgram(n, ctypes.cast(insns, ctypes.POINTER(bpf_mod._BpfInsn)))
        if self._lib.pcap_setfilter(self._handle, ctypes.byref(prog)) != 0:
            raise CaptureSetupError("bad_setting", "libpcap refused the filter: " + (
                self._lib.pcap_geterr(self._handle) or b"").decode(errors="replace"))

    # --- reading -----------------------------------------------------------
    def fileno(self):
        return self._fd

    def _on_packet(self, _user, hdr_p, data):
        hdr = hdr_p.contents
        caplen = hdr.caplen
        end = self._fill + RECORD_HEADER_BYTES + caplen
        if end > self._buf.shape[0]:
            return                    # cannot happen: the buffer holds cnt full records
        struct.pack_into("<IIII", self._buf, self._fill, hdr.tv_sec & 0xFFFFFFFF,
                         hdr.tv_usec, caplen, hdr.len)
        ctypes.memmove(self._buf.ctypes.data + self._fill + RECORD_HEADER_BYTES, data, caplen)
        self._fill = end

    def read(self, batch, stats, timeout_s):
        """Fill ``batch`` with what libpcap has (at most ``batch.capacity``
        packets); wait up to ``timeout_s`` for the first one. -> rows."""
        capacity = batch.capacity
        need = capacity * (RECORD_HEADER_BYTES + self.snaplen + 4)
        if self._buf.shape[0] < need:
            self._buf = np.zeros(need, dtype=np.uint8)
        self._fill = 0
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        while True:
            got = self._lib.pcap_dispatch(self._handle, capacity, self._handler, None)
            if got < 0:
                raise OSError(f"libpcap capture on {self.ifname} failed: " + (
                    self._lib.pcap_geterr(self._handle) or b"").decode(errors="replace"))
            if got > 0:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.poll(max(1, int(left * 1000 + 0.999)))
        _, rows, _ = walk_pcap(read_only(self._buf), 0, self._fill, False, True, LINKTYPE_ETHERNET,
                               batch.columns, 0, stats)
        batch.n = rows
        return rows

    def kernel_stats(self):
        """Counters since open (libpcap keeps them cumulative): ``packets`` that
        passed the filter, ``drops`` (buffer full), ``ifdrop`` (interface drops)."""
        st = _Stat()
        if self._handle and self._lib.pcap_stats(self._handle, ctypes.byref(st)) == 0:
            return dict(packets=st.ps_recv, drops=st.ps_drop, freeze_q=0, ifdrop=st.ps_ifdrop)
        return dict(packets=0, drops=0, freeze_q=0, ifdrop=0)

    def close(self):
        if self._handle:
            self._lib.pcap_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
