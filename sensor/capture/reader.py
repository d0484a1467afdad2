"""The decode loop of one capture file: window -> walker kernel -> batches, with
resynchronisation after damage and the reports of what was not decoded.

``_Reader(capture, batch, stats).run()`` is the generator behind
``CaptureFile.batches``. Per walker call: check the read lease (a mapped file
about to be truncated switches to reading, ``source.py``), walk, yield a full
batch, then act on the walker's status: ``WALK_NEED_MORE`` reads what the
next record needs (its length is read here from its header), ``WALK_BAD``
resynchronises (``resync.py``). At the end of the data a record that runs
past it is either the start of damage (a plausible record follows inside the
remaining bytes: resynchronise) or the file was cut off while being written
(a warning). Reports are ``CaptureWarning``s on the capture.
"""
import os
import struct

from kernels.batch import S_BAD_RECORD, S_LINKTYPE, S_TRUNC_RECORD
from kernels.walk_pcap import WALK_BAD, WALK_NEED_MORE, last_record_sec, walk_pcap
from kernels.walk_pcapng import (
    BT_SHB, MAX_BLOCK_BYTES, SEC_IDBS, SEC_LT_FIRST, SEC_LT_OTHERS, SEC_NO_IFACE, SEC_ORDER,
    SEC_TS_OVERFLOW, PcapngState, walk_pcapng,
)
from sensor.capture.buffers import read_only
from sensor.capture.files import MAX_DAMAGE_REPORTS, CaptureError, CaptureWarning
from sensor.capture.resync import find_pcap_record, find_pcapng_block


class _Stop(Exception):
    """Decoding of this file ends here (reported already)."""


