"""Capture files as batches: classic pcap, pcapng, gzip of either, or standard input.

A regular file is memory-mapped and handed to the walker kernel whole (no
copy). Gzip files, standard input and other non-regular paths (FIFOs,
``<(...)`` process substitution), and any file opened with
``use_mmap=False``, are read in chunks of at most ``chunk_bytes`` into a
rolling buffer (a chunk is whatever is available, so a live pipe is decoded
as packets arrive); the walker reports how far it got and the unread tail is
carried into the next chunk, so a record split across chunks is never lost.

This module only moves bytes: it holds no detection logic.
"""
import gzip
import mmap
import os
import stat
import struct
import sys
import weakref
import zlib

import numpy as np

from kernels.walk_pcap import WALK_BAD, WALK_NEED_MORE, walk_pcap
from kernels.walk_pcapng import PcapngState, walk_pcapng
from kernels.decode_frame import SUPPORTED_LINKTYPES
from kernels.batch import S_BAD_RECORD, S_TRUNC_RECORD

PCAP_MAGICS = {
    # magic as read little-endian -> (big_endian_file, nanosecond)
    0xA1B2C3D4: (False, False),
    0xD4C3B2A1: (True, False),
    0xA1B23C4D: (False, True),
    0x4D3CB2A1: (True, True),
}
PCAPNG_SHB = 0x0A0D0D0A
GZIP_MAGIC = b"\x1f\x8b"


class CaptureError(Exception):
    """A capture file cannot be read (the message names the file and where)."""


class CaptureWarning:
    """Something in a file was damaged. ``stopped``: decoding of the file stopped there
    (what came before was kept); otherwise the rest of it was read."""

    def __init__(self, path, message, stopped=False):
        self.path = path
        self.message = message
        self.stopped = stopped

    def __str__(self):
        return f"{self.path}: {self.message}"


def _display_name(path):
    return "<stdin>" if path == "-" else str(path)


