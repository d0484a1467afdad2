"""Two workers share out the packet rules and the next decode by measured time
(sensor/stage_balance.py); where each runs changes no alert."""
import threading

import pytest

from kernels.batch import COLUMN_NAMES, PacketBatch, new_stats
from sensor import stage_balance as sb
from sensor.capture.files import CaptureFile
from sensor.config import load_config
from sensor.engine import Engine

from conftest import shipped


def test_split_gives_the_biggest_tasks_to_the_lighter_side():
    b = sb.StageBalance()
    b.record(sb.PROBE_STAGE, 60.0)
    b.record(sb.CLASSIFY, 8.0)
    for task, secs in (("port_scan", 55.0), (sb.DECODE, 21.0), ("icmp_sweep", 4.0)):
        b.record(task, secs)
    # port_scan to the main thread (0 < 60), then decode (55 < 60) to the main
    # thread too, then classify to the worker (60 < 76), icmp_sweep (68 < 76) too
    assert b.split([sb.CLASSIFY, "port_scan", sb.DECODE, "icmp_sweep"]) == \
        {sb.CLASSIFY, "icmp_sweep"}
    assert sb.StageBalance().split(["a", "b"]) == set()        # nothing measured yet


def test_running_average():
    b = sb.StageBalance()
    b.record("x", 1.0)
    b.record("x", 2.0)
    assert b.seconds["x"] == pytest.approx(1.0 + sb.SMOOTHING)


def _alerts(workers, rows, force=None, probe_stage_last=False, group="prober",
            rows_per_batch=256):
    cfg = load_config(None, ['sensor.name="balance"', "sensor.hash_seed=3",
                             f"sensor.workers={workers}",
                             f"capture.batch_packets={rows_per_batch}", f'alerts.group="{group}"'])
    engine = Engine(cfg)
    if probe_stage_last:
        _probe_stage_after_the_rules(engine)
    out = []
    batch = engine.batch
    for a in range(0, rows.n, rows_per_batch):
        b = min(a + rows_per_batch, rows.n)
        for name in COLUMN_NAMES:
            getattr(batch, name)[:b - a] = getattr(rows, name)[a:b]
        batch.n = b - a
        if force is not None:
            engine.balance.split = force
        out += [x.to_dict() for x in engine.process(batch)]
    return out + [x.to_dict() for x in engine.finish()]


def _probe_stage_after_the_rules(engine):
    """The worker starts each batch's probe stage only once every packet rule has
    run: the outcomes of their alerts must still come from the table after it."""
    rules_done = threading.Event()
    ran = []

    def counted(process):
        def run(*args):
            try:
                return process(*args)
            finally:
                ran.append(1)
                if len(ran) == len(engine.packet_rules):
                    rules_done.set()
        return run

    for det in engine.packet_rules:
        det.process = counted(det.process)
    probe_stage = engine._probe_stage

    def after_the_rules(batch):
        assert rules_done.wait(60), "the packet rules did not run"
        rules_done.clear()
        ran.clear()
        return probe_stage(batch)

    engine._probe_stage = after_the_rules


def _rows(name):
    parts = []
    with CaptureFile(str(shipped(name))) as capture:
        for batch in capture.batches(PacketBatch(4096), new_stats()):
            parts.append({n: getattr(batch, n)[:batch.n].copy() for n in COLUMN_NAMES})
    import numpy as np
    rows = PacketBatch(sum(len(p["ts_ns"]) for p in parts))
    for n in COLUMN_NAMES:
        setattr(rows, n, np.concatenate([p[n] for p in parts]))
    rows.n = len(rows.ts_ns)
    return rows


@pytest.mark.parametrize("capture", ["nmap_syn_scan.pcap", "nmap_host_sweep.pcap",
                                     "nmap_udp_scan.pcap", "nmap_ping_sweep.pcap"])
def test_any_split_gives_the_alerts_of_one_worker(capture):
    rows = _rows(capture)
    one = _alerts(1, rows)
    assert one, "the capture gives alerts"
    splits = {"everything on the worker": lambda movable: set(movable),
              "everything on the main thread": lambda movable: set(),
              "classes on the worker, rules on the main thread": lambda movable: {sb.CLASSIFY},
              "every other rule on the worker": lambda movable: set(movable[1::2]),
              "measured": None}
    for name, split in splits.items():
        assert _alerts(2, rows, split) == one, name


def test_rules_run_before_the_probe_stage_get_the_outcomes_of_after_it():
    """The nmap SYN scan slowed down 1,000 times (48 s) in one batch: port_scan
    reports in the middle of the batch, and the replies that make 22, 80 and 443
    open come later in it. With every packet rule run before the probe stage, that
    alert must still get the outcomes of the table after it, as one worker's does."""
    rows = _rows("nmap_syn_scan.pcap")
    rows.ts_ns[:] = rows.ts_ns[0] + (rows.ts_ns - rows.ts_ns[0]) * 1000
    one = _alerts(1, rows, group="rule", rows_per_batch=4096)
    scan = [a for a in one if a["rule"] == "port_scan"]
    assert scan and scan[0]["open_ports"] == "22,80,443"
    assert _alerts(2, rows, lambda movable: set(), probe_stage_last=True, group="rule",
                   rows_per_batch=4096) == one
