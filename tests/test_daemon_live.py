"""The live daemon on a real interface: real nmap between two network namespaces.

Namespace ``-a`` scans, namespace ``-b`` is the target and runs ``scan-sensor
run`` on its end of the veth pair (AF_PACKET ring, default kernel filter),
with tcpdump recording the same interface. Checked here:

* the port_scan alert is written within 1 s of the time it falls due
  (threshold-crossing packet + ``report_delay_s``, from packet time, against
  the wall time the line appeared), on a link that is quiet by then;
* a replay of tcpdump's capture gives the same alerts, field for field;
* SIGTERM mid-scan and a restart on the same state directory: 40 ports
  before and 40 after (threshold 50) are one alert covering all 80; the same
  after SIGKILL with a 1 s checkpoint interval;
* a corrupt state file is moved aside with a warning;
* SIGHUP with a lowered threshold takes effect with the table state kept;
  a SIGHUP with a broken config keeps the old one and says why.

Needs root, ip, nmap and tcpdump; skipped with the reason otherwise.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import dpkt
import pytest

from conftest import ROOT
from live_daemon import LiveDaemon
from netns import Link, why_not_runnable

pytestmark = pytest.mark.integration

TARGET = Link.ADDR["b"][0]
SCANNER = Link.ADDR["a"][0]
REPORT_DELAY_S = 5.0          # the default port_scan.report_delay_s
THRESHOLD = 50                # the default port_scan.threshold


@pytest.fixture
def link():
    reason = why_not_runnable(("ip", "nmap", "tcpdump"))
    if reason:
        pytest.skip(reason)
    lk = Link(f"sd{os.getpid() % 100000}")
    try:
        yield lk
    finally:
        lk.close()
        assert not lk.left_behind()


def nmap(link, ports, extra=()):
    r = link.run("a", ["nmap", "-sS", "-Pn", "-n", "--max-retries", "0", "-p", ports,
                       *extra, TARGET], check=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def start_tcpdump(link, path):
    proc = link.popen("b", ["tcpdump", "-i", link.dev["b"], "-U", "-w", str(path), "-n",
                            "--time-stamp-precision=nano"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()           # "listening on ..." once capturing
    assert "listening" in line, line
    return proc


def stop_tcpdump(proc):
    proc.send_signal(signal.SIGINT)
    proc.wait(20)


# per-rule alerts: these tests time and compare the rules' own reports
PER_RULE = ["--set", 'alerts.group="rule"']


def replay(path, *args):
    r = subprocess.run([sys.executable, "-m", "sensor", "replay", str(path), *PER_RULE, *args],
                       cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def crossing_time(pcap_path, src, threshold):
    """Packet time (s) of the SYN from ``src`` that brings its distinct ports to ``threshold``."""
    ports = set()
    with open(pcap_path, "rb") as fh:
        for ts, frame in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if (tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK
                    and ip.src == bytes(map(int, src.split(".")))):
                ports.add(tcp.dport)
                if len(ports) == threshold:
                    return float(ts)
    raise AssertionError(f"{src} never reached {threshold} ports")


def daemon(link, tmp_path, *args, name="daemon"):
    d = LiveDaemon(link, "b", tmp_path, ["-i", link.dev["b"], *PER_RULE, *args], name=name)
    d.wait_notify("READY=1")
    return d


def is_scan(a):
    return a.get("rule") == "port_scan" and a.get("src_ip") == SCANNER


def test_alert_within_one_second_and_replay_gives_the_same_alerts(link, tmp_path):
    server = link.popen("b", [sys.executable, "-m", "http.server", "80", "--bind", TARGET],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pcap = tmp_path / "live.pcap"
    dump = start_tcpdump(link, pcap)
    d = daemon(link, tmp_path, "--state-dir", str(tmp_path / "state"),
               "--stats-json", str(tmp_path / "stats.json"))
    try:
        nmap(link, "1-200")
        alert, appeared = d.wait_alert(is_scan, timeout_s=30)
        # let everything else that the scan makes due (failed_connections after the
        # probe timeout, updates) be written before comparing with the replay
        time.sleep(REPORT_DELAY_S + 6)
        assert d.stop() == 0, d.stderr()
    finally:
        d.close()
        stop_tcpdump(dump)
        server.kill()
    due = crossing_time(pcap, SCANNER, THRESHOLD) + REPORT_DELAY_S
    latency = appeared - due
    assert -0.05 <= latency < 1.0, f"alert written {latency:.3f} s after it fell due"
    assert alert["dst_port_count"] == 200 and alert["dst_ports"] == "1-200"
    assert alert["outcomes"]["open"] >= 1
    live = d.alerts()
    replayed = replay(pcap)
    assert [a["rule"] for a in live] == [a["rule"] for a in replayed]
    for got, want in zip(live, replayed):
        assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                             if got.get(k) != want.get(k)}
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["kernel_packets"] > 400 and stats["kernel_drops"] == 0
    assert "final stats" in d.stderr()


def test_restart_continues_a_half_done_scan(link, tmp_path):
    state = tmp_path / "state"
    first = daemon(link, tmp_path, "--state-dir", str(state), name="first")
    try:
        nmap(link, "1-40")
        time.sleep(0.5)                      # the ring hands its last block over
        assert first.stop() == 0, first.stderr()
    finally:
        first.close()
    assert first.alerts() == []
    assert (state / "checkpoint.msgpack").exists()
    second = daemon(link, tmp_path, "--state-dir", str(state), name="second")
    try:
        nmap(link, "41-80")
        alert, _ = second.wait_alert(is_scan, timeout_s=20)
        assert second.stop() == 0
    finally:
        second.close()
    assert alert["dst_port_count"] == 80 and alert["dst_ports"] == "1-80"
    assert len([a for a in second.alerts() if is_scan(a)]) == 1


def test_sigkill_loses_at_most_one_checkpoint_interval(link, tmp_path):
    state = tmp_path / "state"
    first = daemon(link, tmp_path, "--state-dir", str(state),
                   "--set", "sensor.checkpoint_interval_s=1", name="first")
    try:
        nmap(link, "1-40")
        time.sleep(2.5)                      # two checkpoint intervals pass
        first.stop(signal.SIGKILL)
    finally:
        first.close()
    second = daemon(link, tmp_path, "--state-dir", str(state), name="second")
    try:
        nmap(link, "41-80")
        alert, _ = second.wait_alert(is_scan, timeout_s=20)
        second.stop()
    finally:
        second.close()
    assert alert["dst_ports"] == "1-80"


def test_corrupt_state_file_is_moved_aside(link, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.msgpack").write_bytes(b"\x93not a checkpoint at all")
    d = daemon(link, tmp_path, "--state-dir", str(state))
    try:
        nmap(link, "1-60")
        d.wait_alert(is_scan, timeout_s=20)
        assert d.stop() == 0
    finally:
        d.close()
    assert "warning" in d.stderr() and "moved" in d.stderr()
    aside = [p for p in state.iterdir() if p.name != "checkpoint.msgpack"
             and p.name.startswith("checkpoint.msgpack")]
    assert aside and aside[0].read_bytes() == b"\x93not a checkpoint at all"


def test_sighup_changes_the_threshold_and_keeps_the_tables(link, tmp_path):
    conf = tmp_path / "sensor.toml"
    conf.write_text("[port_scan]\nthreshold = 200\n")
    d = daemon(link, tmp_path, "-c", str(conf))
    try:
        nmap(link, "1-100")
        time.sleep(REPORT_DELAY_S + 1)
        assert [a for a in d.alerts() if is_scan(a)] == []
        conf.write_text("[port_scan]\nthreshold = 50\n")
        mark = len(d.messages)
        d.send(signal.SIGHUP)
        d.wait_notify("READY=1", timeout_s=30, after=mark)
        nmap(link, "101-110")
        alert, _ = d.wait_alert(is_scan, timeout_s=20)
        assert alert["dst_ports"] == "1-110" and alert["threshold"] == 50
        conf.write_text("[port_scan]\nthreshold = \n")       # broken TOML
        mark = len(d.messages)
        d.send(signal.SIGHUP)
        d.wait_notify("READY=1", timeout_s=30, after=mark)
        assert d.proc.poll() is None
        assert d.stop() == 0
    finally:
        d.close()
    err = d.stderr()
    assert "rejected" in err and "invalid TOML" in err, err


SWEEP_SCRIPT = r"""
import sys
from scapy.all import Ether, IP, TCP, sendp
dev, dst_mac = sys.argv[1], sys.argv[2]
frames = []
for s in range(40):                       # 40 outside sources ...
    for j in range(3):                    # ... each probing 445 on 3 of 60 home hosts
        host = (s * 3 + j) % 60
        frames.append(Ether(dst=dst_mac) / IP(src=f"198.51.100.{s + 1}", dst=f"10.88.1.{host + 1}")
                      / TCP(sport=40000 + s, dport=445, flags="S"))
