"""Per-stage profile: nanoseconds per packet for each stage of ``Engine.process``.

    python -m sensor.bench --profile [--packets N] [--mix bench|clean] [--set key=value]

The capture is decoded once into batches kept in memory (the decode stage is
timed on its own, through the same walker and file mapping as a replay), then
the batches go through a fresh engine (one worker) ``--repeat`` times; for
each stage the best run is kept. Stages are timed around each kernel call
(Python ``perf_counter`` per call: calls are per batch or per alert, never per
packet):

* ``decode``: the file walker and frame decoder (``CaptureFile.batches``);
* ``classify``: address classes of the packet rows (``classify_rows``);
* ``probe table``: ``probe_update`` (attempts, answers, timeouts);
* ``<rule>``: each rule's counter kernel, outcome rules included (their
  outcome rows come from the probe table; the classes of outcome rows are
  ``classify outcome rows``);
* ``alert work``: the Python side of the rules (evidence snapshots, alert
  records) and of the engine (episodes, rate gate), i.e. everything in
  ``Engine.process`` that is not a kernel.

Numbers are the machine's; nothing asserts a speed.
"""
import os
import time

import numpy as np


class _Timed:
    """Wraps a kernel: adds the seconds of each call to ``totals[name]``."""

    def __init__(self, fn, name, totals):
        self.fn, self.name, self.totals = fn, name, totals

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.totals[self.name] = self.totals.get(self.name, 0.0) + time.perf_counter() - t0


def decode_all(path, capacity, stats):
    """Every batch of ``path`` as a list of standalone copies, and the seconds the
    walker took (copies excluded)."""
    from kernels.batch import COLUMN_NAMES, PacketBatch
    from sensor.capture.files import CaptureFile
    out = []
    walk = 0.0
    with CaptureFile(path) as capture:
        batch = PacketBatch(capacity)
        gen = capture.batches(batch, stats)
        while True:
            t0 = time.perf_counter()
            got = next(gen, None)
            walk += time.perf_counter() - t0
            if got is None:
                break
            copy = PacketBatch(got.n)
            for name in COLUMN_NAMES:
                getattr(copy, name)[:] = getattr(got, name)[:got.n]
            copy.n = got.n
            out.append(copy)
    return out, walk


def profile_engine(cfg, batches):
    """One pass of a fresh one-worker engine over ``batches``: {stage: seconds}."""
    import sensor.engine as engine_mod
    from kernels import probes as kp
    totals = {}
    engine = engine_mod.Engine(cfg)
    engine.warm_up()
    for det in engine.detectors:
        det._update = _Timed(det._update, det.name, totals)
    real_classify = engine_mod.classify_rows
    real_probe = kp.probe_update

    def classify(cols, n, *rest):
        name = "classify outcome rows" if cols[0] is engine.outcomes.ts_ns else "classify"
        return _Timed(real_classify, name, totals)(cols, n, *rest)

    engine_mod.classify_rows = classify
    kp.probe_update = _Timed(real_probe, "probe table", totals)
    try:
        t0 = time.perf_counter()
        alerts = 0
        for batch in batches:
            alerts += len(engine.process(batch))
        alerts += len(engine.finish())
        whole = time.perf_counter() - t0
    finally:
        engine_mod.classify_rows = real_classify
        kp.probe_update = real_probe
    engine.close()
    totals["alert work"] = whole - sum(totals.values())
    totals["whole engine"] = whole
    return totals, alerts


def run_profile(path, cfg, repeat=3):
    """{stage: ns per packet} (best of ``repeat`` for each stage), packets, alerts."""
    from kernels.batch import new_stats
    best_walk = None
    batches = None
    for _ in range(repeat):
        got, walk = decode_all(path, cfg["capture.batch_packets"], new_stats())
        best_walk = walk if best_walk is None else min(best_walk, walk)
        batches = got
    packets = sum(b.n for b in batches)
    best = {"decode": best_walk}
    alerts = 0
    for _ in range(repeat):
        totals, alerts = profile_engine(cfg, batches)
        for stage, secs in totals.items():
            best[stage] = min(best.get(stage, secs), secs)
    return {stage: secs * 1e9 / max(packets, 1) for stage, secs in best.items()}, packets, alerts


def main(args, sensor_settings, workdir, write_capture, mix):
    from sensor.config import load_config
    path = os.path.join(workdir, "profile.pcap")
    write_capture(path, args.packets, ipv6=args.ipv6, vlan=args.vlan, **mix)
    cfg = load_config(None, sensor_settings, None)
    ns, packets, alerts = run_profile(path, cfg, args.repeat)
    print(f"per-stage profile, {packets:,} packets, {args.mix} mix {mix}, "
          f"best of {args.repeat} runs, {alerts} alerts")
    width = max(len(k) for k in ns)
    for stage, value in sorted(ns.items(), key=lambda kv: (kv[0] == "whole engine", -kv[1])):
        print(f"  {stage.ljust(width)}  {value:7.1f} ns/packet")
    return {"profile_packets": packets, "profile_mix": args.mix,
            "profile_ns_per_packet": {k: round(v, 1) for k, v in ns.items()}}
