"""UDP scans and traceroutes through a chain of routers, with the real tools.

Topology (network namespaces made here, deleted afterwards)::

    scanner 10.61.1.1 -- r1 -- r2 -- target 10.61.3.2 (UDP echo on 5000, 5001)
                                 \\-- 10.61.9.0/24 blackholed on r2 (drops silently)

tcpdump on the scanner's link captures both directions; the capture is replayed
and the alerts and ``--stats-json`` counters checked:

* nmap -sU of 200 ports of the target (closed: ICMP port unreachable) -> udp_scan;
* nmap -sU of 200 ports of a blackholed host (no answer) -> udp_scan, outcomes unknown;
* traceroute (UDP), traceroute -I, traceroute -T, mtr -u, traceroute -6 -> no alert,
  and (but -I, whose ICMP probes the probe table does not track) traceroute_probes > 0;
* pcaps/forged_icmp_unreachable.pcap (scapy, pcaps/make_forged_icmp.py): port
  unreachables answering no datagram -> no alert, all counted as backscatter_icmp.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from sensor.testbed import why_not_runnable

TOOLS = ("ip", "tcpdump", "nmap", "traceroute", "mtr")
REASON = why_not_runnable(TOOLS)
P = f"udt{os.getpid() % 100000}"
SCANNER, TARGET, DROPPED = "10.61.1.1", "10.61.3.2", "10.61.9.5"
ECHO = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
        "while True:\n"
        "    d, a = s.recvfrom(2048)\n"
        "    s.sendto(d or b'x', a)\n")


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class Chain:
    NAMES = ("s", "r1", "r2", "t")

    def __init__(self):
        self.procs = []
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def ns(self, name):
        return f"{P}-{name}"

    def run(self, name, *argv, check=True, timeout=120):
        return subprocess.run(["ip", "netns", "exec", self.ns(name), *argv], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def popen(self, name, *argv, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], **kw)
        self.procs.append(p)
        return p

    def _build(self):
        for n in self.NAMES:
            _ip("netns", "add", self.ns(n))
            self.run(n, "ip", "link", "set", "lo", "up")
        for a, b, k in (("s", "r1", 1), ("r1", "r2", 2), ("r2", "t", 3)):
            _ip("link", "add", f"{P}{a}{k}", "netns", self.ns(a), "type", "veth", "peer",
                "name", f"{P}{b}{k}", "netns", self.ns(b))
            for side, host in ((a, 1), (b, 2)):
                dev = f"{P}{side}{k}"
                self.run(side, "ip", "addr", "add", f"10.61.{k}.{host}/24", "dev", dev)
                self.run(side, "ip", "addr", "add", f"fd61:{k}::{host}/64", "dev", dev, "nodad")
                self.run(side, "ip", "link", "set", dev, "up")
        for r in ("r1", "r2"):
            self.run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.run(r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        routes = [("s", "10.61.0.0/16", "10.61.1.2"), ("s", "fd61::/16", "fd61:1::2"),
                  ("r1", "10.61.3.0/24", "10.61.2.2"), ("r1", "10.61.9.0/24", "10.61.2.2"),
                  ("r1", "fd61:3::/64", "fd61:2::2"), ("r2", "10.61.1.0/24", "10.61.2.1"),
                  ("r2", "fd61:1::/64", "fd61:2::1"), ("t", "default", "10.61.3.1")]
        for n, dst, via in routes:
            self.run(n, "ip", *(["-6"] if ":" in via else []), "route", "add", dst, "via", via)
        self.run("t", "ip", "-6", "route", "add", "default", "via", "fd61:3::1")
        self.run("r2", "ip", "route", "add", "blackhole", "10.61.9.0/24")
        # no ICMP rate limit on the target: every closed port answers
        self.run("t", "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        for port in (5000, 5001):
            self.popen("t", sys.executable, "-c", ECHO, str(port), stderr=subprocess.DEVNULL)
        time.sleep(1.0)      # IPv6 addresses and routes settle

    def capture(self, path, *argv):
        """Run ``argv`` in the scanner namespace while tcpdump captures its link."""
        dump = self.popen("s", "tcpdump", "-U", "--immediate-mode", "-n", "-s", "256", "-i", f"{P}s1", "-w", str(path),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while b"listening" not in dump.stderr.read1(4096) and time.time() < deadline:
            pass
        time.sleep(0.5)
        result = self.run("s", *argv, check=False, timeout=120)
        time.sleep(1.0)      # the last answers in
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
        assert result.returncode == 0, result.stderr
        return result

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for n in self.NAMES:
            _ip("netns", "del", self.ns(n), check=False)


@pytest.fixture(scope="module")
def chain():
    if REASON is not None:
        pytest.skip(REASON)
    c = Chain()
    try:
        yield c
    finally:
        c.close()


def replay(path, tmp_path, *sets):
    stats = tmp_path / "stats.json"
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", "--no-summary",
                           "--stats-json", str(stats), *sum((["--set", s] for s in sets), []),
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    return alerts, json.loads(stats.read_text())


def test_udp_scan_of_closed_ports(chain, tmp_path):
    path = tmp_path / "closed.pcap"
    chain.capture(path, "nmap", "-n", "-Pn", "-sU", "-p", "6000-6199", "--max-retries", "0",
                  "-T5", TARGET)
    alerts, stats = replay(path, tmp_path)
    udp = [a for a in alerts if a["rule"] == "udp_scan" and a["src_ip"] == SCANNER]
    assert udp and udp[-1]["dst_port_count"] >= 50, alerts
    assert udp[-1]["dst_ips"] == [TARGET]
    assert udp[-1]["outcomes"]["closed"] >= 50
    assert stats["traceroute_probes"] == 0


def test_udp_scan_of_a_blackholed_host(chain, tmp_path):
    """Nothing answers: before, udp_scan (ICMP port unreachables only) said nothing."""
    path = tmp_path / "dropped.pcap"
    chain.capture(path, "nmap", "-n", "-Pn", "-sU", "-p", "6000-6199", "--max-retries", "0",
                  "-T5", "--host-timeout", "20s", DROPPED)
    alerts, _ = replay(path, tmp_path)
    udp = [a for a in alerts if a["rule"] == "udp_scan" and a["src_ip"] == SCANNER]
    assert udp, alerts
    last = udp[-1]
    assert last["dst_port_count"] >= 150 and last["dst_ips"] == [DROPPED]
    assert last["outcomes"]["unknown"] + last["outcomes"]["filtered"] >= 150
    assert last["outcomes"]["closed"] == 0


def test_answered_udp_is_not_a_scan(chain, tmp_path):
    """Datagrams to the echo services, answered by UDP, are open: counted by no rule."""
    path = tmp_path / "echo.pcap"
    chain.capture(path, "nmap", "-n", "-Pn", "-sU", "-p", "5000,5001", "--max-retries", "0",
                  TARGET)
    alerts, stats = replay(path, tmp_path, "udp_scan.threshold=2")
    assert [a for a in alerts if a["rule"] == "udp_scan"] == [], alerts
    assert stats["probes_open"] >= 1


TRACES = {
    "udp": ["traceroute", "-n", "-q", "3", TARGET],
    "icmp": ["traceroute", "-n", "-I", TARGET],
    "tcp": ["traceroute", "-n", "-T", "-p", "7", TARGET],
    "mtr": ["mtr", "-u", "-n", "-c", "3", "--report", TARGET],
    "ipv6": ["traceroute", "-6", "-n", "fd61:3::2"],
    "blackholed": ["traceroute", "-n", "-w", "1", "-m", "12", DROPPED],
}


@pytest.mark.parametrize("kind", list(TRACES))
def test_traceroute_is_not_a_scan(chain, tmp_path, kind):
    path = tmp_path / f"trace-{kind}.pcap"
    chain.capture(path, *TRACES[kind])
    alerts, stats = replay(path, tmp_path)
    assert alerts == [], [(a["rule"], a["count"]) for a in alerts]
    if kind != "icmp":
        assert stats["time_exceeded_seen"] >= 2
        assert stats["traceroute_probes"] >= stats["time_exceeded_seen"]
    if kind in ("udp", "mtr", "ipv6"):
        # the last hop's port unreachables are traceroute probes, not closed ports
        assert stats["probes_closed"] == 0


def test_fixed_ttl_udp_to_traceroute_ports_is_still_a_scan(chain, tmp_path):
    """The traceroute port range is no free pass: without time-exceeded answers, a
    scan of 33434-33533 is a scan."""
    path = tmp_path / "trports.pcap"
    chain.capture(path, "nmap", "-n", "-Pn", "-sU", "-p", "33434-33533", "--max-retries", "0",
                  "-T5", TARGET)
    alerts, stats = replay(path, tmp_path)
    udp = [a for a in alerts if a["rule"] == "udp_scan"]
    assert udp and udp[-1]["dst_port_count"] >= 50
    assert stats["traceroute_probes"] == 0


def test_forged_port_unreachables_frame_nobody(tmp_path):
    """pcaps/forged_icmp_unreachable.pcap: ICMP port unreachables (v4 and v6), and
    errors quoting the other IP version, with no datagram behind them."""
    alerts, stats = replay(ROOT / "pcaps" / "forged_icmp_unreachable.pcap", tmp_path)
    assert alerts == []
    assert stats["backscatter_icmp"] == 60
    assert stats["icmp_misquoted"] == 20
    assert stats["probes_closed"] == 0
