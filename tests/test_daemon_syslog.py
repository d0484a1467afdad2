"""The live daemon forwarding to a real rsyslog through an outage and a restart.

``scan-sensor run`` captures on its end of a veth pair (namespace ``-b``) while
tcpreplay in namespace ``-a`` sends a burst of hundreds of small scans (one
alert each, tests/delivery_checks.py). A real rsyslogd runs in the daemon's
namespace, on its loopback, and receives the alerts over TCP. Checked here:

* the collector is stopped while alerts are flowing and started again after
  many more were produced: every alert the daemon wrote to its JSON lines
  arrives, in order, repeats only as counted (``resent_after_reset``), none
  dropped; the daemon's stats say it spooled and lost the connection;
* the collector is down, the daemon is stopped (SIGTERM) with alerts still
  spooled and says so; restarted on the same state directory, it delivers the
  spooled alerts first, then the new ones, once the collector is back.

Needs root, ip, tcpreplay and rsyslogd; skipped with the reason otherwise.
"""
import json
import os
import signal
import time

import pytest

from delivery_checks import assert_delivered, ident, jsonl_idents, write_burst_pcap
from live_daemon import LiveDaemon
from netns import Link, why_not_runnable
from rsyslog import Collector, require_rsyslog

pytestmark = pytest.mark.integration

PORT = 10514
SETTINGS = ["--set", "port_scan.threshold=5", "--set", "port_scan.report_delay_s=0",
            "--set", "alerts.max_per_minute=0",
            "--set", "delivery.reconnect_min_s=0.05", "--set", "delivery.reconnect_max_s=0.3",
            "--set", "sensor.stats_interval_s=1"]


@pytest.fixture
def link():
    reason = why_not_runnable(("ip", "tcpreplay"))
    if reason:
        pytest.skip(reason)
    require_rsyslog()
    lk = Link(f"sy{os.getpid() % 100000}")
    try:
        yield lk
    finally:
        lk.close()
        assert not lk.left_behind()


def start_daemon(link, tmp_path, name, *args):
    d = LiveDaemon(link, "b", tmp_path, ["-i", link.dev["b"], "--syslog",
                                         f"tcp://127.0.0.1:{PORT}", *SETTINGS, *args],
                   name=name)
    d.wait_notify("READY=1")
    return d


def send(link, pcap, pps=400):
    """tcpreplay the capture out of namespace a at a fixed rate (in the background)."""
    return link.popen("a", ["tcpreplay", "-q", "-i", link.dev["a"], f"--pps={pps}", str(pcap)],
                      stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_quiet(path, quiet_s=2.0, timeout_s=60):
    """Wait until the JSON lines file stopped growing for quiet_s."""
    deadline = time.monotonic() + timeout_s
    n, since = lines(path), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        m = lines(path)
        if m != n:
            n, since = m, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return n
    raise AssertionError(f"{path} kept growing for {timeout_s} s")


def stop(d, timeout_s=60):
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(timeout_s)
    return d.proc.returncode, d.stderr_path.read_text()


def test_collector_outage_every_alert_delivered_in_order(link, tmp_path):
    collector = Collector(tmp_path / "rsyslog", port=PORT, netns=link.ns["b"]).start()
    stats = tmp_path / "stats.json"
    d = start_daemon(link, tmp_path, "daemon", "--state-dir", str(tmp_path / "state"),
                     "--stats-json", str(stats))
    try:
        tr = send(link, write_burst_pcap(tmp_path / "burst.pcap"))
        wait_until(lambda: len(collector.messages()) >= 60, 60, "the first 60 alerts")
        collector.stop()
        before_stop = len(collector.messages())
        wait_until(lambda: lines(d.jsonl) >= before_stop + 120, 60, "120 alerts more")
        produced_while_down = lines(d.jsonl) - before_stop
        collector.start()
        tr.wait(120)
        total = wait_quiet(d.jsonl)
        expected = jsonl_idents(d.jsonl)
        received = [ident(m) for m in collector.wait_for(total, timeout_s=60)]
        code, err = stop(d)
    finally:
        collector.stop()
    assert code == 0, err
    assert total >= 390, err            # 400 scanners, one alert each
    assert 0 < before_stop < total and produced_while_down >= 100
    (counters,) = [c for name, c in json.loads(stats.read_text())["outputs"].items()
                   if name.startswith("tcp-")]
    assert_delivered(received, expected, counters)
    assert counters["sent"] == total and counters["dropped"] == 0, counters
    assert counters["spooled"] > 0 and counters["send_errors"] >= 1, counters
    assert "connection lost" in err, err


def test_restart_while_collector_down_delivers_the_spool_first(link, tmp_path):
    state = str(tmp_path / "state")
    first = start_daemon(link, tmp_path, "first", "--state-dir", state,
                         "--set", "delivery.drain_timeout_s=1")
    send(link, write_burst_pcap(tmp_path / "one.pcap", scanners=40, prefix="10.51")).wait(60)
    wait_until(lambda: lines(first.jsonl) >= 40, 30, "40 alerts of the first daemon")
    wait_quiet(first.jsonl)
    code, err = stop(first)
    spooled = jsonl_idents(first.jsonl)
    assert code == 0, err
    assert f"{len(spooled):,} message(s) not delivered yet, kept in {state}/spool/" in err, err

    collector = Collector(tmp_path / "rsyslog", port=PORT, netns=link.ns["b"])
    second = start_daemon(link, tmp_path, "second", "--state-dir", state)
    try:
        assert "spooled by an earlier run will be delivered first" in second.stderr()
        send(link, write_burst_pcap(tmp_path / "two.pcap", scanners=40, prefix="10.52")).wait(60)
        wait_until(lambda: lines(second.jsonl) >= 40, 30, "40 alerts of the second daemon")
        wait_quiet(second.jsonl)
        collector.start()
        fresh = jsonl_idents(second.jsonl)
        got = [ident(m) for m in collector.wait_for(len(spooled) + len(fresh), timeout_s=60)]
        code, err = stop(second)
    finally:
        collector.stop()
    assert code == 0, err
    assert got == spooled + fresh
    assert not set(spooled) & set(fresh)
