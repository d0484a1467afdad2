"""State that survives restarts and reloads (sensor/state.py, sensor/state_tables.py).

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
from sensor import state_tables as stt
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


def uninterrupted(cfg, rows, seed, cut=None):
    """One engine over all rows (with hash seed ``seed``); with ``cut``, a batch
    ends at that row, as it does when the daemon stops there. (The ``outcomes``
    of an alert reported at a batch's end can depend on where that end is: the
    probe stage runs over the whole batch before the packet rules report.)"""
    engine = Engine(cfg)
    engine.seed = np.uint64(seed)
    for det in engine.detectors:
        det.seed = engine.seed
    cuts = [0, rows.n] if cut is None else [0, cut, rows.n]
    alerts = []
    for a, b in zip(cuts, cuts[1:]):
        alerts += feed(engine, rows, a, b)
    return alerts + finish(engine)


def current_entries(table, index):
    """A host-set item index with the entries of older generations zeroed."""
    from kernels.host_set import INDEX_GEN_MASK, INDEX_POS_BITS
    gen = (table.item_gen & INDEX_GEN_MASK)[:, None]
    return np.where((index >> INDEX_POS_BITS) == gen, index, 0)


def split_run(cfg, rows, at, via_file=None):
    """Rows [0, at) in one engine, the rest in a fresh one restored from it."""
    first = Engine(cfg)
    seed = int(first.seed)
    alerts = feed(first, rows, 0, at)
    second = Engine(cfg)
    second.warm_up()            # as the daemon does before restoring: changes no state
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
        assert alerts == uninterrupted(cfg, rows, seed, at), f"split at row {at} of {rows.n}"
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
        derived = {id(d) for d in stt.derived_arrays(a)}
        for x, y in zip(a.arrays, b.arrays):
            if id(x) in derived:
                # rebuilt, not saved: the same current entries (stale ones are gone)
                assert np.array_equal(current_entries(a, x), current_entries(b, y))
            else:
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
                        id(target.params), id(target.trace_keys), id(target.trace_until_ns),
                        id(target.trace_ports), id(target.initiator_sketch),
                        id(target.hot_slot), id(target.hot_ts),
                        id(target.hot_mark)}     # saved whole (sensor/state_tables.py)
    if obj == "lc":
        not_per_slot = {id(target.pending), id(target.meta)}
    # rebuilt on restore from what is saved (the host-set item index)
    not_per_slot |= {id(a) for a in stt.derived_arrays(target)}
    owners = {id(stt._owner(a)) for a in target.arrays} - not_per_slot
    saved = {id(a) for _, a in stt.slot_arrays(target)}
    assert owners == saved
    assert all(a.shape[0] == cap for _, a in stt.slot_arrays(target))


def test_rate_gate_minute_survives_a_restart():
    """The alert gate's minute (alerts passed, held back) carries over."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    cfg = config("alerts.max_per_minute=1", 'alerts.group="rule"')   # two alerts in a minute
    seed, alerts = split_run(cfg, rows, rows.n // 2)
    assert alerts == uninterrupted(cfg, rows, seed, rows.n // 2)
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
    assert st.is_fresh(new)    # nothing was written


def test_mismatched_tables_can_be_dropped_instead():
    """drop_mismatched=True: the table that means something else starts empty (said
    so), every other table is restored."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    old = Engine(config())
    feed(old, rows, 0, rows.n // 2)
    saved = st.capture_state(old)
    new = Engine(config("host_sweep.window_s=10.0"))
    messages = st.restore_state(new, saved, drop_mismatched=True)
    keys = len(saved["detectors"]["host_sweep"]["live"])
    assert keys > 0
    assert any(m.startswith(f"host_sweep: saved table ({keys} keys, 0 alerts waiting) dropped")
               and "host_sweep.window_s changed" in m for m in messages)
    by = {d.name: d for d in new.detectors}
    assert (by["host_sweep"].lc.last_seen_ns != -1).sum() == 0
    assert (by["failed_connections"].lc.last_seen_ns != -1).sum() == len(
        saved["detectors"]["failed_connections"]["live"]) > 0


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
    new = stt.placement(fps, last_seen, pinned, weight, capacity=4, ways=4)
    assert new.tolist() == [3, -1, 0, 1, 2, -1]   # pinned, 9, 5 (newer: key 4), 5 (key 0)
    # in a larger table each key goes to its hash's bucket
    big = stt.placement(np.array([0, 1 << 63], np.uint64), last_seen[:2], pinned[:2],
                       weight[:2], capacity=8, ways=2)
    assert big.tolist() == [0, 4]      # buckets 0 and 2 of 4 (multiply-shift of the top half)


def test_resizing_that_would_drop_a_waiting_alert_is_refused():
    """10 scanners past the threshold, their alerts waiting (report_delay_s): a
    port_scan table shrunk to 8 slots cannot hold them and is refused; one of 16
    slots can, and the alerts are then reported as they would have been."""
    rows = [syn_row(1_700_000_000_000_000_000 + (s * 5 + p) * 1_000_000, f"203.0.113.{s + 1}",
                    "10.0.0.2", 1 + p) for s in range(10) for p in range(5)]
    common = ("port_scan.threshold=5", "port_scan.report_delay_s=60")
    old = Engine(config(*common, "port_scan.max_keys=16", "port_scan.table_ways=16"))
    for batch in batches_from_rows(rows, 64):
        assert old.process(batch) == []
    saved = st.capture_state(old)
    assert len(saved["detectors"]["port_scan"]["pending"]) == 10
    small = Engine(config(*common, "port_scan.max_keys=8", "port_scan.table_ways=8"))
    with pytest.raises(st.StateRefused, match="port_scan.max_keys/table_ways changed: 2 keys "
                                              "with alerts waiting do not fit"):
        st.restore_state(small, saved)
    assert st.is_fresh(small)
    larger = Engine(config(*common, "port_scan.max_keys=32", "port_scan.table_ways=16"))
    st.restore_state(larger, saved)
    alerts = port_scans(finish(larger))
    assert sorted(a["src_ip"] for a in alerts) == sorted(f"203.0.113.{s + 1}" for s in range(10))
    assert port_scans(finish(old)) == alerts


# --- checkpoint files --------------------------------------------------------------
@pytest.fixture(scope="module")
def scanned():
    """An engine that has seen half of a SYN scan, and its checkpoint bytes."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    engine = Engine(config())
    feed(engine, rows, 0, rows.n // 2)
    return engine, st.encode_checkpoint(st.capture_state(engine), {"interfaces": ["eth1"]},
                                         1_700_000_000_000)


def test_checkpoint_header(scanned, tmp_path):
    engine, _ = scanned
    path = tmp_path / "state.msgpack"
    result = st.save_checkpoint(engine, path, {"interfaces": ["eth1"], "config": "abc"},
                                created_ns=123)
    assert result.bytes_written == path.stat().st_size > 0 and result.seconds >= 0
    header, payload = msgpack.unpackb(path.read_bytes(), raw=False)
    assert header["format"] == "scan-sensor-state" and header["version"] == st.VERSION
    assert header["created_ns"] == 123 and header["meta"]["config"] == "abc"
    assert header["sensor_version"] == "0.1.0"
    assert header["tables"]["port_scan"]["capacity"] == 4096
    assert header["tables"]["probes"] == {"capacity": 262144, "ways": 8}
    assert header["payload_bytes"] == len(payload)
    assert os.listdir(tmp_path) == ["state.msgpack"]     # no temp file left


def test_state_captured_now_can_be_written_later(tmp_path):
    """write_checkpoint of a captured state (another thread, while processing goes
    on) writes the state as it was when captured."""
    rows = decode(shipped("nmap_syn_scan.pcap"))
    engine = Engine(config())
    feed(engine, rows, 0, rows.n // 2)
    captured = st.capture_state(engine)
    st.save_checkpoint(engine, tmp_path / "now", created_ns=5)
    feed(engine, rows, rows.n // 2, rows.n)          # the engine goes on meanwhile
    st.write_checkpoint(captured, tmp_path / "later", created_ns=5)
    assert (tmp_path / "later").read_bytes() == (tmp_path / "now").read_bytes()


def test_missing_file_starts_fresh(tmp_path):
    result = st.load_checkpoint(Engine(config()), tmp_path / "none")
    assert result.status == "missing" and "starting fresh" in result.messages[-1]


def _damaged(good):
    header, payload = msgpack.unpackb(good, raw=False)
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x40
    return {
        "random": os.urandom(4096),
        "empty": b"",
        "truncated": good[:len(good) // 2],
        "json": json.dumps({"format": "scan-sensor-state"}).encode(),
        "other_msgpack": msgpack.packb({"hello": 1}),
        "wrong_magic": msgpack.packb([dict(header, format="mitmproxy"), payload]),
        "flipped_byte": msgpack.packb([header, bytes(flipped)]),
        "extra_bytes": good + b"\0",
    }


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "json", "other_msgpack",
                                  "wrong_magic", "flipped_byte", "extra_bytes"])
def test_corrupt_or_foreign_file_is_moved_aside(scanned, tmp_path, kind):
    _, good = scanned
    path = tmp_path / "state.msgpack"
    bad = _damaged(good)[kind]
    path.write_bytes(bad)
    (tmp_path / "state.msgpack.corrupt-1").write_bytes(b"an earlier one")
    engine = Engine(config())
    result = st.load_checkpoint(engine, path)
    assert result.status == "moved_aside", result.messages
    assert result.moved_to == str(path) + ".corrupt-2"
    assert (tmp_path / "state.msgpack.corrupt-2").read_bytes() == bad
    assert not path.exists()
    assert len(result.messages) == 1 and "starting fresh" in result.messages[0]
    assert st.is_fresh(engine)


def test_newer_version_is_refused_and_moved_aside(scanned, tmp_path):
    _, good = scanned
    header, payload = msgpack.unpackb(good, raw=False)
    path = tmp_path / "state.msgpack"
    path.write_bytes(msgpack.packb([dict(header, version=st.VERSION + 1,
                                         sensor_version="9.9"), payload]))
    result = st.load_checkpoint(Engine(config()), path)
    assert result.status == "refused"
    assert f"state format {st.VERSION + 1}" in result.messages[0]
    assert f"reads formats up to {st.VERSION}" in result.messages[0] and "9.9" in result.messages[0]
    assert result.moved_to == str(path) + ".refused-1" and not path.exists()


def test_other_table_meaning_in_a_file_is_refused(scanned, tmp_path):
    _, good = scanned
    path = tmp_path / "state.msgpack"
    path.write_bytes(good)
    result = st.load_checkpoint(Engine(config("port_scan.window_s=10.0")), path)
    assert result.status == "refused" and "port_scan.window_s changed" in result.messages[0]
    assert (tmp_path / "state.msgpack.refused-1").read_bytes() == good


def test_converter_chain_runs_each_step_in_order():
    calls = []

    def step(n):
        def convert(header, state):
            calls.append(n)
            return header, dict(state, steps=state.get("steps", []) + [n])
        return convert
    chain = {1: step(1), 2: step(2)}
    header, state = st.migrate({"version": 1}, {}, chain, current=3)
    assert calls == [1, 2] and state["steps"] == [1, 2] and header["version"] == 3
    assert st.migrate({"version": 3}, {"x": 1}, chain, current=3) == ({"version": 3}, {"x": 1})
    with pytest.raises(st.StateRefused, match="no converter"):
        st.migrate({"version": 1}, {}, {2: step(2)}, current=3)
    with pytest.raises(st.StateRefused, match="newer"):
        st.migrate({"version": 4}, {}, chain, current=3)
    with pytest.raises(st.StateCorrupt):
        st.migrate({"version": "1"}, {}, chain, current=3)


def test_an_older_file_is_converted_on_load(scanned, tmp_path, monkeypatch):
    """With a (test-only) next format whose converter renames a field, a file of
    today's format loads through the chain."""
    engine0, good = scanned
    today = st.VERSION

    def rename(header, state):
        state = dict(state)
        state["hash_seed"] = state.pop("seed")
        return header, state
    path = tmp_path / "state.msgpack"
    path.write_bytes(good)
    real_restore = st.restore_state
    monkeypatch.setattr(st, "VERSION", today + 1)
    monkeypatch.setitem(st.CONVERTERS, today, rename)
    monkeypatch.setattr(st, "restore_state",
                        lambda e, s, *rest: real_restore(e, dict(s, seed=s.pop("hash_seed")), *rest))
    engine = Engine(config())
    result = st.load_checkpoint(engine, path)
    assert result.status == "restored" and result.header["version"] == today + 1
    assert int(engine.seed) == int(engine0.seed)


def go_on_from(fixture, cfg, capture, at, tmp_path, check=None):
    """Load checkpoint ``fixture`` (written after rows [0, at) of ``capture``) into a
    fresh engine, ``check(engine)``, feed it the rest. Returns (seed, the alerts a
    fresh engine with the saved seed gives for rows [0, at), those of the restored
    engine for the rest, those of one uninterrupted run)."""
    path = tmp_path / "state.msgpack"
    path.write_bytes(fixture.read_bytes())
    rows = decode(shipped(capture))
    engine = Engine(cfg)
    result = st.load_checkpoint(engine, path)
    assert result.status == "restored", result.messages
    assert result.header["version"] == st.VERSION
    if check is not None:
        check(engine)
    seed = int(engine.seed)
    rest = feed(engine, rows, at, rows.n) + finish(engine)
    head = Engine(cfg)
    head.seed = np.uint64(seed)
    for det in head.detectors:
        det.seed = head.seed
    return seed, feed(head, rows, 0, at), rest, uninterrupted(cfg, rows, seed, at)


V1_FIXTURE = pathlib.Path(__file__).parent / "state_fixtures" / \
    "checkpoint_v1_distributed_port_sweep.msgpack"
V1_SETS = ("port_sweep.threshold=20",)    # the config it was written with (README there)


def test_a_format_1_checkpoint_is_upgraded_keeping_the_other_tables(tmp_path):
    """A real format-1 file (written by the code before port_sweep's source lists,
    after rows [0, 120) of distributed_port_sweep.pcap) loads through CONVERTERS[1]:
    every other rule goes on exactly as one uninterrupted run; port_sweep keeps its
    episode (same id, count, targets) and names the sources seen after the upgrade,
    flagged as not complete."""
    header, _ = msgpack.unpackb(V1_FIXTURE.read_bytes(), raw=False)
    assert header["version"] == 1 and "contrib_n" in V1_FIXTURE.read_bytes().decode("latin-1")
    _, before, rest, whole = go_on_from(V1_FIXTURE, config(*V1_SETS),
                                        "distributed_port_sweep.pcap", 120, tmp_path)
    others = lambda alerts: [a for a in alerts if a["rule"] != "port_sweep"]  # noqa: E731
    assert others(whole), "the capture gives other alerts"
    assert others(before + rest) == others(whole)
    sweep = [a for a in rest if a["rule"] == "port_sweep"]
    want = [a for a in whole if a["rule"] == "port_sweep"]
    assert len(sweep) == len(want) == 1
    got, want = sweep[0], want[0]
    assert (got["id"], got["count"], got["dst_ips"]) == (want["id"], want["count"], want["dst_ips"])
    assert want["sources_complete"] and want["source_count"] == 8
    assert not got["sources_complete"] and got["source_count_estimated"]
    assert 0 < len(got["sources"]) < 8 and got["sources_omitted"] >= 1
    wanted = {s["ip"]: s for s in want["sources"]}
    assert all(s["probes"] <= wanted[s["ip"]]["probes"] for s in got["sources"])


V2_FIXTURE = pathlib.Path(__file__).parent / "state_fixtures" / \
    "checkpoint_v2_distributed_sweep_445.msgpack"
V2_SETS = ("host_sweep.max_listed=8", "failed_connections.max_listed=8",
           "port_sweep.max_listed=16", "trw_scanner.max_listed=8", "port_sweep.threshold=20")


def test_a_format_2_checkpoint_goes_on_as_one_uninterrupted_run(tmp_path):
    """A real format-2 file (written before host-set tables kept their sketches only
    once a list was full, after rows [0, 90) of distributed_sweep_445.pcap, with
    port_sweep's list full) loads through CONVERTERS[2]: every rule, port_sweep with
    its estimate included, goes on exactly as one uninterrupted run."""
    header, _ = msgpack.unpackb(V2_FIXTURE.read_bytes(), raw=False)
    assert header["version"] == 2

    def restored(engine):
        sweep = next(d for d in engine.detectors if d.name == "port_sweep")
        full = np.flatnonzero(sweep.table.item_n == 16)
        assert len(full) == 1 and sweep.table.sketch_live[full[0]] == 1
    _, before, rest, whole = go_on_from(V2_FIXTURE, config(*V2_SETS),
                                        "distributed_sweep_445.pcap", 90, tmp_path, restored)
    assert any(a["rule"] == "port_sweep" and a["count_estimated"] for a in whole)
    assert before + rest == whole


def test_other_max_sources_is_refused(tmp_path):
    rows = decode(shipped("distributed_port_sweep.pcap"))
    first = Engine(config())
    feed(first, rows, 0, rows.n // 2)
    with pytest.raises(st.StateRefused, match=r"port_sweep\.max_sources changed \(256 -> 64\)"):
        st.restore_state(Engine(config("port_sweep.max_sources=64")), st.capture_state(first))
    path = tmp_path / "state.msgpack"
    st.save_checkpoint(first, path)
    result = st.load_checkpoint(Engine(config("port_sweep.max_sources=64")), path)
    assert result.status == "refused" and "port_sweep.max_sources changed" in result.messages[0]


def test_a_failed_write_leaves_the_old_file(scanned, tmp_path, monkeypatch):
    engine, good = scanned
    path = tmp_path / "state.msgpack"
    path.write_bytes(good)

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(st.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        st.save_checkpoint(engine, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["state.msgpack"]


KILLED_WRITER = """
import os, shutil, sys, time
sys.path.insert(0, "tests")
from test_state import *
path = sys.argv[1]
engine = Engine(config("probes.max_probes=4096"))
rows = decode(ROOT / "pcaps" / "nmap_syn_scan.pcap")
feed(engine, rows, 0, rows.n // 2)
st.save_checkpoint(engine, path)
shutil.copy(path, sys.argv[2])
feed(engine, rows, rows.n // 2, rows.n)

def stall(fd):                  # the data is written, not yet synced nor renamed
    print("writing", flush=True)
    time.sleep(60)
st.os.fsync = stall
st.save_checkpoint(engine, path)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    """SIGKILL while a checkpoint is being written: the final path still holds the
    previous checkpoint, whole; the temp file left behind is removed on load."""
    path = tmp_path / "state.msgpack"
    first = tmp_path / "first-copy"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(first)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        temps = [n for n in os.listdir(tmp_path) if n.startswith(".state.msgpack.tmp-")]
        assert len(temps) == 1 and (tmp_path / temps[0]).stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == first.read_bytes()
    result = st.load_checkpoint(Engine(config("probes.max_probes=4096")), path)
    assert result.status == "restored", result.messages
    assert result.messages[0].startswith("removed .state.msgpack.tmp-")
    assert sorted(os.listdir(tmp_path)) == ["first-copy", "state.msgpack"]


def test_every_single_bit_flip_in_the_header_is_caught(scanned):
    """The checksum covers the header too: no flipped bit in it decodes as valid."""
    _, good = scanned
    header_len = len(good) - len(msgpack.unpackb(good, raw=False)[1]) - 5
    for at in range(header_len):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[at] ^= bit
            with pytest.raises((st.StateCorrupt, st.StateRefused)):
                st.decode_checkpoint(bytes(bad))


def test_configured_seed_other_than_the_saved_one_is_reported(scanned):
    engine0, _ = scanned
    new = Engine(config("sensor.hash_seed=12345"))
    messages = st.restore_state(new, st.capture_state(engine0))
    assert int(new.seed) == int(engine0.seed)
    assert any("sensor.hash_seed 12345 ignored" in m for m in messages)


# --- random traffic through small tables: evictions, forced reports, FIFO wrap ----------
from hypothesis import given, settings, strategies as hs           # noqa: E402

from batch_builder import icmp_row, udp_row                        # noqa: E402

SMALL = [f"{rule}.{key}={value}" for rule in
         ("port_scan", "host_sweep", "port_sweep", "failed_connections", "exposed_host_probe",
          "stealth_scan", "udp_scan", "trw_scanner", "icmp_sweep")
         for key, value in (("max_keys", 8), ("table_ways", 4), ("max_listed", 4),
                            ("max_pending_alerts", 2), ("threshold", 3), ("window_s", 4.0),
                            ("report_delay_s", 1.0), ("update_interval_s", 2.0),
                            ("suppress_s", 15.0), ("growth_factor", 2))]
SMALL += ["probes.max_probes=64", "probes.table_ways=4", "probes.timeout_s=2.0",
          'net.exposed_hosts=["10.0.0.1"]', "alerts.max_per_minute=5"]

HOSTS = ["203.0.113.1", "203.0.113.2", "198.51.100.9", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
KINDS = ["syn", "syn", "syn", "rst", "synack", "fin", "udp", "udp", "ping", "unreach"]


def random_rows(seed, n):
    """``n`` rows of scans, sweeps, replies and ICMP between a few hosts (numpy RNG)."""
    rng = np.random.default_rng(seed)
    rows, ts = [], 1_700_000_000_000_000_000
    for _ in range(n):
        ts += int(rng.exponential(60)) * 1_000_000          # ms gaps, sometimes seconds
        a, b = rng.choice(HOSTS, 2, replace=False)
        port = int(rng.integers(1, 40))
        kind = KINDS[rng.integers(len(KINDS))]
        if kind == "syn":
            rows.append(syn_row(ts, a, b, port))
        elif kind == "rst":
            rows.append(syn_row(ts, b, a, 40000, sport=port, flags=0x14))
        elif kind == "synack":
            rows.append(syn_row(ts, b, a, 40000, sport=port, flags=0x12))
        elif kind == "fin":
            rows.append(syn_row(ts, a, b, port, flags=0x01))
        elif kind == "udp":
            rows.append(udp_row(ts, a, b, port))
        elif kind == "ping":
            rows.append(icmp_row(ts, a, b, 8))
        else:
            rows.append(icmp_row(ts, b, a, 3, 3, inner=(a, b, 17, 40000, port)))
    return next(batches_from_rows(rows, len(rows)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(hs.integers(0, 2**32), hs.integers(2, 600), hs.floats(0, 1), hs.sampled_from([1, 2]))
def test_split_random_traffic_through_small_tables(seed, n, where, workers):
    """Tables of 8 keys and 64 probes under random traffic: evictions, forced reports,
    updates, rate-limited minutes and a wrapping timeout FIFO all carry over."""
    rows = random_rows(seed, n)
    cfg = config(*SMALL, f"sensor.workers={workers}")
    at = min(rows.n - 1, max(1, int(where * rows.n)))
    hash_seed, alerts = split_run(cfg, rows, at)
    assert alerts == uninterrupted(cfg, rows, hash_seed, at)


def test_a_checksummed_file_that_holds_no_engine_state_is_moved_aside(tmp_path):
    """Well-formed, right magic and checksum, but the payload is not a state."""
    payload = msgpack.packb({"seed": 1})
    header = {"format": st.FORMAT, "version": st.VERSION, "payload_bytes": len(payload)}
    header["blake2b"] = st._digest(header, payload)
    path = tmp_path / "state"
    path.write_bytes(msgpack.packb([header, payload]))
    result = st.load_checkpoint(Engine(config()), path)
    assert result.status == "moved_aside" and "content is not engine state" in result.messages[0]
    assert result.moved_to.endswith("state.corrupt-1")


@pytest.mark.parametrize("damage", ["live", "sparse_index", "pending", "fifo"])
def test_slot_numbers_outside_the_tables_are_rejected(scanned, damage):
    """The kernels do not bounds-check: a state pointing outside a table must never
    reach them (a checksum is no protection against a bug or a crafted file)."""
    engine0, _ = scanned
    state = st.capture_state(engine0)
    det = state["detectors"]["port_scan"]
    if damage == "live":
        det["live"] = det["live"].copy()
        det["live"][0] = -1
    elif damage == "sparse_index":
        det["lifecycle"]["sparse"]["keys"]["index"][0] = 10**9
    elif damage == "pending":
        det["pending"] = np.array([4096])
        det["meta"][0] = 1
    else:
        state["probes"]["fifo_slot"][0] = -5
    with pytest.raises((ValueError, IndexError)):
        st.restore_state(Engine(config()), state)
