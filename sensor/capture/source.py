"""The bytes of one capture input, in order, as a window the walker kernels read.

``ByteWindow.buf[:fill]`` holds input bytes ``base .. base + fill``; ``eof``
says nothing more will come. ``more(pos, need)`` drops what is before ``pos``
and reads until ``need`` bytes from it are held (or the input ends): the kept
tail is moved once and the buffer grows geometrically, so a record split over
many reads (a 16 MiB pcapng block through a pipe, 4 KiB reads) costs linear
time.

Two ways of holding a regular file:

* **mapped** (zero-copy): the file is memory-mapped whole, but only under a
  Linux read lease (``F_SETLEASE F_RDLCK``). While we hold it, a process that
  opens the file for writing or truncates it is held back by the kernel and we
  get SIGIO; the next time the reader asks (between two walker calls) the
  window switches to reading from where it was and gives the lease back, and
  only then does the truncation happen. A shrinking file therefore never
  takes a mapped page away under a kernel (which would be SIGBUS). A file
  already open for writing, owned by another user (without CAP_LEASE), on a
  filesystem without leases, or opened outside the main thread (where no
  signal handler can be set) is not mapped but read.
* **read**: ``readinto`` a buffer of ``chunk_bytes`` (streams, gzip, FIFOs,
  and every file that cannot be mapped safely). A file that shrinks simply
  ends early; ``CaptureFile`` compares with the size it had and says so.

This module only moves bytes.
"""
import fcntl
import mmap
import os
import signal
import threading
import weakref

import numpy as np

_LEASED = weakref.WeakSet()     # windows mapped under a lease
_handler_installed = False
_previous_handler = None


def _on_sigio(signum, frame):
    # a lease is being broken: every mapped window stops using its map at the
    # next read (we cannot tell which file it was; switching costs little)
    for window in list(_LEASED):
        window.lease_broken = True
    if callable(_previous_handler):
        _previous_handler(signum, frame)


def _install_handler():
    global _handler_installed, _previous_handler
    if _handler_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    _previous_handler = signal.signal(signal.SIGIO, _on_sigio)
    _handler_installed = True
    return True


def _take_lease(fd):
    if not _install_handler():
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:             # EAGAIN open for writing, EACCES not ours, EINVAL no leases
        return False
    return True


def _release_lease(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass


class ByteWindow:
    """A window over one input: ``buf[:fill]`` = input bytes ``base .. base + fill``."""

    def __init__(self, reader, chunk_bytes, head=b"", fd=None, map_it=False):
        self.reader = reader                # object with readinto1 or readinto
        self.chunk_bytes = int(chunk_bytes)
        self.fd = fd
        self.base = 0
        self.eof = False
        self.lease_broken = False
        self.moved_bytes = 0            # bytes carried to the front or into a grown buffer
        self.mapped = False
        self._map = None
        self._leased = False
        if map_it and fd is not None and _take_lease(fd):
            self._leased = True
            _LEASED.add(self)
            size = os.fstat(fd).st_size    # under the lease: it cannot shrink now
            if size > 0:
                self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                self.buf = np.frombuffer(self._map, dtype=np.uint8)
                self.fill = self.buf.shape[0]
                self.eof = True
                self.mapped = True
                return
            self._drop_lease()
        self.buf = np.empty(max(self.chunk_bytes, len(head), 64), dtype=np.uint8)
        self.buf[:len(head)] = np.frombuffer(head, dtype=np.uint8)
        self.fill = len(head)
        self._readinto = getattr(reader, "readinto1", None) or reader.readinto

    def _drop_lease(self):
        if self._leased:
            _release_lease(self.fd)
            self._leased = False
        _LEASED.discard(self)

    def check_lease(self, pos):
        """Call between walker calls: if the lease is being broken, go on by
        reading from ``pos`` (the returned new position) and give it back."""
        if not (self.mapped and self.lease_broken):
            return pos
        self.base += pos
        self.mapped = False
        self.eof = False
        self.buf = np.empty(max(self.chunk_bytes, 64), dtype=np.uint8)
        self.fill = 0
        self.reader.seek(self.base)
        self._readinto = getattr(self.reader, "readinto1", None) or self.reader.readinto
        self._drop_lease()
        return 0

    def more(self, pos, need):
        """Drop ``buf[:pos]``; read until ``need`` (>= 1) bytes from it are held
        or the input ends. Returns the new position of ``pos`` (0)."""
        if self.eof:
            return pos
        keep = self.fill - pos
        want = max(need, keep + 1)
        cap = self.buf.shape[0]
        if want > cap or cap - keep < min(self.chunk_bytes, cap) // 2:
            grown = np.empty(max(2 * cap, want + self.chunk_bytes), dtype=np.uint8)
            grown[:keep] = self.buf[pos:self.fill]
            self.buf = grown
            self.moved_bytes += keep
        elif pos and keep:
            self.buf[:keep] = self.buf[pos:self.fill]
            self.moved_bytes += keep
        self.base += pos
        self.fill = keep
        cap = self.buf.shape[0]
        view = memoryview(self.buf)
        while True:
            n = self._readinto(view[self.fill:min(cap, self.fill + self.chunk_bytes)])
            if not n:
                self.eof = True
                break
            self.fill += n
            if self.fill >= want or self.fill == cap:
                break
        return 0

    def close(self):
        self._drop_lease()
        self.buf = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # a view still exists (the traceback of an exception being
                # handled); the map is released with it
                pass
            self._map = None
