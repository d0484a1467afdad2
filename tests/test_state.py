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


def test_rate_gate_minute_survives_a_restart():
    """The alert gate's minute (alerts passed, held back) carries over."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    cfg = config("alerts.max_per_minute=1")
    seed, alerts = split_run(cfg, rows, rows.n // 2)
    assert alerts == uninterrupted(cfg, rows, seed)
    assert any(a["rule"] == "alert_rate_limited" for a in alerts)


# --- a scan half done before a restart is one scan after it -------------------------
SCANNER, TARGET = "203.0.113.7", "10.0.0.2"


def scan_capture(path, ports, start_s=1_700_000_000.0, step_s=0.01):
    """A SYN scan of ``ports`` (scapy), each closed port answering with a RST."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap
    packets = []
    for k, port in enumerate(ports):
        t = start_s + k * step_s
        syn = Ether() / IP(src=SCANNER, dst=TARGET) / TCP(sport=40000, dport=port, flags="S")
        rst = Ether() / IP(src=TARGET, dst=SCANNER) / TCP(sport=port, dport=40000, flags="RA")
        syn.time, rst.time = t, t + 0.001
        packets += [syn, rst]
    wrpcap(str(path), packets)
    return path


def port_scans(alerts):
    return [a for a in alerts if a["rule"] == "port_scan"]


def test_scan_of_40_ports_before_and_40_after_a_restart_is_one_alert(tmp_path):
    rows = decode(scan_capture(tmp_path / "scan80.pcap", range(1, 81)))
    cfg = config("port_scan.threshold=50")
    at = 80      # 40 probes and their RSTs
    assert rows.ts_ns[at - 1] < rows.ts_ns[at]
    seed, alerts = split_run(cfg, rows, at, via_file=tmp_path / "state")
    scans = port_scans(alerts)
    assert len(scans) == 1
    assert scans[0]["dst_port_count"] == 80 and scans[0]["dst_ports"] == "1-80"
    assert alerts == uninterrupted(cfg, rows, seed)
    # and without the state, the second half alone is below the threshold
    fresh = Engine(cfg)
    assert port_scans(feed(fresh, rows, at, rows.n) + finish(fresh)) == []


def test_reload_keeps_tables_and_applies_the_new_threshold(tmp_path):
    """SIGHUP: old engine -> engine built from the new config; the 40 ports seen
    stay counted and the new threshold (45, was 50) is the one in force."""
    rows = decode(scan_capture(tmp_path / "scan80.pcap", range(1, 81)))
    old = Engine(config("port_scan.threshold=50", "udp_scan.enabled=false"))
    before = feed(old, rows, 0, 80)
    new_cfg = config("port_scan.threshold=45", "icmp_sweep.enabled=false")
    new = Engine(new_cfg)
    messages = st.restore_state(new, st.capture_state(old))
    old.close()
    assert any("icmp_sweep is disabled" in m and "dropped" in m for m in messages)
    assert any("udp_scan was not running" in m for m in messages)
    alerts = before + feed(new, rows, 80, rows.n) + finish(new)
    scans = port_scans(alerts)
    assert len(scans) == 1 and scans[0]["threshold"] == 45 and scans[0]["dst_port_count"] == 80
    # the 45th port made it due: the same alert as a run with threshold 45 throughout
    ref = Engine(new_cfg)
    ref.seed = new.seed
    for det in ref.detectors:
        det.seed = ref.seed
    assert port_scans(feed(ref, rows, 0, rows.n) + finish(ref)) == scans


