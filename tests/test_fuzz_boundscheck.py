"""Fuzz pass under Numba's bounds checking (issue 14, issue 11 "hardening").

A worker subprocess runs with ``NUMBA_BOUNDSCHECK=1`` (every kernel checks
every index and raises IndexError instead of reading past an array) and its
own ``NUMBA_CACHE_DIR`` (``build/numba-boundscheck``; ``kernels/jit.py``
adds ``-boundscheck`` to the cache name as well), so checked kernels never
mix with the normal cache. It feeds mutated real captures (every pcap and
pcapng under ``pcaps/``, gzip ones unpacked: bit flips, truncations, byte
insertions and deletions, record/block length fields set to extremes, frame
header bytes set to extremes) to

* the file walkers (``CaptureFile.batches``: walk_pcap, walk_pcapng, resync);
* the whole engine (``sensor replay`` in the worker, every few cases);
* the ring walker (``walk_ring_block``) over mutated TPACKET_V3 blocks.

Each case must end with every frame decoded or counted under one skip reason
(``records == decoded + sum(skip reasons)``), a ``CaptureError`` (a clear
message) or exit status 0/1 from replay, never another exception, an
IndexError from the bounds checker, or a hang (the parent kills the worker
when one case takes more than ``CASE_CPU_S`` of the worker's CPU time, or the
compilation more than ``COMPILE_CPU_S``; CPU time, not wall time, so a loaded
machine stretches the run but never fails it; wall-time limits ten times as
long catch a worker stuck without using the CPU).

    python -m pytest -q tests/test_fuzz_boundscheck.py            # short profile
    SCAN_SENSOR_FUZZ=deep python -m pytest -q tests/test_fuzz_boundscheck.py
    SCAN_SENSOR_FUZZ_CASES=N ...                                 # any count

Cases are reproducible: case ``i`` of a profile always makes the same file.
"""
import contextlib
import io
import json
import os
import pathlib
import random
import select
import struct
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
PROFILES = {"short": 300, "deep": 5000}
ENGINE_EVERY = 10          # every 10th case also goes through the whole engine
RING_EVERY = 3             # every 3rd case also walks a mutated ring block
CASE_CPU_S = 30
COMPILE_CPU_S = 600        # the first case compiles the checked kernels
WALL_FACTOR = 10           # wall-time limit = this x the CPU-time limit
POLL_S = 2.0
EXTREMES32 = (0, 1, 15, 16, 0xFFFF, 262144, 262145, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
EXTREMES8 = (0, 0x0F, 0x40, 0x45, 0x4F, 0x60, 0xF0, 0xFF)


# ---------------------------------------------------------------- corpus

def seeds():
    import gzip
    out = []
    for path in sorted((ROOT / "pcaps").rglob("*")):
        if path.suffix == ".gz":
            try:
                out.append((path.name, gzip.decompress(path.read_bytes())))
            except (OSError, EOFError):
                pass
        elif path.suffix in (".pcap", ".pcapng"):
            out.append((path.name, path.read_bytes()))
    return [(n, d) for n, d in out if len(d) >= 24]


def record_offsets(data):
    """(offset, length-field offset, byte order) of each record/block header."""
    out = []
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":                      # pcapng
        pos = 0
        while pos + 12 <= len(data):
            e = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else (
                ">" if data[pos + 8:pos + 12] == b"\x1a\x2b\x3c\x4d" else None)
            e = e or (out[-1][2] if out else "<")
            length = struct.unpack(e + "I", data[pos + 4:pos + 8])[0]
            out.append((pos, pos + 4, e))
            if length < 12 or length % 4:
                break
            pos += length
        return out
    e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos = 24
    while pos + 16 <= len(data):
        out.append((pos, pos + 8, e))
        pos += 16 + struct.unpack(e + "I", data[pos + 8:pos + 12])[0]
    return out


def mutate(data, rng):
    """1-3 mutations of ``data``; -> (bytes, description)."""
    buf = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("flip", "truncate", "insert", "delete", "length", "field", "field"))
        recs = record_offsets(bytes(buf)) if kind in ("length", "field") else []
        if kind == "flip" or (kind in ("length", "field") and not recs):
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
            done.append("flip")
        elif kind == "truncate":
            cut = rng.randrange(len(buf))
            del buf[cut:]
            done.append(f"truncate@{cut}")
            if len(buf) < 4:
                break
        elif kind == "insert":
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            done.append(f"insert@{at}")
        elif kind == "delete":
            at = rng.randrange(len(buf))
            del buf[at:at + rng.randint(1, 64)]
            done.append(f"delete@{at}")
        elif kind == "length":
            start, field, e = rng.choice(recs)
            field = rng.choice((field, field + 4, start + 12, start + 16, start + 20))
            if field + 4 <= len(buf):
                buf[field:field + 4] = struct.pack(e + "I", rng.choice(EXTREMES32))
            done.append(f"length@{field}")
        else:                                   # a header byte inside a frame
            start, _, _ = rng.choice(recs)
            at = start + 16 + rng.choice((12, 13, 14, 15, 16, 17, 18, 20, 23, 24, 28, 32, 34,
                                          40, 46, 47, 54, 60))
            if at < len(buf):
                buf[at] = rng.choice(EXTREMES8)
            done.append(f"field@{at}")
    return bytes(buf), "+".join(done)


