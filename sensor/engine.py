"""Engine: batches in, alert records out. No I/O and no clock.

The engine owns the detectors and the decode counters. A capture adapter
hands it filled batches; ``finish()`` (end of input) reports alerts still
waiting. Live capture will call ``process`` the same way, so replay and
live give the same alerts for the same packets.
"""
import secrets

from kernels.batch import PacketBatch, new_stats, stats_dict
from sensor.detectors.port_scan import PortScanDetector


class Engine:
    def __init__(self, cfg):
        self.cfg = cfg
        seed = cfg["sensor.hash_seed"] or (secrets.randbits(63) | 1)
        self.sensor_name = cfg.sensor_name
        self.batch = PacketBatch(cfg["capture.batch_packets"])
        self.decode_stats = new_stats()
        self.detectors = []
        if cfg["port_scan.enabled"]:
            self.detectors.append(PortScanDetector(cfg, seed, self.sensor_name))

    def process(self, batch):
        alerts = []
        for det in self.detectors:
            alerts.extend(det.process(batch))
        return alerts

    def finish(self):
        alerts = []
        for det in self.detectors:
            alerts.extend(det.flush())
        return alerts

    def stats(self):
        out = stats_dict(self.decode_stats)
        for det in self.detectors:
            out.update(det.stats())
        return out
