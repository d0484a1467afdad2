"""Packet time going backwards (issue 14 item 2): a packet more than
``capture.max_time_regression_s`` behind the stream starts a new time epoch
(pending alerts reported as at the end of input, tables emptied), so files of
different dates give the alerts of each alone, in any order. The kernel that
finds the regression is checked against ``tests/naive.py``; the policy through
the engine (batch rows, idle ticks, 1 and 2 workers) and through the CLI on the
captures of ``pcaps/hostile/make_time_order.py``."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import naive
from batch_builder import batches_from_rows, syn_row
from conftest import ROOT, shipped
from kernels.time_order import NO_TIME_NS, first_regression
from sensor.config import load_config
from sensor.engine import Engine

S = 1_000_000_000
T2023 = 1_700_000_000 * S
I64 = st.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max)


# ------------------------------------------------------------------ the kernel

@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(I64, st.integers(-50, 50)), max_size=40), st.data())
def test_first_regression_matches_reference(times, data):
    ts = np.array(times, np.int64)
    n = len(times)
    start = data.draw(st.integers(0, n))
    latest = data.draw(st.one_of(st.just(NO_TIME_NS), I64, st.integers(-50, 50)))
    tol = data.draw(st.one_of(st.integers(0, 20), st.integers(0, 86400 * S)))
    got = first_regression(ts, start, n, latest, tol)
    assert (int(got[0]), int(got[1])) == naive.first_regression(ts, start, n, latest, tol)


def test_first_regression_cases():
    ts = np.array([10, 12, 11, 20, 14, 30], np.int64)
    assert first_regression(ts, 0, 6, NO_TIME_NS, 5) == (4, 20)   # 14 is 6 behind 20
    assert first_regression(ts, 0, 6, NO_TIME_NS, 6) == (6, 30)   # within the tolerance
    assert first_regression(ts, 4, 6, NO_TIME_NS, 0) == (6, 30)
    assert first_regression(ts, 0, 6, 100, 5) == (0, 100)         # behind the stream already
    extreme = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min], np.int64)
    assert first_regression(extreme, 0, 2, NO_TIME_NS, 5) == (1, np.iinfo(np.int64).max)


# ------------------------------------------------------------------ the engine

# the captures here are 30-60-port scans whose halves must not add up to port_scan's
# 50; vertical_scan (20 failed ports of one host) would see each half alone
NO_VERTICAL = "vertical_scan.enabled=false"


def engine(*overrides):
    return Engine(load_config(None, ["sensor.hash_seed=5", "sensor.name=t", NO_VERTICAL,
                                     *overrides]))


def scan_rows(t0, first_port, n, src="10.9.0.1", dst="10.9.0.2", gap_ns=1_000_000):
    return [syn_row(t0 + i * gap_ns, src, dst, first_port + i) for i in range(n)]


def run(eng, rows, capacity=4096):
    alerts = []
    for batch in batches_from_rows(rows, capacity):
        alerts += eng.process(batch)
    return alerts + eng.finish()


def stable(alerts):
    keep = ("rule", "src_ip", "dst_ports", "first_seen", "last_seen", "packets", "count", "id")
    return [{k: a.to_dict().get(k) for k in keep} for a in alerts]


T2013 = T2023 - 3652 * 86400 * S


@pytest.mark.parametrize("capacity", [4096, 7, 1])
@pytest.mark.parametrize("workers", [1, 2])
def test_two_years_give_the_alerts_of_each_alone(capacity, workers):
    a, b = scan_rows(T2023, 1000, 60), scan_rows(T2013, 2000, 60)
    w = f"sensor.workers={workers}"
    alone = stable(run(engine(w), a, capacity)) + stable(run(engine(w), b, capacity))
    eng = engine(w)
    both = stable(run(eng, a + b, capacity))
    assert both == alone
    assert [x["first_seen"][:4] for x in both] == ["2023", "2013"]
    assert [x["last_seen"][:4] for x in both] == ["2023", "2013"]
    assert eng.stats()["time_regressions"] == 1
    assert eng.take_time_jumps() == [(T2023 + 59_000_000, T2013)]


@pytest.mark.parametrize("capacity", [4096, 5])
def test_halves_ten_years_apart_never_add_up(capacity):
    a, b = scan_rows(T2023, 1000, 30), scan_rows(T2013, 2000, 30)
    for rows in (a + b, b + a):
        assert stable(run(engine(), rows, capacity)) == []


def test_one_syn_a_day_backwards_is_like_forwards():
    day = 86400 * S
    back = [syn_row(T2023 - i * day, "10.9.0.1", "10.9.0.2", 1000 + i) for i in range(60)]
    fwd = list(reversed(back))
    eng = engine("port_scan.window_s=604800", "port_scan.report_delay_s=0")
    got_back = stable(run(eng, back))
    assert got_back == stable(run(engine("port_scan.window_s=604800",
                                         "port_scan.report_delay_s=0"), fwd)) == []
    assert eng.stats()["time_regressions"] == 59


def test_small_disorder_is_one_epoch():
    rows = scan_rows(T2023, 1000, 60)
    for i in range(1, 60, 2):
        rows[i]["ts_ns"] -= 1 * S               # multi-queue: 1 s out of order
    eng = engine()
    alerts = stable(run(eng, rows))
    assert len(alerts) == 1 and alerts[0]["count"] == 60
    assert eng.stats()["time_regressions"] == 0
    eng = engine("capture.max_time_regression_s=0.5")
    assert eng.stats()["time_regressions"] == 0
    run(eng, rows)
    assert eng.stats()["time_regressions"] == 30


def test_pending_probe_outcomes_are_decided_at_the_new_epoch():
    """An attempt still waiting for its answer when time goes back is decided then
    (as at the end of input), not matched against packets of another epoch."""
    eng = engine()
    alerts = run(eng, scan_rows(T2023, 1000, 3) + scan_rows(T2013, 2000, 3))
    st_ = eng.stats()
    assert st_["probes_unknown"] == 6 and st_["time_regressions"] == 1
    assert alerts == []


def test_clock_stepped_back_in_idle_ticks():
    """The daemon's idle tick with a clock stepped back: the alert pending in the
    old epoch is reported at once; ticks within the tolerance change nothing."""
    eng = engine()
    [batch] = batches_from_rows(scan_rows(T2023, 1000, 60), 4096)
    assert eng.process(batch) == []                    # due report_delay_s later
    assert eng.tick(T2023 + 1 * S) == []
    assert eng.tick(T2023 - 2 * S) == []               # within 5 s: not a new epoch
    assert eng.stats()["time_regressions"] == 0
    stepped = eng.tick(T2023 - 3600 * S)               # the clock went back an hour
    assert [a.rule for a in stepped] == ["port_scan"]
    assert stepped[0].to_dict()["last_seen"].startswith("2023-11-14T22:13:20.059")
    assert eng.stats()["time_regressions"] == 1
    assert eng.tick(T2023 - 3599 * S) == [] and eng.tick(T2023 + 10 * S) == []
    [batch] = batches_from_rows(scan_rows(T2023 - 3500 * S, 1000, 60), 4096)
    eng.process(batch)
    assert [a.to_dict()["count"] for a in eng.finish()] == [60]     # a scan of its own


class Collected:
    """The daemon's outputs, kept in a list (what it submits, unchanged)."""

    def __init__(self):
        self.alerts = []

    def submit(self, alerts):
        self.alerts += alerts

    def submit_rows(self, rows, packet_time_ns):
        pass


