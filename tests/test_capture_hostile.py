"""Hostile and damaged capture files (issue 14): the sensor never dies, never
loses the rest of a file silently, and says what happened with the right exit
status. Real processes (``python -m sensor replay``) on files from
``pcaps/hostile/make_hostile.py`` or built here when large; a real truncation
of a file while a replay is reading it."""
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np

import pytest

from conftest import ROOT, shipped
from fixtures_decode import ethernet, ipv4, kernel_decode, ng_block, ng_epb, ng_idb, ng_shb, tcp
from sensor.capture.files import CaptureFile
from kernels.batch import PacketBatch, new_stats

SCAN_SET = ("--set", "sensor.name=hostile", "--set", "sensor.hash_seed=1")


def replay(*args, stdin=None, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "sensor", "replay", "--no-summary", *SCAN_SET,
                           *map(str, args)], cwd=ROOT, capture_output=True, input=stdin,
                          timeout=timeout, **kw)


def alerts_of(stdout, rule=None):
    alerts = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return [a for a in alerts if rule is None or a["rule"] == rule]


def stderr_lines(proc):
    text = proc.stderr.decode()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


def hostile(name):
    return shipped(f"hostile/{name}")


# ------------------------------------------------------ item 1: shrinking input

@pytest.fixture(scope="module")
def big_capture(tmp_path_factory):
    """A bench capture big enough that a replay is still reading it a moment
    after it started (about 60 MB, 800k packets, scanners and a SYN flood)."""
    from sensor.bench import write_capture
    path = tmp_path_factory.mktemp("shrink") / "big.pcap"
    write_capture(str(path), 800_000)
    return path


def _inode_leased(path, pid):
    ino = os.stat(path).st_ino
    with open("/proc/locks") as fh:
        for line in fh:
            f = line.split()
            if "LEASE" in f and f[f.index("LEASE") + 3] == str(pid) and \
                    f[f.index("LEASE") + 4].endswith(f":{ino}"):
                return True
    return False


def _read_position(pid, path):
    """Offset of the process's open file description of ``path`` (None if not open)."""
    target = os.path.realpath(path)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    return int(fh.readline().split()[1])
        except OSError:
            continue
    return None


def _wait_for(predicate, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _started_reading(pid, path, fraction=10):
    """The process has mapped ``path``, or read a tenth of it."""
    target = os.path.realpath(path)
    try:
        with open(f"/proc/{pid}/maps") as fh:
            if any(line.rstrip().endswith(" " + target) for line in fh):
                return True
    except OSError:
        return False
    return (_read_position(pid, path) or 0) > os.stat(path).st_size // fraction


def _check_cut_run(proc, out_path, path, cut):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, err)      # SIGBUS would be -7
    text = err.decode()
    assert "Traceback" not in text, text
    (line,) = [ln for ln in text.splitlines() if "shrank" in ln]
    assert re.fullmatch(rf"scan-sensor: (warning|error): {re.escape(str(path))}: the file shrank "
                        rf"while being read \(from \d+ to {cut} bytes\): decoding stopped at byte "
                        rf"offset \d+; the \d+ bytes after it were not read", line), line
    stopped_at = int(re.search(r"byte offset (\d+)", line).group(1))
    assert cut - 16 - 262144 <= stopped_at <= cut
    # every alert due before the cut was delivered: the same alerts as a replay
    # of what is left of the file
    got = alerts_of(out_path.read_bytes())
    after = replay(path)
    assert after.returncode == 0, after.stderr
    assert got == alerts_of(after.stdout)
    assert got, "the part before the cut holds scans: alerts expected"


@pytest.mark.skipif(os.geteuid() != 0, reason="taking a lease on a test file needs its owner "
                    "or CAP_LEASE; as root it is always possible")
def test_truncating_a_mapped_file_during_replay_is_no_sigbus(tmp_path, big_capture):
    path = tmp_path / "shrinking.pcap"
    path.write_bytes(big_capture.read_bytes())
    out_path = tmp_path / "alerts.jsonl"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sensor", "replay", "--no-summary",
                                 *SCAN_SET, str(path)], cwd=ROOT, stdout=out,
                                stderr=subprocess.PIPE)
    try:
        # the sensor maps the file under a read lease: wait until it holds it,
        # then let it get into the file
        # truncate as soon as the sensor has mapped the file (it is then
        # walking the map); the kernel holds the truncation until it lets go
        assert _wait_for(lambda: _started_reading(proc.pid, path), proc)
        leased = _inode_leased(path, proc.pid)
        cut = path.stat().st_size // 2
        os.truncate(path, cut)
        assert path.stat().st_size == cut
        _check_cut_run(proc, out_path, path, cut)
        assert leased, "the file was mapped without a read lease"
    finally:
        proc.kill()
        proc.wait()