class CaptureFile:
    """One capture input; iterate ``batches(batch, stats)`` to decode it.

    Attributes set while reading: ``size_bytes`` (None for streams),
    ``bytes_done`` (progress), ``warnings`` (CaptureWarning list),
    ``format`` ("pcap" / "pcapng"), ``compressed``.

    ``use_mmap=False`` reads a regular file through the chunked stream path
    instead of mapping it (tests use it to check both paths agree).
    """

    def __init__(self, path, chunk_bytes=4 << 20, use_mmap=True):
        self.path = path
        self.name = _display_name(path)
        self.chunk_bytes = int(chunk_bytes)
        if self.chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.use_mmap = bool(use_mmap)
        self.size_bytes = None
        self.bytes_done = 0
        self.warnings = []
        self.format = None
        self.compressed = False
        self._raw = None
        self._mmap = None
        self._stream = None
        self._generators = weakref.WeakSet()
        self._open()

    # --- opening -----------------------------------------------------------
    def _open(self):
        try:
            if self.path == "-":
                self._raw = sys.stdin.buffer
            else:
                self._raw = open(self.path, "rb")
                st = os.fstat(self._raw.fileno())
                if stat.S_ISREG(st.st_mode):
                    self.size_bytes = st.st_size
            if self.size_bytes is not None:
                head = self._raw.read(4)
                self._raw.seek(0)
            else:
                # a pipe cannot seek back: look at the head without consuming it
                head = self._raw.peek(4)[:4] if hasattr(self._raw, "peek") else b""
        except OSError as exc:
            raise CaptureError(f"{self.name}: cannot open: {exc.strerror or exc}") from None
        if head[:2] == GZIP_MAGIC:
            self.compressed = True
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif not self.size_bytes or not self.use_mmap:
            self._stream = self._raw
        else:
            self._mmap = mmap.mmap(self._raw.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self):
        # a batches() generator suspended at a yield holds a view of the map
        # (mmap.close() would raise BufferError): finish it first
        for gen in list(self._generators):
            gen.close()
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # the traceback of an exception being handled still holds the
                # view; the map is released with it
                pass
            self._mmap = None
        if self._raw is not None and self.path != "-":
            self._raw.close()
        self._raw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading -----------------------------------------------------------
    def _chunks(self):
        """Yield (buffer, at_eof) pairs; for mmap one buffer holding the whole file."""
        if self._mmap is not None:
            yield np.frombuffer(self._mmap, dtype=np.uint8), True
            return
        read = getattr(self._stream, "read1", self._stream.read)
        total = 0
        while True:
            try:
                data = read(self.chunk_bytes)
            except EOFError:
                # gzip stream cut short (written by a capture that was killed, or
                # copied while being written): decode what came out of it
                self.warnings.append(CaptureWarning(
                    self.name, f"compressed data ends early, after {total} decompressed "
                    f"bytes; what came before was decoded"))
                yield b"", True
                return
            except (OSError, zlib.error) as exc:   # gzip.BadGzipFile is an OSError
                raise CaptureError(f"{self.name}: read failed after {total} bytes"
                                   f"{' (decompressed)' if self.compressed else ''}: {exc}") from None
            total += len(data)
            yield data, not data

    def _parse_header(self, head):
        if not head:
            raise CaptureError(f"{self.name}: empty file, not a capture")
        if len(head) < 4:
            raise CaptureError(f"{self.name}: too short to be a capture file ({len(head)} bytes)")
        magic = struct.unpack("<I", head[:4])[0]
        if magic == PCAPNG_SHB:
            self.format = "pcapng"
            return None
        if magic not in PCAP_MAGICS:
            raise CaptureError(f"{self.name}: not a pcap or pcapng file "
                               f"(starts with {bytes(head[:4]).hex()})")
        if len(head) < 24:
            raise CaptureError(f"{self.name}: pcap file header cut short ({len(head)} of 24 bytes)")
        big, nano = PCAP_MAGICS[magic]
        fmt = ">" if big else "<"
        major, minor, _zone, _sigfigs, _snaplen, linkword = struct.unpack(fmt + "HHiIII", bytes(head[4:24]))
        linktype = linkword & 0xFFFF
        self.format = "pcap"
        if linktype not in SUPPORTED_LINKTYPES:
            self.warnings.append(CaptureWarning(
                self.name, f"link type {linktype} is not decoded; its packets are counted as unsupported_linktype"))
        return big, nano, linktype

    def batches(self, batch, stats):
        """Decode the file into ``batch``; yield each time the batch is full or input ends.

        The caller consumes ``batch.n`` rows before resuming the generator.
        ``batch`` may also be a list of batches, filled in turn: a batch
        yielded stays untouched until the generator has been resumed
        ``len(list)`` times, so a pipelined caller can decode the next batch
        while it still works on this one.
        Counters are added to ``stats``. Damage that stops decoding of this
        file is reported as a CaptureWarning (kept in ``self.warnings``); what
        was decoded before it is kept. ``close()`` ends an unfinished generator.
        """
        gen = self._batches(batch, stats)
        self._generators.add(gen)
        return gen

    def _batches(self, batch, stats):
        buffers = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        turn = 0
        batch = buffers[0]
        batch.n = 0
        cols = batch.columns
        pending = b""
        header = None
        started = False
        ng_state = PcapngState()
        consumed_before = 0   # bytes of the stream before the current buffer
        for data, at_eof in self._chunks():
            if isinstance(data, np.ndarray):
                buf = data
            else:
                if pending:
                    data = pending + data
                buf = np.frombuffer(data, dtype=np.uint8)
            pos = 0
            end = buf.shape[0]
            if not started:
                if end < 24 and not at_eof:
                    pending = bytes(buf)
                    continue
                header = self._parse_header(bytes(buf[:24]))
                started = True
                pos = 24 if header is not None else 0
            while True:
                if header is not None:
                    big, nano, linktype = header
                    pos, rows, status = walk_pcap(buf, pos, end, big, nano, linktype, cols, 0, stats)
                else:
                    pos, rows, status = walk_pcapng(buf, pos, end, ng_state.arrays, cols, 0, stats)
                self.bytes_done = consumed_before + pos
                if rows:
                    batch.n = rows
                    yield batch
                    turn = (turn + 1) % len(buffers)
                    batch = buffers[turn]
                    batch.n = 0
                    cols = batch.columns
                if status == WALK_BAD:
                    stats[S_BAD_RECORD] += 1
                    where = consumed_before + pos
                    self.warnings.append(CaptureWarning(
                        self.name, f"corrupt record header at byte offset {where}"
                        f"{' of the decompressed data' if self.compressed else ''}; "
                        f"the rest of this file ({self._remaining(where)}) was not decoded",
                        stopped=True))
                    return
                if status == WALK_NEED_MORE or pos == end:
                    break
            if at_eof:
                if pos < end:
                    stats[S_TRUNC_RECORD] += 1
                    self.warnings.append(CaptureWarning(
                        self.name, f"file ends in the middle of a record at byte offset "
                        f"{consumed_before + pos} ({end - pos} trailing bytes ignored)"))
                break
            pending = bytes(buf[pos:end])
            consumed_before += pos
        if not started:
            raise CaptureError(f"{self.name}: empty file")

    def _remaining(self, where):
        if self.size_bytes is not None and not self.compressed:
            return f"{self.size_bytes - where} bytes"
        return "unknown size"
