"""``scan-sensor compile``: fill the kernel cache ahead of time.

The packet kernels are compiled by Numba on first use (about 17 s of CPU
time; on a cold cache this command spreads it over the CPUs, in four
groups: decoders, probe stage, host-set rules, the other rules) and cached
on disk (``kernels/jit.py``: a directory under ``$NUMBA_CACHE_DIR`` named
after a hash of the kernel sources). Packaging
runs this once at install time (and the systemd unit as ``ExecStartPre=``)
so that neither the first ``replay`` nor the daemon's first start waits for
the compiler. It compiles every specialisation the commands use: the engine
kernels, the pcap and pcapng walkers and the ring walker, over the one
read-only buffer type every capture adapter hands them
(``sensor/capture/buffers.py``).
"""
import multiprocessing
import os
import pathlib
import struct
import sys
import tempfile
import time


def register(sub):
    p = sub.add_parser("compile", help="compile the packet kernels into the cache ahead of time",
                       description="Compile every packet kernel into the on-disk cache (about "
                                   "10 s the first time on 2 CPUs, well under a second when current) "
                                   "and print where the cache is.")
    p.set_defaults(run=run)


# one Ethernet / IPv4 / TCP SYN frame, 54 bytes
_FRAME = (b"\x02\x00\x00\x00\x00\x02" b"\x02\x00\x00\x00\x00\x01" b"\x08\x00"
          b"\x45\x00\x00\x28\x00\x01\x00\x00\x40\x06\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02"
          b"\x30\x39\x00\x50\x00\x00\x00\x00\x00\x00\x00\x00\x50\x02\x20\x00\x00\x00\x00\x00")


def sample_pcap():
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1_700_000_000, 0, len(_FRAME), len(_FRAME)) + _FRAME
    return header + record


def sample_pcapng():
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        length = 12 + len(body)
        return struct.pack("<II", btype, length) + body + struct.pack("<I", length)
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 1, 0, 65535))
    ts = 1_700_000_000 * 1_000_000
    epb = block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(_FRAME),
                               len(_FRAME)) + _FRAME)
    return shb + idb + epb


# independent groups of kernels. On a cold cache they are compiled at once in
# "lanes": with two CPUs, the probe stage and then the decoders in this process, and
# the two rule groups (which share most of their helpers: a helper is compiled once
# per process) in a child started meanwhile. CPU seconds on the development machine,
# alone / after the lane's first group: probe stage 4.9, decoders 3.4; other rules
# 5.1, host-set rules 5.0 / 2.7. The longer lane runs here, where it starts without
# waiting for a fresh interpreter. With four CPUs or more every group has a lane.
GROUPS = ("probes", "rules-other", "decode", "rules-host")
LANES_OF_TWO = (("rules-other", "rules-host"), ("probes", "decode"))
HOST_SET_RULES = {"host_sweep", "port_sweep", "failed_connections", "trw_scanner",
                  "icmp_sweep", "arp_sweep", "ndp_sweep"}


def compile_group(name):
    """Compile (or load) one group of kernels into the cache."""
    from kernels.batch import PacketBatch, new_stats
    from sensor.config import load_config
    from sensor.engine import Engine

    if name == "decode":
        batches, stats = [PacketBatch(64)], new_stats()
        _decode_samples(lambda capture: all(True for _ in capture.batches(batches, stats)))
        _ring_warm_up()
    elif name == "probes":
        engine = Engine(load_config(), rules=())
        engine.warm_up(classes=False)         # the rule groups compile the classes
        engine.finish()
    elif name in ("rules-host", "rules-other"):
        from sensor.rules import RULES
        names = {r.name for r in RULES}
        wanted = HOST_SET_RULES if name == "rules-host" else names - HOST_SET_RULES
        Engine(load_config(), rules=wanted).warm_up(probes=False)
    else:
        raise ValueError(name)


def compile_lane(names):
    """Compile the groups ``names`` one after the other in this process."""
    for name in names:
        compile_group(name)


def lanes(jobs):
    """The groups, split into ``jobs`` lanes to compile at once (the last one runs in
    the calling process)."""
    if jobs >= len(GROUPS):
        return tuple((name,) for name in GROUPS)
    if jobs >= 2:
        return LANES_OF_TWO
    return (GROUPS,)


def _decode_samples(consume):
    """Open each sample capture both ways (memory-mapped and streamed) and hand it
    to ``consume``."""
    from sensor.capture.files import CaptureFile

    with tempfile.TemporaryDirectory(prefix="scan-sensor-compile-") as tmp:
        for name, data in (("s.pcap", sample_pcap()), ("s.pcapng", sample_pcapng())):
            path = pathlib.Path(tmp) / name
            path.write_bytes(data)
            for use_mmap in (True, False):
                with CaptureFile(str(path), use_mmap=use_mmap) as capture:
                    consume(capture)


def compile_all(jobs=None):
    """Run every kernel once on tiny input; returns the cache directory. On a cold
    cache the groups are first compiled in up to ``jobs`` processes at once (default:
    one per CPU); then this process runs everything end to end, loading what they
    cached and compiling whatever they did not cover."""
    from kernels.jit import CACHE_DIR, COLD_CACHE
    from sensor.config import load_config
    from sensor.engine import Engine

    jobs = jobs or len(os.sched_getaffinity(0))
    if COLD_CACHE and jobs > 1:
        *children, own = lanes(jobs)
        context = multiprocessing.get_context("spawn")      # a fresh interpreter each
        with context.Pool(len(children)) as pool:
            pending = pool.map_async(compile_lane, children, chunksize=1)
            compile_lane(own)
            pending.get()
    engine = Engine(load_config())
    engine.warm_up()

    def replay(capture):
        for batch in capture.batches(engine.batches, engine.decode_stats):
            engine.process(batch)

    _decode_samples(replay)
    engine.tick(2_000_000_000_000_000_000)
    engine.finish()
    _ring_warm_up()
    return CACHE_DIR


def _ring_warm_up():
    try:
        from sensor.capture.ring import warm_up
    except ImportError:                  # no AF_PACKET here: no ring walker to compile
        return
    warm_up()


def run(args):
    from kernels.jit import COLD_CACHE
    started = time.perf_counter()
    if COLD_CACHE:
        print("scan-sensor: compiling the packet kernels (about 17 s of CPU time, spread over "
              "the CPUs)", file=sys.stderr)
    cache = compile_all()
    print(f"scan-sensor: kernels ready in "
          f"{time.perf_counter() - started:.1f} s; cache: {cache}", file=sys.stderr)
    return 0