def test_truncating_a_file_open_for_writing_during_replay(tmp_path, big_capture):
    """A file some writer holds open (tcpdump still writing, a log being
    rotated) is read, not mapped; truncating it ends the replay cleanly."""
    path = tmp_path / "written.pcap"
    path.write_bytes(big_capture.read_bytes())
    out_path = tmp_path / "alerts.jsonl"
    writer = open(path, "r+b")          # a writer: no read lease can be had
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "sensor", "replay", "--no-summary",
                                     "--set", "capture.read_chunk_bytes=65536", *SCAN_SET,
                                     str(path)], cwd=ROOT, stdout=out, stderr=subprocess.PIPE)
        try:
            size = path.stat().st_size
            assert _wait_for(lambda: _started_reading(proc.pid, path), proc)
            cut = size * 3 // 4
            os.ftruncate(writer.fileno(), cut)
            _check_cut_run(proc, out_path, path, cut)
        finally:
            proc.kill()
            proc.wait()
    finally:
        writer.close()


def test_last_record_sec_matches_reference():
    """The resync time reference (kernels/walk_pcap.last_record_sec) against naive.py."""
    import naive
    from hypothesis import given, settings, strategies as st
    from kernels.walk_pcap import last_record_sec

    record = st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40),
                       st.sampled_from([None, 262145, 2**32 - 1]))

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(records=st.lists(record, max_size=8), big=st.booleans(), cut=st.integers(0, 400))
    def check(records, big, cut):
        e = ">" if big else "<"
        data = b"".join(struct.pack(e + "IIII", sec, 0, len(f) if bad is None else bad, len(f)) + f
                        for sec, f, bad in records)
        stop = min(cut, len(data))
        buf = np.frombuffer(data + b"\0" * 4, dtype=np.uint8)
        assert int(last_record_sec(buf, 0, stop, big)) == naive.last_record_sec(data, 0, stop, not big)

    check()


# ------------------------------------------------- item 12: pcapng silent drops

@pytest.mark.parametrize("name, expect", [
    ("undecoded_linktype.pcapng",
     r"3 packets are on interfaces of link type 147, which is not decoded; they are counted "
     r"as unsupported_linktype"),
    ("missing_interface.pcapng",
     r"2 packets were not decoded: they name an interface with no Interface Description Block "
     r"in their section \(counted as unsupported_linktype\)"),
    ("no_idb.pcapng",
     r"3 packets were not decoded: the file has no Interface Description Block at all "
     r"\(counted as unsupported_linktype\)"),
])
def test_pcapng_packets_not_decoded_are_warned(name, expect):
    path = hostile(name)
    proc = replay(path)
    assert proc.returncode == 0
    (line,) = stderr_lines(proc)
    assert re.fullmatch(rf"scan-sensor: warning: {re.escape(str(path))}: {expect}", line), line


# ------------------------------------------- item 13: corruption mid-file, resync

@pytest.mark.parametrize("name, offset, skipped", [
    ("corrupt_length_midfile.pcap", 24 + 10 * 70, 70),
    ("corrupt_block_midfile.pcapng", 28 + 20 + 10 * 88, 88),
])
def test_corrupt_record_mid_file_is_an_error_and_the_rest_is_read(name, offset, skipped):
    path = hostile(name)
    proc = replay(path)
    assert proc.returncode == 1          # README: damaged in the middle is exit status 1
    (line,) = stderr_lines(proc)
    assert re.fullmatch(rf"scan-sensor: (warning|error): {re.escape(str(path))}: corrupt record "
                        rf"header at byte offset {offset} \(.*\); skipped {skipped} bytes to the "
                        rf"next plausible record, at byte offset {offset + skipped}; the rest of "
                        rf"the file was decoded", line), line
    # the scan's SYNs after the damage were read: 59 of its 60 ports
    (alert,) = alerts_of(proc.stdout, "port_scan")
    assert alert["dst_port_count"] == 59
    with CaptureFile(str(path)) as cf:
        for _ in cf.batches(PacketBatch(64), new_stats()):
            pass
        assert cf.bad_records == 1 and cf.skipped_bytes == skipped
        assert [w.level for w in cf.warnings] == ["error"]


def test_many_corrupt_records_are_all_skipped_and_summarised(tmp_path):
    frames = [ethernet(ipv4(tcp(40000, 1000 + i))) for i in range(300)]
    e = "<"
    blocks = [ng_shb(e), ng_idb(e, 1)]
    for i, f in enumerate(frames):
        epb = ng_epb(e, 0, 1_700_000_000_000_000 + i, f)
        if i % 10 == 5:                              # 30 blocks with a wrong trailing length
            epb = epb[:-4] + b"\xff\xff\xff\xff"
        blocks.append(epb)
    path = tmp_path / "many.pcapng"
    path.write_bytes(b"".join(blocks))
    got = kernel_decode(path)
    assert got.n == 270 and got.stats["bad_record"] == 30
    assert sum("corrupt record header" in w for w in got.warnings) == 20
    assert any(f"30 corrupt records in all" in w and f"{30 * len(blocks[7])} bytes were skipped"
               in w for w in got.warnings)


