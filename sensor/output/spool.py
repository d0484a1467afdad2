"""On-disk spool of one output: rendered messages waiting for delivery, in order.

Layout, under ``<state_dir>/spool/<output-name>/``::

    seg-<first seq, 16 digits>.spool    append-only segments
    acked                               msgpack {"version": 1, "acked_seq": N}
    lock                                flock'ed by the process using the spool

A segment is a sequence of msgpack objects: a header map
``{"magic": "scan-sensor-spool", "version": 1, "output": NAME, "created_ns": T}``
then one array per message ``[seq, crc32(message), message]`` (``message`` is
the rendered syslog message, bytes, without transport framing). ``seq``
counts up from 1 over the life of the spool, across restarts. A segment is
closed once it holds ``segment_bytes``; it is deleted when every message in
it has been acknowledged (``ack(seq)``).

Durability: appends are written at once (a crash of the process loses
nothing written); data is fsync'ed, and the ``acked`` file rewritten (write,
fsync, rename), at most every ``fsync_interval_s`` and on ``close()``. A power
loss can therefore lose the last interval of appends, and resend (duplicate)
the last interval of acknowledged messages.

Damage: a message whose CRC does not match, or bytes that are not a valid
entry (a torn write, a flipped bit), are reported with the segment and byte
offset; reading resumes at the next valid entry, so only the damaged
messages are lost. A segment of an unknown version is reported and kept.

Capacity: the segments of one spool never exceed ``max_bytes`` in total; a
message that does not fit is refused (``append`` returns how many it took),
and the caller counts, logs and reports it.
"""
import fcntl
import os
import time
import zlib

import msgpack

MAGIC = "scan-sensor-spool"
VERSION = 1
ENTRY_TAG = 0x93                 # msgpack fixarray of 3: the first byte of every entry
MAX_ENTRY_BYTES = 1 << 20


def _entry(seq, message):
    return msgpack.packb([seq, zlib.crc32(message), message], use_bin_type=True)