def daemon_for(*overrides):
    from sensor.commands.run import Daemon
    d = Daemon(None, load_config(None, ["sensor.hash_seed=5", "sensor.name=t", NO_VERTICAL,
                                        "capture.interfaces=[\"lo\"]", *overrides]))
    d.engine, d.outputs = d._new_engine(d.cfg), Collected()
    return d


def test_daemon_idle_tick_notices_the_clock_stepped_back(capfd):
    """The daemon's own idle tick (``Daemon._tick``), not only the engine's: a
    quiet link and a clock stepped back an hour report the alert pending in the
    old epoch at once, and the daemon's packet time is the new epoch's (it used to
    take every tick behind the last packet as that packet's time, so nothing was
    reported until the clock came back an hour later)."""
    d = daemon_for()
    [batch] = batches_from_rows(scan_rows(T2023, 1000, 60), 4096)
    d._packets(batch)                                  # the alert is due 5 s later
    d._tick(T2023 - 2 * S)                             # within 5 s: the lag, nothing
    assert d.outputs.alerts == [] and d.engine.stats()["time_regressions"] == 0
    assert d.packet_time_ns == T2023 + 59 * 1_000_000
    d._tick(T2023 - 3600 * S)                          # the clock went back an hour
    assert [a.rule for a in d.outputs.alerts] == ["port_scan"]
    assert d.engine.stats()["time_regressions"] == 1
    assert d.packet_time_ns == d.engine.latest_ns == T2023 - 3600 * S
    d._tick(T2023 - 3599 * S)                          # and goes on from there
    assert d.engine.stats()["time_regressions"] == 1 and d.packet_time_ns == T2023 - 3599 * S
    assert "packet time went back 3,600.059 s" in capfd.readouterr().err
    d.engine.close()


def test_daemon_packets_of_a_new_epoch_set_its_packet_time():
    d = daemon_for()
    [batch] = batches_from_rows(scan_rows(T2023, 1000, 3), 4096)
    d._packets(batch)
    [batch] = batches_from_rows(scan_rows(T2013, 1000, 3), 4096)
    d._packets(batch)
    assert d.engine.stats()["time_regressions"] == 1
    assert d.packet_time_ns == d.engine.latest_ns == T2013 + 2 * 1_000_000
    d.engine.close()