sendp(frames, iface=dev, verbose=False)
"""


def mac_of(link, side):
    out = link.run(side, ["ip", "-o", "link", "show", link.dev[side]]).stdout
    return out.split("link/ether ")[1].split()[0]


def test_two_workers_give_the_alerts_of_one(link, tmp_path):
    """A scan and a distributed sweep (40 sources, spread over the workers by the
    fanout) seen by a 1-worker and a 2-worker daemon on the same interface at once."""
    one = daemon(link, tmp_path, name="one")
    two = daemon(link, tmp_path, "--workers", "2", "--stats-json", str(tmp_path / "two.json"),
                 name="two")
    try:
        nmap(link, "1-200")
        link.run("a", [sys.executable, "-c", SWEEP_SCRIPT, link.dev["a"], mac_of(link, "b")])
        for d in (one, two):
            d.wait_alert(lambda a: a.get("rule") == "port_sweep", timeout_s=40)
            d.wait_alert(is_scan, timeout_s=10)
        time.sleep(2)
        assert one.stop() == 0 and two.stop() == 0, two.stderr()
    finally:
        one.close()
        two.close()
    key = lambda a: (a["rule"], a["id"], a.get("seq", 0))
    assert sorted(two.alerts(), key=key) == sorted(one.alerts(), key=key)
    sweep = next(a for a in two.alerts() if a["rule"] == "port_sweep")
    assert sweep["dst_port"] == 445 and sweep["dst_ip_count"] == 60
    per_worker = json.loads((tmp_path / "two.json").read_text())["per_worker"]
    assert len(per_worker) == 2 and all(w["decoded"] > 0 for w in per_worker.values()), \
        per_worker


SCANS_SCRIPT = r"""
import sys
from scapy.all import Ether, IP, TCP, sendp
dev, dst_mac = sys.argv[1], sys.argv[2]
frames = [Ether(dst=dst_mac) / IP(src=f"203.0.113.{s + 1}", dst="10.88.1.1")
          / TCP(sport=41000 + s, dport=port, flags="S")
          for s in range(8) for port in range(1, 21)]    # 8 outside sources, 20 ports each