# ---------------------------------- item 14: streamed pcapng, linear carry-over

def _big_block_pcapng(tmp_path):
    e = "<"
    syns = [ethernet(ipv4(tcp(40000, 1000 + i), src=b"\x0a\x42\x00\x09")) for i in range(60)]
    data = b"".join([ng_shb(e), ng_idb(e, 1)]
                    + [ng_epb(e, 0, 1_700_000_000_000_000 + i, f) for i, f in enumerate(syns[:30])]
                    + [ng_block(e, 0xBAD, b"\0" * 4 + b"x" * ((16 << 20) - 64))]   # ~16 MiB
                    + [ng_epb(e, 0, 1_700_000_001_000_000 + i, f) for i, f in enumerate(syns[30:])])
    path = tmp_path / "big_block.pcapng"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_stream_carry_over_of_a_big_block_is_linear(tmp_path, gz):
    path, data = _big_block_pcapng(tmp_path)
    if gz:
        path.write_bytes(gzip.compress(data, compresslevel=1))
    with CaptureFile(str(path), chunk_bytes=4096, use_mmap=False) as cf:
        rows = sum(b.n for b in cf.batches(PacketBatch(64), new_stats()))
        carried = cf.carried_bytes
    assert rows == 60 and not cf.warnings
    # every byte is moved at most a few times (kept tails, geometric growth);
    # re-copying the partial block on every 4 KiB read moved ~4096 * 8 MiB
    assert carried <= 2 * len(data), carried


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_stdin_pcapng_with_a_16_mib_block_and_4_kib_reads(tmp_path, gz):
    path, data = _big_block_pcapng(tmp_path)
    want = replay("--set", "port_scan.threshold=50", path)
    assert want.returncode == 0 and len(alerts_of(want.stdout, "port_scan")) == 1
    feed = gzip.compress(data, compresslevel=1) if gz else data
    # 4 KiB reads of a 16 MiB block took minutes when each read re-copied it
    got = replay("--set", "port_scan.threshold=50", "--set", "capture.read_chunk_bytes=4096", "-",
                 stdin=feed, timeout=100)
    assert got.returncode == 0, got.stderr
    assert alerts_of(got.stdout) == alerts_of(want.stdout)


# ------------------------------------------- item 15: gzip on a slow pipe

def _blocked_reading_stdin(pid):
    try:
        with open(f"/proc/{pid}/syscall") as fh:
            return fh.read().startswith("0 0x0 ")     # read(0, ...) on x86_64
    except OSError:
        return False


def test_gzip_on_a_pipe_whose_first_read_is_one_byte():
    path = shipped("nmap_syn_scan.pcap")
    want = replay(path)
    packed = gzip.compress(path.read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "replay", "--no-summary", *SCAN_SET,
                             "-"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        # one byte in the pipe; the sensor's first read returns just that byte.
        # It must wait for more before deciding what the input is.
        proc.stdin.write(packed[:1])
        proc.stdin.flush()
        _wait_for(lambda: _blocked_reading_stdin(proc.pid), proc)
        try:
            proc.stdin.write(packed[1:])
            proc.stdin.close()
        except BrokenPipeError:
            pass                        # it gave up on the one byte
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert alerts_of(out) == alerts_of(want.stdout) and alerts_of(out)


# ------------------------------------------------------ item 16: the small ones

@pytest.mark.parametrize("name, message", [
    ("four_bytes.pcap", r"pcap file header cut short \(4 of 24 bytes\)"),
    ("four_bytes.pcapng", r"pcapng file cut short inside its first section header \(4 bytes\)"),
    ("gzip_header_cut.pcap.gz",
     r"gzip data ends before any capture data \(the compressed stream is cut short\)"),
])
def test_short_files_are_errors_that_say_what_they_are(name, message):
    path = hostile(name)
    proc = replay(path)
    assert proc.returncode == 1
    (line,) = stderr_lines(proc)
    assert re.fullmatch(rf"scan-sensor: error: {re.escape(str(path))}: {message}", line), line
    assert "empty" not in line and "what came before" not in line


def test_pcapng_time_overflow_is_counted_and_warned():
    path = hostile("time_overflow.pcapng")
    proc = replay(path)
    assert proc.returncode == 0
    # the wrapped times also go back in time: a new time epoch, said on its own line
    epoch, line = stderr_lines(proc)
    assert "packet time went back" in epoch and "new time epoch" in epoch, epoch
    assert re.fullmatch(rf"scan-sensor: warning: {re.escape(str(path))}: 2 packets have a time "
                        rf"outside what 64-bit nanoseconds hold \(years 1677-2262\); their times "
                        rf"are wrong", line), line
