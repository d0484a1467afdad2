"""Engine: batches in, alert records out. No I/O and no clock.

The engine owns the batch, the decode counters, the address classes and the
rules. A capture adapter hands it filled batches; ``finish()`` (end of
input) reports alerts still waiting. Live capture calls ``process`` the
same way, so replay and live give the same alerts for the same packets.
"""
import secrets

import numpy as np

from kernels.batch import PacketBatch, new_stats, stats_dict
from kernels.classify import classify_rows
from sensor.alert_gate import AlertGate
from sensor.detectors.counter import CounterDetector, port_bitmap
from sensor.netlists import compile_lists
from sensor.rules import RULES


class Engine:
    def __init__(self, cfg):
        self.cfg = cfg
        seed = cfg["sensor.hash_seed"] or (secrets.randbits(63) | 1)
        self.sensor_name = cfg.sensor_name
        self.batch = PacketBatch(cfg["capture.batch_packets"])
        self.classes = np.zeros(self.batch.capacity, np.uint16)
        self.decode_stats = new_stats()
        self.nets = compile_lists(cfg)
        self.ignored_ports = port_bitmap(cfg["net.ignore_ports"])
        self.detectors = [CounterDetector(rule, cfg, seed, self.sensor_name)
                          for rule in RULES if cfg[rule.name + ".enabled"]]
        self.gate = AlertGate(cfg["alerts.max_per_minute"], self.sensor_name)

    def process(self, batch):
        """Run every rule over one batch; return the alerts to deliver."""
        if batch.n == 0:
            return []
        classes = self.classes if batch.capacity == self.batch.capacity else \
            np.zeros(batch.capacity, np.uint16)
        classify_rows(batch.columns, batch.n, self.nets, self.ignored_ports, classes)
        alerts = []
        for det in self.detectors:
            alerts.extend(det.process(batch, classes))
        alerts.sort(key=lambda a: a.emitted_ns)
        return self.gate.admit(alerts)

    def finish(self):
        alerts = []
        for det in self.detectors:
            alerts.extend(det.flush())
        alerts.sort(key=lambda a: a.emitted_ns)
        return self.gate.admit(alerts) + self.gate.finish()

    def stats(self):
        out = stats_dict(self.decode_stats)
        for det in self.detectors:
            out.update(det.stats())
        out["alerts_rate_limited"] = self.gate.total_held
        return out