sendp(frames, iface=dev, verbose=False)
"""


def test_the_rate_cap_holds_for_all_workers_together(link, tmp_path):
    """Eight scanners, which the fanout spreads over two workers, against
    `alerts.max_per_minute = 3`: the 2-worker daemon sends as many alerts and holds
    back as many as the 1-worker one (each worker capping its own share let up to
    twice the cap through)."""
    cap = ["--set", "alerts.max_per_minute=3", "--set", "port_scan.threshold=10",
           "--set", "port_scan.report_delay_s=1"]
    one = daemon(link, tmp_path, *cap, name="one")
    two = daemon(link, tmp_path, "--workers", "2", "--stats-json", str(tmp_path / "two.json"),
                 *cap, name="two")
    try:
        link.run("a", [sys.executable, "-c", SCANS_SCRIPT, link.dev["a"], mac_of(link, "b")])
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and min(len(one.alerts()), len(two.alerts())) < 3:
            time.sleep(0.1)
        time.sleep(3)                   # every scan decided (held back or not)
        assert one.stop() == 0 and two.stop() == 0, two.stderr()
    finally:
        one.close()
        two.close()

    def counts(d):
        sent = [a for a in d.alerts() if a["rule"] != "alert_rate_limited"]
        held = sum(a["suppressed_total"] for a in d.alerts() if a["rule"] == "alert_rate_limited")
        return len(sent), held

    assert counts(one)[0] >= 3 and counts(one)[1] > 0, one.alerts()
    assert counts(two) == counts(one), (two.alerts(), one.alerts())
    stats = json.loads((tmp_path / "two.json").read_text())
    assert all(w["alerts"] > 0 for w in stats["per_worker"].values()), stats["per_worker"]
    assert stats["alerts_rate_limited"] == counts(one)[1]


def start_fails(link, *args, side="b"):
    r = link.run(side, [sys.executable, "-m", "sensor", "run", "--jsonl", os.devnull, *args],
                 check=False, cwd=ROOT, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, lines[-1] if lines else ""


def test_start_up_checks_give_one_line_and_the_exit_code(link, tmp_path):
    rc, line = start_fails(link, "-i", "nosuch0")
    assert rc == 2 and "nosuch0 does not exist" in line and link.dev["b"] in line, line
    link.run("b", ["ip", "link", "add", "down9a", "type", "veth", "peer", "name", "down9b"])
    rc, line = start_fails(link, "-i", "down9a")             # a new link is down
    assert rc == 1 and "down9a is down" in line, line
    not_dir = tmp_path / "a-file"
    not_dir.write_text("")
    rc, line = start_fails(link, "-i", link.dev["b"], "--state-dir", str(not_dir / "state"))
    assert rc == 2 and "not writable" in line, line
    rc, line = start_fails(link, "-i", link.dev["b"], "--filter", "tcp port")
    assert rc == 2 and "capture.filter" in line, line
    rc, line = start_fails(link)
    assert rc == 2 and "no interface" in line, line
    if shutil.which("setpriv"):
        # without CAP_NET_RAW (dropped from the bounding set: gone after exec, even for root)
        r = link.run("b", ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
                           sys.executable, "-m", "sensor", "run", "-i", link.dev["b"],
                           "--jsonl", os.devnull], check=False, cwd=ROOT, timeout=120)
        assert r.returncode == 1 and "CAP_NET_RAW" in r.stderr, r.stderr[-2000:]