class _Reader:
    def __init__(self, capture, batch, stats):
        self.cf = capture
        self.w = capture._window
        self.buffers = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        self.stats = stats
        self.header = None
        self.ng = PcapngState()
        self.ref_sec = -1                 # seconds of the last pcap record walked
        self.last_run = None              # (start, end) in buf of the last walker call that moved
        self.linktype_before = int(stats[S_LINKTYPE])

    # --- reading ---------------------------------------------------------------
    def _more(self, pos, need):
        pos, report = self.cf._more(pos, need, self.w.base + self.w.fill)
        if report is not None:
            self.cf.warnings.append(report)
        return pos

    def _need(self, pos):
        """Bytes from ``pos`` the next record needs (its header, then all of it)."""
        buf, avail = self.w.buf, self.w.fill - pos
        if self.header is not None:
            if avail < 16:
                return 16
            fmt = ">I" if self.header[0] else "<I"
            return 16 + struct.unpack(fmt, bytes(buf[pos + 8:pos + 12]))[0]
        if avail < 12:
            return 12
        if struct.unpack("<I", bytes(buf[pos:pos + 4]))[0] == BT_SHB:
            swap = bytes(buf[pos + 8:pos + 12]) == b"\x1a\x2b\x3c\x4d"
        else:
            swap = self.ng.section[SEC_ORDER] == 1
        return max(12, struct.unpack(">I" if swap else "<I", bytes(buf[pos + 4:pos + 8]))[0])

    def _settle_ref_sec(self):
        """Bring ``ref_sec`` up to date from the last walker run, before its bytes
        are dropped or a resync needs it (not per batch: it re-walks headers)."""
        if self.header is not None and self.last_run is not None:
            start, end = self.last_run
            self.ref_sec = int(last_record_sec(self.w.buf, start, end, self.header[0]))
        self.last_run = None

    # --- damage ----------------------------------------------------------------
    def _why(self, pos):
        """What is wrong with the record the walker called corrupt at ``pos``."""
        if self.header is not None:
            return "captured length above 262144"
        buf = bytes(self.w.buf[pos:pos + 12])
        if struct.unpack("<I", buf[:4])[0] == BT_SHB:
            if buf[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                return "section header with an unknown byte-order magic"
            order = "<" if buf[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        elif self.ng.section[SEC_ORDER] < 0:
            return "a block before any section header"
        else:
            order = ">" if self.ng.section[SEC_ORDER] == 1 else "<"
        blen = struct.unpack(order + "I", buf[4:8])[0]
        if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES:
            return f"block length {blen}"
        if self.w.fill - pos >= blen:
            tail = struct.unpack(order + "I", bytes(self.w.buf[pos + blen - 4:pos + blen]))[0]
            if tail != blen:
                return f"block length {blen}, its trailing copy {tail}"
        return "its contents do not fit its length"

    def _report_damage(self, message, skipped=0, stopped=False):
        cf = self.cf
        cf.bad_records += 1
        cf.skipped_bytes += skipped
        self.stats[S_BAD_RECORD] += 1
        if stopped or cf.bad_records <= MAX_DAMAGE_REPORTS:
            cf.warnings.append(CaptureWarning(cf.name, message, level="error", ended=stopped,
                                              skipped_bytes=skipped))

    def _resync(self, bad, why):
        """Find the next plausible record after the corrupt one at ``bad``;
        return its position, or raise _Stop when there is none."""
        w, cf = self.w, self.cf
        self._settle_ref_sec()
        bad_at = w.base + bad
        q = bad + 1
        while True:
            if self.header is not None:
                big, nano, _ = self.header
                found, keep, need = find_pcap_record(w.buf, q, w.fill, w.eof, big, nano,
                                                     self.ref_sec)
            else:
                found, keep, need = find_pcapng_block(w.buf, q, w.fill, w.eof,
                                                      int(self.ng.section[SEC_ORDER]))
            if found is not None:
                at = w.base + found
                self._report_damage(
                    f"corrupt record header at {cf._where(bad_at)} ({why}); skipped "
                    f"{at - bad_at} bytes to the next plausible record, at {cf._where(at)}; "
                    f"the rest of the file was decoded", skipped=at - bad_at)
                return found
            if w.eof:
                end = w.base + w.fill
                self._report_damage(
                    f"corrupt record header at {cf._where(bad_at)} ({why}); no plausible "
                    f"record follows: the rest of this file ({cf._remaining(bad_at)}) was not "
                    f"decoded", skipped=end - bad_at, stopped=True)
                raise _Stop
            q = self._more(keep, need)

    def _at_end(self, pos):
        """The data ends at ``fill`` with ``buf[pos:fill]`` not a whole record.
        Returns where to go on, or None when the file is done."""
        w, cf = self.w, self.cf
        end = w.base + w.fill
        if cf.size_bytes is not None and not cf.compressed and not w.mapped:
            try:
                now = os.fstat(cf._raw.fileno()).st_size
            except OSError:
                now = end
            if end < cf.size_bytes and now < cf.size_bytes:
                if pos < w.fill:
                    self.stats[S_TRUNC_RECORD] += 1
                cf.warnings.append(CaptureWarning(
                    cf.name, f"the file shrank while being read (from {cf.size_bytes} to "
                    f"{now} bytes): decoding stopped at byte offset {w.base + pos}; the "
                    f"{cf.size_bytes - (w.base + pos)} bytes after it were not read",
                    ended=True))
                return None
        if pos == w.fill:
            return None
        self._settle_ref_sec()
        if self.header is not None:
            found, _, _ = find_pcap_record(w.buf, pos + 1, w.fill, True, self.header[0],
                                           self.header[1], self.ref_sec)
        else:
            found, _, _ = find_pcapng_block(w.buf, pos + 1, w.fill, True,
                                            int(self.ng.section[SEC_ORDER]))
        at = w.base + pos
        if found is not None:
            self._report_damage(
                f"corrupt record header at {cf._where(at)} (its length runs past the end of "
                f"the file); skipped {found - pos} bytes to the next plausible record, at byte "
                f"offset {w.base + found}{' of the decompressed data' if cf.compressed else ''}; "
                f"the rest of the file was decoded", skipped=found - pos)
            return found
        if self.header is None and self.ng.section[SEC_ORDER] < 0:
            raise CaptureError(f"{cf.name}: pcapng file cut short inside its first section "
                               f"header ({w.fill - pos} bytes)")
        self.stats[S_TRUNC_RECORD] += 1
        cf.warnings.append(CaptureWarning(
            cf.name, f"file ends in the middle of a record at {cf._where(at)} "
            f"({w.fill - pos} trailing bytes ignored)"))
        return None

    # --- pcapng reports ------------------------------------------------------------
    def _finish(self):
        cf, section = self.cf, self.ng.section
        if cf.bad_records > MAX_DAMAGE_REPORTS:
            cf.warnings.append(CaptureWarning(
                cf.name, f"{cf.bad_records} corrupt records in all (the first "
                f"{MAX_DAMAGE_REPORTS} are listed above); {cf.skipped_bytes} bytes were skipped",
                level="error"))
        if self.header is not None:
            return
        no_iface = int(section[SEC_NO_IFACE])
        on_linktype = int(self.stats[S_LINKTYPE]) - self.linktype_before - no_iface
        if on_linktype > 0:
            types = str(int(section[SEC_LT_FIRST]))
            if section[SEC_LT_OTHERS]:
                types += " (and others)"
            cf.warnings.append(CaptureWarning(
                cf.name, f"{on_linktype} packets are on interfaces of link type {types}, which "
                f"is not decoded; they are counted as unsupported_linktype"))
        if no_iface > 0:
            what = ("the file has no Interface Description Block at all" if not section[SEC_IDBS]
                    else "they name an interface with no Interface Description Block in "
                         "their section")
            cf.warnings.append(CaptureWarning(
                cf.name, f"{no_iface} packets were not decoded: {what} (counted as "
                f"unsupported_linktype)"))
        overflow = int(section[SEC_TS_OVERFLOW])
        if overflow > 0:
            cf.warnings.append(CaptureWarning(
                cf.name, f"{overflow} packets have a time outside what 64-bit nanoseconds "
                f"hold (years 1677-2262); their times are wrong"))

    # --- the loop --------------------------------------------------------------
    def run(self):
        w, cf, stats = self.w, self.cf, self.stats
        buffers, turn = self.buffers, 0
        batch = buffers[0]
        batch.n = 0
        cols = batch.columns
        pos = 0
        while w.fill < 24 and not w.eof:
            pos = self._more(pos, 24)
        self.header = header = cf._parse_header(bytes(w.buf[:min(24, w.fill)]))
        pos = 24 if header is not None else 0
        try:
            while True:
                if w.mapped and w.lease_broken:
                    self._settle_ref_sec()       # the map is left for a read buffer
                pos = w.check_lease(pos)
                buf, fill, start = w.buf, w.fill, pos
                if header is not None:
                    big, nano, linktype = header
                    pos, rows, status = walk_pcap(read_only(buf), pos, fill, big, nano, linktype, cols, 0,
                                                  stats)
                    if pos > start:
                        self.last_run = (start, pos)
                else:
                    pos, rows, status = walk_pcapng(read_only(buf), pos, fill, self.ng.arrays, cols, 0,
                                                    stats)
                cf.bytes_done = w.base + pos
                if rows:
                    batch.n = rows
                    yield batch
                    turn = (turn + 1) % len(buffers)
                    batch = buffers[turn]
                    batch.n = 0
                    cols = batch.columns
                if status == WALK_BAD:
                    pos = self._resync(pos, self._why(pos))
                elif status == WALK_NEED_MORE or pos == w.fill:
                    if w.eof:
                        pos = self._at_end(pos)
                        if pos is None:
                            break
                    else:
                        self._settle_ref_sec()
                        pos = self._more(pos, self._need(pos))
        except _Stop:
            pass
        self._finish()