def _decode_one(buf, pos):
    """(object, end) for the msgpack object at pos, or None if there is none."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_ENTRY_BYTES + 64)
    unpacker.feed(buf[pos:pos + MAX_ENTRY_BYTES + 64])
    try:
        obj = unpacker.unpack()
    except Exception:   # OutOfData, FormatError, StackError, ExtraData, ValueError
        return None
    return obj, pos + unpacker.tell()


def _valid_entry(obj, after_seq):
    return (isinstance(obj, list) and len(obj) == 3 and isinstance(obj[0], int)
            and obj[0] > after_seq and isinstance(obj[1], int) and isinstance(obj[2], bytes))


def parse_entries(buf, pos):
    """Entries in buf from pos: ([(seq, message, end)], [(offset, reason)]).

    Damaged stretches are skipped: a CRC mismatch costs that entry only; bytes
    that do not decode are skipped up to the next entry that decodes, has a
    later seq and a matching CRC.
    """
    entries, damage = [], []
    last = 0
    view = memoryview(buf)
    while pos < len(buf):
        got = _decode_one(view, pos)
        if got is not None and _valid_entry(got[0], last):
            (seq, crc, message), end = got
            if zlib.crc32(message) == crc:
                entries.append((seq, message, end))
                last = seq
            else:
                damage.append((pos, f"message {seq}: checksum mismatch"))
            pos = end
            continue
        bad = pos
        pos += 1
        while pos < len(buf):
            if buf[pos] == ENTRY_TAG:
                got = _decode_one(view, pos)
                if (got is not None and _valid_entry(got[0], last)
                        and zlib.crc32(got[0][2]) == got[0][1]):
                    break
            pos += 1
        damage.append((bad, f"{pos - bad} bytes that are not a valid entry"))
    return entries, damage


def read_header(buf):
    """(version, end of header) or (None, reason)."""
    got = _decode_one(memoryview(buf), 0)
    if got is None or not isinstance(got[0], dict) or got[0].get("magic") != MAGIC:
        return None, "not a scan-sensor spool segment (bad header)"
    version = got[0].get("version")
    if version != VERSION:
        return None, f"spool version {version!r} is not readable by this version (kept)"
    return version, got[1]


class SpoolBusy(OSError):
    """Another process holds this spool (``lock`` is flock'ed while a Spool is open)."""


class Spool:
    def __init__(self, directory, name, max_bytes, segment_bytes=1 << 20,
                 fsync_interval_s=0.2, log=None):
        self.dir = str(directory)
        self.name = name
        self.max_bytes = int(max_bytes)
        self.segment_bytes = max(4096, min(int(segment_bytes), self.max_bytes))
        self.fsync_interval_s = fsync_interval_s
        self.log = log or (lambda text: None)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolBusy(f"spool {self.dir} is in use by another scan-sensor "
                            "process") from None
        self.acked_seq = self._read_acked()
        self.segments = []          # [first_seq, path, size_bytes], oldest first
        self.damaged = 0            # damage reports (each one stretch or one message)
        self._reported = set()
        self._fd = None
        self._dirty = False
        self._acked_dirty = False
        self._last_sync = time.monotonic()
        self.next_seq = self._recover() + 1
        self.rewind()

    # -- state on disk -------------------------------------------------------------
    def _read_acked(self):
        try:
            with open(os.path.join(self.dir, "acked"), "rb") as fh:
                state = msgpack.unpackb(fh.read(), raw=False)
            return int(state["acked_seq"])
        except FileNotFoundError:
            return 0
        except Exception as exc:   # damaged acked file: resend rather than lose
            self.log(f"spool {self.dir}/acked unreadable ({exc}); resending from the start")
            return 0

    def _write_acked(self):
        tmp = os.path.join(self.dir, "acked.tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgpack.packb({"version": VERSION, "acked_seq": self.acked_seq}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.dir, "acked"))
        self._acked_dirty = False

    def _recover(self):
        """Index the segments left on disk; return the last seq they hold."""
        last = self.acked_seq
        for fname in sorted(os.listdir(self.dir)):
            if not (fname.startswith("seg-") and fname.endswith(".spool")):
                continue
            try:
                first = int(fname[4:-6])
            except ValueError:
                continue
            path = os.path.join(self.dir, fname)
            with open(path, "rb") as fh:
                buf = fh.read()
            version, end = read_header(buf)
            if version is None:      # kept on disk, never read or deleted
                self._report(path, 0, end)
                continue
            self.segments.append([first, path, len(buf)])
            entries, damage = parse_entries(buf, end)
            for offset, reason in damage:
                self._report(path, offset, reason)
            if entries:
                last = max(last, entries[-1][0])
        return last

    def _report(self, path, offset, reason):
        if (path, offset) in self._reported:
            return
        self._reported.add((path, offset))
        self.damaged += 1
        self.log(f"spool damaged: {path} at byte {offset}: {reason}; skipped")

    @property
    def total_bytes(self):
        return sum(seg[2] for seg in self.segments)

    @property
    def backlog(self):
        """Messages spooled and not yet acknowledged (damaged ones included until skipped)."""
        return max(0, self.next_seq - 1 - self.acked_seq)

    # -- writing ---------------------------------------------------------------------
    def _open_segment(self):
        path = os.path.join(self.dir, f"seg-{self.next_seq:016d}.spool")
        header = msgpack.packb({"magic": MAGIC, "version": VERSION, "output": self.name,
                                "created_ns": time.time_ns()})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        os.write(fd, header)
        self.segments.append([self.next_seq, path, len(header)])
        self._fd = fd

    def append(self, messages):
        """Append messages in order; returns how many fit (the rest: spool full)."""
        taken = 0
        chunk = []
        for message in messages:
            entry = _entry(self.next_seq, bytes(message))
            if self._fd is None or self.segments[-1][2] + len(entry) > self.segment_bytes:
                self._flush_chunk(chunk)
                chunk = []
                if self._fd is not None:
                    if self._dirty:
                        os.fsync(self._fd)
                    os.close(self._fd)
                    self._fd = None
                if self.total_bytes + len(entry) + 128 > self.max_bytes:
                    break
                self._open_segment()
            if self.total_bytes + len(entry) > self.max_bytes:
                break
            chunk.append(entry)
            self.segments[-1][2] += len(entry)
            self.next_seq += 1
            taken += 1
        self._flush_chunk(chunk)
        self.maybe_sync()
        return taken

    def _flush_chunk(self, chunk):
        if chunk:
            os.write(self._fd, b"".join(chunk))
            self._dirty = True

    # -- reading and acknowledging -----------------------------------------------------
    def rewind(self):
        """Read again from the first unacknowledged message (after a failed send)."""
        self._cursor = (0, None)
        self._read_seq = self.acked_seq

    @property
    def unread(self):
        """Messages after the read cursor (spooled, not yet read since the last rewind)."""
        return max(0, self.next_seq - 1 - self._read_seq)

    def read(self, max_count, max_bytes=1 << 20):
        """Up to max_count (seq, message) after the read cursor, in order."""
        out, size = [], 0
        while len(out) < max_count and size < max_bytes:
            index, offset = self._cursor
            if index >= len(self.segments):
                self._read_seq = self.next_seq - 1     # all read; the rest was damaged
                break
            first, path, seg_size = self.segments[index]
            with open(path, "rb") as fh:
                if offset is None:
                    buf = fh.read()
                    version, offset = read_header(buf)
                    if version is None:
                        self._report(path, 0, offset)
                        self._cursor = (index + 1, None)
                        continue
                    buf = buf[offset:]
                else:
                    fh.seek(offset)
                    buf = fh.read()
            entries, damage = parse_entries(buf, 0)
            for off, reason in damage:
                self._report(path, offset + off, reason)
            entries = [(seq, message, offset + end) for seq, message, end in entries]
            buf_end = offset + len(buf)
            end = offset
            for seq, message, entry_end in entries:
                if len(out) >= max_count or size >= max_bytes:
                    break
                end = entry_end
                if seq <= self._read_seq:
                    continue
                out.append((seq, message))
                size += len(message)
                self._read_seq = seq
            else:
                end = buf_end
            active = index == len(self.segments) - 1 and self._fd is not None
            if end >= buf_end and not active:
                self._cursor = (index + 1, None)
            else:
                self._cursor = (index, end)
                if end >= buf_end:
                    if index == len(self.segments) - 1:
                        self._read_seq = self.next_seq - 1
                    break
        return out

    def ack(self, seq):
        """Every message up to seq has been delivered."""
        if seq <= self.acked_seq:
            return
        self.acked_seq = seq
        self._acked_dirty = True
        removed = 0
        while self.segments:
            is_last = len(self.segments) == 1
            last_seq = (self.next_seq if is_last else self.segments[1][0]) - 1
            if last_seq > self.acked_seq:
                break
            if is_last and self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._dirty = False
            os.unlink(self.segments.pop(0)[1])
            removed += 1
        if removed:
            index, offset = self._cursor
            self._cursor = (max(0, index - removed), offset if index >= removed else None)
        self.maybe_sync()

    # -- durability ------------------------------------------------------------------
    def maybe_sync(self, force=False):
        if not (self._dirty or self._acked_dirty):
            return
        now = time.monotonic()
        if not force and now - self._last_sync < self.fsync_interval_s:
            return
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False
        if self._acked_dirty:
            self._write_acked()
        self._last_sync = now

    def close(self):
        if self._lock_fd is None:
            return
        self.maybe_sync(force=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)       # releases the flock
        self._lock_fd = None
