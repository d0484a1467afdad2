"""State that survives restarts and reloads (sensor/state.py).

The core check: process part of a capture, capture the state (or write a
checkpoint file), build a fresh Engine from the same config, restore, process
the rest: the alerts are exactly those of one uninterrupted run.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from kernels.batch import COLUMN_NAMES, PacketBatch, new_stats
from sensor import state as st
from sensor.capture.files import CaptureFile
from sensor.config import load_config
from sensor.engine import Engine

from batch_builder import batches_from_rows, syn_row
from conftest import shipped

ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCH = 256
COMMON = ['sensor.name="state-test"', "sensor.hash_seed=0"]   # random seed: restore must adopt it


def config(*overrides):
    return load_config(None, COMMON + list(overrides))


def decode(path):
    """All rows of a capture in one PacketBatch."""
    chunk = PacketBatch(4096)
    parts = []
    with CaptureFile(str(path)) as capture:
        for batch in capture.batches(chunk, new_stats()):
            parts.append({name: getattr(batch, name)[:batch.n].copy() for name in COLUMN_NAMES})
    rows = PacketBatch(max(1, sum(len(p["ts_ns"]) for p in parts)))
    for name in COLUMN_NAMES:
        setattr(rows, name, np.concatenate([p[name] for p in parts]))
    rows.n = len(rows.ts_ns)
    return rows


def feed(engine, rows, start, stop, batch_size=BATCH):
    """Process rows [start, stop) of ``rows`` in batches; return alert dicts."""
    out = []
    batch = PacketBatch(batch_size)
    for a in range(start, stop, batch_size):
        b = min(a + batch_size, stop)
        for name in COLUMN_NAMES:
            getattr(batch, name)[:b - a] = getattr(rows, name)[a:b]
        batch.n = b - a
        out += [x.to_dict() for x in engine.process(batch)]
    return out


def finish(engine):
    return [x.to_dict() for x in engine.finish()]


def uninterrupted(cfg, rows, seed):
    engine = Engine(cfg)
    engine.seed = np.uint64(seed)
    for det in engine.detectors:
        det.seed = engine.seed
    return feed(engine, rows, 0, rows.n) + finish(engine)


def split_run(cfg, rows, at, via_file=None):
    """Rows [0, at) in one engine, the rest in a fresh one restored from it."""
    first = Engine(cfg)
    seed = int(first.seed)
    alerts = feed(first, rows, 0, at)
    second = Engine(cfg)
    if via_file is None:
        messages = st.restore_state(second, st.capture_state(first))
    else:
        st.save_checkpoint(first, via_file, created_ns=1)
        result = st.load_checkpoint(second, via_file)
        assert result.status == "restored", result.messages
        messages = result.messages
    first.close()
    assert messages and messages[0].startswith("restored state")
    assert int(second.seed) == seed and all(int(d.seed) == seed for d in second.detectors)
    return seed, alerts + feed(second, rows, at, rows.n) + finish(second)


CAPTURES = ["nmap_syn_scan.pcap", "nmap_connect_scan.pcap", "nmap_udp_scan.pcap",
            "nmap_stealth_scans.pcap", "nmap_host_sweep.pcap", "distributed_port_sweep.pcap",
            "nmap_syn_scan_ipv6.pcap", "benign_clients.pcap"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("capture", CAPTURES)
def test_split_capture_gives_the_alerts_of_one_run(capture, workers, tmp_path):
    rows = decode(shipped(capture))
    cfg = config(f"sensor.workers={workers}")
    points = sorted({1, rows.n // 3, rows.n // 2, rows.n - 1})
    for k, at in enumerate(points):
        via = tmp_path / f"state-{k}.msgpack" if k % 2 else None
        seed, alerts = split_run(cfg, rows, at, via)
        assert alerts == uninterrupted(cfg, rows, seed), f"split at row {at} of {rows.n}"
    if capture != "benign_clients.pcap":
        assert alerts, "the capture should give alerts"


def test_restored_arrays_equal_the_saved_ones(tmp_path):
    """Every table array of the restored engine equals the original's, bit for bit."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    cfg = config()
    first = Engine(cfg)
    feed(first, rows, 0, rows.n // 2)
    path = tmp_path / "state"
    st.save_checkpoint(first, path)
    second = Engine(cfg)
    assert st.load_checkpoint(second, path).status == "restored"
    pairs = [(first.probes, second.probes)]
    for a, b in zip(first.detectors, second.detectors):
        pairs += [(a.lc, b.lc), (a.table, b.table)]
    for a, b in pairs:
        for x, y in zip(a.arrays, b.arrays):
            assert np.array_equal(x, y)
    assert np.array_equal(first.decode_stats, second.decode_stats)


@pytest.mark.parametrize("obj", ["probes", "lc", "port_set", "host_set"])
def test_every_per_slot_array_is_saved(obj):
    """A new array in a kernel's state must be added to sensor/state.py."""
    engine = Engine(config())
    target = {"probes": engine.probes, "lc": engine.detectors[0].lc,
              "port_set": next(d.table for d in engine.detectors if d.rule.table == "port_set"),
              "host_set": next(d.table for d in engine.detectors if d.rule.table == "host_set")}[obj]
    cap = target.keys.shape[0] if hasattr(target, "keys") else target.pane.shape[0]
    not_per_slot = set()
    if obj == "probes":
        not_per_slot = {id(target.fifo_slot), id(target.fifo_ts), id(target.meta),
                        id(target.params)}
    if obj == "lc":
        not_per_slot = {id(target.pending), id(target.meta)}
    owners = {id(st._owner(a)) for a in target.arrays} - not_per_slot
    saved = {id(a) for _, a in st.slot_arrays(target)}
    assert owners == saved
    assert all(a.shape[0] == cap for _, a in st.slot_arrays(target))
