"""Capture files as batches: classic pcap, pcapng, gzip of either, or standard input.

Bytes come from a ``ByteWindow`` (``sensor/capture/source.py``): a regular
file is memory-mapped whole under a read lease (zero-copy; a truncation
waits until we have switched to reading, so a shrinking file never faults),
everything else (gzip, standard input, FIFOs, ``<(...)``, a file that cannot
be leased, ``use_mmap=False``) is read in chunks of at most ``chunk_bytes``
into a rolling buffer; a chunk is whatever is available, so a live pipe is
decoded as packets arrive. The walker reports how far it got and how much the
next record needs; the tail is kept, so a record split across chunks is never
lost and never copied more than once per growth of the buffer.

Damage is reported, never fatal for the rest of the file: after a corrupt
record the reader resynchronises on the next plausible record
(``sensor/capture/resync.py``) and counts the bytes skipped. Each report is a
``CaptureWarning`` whose ``level`` says how it should be shown: ``"error"``
when data in the middle of the file was lost (exit status 1), ``"warning"``
when everything was read but something was not decoded (a file cut off
mid-record, packets on an undecoded link type).

This module only moves bytes: it holds no detection logic.
"""
import gzip
import os
import stat
import struct
import sys
import weakref
import zlib

from kernels.decode_frame import SUPPORTED_LINKTYPES
from sensor.capture.source import ByteWindow

PCAP_MAGICS = {
    # magic as read little-endian -> (big_endian_file, nanosecond)
    0xA1B2C3D4: (False, False),
    0xD4C3B2A1: (True, False),
    0xA1B23C4D: (False, True),
    0x4D3CB2A1: (True, True),
}
PCAPNG_SHB = 0x0A0D0D0A
GZIP_MAGIC = b"\x1f\x8b"
# corrupt records reported one by one per file; the rest in one summary line
MAX_DAMAGE_REPORTS = 20


class CaptureError(Exception):
    """A capture file cannot be read (the message names the file and where)."""


class CaptureWarning:
    """Something in a file was damaged or not decoded.

    ``level``: ``"error"`` when data in the middle of the file was lost (a
    corrupt record skipped, decoding stopped at damage, the file shrinking
    while read): the exit status is 1 and it should be shown as an error;
    ``"warning"`` when everything present was read (a file that ends
    mid-record, packets on an undecoded link type, impossible times).
    ``ended``: decoding of the file ended there (what came before was kept).
    ``skipped_bytes``: bytes passed over to resynchronise."""

    def __init__(self, path, message, level="warning", ended=False, skipped_bytes=0):
        self.path = path
        self.message = message
        self.level = "error" if ended else level
        self.ended = ended
        self.skipped_bytes = skipped_bytes

    @property
    def is_error(self):
        return self.level == "error"

    @property
    def stopped(self):
        """The old name replay.py reads to set exit status 1: now true for
        every error-level report (use ``is_error``)."""
        return self.is_error

    def __str__(self):
        return f"{self.path}: {self.message}"


def _display_name(path):
    return "<stdin>" if path == "-" else str(path)


class _Prefixed:
    """A stream whose first bytes were already read (format detection on a pipe)."""

    def __init__(self, head, raw):
        self.head = head
        self.raw = raw

    def read(self, n=-1):
        if self.head:
            out = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(out):]
            return out
        return self.raw.read(n)


class CaptureFile:
    """One capture input; iterate ``batches(batch, stats)`` to decode it.

    Attributes set while reading: ``size_bytes`` (None for streams),
    ``bytes_done`` (progress), ``warnings`` (CaptureWarning list),
    ``format`` ("pcap" / "pcapng"), ``compressed``, ``mapped`` (the file is
    read through a memory map), ``carried_bytes``, ``skipped_bytes`` (passed over to
    resynchronise after corrupt records), ``bad_records``.

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
        self.skipped_bytes = 0
        self.bad_records = 0
        self._raw = None
        self._window = None
        self._carried_bytes = 0
        self._generators = weakref.WeakSet()
        self._open()

    @property
    def mapped(self):
        return self._window is not None and self._window.mapped

    @property
    def carried_bytes(self):
        """Bytes moved within the read buffer so far (kept tails, growth): linear in the input."""
        return self._carried_bytes + (self._window.moved_bytes if self._window else 0)

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
            # BufferedReader.read(n) returns fewer than n bytes only at the end,
            # so a pipe whose first write is 1 byte is still detected right
            head = self._raw.read(2)
        except OSError as exc:
            raise CaptureError(f"{self.name}: cannot open: {exc.strerror or exc}") from None
        except AttributeError:
            raise CaptureError(f"{self.name}: cannot open: standard input is closed") from None
        if head[:2] == GZIP_MAGIC:
            self.compressed = True
            stream = gzip.GzipFile(fileobj=_Prefixed(head, self._raw), mode="rb")
            self._window = ByteWindow(stream, self.chunk_bytes)
        elif self.size_bytes is not None:
            self._raw.seek(0)
            self._window = ByteWindow(self._raw, self.chunk_bytes, fd=self._raw.fileno(),
                                      map_it=self.use_mmap)
        else:
            self._window = ByteWindow(self._raw, self.chunk_bytes, head=head)

    def close(self):
        # a batches() generator suspended at a yield holds a view of the map
        # (closing it would raise BufferError): finish it first
        for gen in list(self._generators):
            gen.close()
        if self._window is not None:
            self._carried_bytes += self._window.moved_bytes
            self._window.close()
            self._window = None
        if self._raw is not None and self.path != "-":
            self._raw.close()
        self._raw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading -----------------------------------------------------------
    def _more(self, pos, need, total_before):
        """Read more into the window -> (new pos, CaptureWarning or None)."""
        window = self._window
        try:
            return window.more(pos, need), None
        except EOFError:
            # gzip stream cut short (written by a capture that was killed, or
            # copied while being written): decode what came out of it. more()
            # moved the kept bytes to the front before reading, so pos is 0.
            window.eof = True
            done = window.base + window.fill
            if done == 0:
                raise CaptureError(f"{self.name}: gzip data ends before any capture data "
                                   f"(the compressed stream is cut short)") from None
            return 0, CaptureWarning(
                self.name, f"compressed data ends early, after {done} decompressed bytes; "
                f"what came before it was decoded")
        except (OSError, zlib.error) as exc:   # gzip.BadGzipFile is an OSError
            raise CaptureError(f"{self.name}: read failed after {total_before} bytes"
                               f"{' (decompressed)' if self.compressed else ''}: {exc}") from None

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
        Counters are added to ``stats``. Damage is reported as CaptureWarnings
        (kept in ``self.warnings``); what was decoded around it is kept.
        ``close()`` ends an unfinished generator.
        """
        gen = _Reader(self, batch, stats).run()
        self._generators.add(gen)
        return gen

    def _remaining(self, where):
        if self.size_bytes is not None and not self.compressed:
            return f"{max(0, self.size_bytes - where)} bytes"
        return "unknown size"

    def _where(self, offset):
        return f"byte offset {offset}{' of the decompressed data' if self.compressed else ''}"


from sensor.capture.reader import _Reader   # noqa: E402  (the loop, split out for size)