def sweep_rows(t0, hosts=20):
    """Outside sources probing port 445 on ``hosts`` home hosts, 1 ms apart."""
    return [syn_row(t0 + i * 1_000_000, f"198.51.100.{1 + i % 4}", f"10.9.1.{1 + i}", 445)
            for i in range(hosts)]


def test_exported_rows_going_back_start_a_new_epoch():
    """``Engine.count_exported`` (port_sweep counted in the supervisor from the
    workers' rows) follows the same policy as ``process``: rows of 2013 after rows
    of 2023 report the 2023 sweep at once and count apart."""
    sets = ["port_sweep.count_open=true", "port_sweep.threshold=10"]
    worker = Engine(load_config(None, ["sensor.hash_seed=5", "sensor.name=t", NO_VERTICAL, *sets]),
                    export=("port_sweep",))
    merger = Engine(load_config(None, ["sensor.hash_seed=5", "sensor.name=t", NO_VERTICAL, *sets]),
                    rules={"port_sweep"})
    got = []
    for t0 in (T2023, T2013):
        [batch] = batches_from_rows(sweep_rows(t0), 4096)
        worker.process(batch)
        for export in worker.take_exports():
            got.append([a.to_dict() for a in merger.count_exported(*export)])
    last = [a.to_dict() for a in merger.finish()]
    assert merger.stats()["time_regressions"] == 1
    assert got[0] == []
    assert [(a["rule"], a["dst_ip_count"], a["first_seen"][:4]) for a in got[1]] == \
        [("port_sweep", 20, "2023")]                     # reported at the regression
    assert [(a["rule"], a["dst_ip_count"], a["first_seen"][:4]) for a in last] == \
        [("port_sweep", 20, "2013")]
    worker.close()


# ------------------------------------------------------------------ the CLI

def replay(*files, extra=()):
    return subprocess.run([sys.executable, "-m", "sensor", "replay", "--no-summary",
                           "--set", "sensor.name=t", "--set", "sensor.hash_seed=1",
                           "--set", NO_VERTICAL, *extra,
                           *map(str, files)], cwd=ROOT, capture_output=True, timeout=120)


def alerts_of(proc):
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def f(name):
    return shipped(f"hostile/{name}")


def test_cli_files_in_either_order(tmp_path):
    a, b = f("scan_2023_30ports.pcap"), f("scan_2013_30ports.pcap")
    for files in ((a, b), (b, a)):
        proc = replay(*files, extra=("--stats-json", tmp_path / "s.json"))
        assert proc.returncode == 0 and alerts_of(proc) == [], proc.stderr.decode()
        assert "Traceback" not in proc.stderr.decode()
    # newest first went back: one warning naming the file and the jump
    proc = replay(a, b)
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "scan_2013_30ports.pcap" in lines[0]
    assert "2023-11-14T22:13:20.029000Z to 2013-11-14T22:13:20.000000Z" in lines[0]


def test_cli_two_scans_two_alerts_with_their_own_times(tmp_path):
    a, b = f("scan_2023_60ports.pcap"), f("scan_2013_60ports.pcap")
    keep = ("rule", "dst_ports", "first_seen", "last_seen", "packets", "id")
    alone = [{k: x[k] for k in keep} for p in (a, b) for x in alerts_of(replay(p))]
    proc = replay(a, b, extra=("--stats-json", tmp_path / "s.json"))
    assert [{k: x[k] for k in keep} for x in alerts_of(proc)] == alone
    assert [x["first_seen"][:4] for x in alone] == ["2023", "2013"]
    assert json.loads((tmp_path / "s.json").read_text())["time_regressions"] == 1


def test_cli_daily_backwards_and_forwards(tmp_path):
    week = ("--set", "port_scan.window_s=604800")
    back = replay(f("syn_daily_backwards.pcap"), extra=week + ("--stats-json", tmp_path / "b"))
    fwd = replay(f("syn_daily_forwards.pcap"), extra=week)
    assert alerts_of(back) == alerts_of(fwd) == []
    assert json.loads((tmp_path / "b").read_text())["time_regressions"] == 59
    warnings = back.stderr.decode().splitlines()
    assert len(warnings) == 10 and "further ones are counted" in warnings[-1]


def test_cli_jitter_within_tolerance(tmp_path):
    proc = replay(f("jitter_1s.pcap"), extra=("--stats-json", tmp_path / "s"))
    assert [x["dst_port_count"] for x in alerts_of(proc)] == [60]
    assert proc.stderr.decode() == ""
    assert json.loads((tmp_path / "s").read_text())["time_regressions"] == 0