def case(i, corpus, profile):
    rng = random.Random(f"{profile}-{i}")
    name, data = corpus[rng.randrange(len(corpus))]
    mutated, how = mutate(data, rng)
    return name, mutated, how, rng


# ---------------------------------------------------------------- worker

def check_counts(stats, where):
    import naive
    skipped = sum(stats[k] for k in naive.SKIP_REASONS)
    if stats["records"] != stats["decoded"] + skipped:
        raise AssertionError(f"{where}: records {stats['records']} != decoded "
                             f"{stats['decoded']} + skipped {skipped}")


def decode_case(path):
    from kernels.batch import PacketBatch, new_stats, stats_dict
    from sensor.capture.files import CaptureError, CaptureFile
    stats = new_stats()
    try:
        with CaptureFile(str(path), chunk_bytes=4096 if path.stat().st_size % 2 else 4 << 20,
                         use_mmap=path.stat().st_size % 3 != 0) as cf:
            for _ in cf.batches(PacketBatch(256), stats):
                pass
    except CaptureError:
        pass
    check_counts(stats_dict(stats), "decode")


def engine_case(path, stats_path):
    from sensor.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["replay", "--no-summary", "--jsonl", os.devnull, "--stats-json",
                     str(stats_path), str(path)])
    if code not in (0, 1):
        raise AssertionError(f"replay exit status {code}: {err.getvalue()[-500:]}")
    bad = [ln for ln in err.getvalue().splitlines() if not ln.startswith("scan-sensor: ")]
    if bad:
        raise AssertionError(f"replay wrote more than one-line messages: {bad[:3]}")
    if code == 0 or stats_path.exists():
        check_counts(json.loads(stats_path.read_text()), "engine")


def ring_case(frames, rng):
    import numpy as np
    from test_ring_walker import build_ring
    from kernels.batch import PacketBatch, new_stats, stats_dict
    from kernels.walk_ring import walk_ring_block
    picked = [frames[rng.randrange(len(frames))] for _ in range(rng.randint(1, 40))]
    records = [(ts, wl, f, rng.choice((None, rng.randrange(4096)))) for ts, wl, f in picked]
    ring, _off, end, first, num = build_ring(records, 1 << 16)
    for _ in range(rng.randint(1, 6)):              # damage record headers and frames
        at = first + rng.randrange(max(1, end - first - 4))
        if rng.random() < 0.5:
            ring[at:at + 4] = np.frombuffer(struct.pack("<I", rng.choice(EXTREMES32)), np.uint8)
        else:
            ring[at] = rng.choice(EXTREMES8)
    num = rng.choice((num, num + 1, num * 2 + 5, max(0, num - 1)))
    batch, stats = PacketBatch(rng.choice((1, 7, 256))), new_stats()
    pkt_off, left, rounds = first, num, 0
    while left > 0:
        pkt_off, left, _n = walk_ring_block(ring, end, pkt_off, left, batch.columns, 0, stats)
        rounds += 1
        if rounds > 100_000:
            raise AssertionError("ring walker does not make progress")
    check_counts(stats_dict(stats), "ring")