# --- tables of another shape ------------------------------------------------------------
@pytest.mark.parametrize("change, setting", [
    ("port_scan.max_listed=32", "port_scan.max_listed"),
    ("failed_connections.window_s=30.0", "failed_connections.window_s"),
    ('port_scan.scope="pair"', "port_scan.scope"),
    ('failed_connections.count="attempts"', "failed_connections.count"),
])
def test_a_table_that_means_something_else_is_refused(change, setting):
    rows = decode(shipped("nmap_syn_scan.pcap"))
    old = Engine(config())
    feed(old, rows, 0, rows.n // 2)
    new = Engine(config(change))
    with pytest.raises(st.StateRefused, match=setting.replace(".", r"\.")):
        st.restore_state(new, st.capture_state(old))
    assert st._is_fresh(new)    # nothing was written


def test_resized_tables_are_re_placed():
    """max_keys / table_ways / probes.max_probes changed: keys re-inserted in the new
    layout; the alerts are those of a run with the new sizes throughout."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    old = Engine(config())
    feed(old, rows, 0, rows.n // 2)
    saved = st.capture_state(old)
    new_cfg = config("port_scan.max_keys=8192", "port_scan.table_ways=4",
                     "failed_connections.max_keys=512", "probes.max_probes=65536",
                     "probes.table_ways=16")
    new = Engine(new_cfg)
    messages = st.restore_state(new, saved)
    assert any(m.startswith("port_scan: keys re-placed from 4096 slots / 8 ways to 8192 / 4")
               for m in messages)
    assert any(m.startswith("probe table: attempts re-placed") for m in messages)
    n_probes = len(saved["probes"]["live"])
    assert int((new.probes.last_seen_ns != -1).sum()) == n_probes
    ref = Engine(new_cfg)
    ref.seed = new.seed
    for det in ref.detectors:
        det.seed = ref.seed
    first_half = feed(ref, rows, 0, rows.n // 2)
    assert first_half == []
    assert (feed(new, rows, rows.n // 2, rows.n) + finish(new)
            == feed(ref, rows, rows.n // 2, rows.n) + finish(ref))


def test_placement_keeps_pinned_then_heaviest_keys():
    # 6 keys, all in one bucket of a 4-way table with one bucket
    fps = np.arange(6, dtype=np.uint64)
    last_seen = np.array([10, 20, 30, 40, 50, 60])
    pinned = np.array([0, 0, 1, 0, 0, 0], np.uint8)
    weight = np.array([5, 1, 1, 9, 5, 1])
    new = st.placement(fps, last_seen, pinned, weight, capacity=4, ways=4)
    assert new.tolist() == [3, -1, 0, 1, 2, -1]   # pinned, 9, 5 (newer: key 4), 5 (key 0)
    # in a larger table each key goes to its hash's bucket
    big = st.placement(np.array([0, 1 << 63], np.uint64), last_seen[:2], pinned[:2],
                       weight[:2], capacity=8, ways=2)
    assert big.tolist() == [0, 4]      # buckets 0 and 2 of 4 (multiply-shift of the top half)


def test_resizing_that_would_drop_a_waiting_alert_is_refused(tmp_path):
    rows = decode(scan_capture(tmp_path / "scan80.pcap", range(1, 81)))
    cfg = config("port_scan.threshold=50", "port_scan.report_delay_s=60")
    old = Engine(cfg)
    feed(old, rows, 0, rows.n)          # due, but waiting for report_delay_s
    saved = st.capture_state(old)
    assert len(saved["detectors"]["port_scan"]["pending"]) == 1
    # a one-slot table cannot hold the pinned key and whatever else is pinned
    tiny = config("port_scan.threshold=50", "port_scan.report_delay_s=60",
                  "port_scan.max_keys=8", "port_scan.table_ways=8")
    new = Engine(tiny)
    st.restore_state(new, saved)     # fits: one key
    det = next(d for d in new.detectors if d.name == "port_scan")
    assert int(det.lc.meta[0]) == 1 and det.lc.pinned[det.lc.pending[0]] == 1
    saved["detectors"]["port_scan"]["lifecycle"]["dense"]["pinned"][:] = 1
    many = dict(saved["detectors"]["port_scan"])
    # nine pinned keys for one bucket of eight
    live = many["live"]
    assert len(live) == 1
    k = 9
    many["live"] = live[0] + np.arange(k)
    many["lifecycle"] = {"dense": {n: np.repeat(a, k, axis=0) for n, a in
                                   many["lifecycle"]["dense"].items()}, "sparse": {}}
    many["lifecycle"]["dense"]["fps"] = np.zeros(k, np.uint64)
    many["table"] = {"dense": {n: np.repeat(a, k, axis=0) for n, a in
                               many["table"]["dense"].items()},
                     "sparse": {n: {"index": s["index"][:0], "values": s["values"][:0]}
                                for n, s in many["table"]["sparse"].items()}}
    saved["detectors"]["port_scan"] = many
    with pytest.raises(st.StateRefused, match="alerts waiting do not fit"):
        st.restore_state(Engine(tiny), saved)