def worker(profile, count, workdir):
    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(ROOT))
    from kernels import jit
    assert jit.BOUNDSCHECK and jit.CACHE_DIR.name.endswith("-boundscheck"), jit.CACHE_DIR

    @jit.kernel
    def canary(a, i):
        return a[i]

    import numpy as np
    try:
        canary(np.zeros(2, np.uint8), 5)
        raise SystemExit("NUMBA_BOUNDSCHECK=1 did not turn bounds checking on")
    except IndexError:
        pass
    from test_ring_walker import FRAMES
    corpus = seeds()
    workdir = pathlib.Path(workdir)
    # compile every checked specialisation first (mmap and streamed buffers,
    # pcap and pcapng, engine, ring) on two unmutated seeds, within the
    # compile time limit; the per-case limit starts after "ready"
    for name, data in [c for c in corpus if c[0] == "nmap_syn_scan.pcap"][:1] + \
            [c for c in corpus if c[1][:4] == PCAPNG_MAGIC][:1]:
        for size_mod in (0, 1):
            path = workdir / f"warm{size_mod}-{name}"
            path.write_bytes(data + (b"\0" * ((size_mod - len(data)) % 2)))
            decode_case(path)
            path.write_bytes(data + b"\0" * ((-len(data)) % 3))
            decode_case(path)
        engine_case(path, workdir / "stats.json")
    ring_case(FRAMES, random.Random(0))
    print(json.dumps({"ready": True}), flush=True)
    for i in range(count):
        name, data, how, rng = case(i, corpus, profile)
        print(json.dumps({"case": i, "start": f"{name} {how}"}), flush=True)
        suffix = ".pcapng" if data[:4] == PCAPNG_MAGIC else ".pcap"
        path = workdir / f"case{i % 4}{suffix}"
        path.write_bytes(data)
        try:
            decode_case(path)
            if i % ENGINE_EVERY == 0:
                stats_path = workdir / "stats.json"
                stats_path.unlink(missing_ok=True)
                engine_case(path, stats_path)
            if i % RING_EVERY == 0:
                ring_case(FRAMES, rng)
            print(json.dumps({"case": i, "ok": True}), flush=True)
        except BaseException as exc:         # noqa: BLE001 -- reported to the parent
            print(json.dumps({"case": i, "ok": False, "error": f"{type(exc).__name__}: {exc}"}),
                  flush=True)
    print(json.dumps({"done": count}), flush=True)


# ---------------------------------------------------------------- the test

def cpu_seconds(pid):
    """User + system CPU time of a running process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_and_count():
    profile = os.environ.get("SCAN_SENSOR_FUZZ", "short")
    if profile not in PROFILES:
        raise ValueError(f"SCAN_SENSOR_FUZZ={profile!r}: one of {', '.join(PROFILES)}")
    return profile, int(os.environ.get("SCAN_SENSOR_FUZZ_CASES", PROFILES[profile]))


def test_mutated_captures_under_bounds_checking(tmp_path):
    profile, count = profile_and_count()
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1",
               NUMBA_CACHE_DIR=str(ROOT / "build" / "numba-boundscheck"), TZ="UTC")
    env.pop("NUMBA_DISABLE_JIT", None)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", profile, str(count),
                             str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    failures, current, done = [], None, False

    def limits(cpu_s):
        return cpu_seconds(proc.pid) + cpu_s, time.monotonic() + WALL_FACTOR * cpu_s

    cpu_limit, wall_limit = limits(COMPILE_CPU_S)
    try:
        while not done:
            ready, _, _ = select.select([proc.stdout], [], [], POLL_S)
            if not ready:
                if cpu_seconds(proc.pid) > cpu_limit or time.monotonic() > wall_limit:
                    raise AssertionError(f"hang: case {current} took over the time limit")
                continue
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"worker died ({proc.wait()}) in case {current}:\n"
                                     f"{proc.stderr.read()[-3000:]}")
            msg = json.loads(line)
            if "ready" in msg:
                current = "none yet (compiled)"
                cpu_limit, wall_limit = limits(CASE_CPU_S)
            elif "start" in msg:
                current = f"{msg['case']} ({msg['start']})"
                cpu_limit, wall_limit = limits(CASE_CPU_S)
            elif msg.get("ok") is False:
                failures.append(f"case {current}: {msg['error']}")
            done = "done" in msg
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures[:20])


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
