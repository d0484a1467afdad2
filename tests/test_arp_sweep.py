"""arp_sweep and ndp_sweep against real tools on one Ethernet segment (root).

Two namespaces on a veth pair (``tests/netns.py``): the scanner ``a`` (10.88.0.1,
fd88::1) and a host ``b`` holding three addresses of the /24 and of the /64 (.2, .20,
.30; ::2, ::20, ::30), so a sweep of the subnet finds three hosts and asks in vain
for the rest. tcpdump on the scanner's interface records each run; the capture is
replayed by the real CLI under the ``default`` preset (all rules on). A sweep must
give one alert (one id) naming the scanner's address and its MAC; ordinary
neighbour traffic (hosts resolving each other, gratuitous ARP, address conflict
probes, IPv6 duplicate address detection) none.
"""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from netns import Link, why_not_runnable

TOOLS = ("ip", "tcpdump", "arp-scan", "nmap", "ndisc6")
REASON = why_not_runnable(TOOLS)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

LIVE4 = ("10.88.0.2", "10.88.0.20", "10.88.0.30")
LIVE6 = ("fd88::2", "fd88::20", "fd88::30")


@pytest.fixture(scope="module")
def lan():
    link = Link("arpsw")
    try:
        for v4, v6 in zip(LIVE4[1:], LIVE6[1:]):
            link.run("b", ["ip", "addr", "add", f"{v4}/24", "dev", link.dev["b"]])
            link.run("b", ["ip", "addr", "add", f"{v6}/64", "dev", link.dev["b"], "nodad"])
        link.mac_a = link.run("a", ["cat", f"/sys/class/net/{link.dev['a']}/address"]).stdout.strip()
        for _ in range(50):     # link-local addresses past duplicate address detection
            if not any(link.run(side, ["ip", "-6", "addr", "show", "tentative"]).stdout.strip()
                       for side in "ab"):
                break
            time.sleep(0.1)
        yield link
    finally:
        link.close()
        assert link.left_behind() == []


def captured(lan, path, steps):
    """Run ``steps`` (a list of (side, argv)) with tcpdump on the scanner's interface."""
    for side in "ab":
        lan.run(side, ["ip", "neigh", "flush", "all"], check=False)
    cap = lan.popen("a", ["tcpdump", "-i", lan.dev["a"], "-n", "-s", "256", "-U",
                          "--immediate-mode", "-w", str(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = cap.stderr.readline().decode(errors="replace")
    assert "listening" in line, line
    try:
        for side, argv in steps:
            r = lan.run(side, argv, check=False, timeout=300)
            assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
        time.sleep(1.0)                  # last replies
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
    return path


def alerts_of(path):
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "--no-summary", "--no-progress",
         "--preset", "default", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def one_alert(alerts, rule, src_ip, mac, found):
    """One alert (its reports share one id) for ``src_ip``, naming ``rule`` and the
    MAC, with ``found`` hosts found and the rest of the /24 (or /120) unanswered."""
    assert alerts, "no alert"
    assert len({a["id"] for a in alerts}) == 1, [(a["rule"], a["src_ip"]) for a in alerts]
    last = alerts[-1]
    assert last["src_ip"] == src_ip
    assert last["src_mac"] == mac
    assert rule in last["rules"]
    evidence = last["rule_evidence"][rule]
    assert evidence["count_kind"] == "unanswered_hosts"
    assert evidence["count"] >= 200            # 253 asked, 3 answered
    assert last["outcomes"]["open"] >= found
    assert not set(LIVE4 + LIVE6) & set(last["dst_ips"])     # the hosts found are not listed
    return last


def test_arp_scan_localnet(lan, tmp_path):
    path = captured(lan, tmp_path / "arp_scan.pcap",
                    [("a", ["arp-scan", "-I", lan.dev["a"], "--localnet"])])
    last = one_alert(alerts_of(path), "arp_sweep", "10.88.0.1", lan.mac_a, 3)
    assert last["rule"] == "arp_sweep"


def test_nmap_ping_sweep_of_own_subnet(lan, tmp_path):
    """nmap -sn on a local Ethernet asks by ARP only (even with -PE)."""
    path = captured(lan, tmp_path / "nmap_sn.pcap",
                    [("a", ["nmap", "-n", "-sn", "10.88.0.0/24"])])
    one_alert(alerts_of(path), "arp_sweep", "10.88.0.1", lan.mac_a, 3)


def test_nmap_port_22_of_own_subnet(lan, tmp_path):
    """nmap -p22 of the local /24: ARP discovery, then SYNs to the three hosts found."""
    path = captured(lan, tmp_path / "nmap_p22.pcap",
                    [("a", ["nmap", "-n", "-p22", "10.88.0.0/24"])])
    one_alert(alerts_of(path), "arp_sweep", "10.88.0.1", lan.mac_a, 3)


def test_nmap_ipv6_neighbour_sweep(lan, tmp_path):
    path = captured(lan, tmp_path / "nmap6_sn.pcap",
                    [("a", ["nmap", "-6", "-n", "-sn", "fd88::/120"])])
    last = one_alert(alerts_of(path), "ndp_sweep", "fd88::1", lan.mac_a, 3)
    assert last["rule"] == "ndp_sweep"


def test_ndisc6_loop(lan, tmp_path):
    """ndisc6, one solicitation per target (a shell loop over 30 absent addresses and
    the three present)."""
    loop = (f"for i in $(seq 64 93); do ndisc6 -q -r 1 -w 50 fd88::$i {lan.dev['a']}; done; "
            f"for i in 2 20 30; do ndisc6 -q -r 1 -w 200 fd88::$i {lan.dev['a']}; done; true")
    path = captured(lan, tmp_path / "ndisc6.pcap", [("a", ["sh", "-c", loop])])
    alerts = alerts_of(path)
    assert len({a["id"] for a in alerts}) == 1
    last = alerts[-1]
    # to a solicited-node group (link scope) the kernel asks from the link-local address
    assert (last["rule"], last["src_mac"]) == ("ndp_sweep", lan.mac_a)
    assert last["src_ip"].startswith("fe80::")
    assert last["count"] == 30 and last["outcomes"]["open"] == 3


SCAPY_NOISE = """
import sys
from scapy.all import ARP, Ether, sendp
dev, mac = sys.argv[1], sys.argv[2]
frames = []
for k in range(100, 140):
    ip = f"10.88.0.{k}"
    # address conflict detection (RFC 5227): probes from 0.0.0.0, then announcements
    frames.append(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc="0.0.0.0", pdst=ip))
    frames.append(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst=ip))
    # gratuitous ARP replies (a failover announcing an address), unsolicited
    frames.append(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=mac, psrc=ip, pdst=ip,
                                                                 hwdst="ff:ff:ff:ff:ff:ff"))
sendp(frames, iface=dev, verbose=False, inter=0.002)
"""


TALK = """
import socket, sys, time
for ip in sys.argv[1:]:      # one datagram each: the kernel resolves the neighbour first
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hello", (ip, 9))
    time.sleep(0.2)
"""


def test_ordinary_neighbour_traffic_is_quiet(lan, tmp_path):
    """Hosts resolving each other (v4 and v6, both ways), gratuitous ARP and
    conflict-detection probes for 40 addresses, IPv6 duplicate address detection for
    40 new addresses, a host asking again for its few neighbours once its cache was
    flushed: no alert."""
    mac_b = lan.run("b", ["cat", f"/sys/class/net/{lan.dev['b']}/address"]).stdout.strip()
    dad = "; ".join(f"ip addr add fd88::1:{k:x}/64 dev {lan.dev['b']}" for k in range(40))
    talk_a = ("a", [sys.executable, "-c", TALK, *LIVE4, *LIVE6])
    steps = [talk_a, ("b", [sys.executable, "-c", TALK, "10.88.0.1", "fd88::1"]),
             ("b", [sys.executable, "-c", SCAPY_NOISE, lan.dev["b"], mac_b]),
             ("b", ["sh", "-c", dad + "; sleep 2"]),
             ("a", ["ip", "neigh", "flush", "all"]), talk_a]
    path = captured(lan, tmp_path / "neighbours.pcap", steps)
    out = subprocess.run(["tcpdump", "-nr", str(path)], capture_output=True, text=True).stdout
    assert out.count("ARP, Request") >= 80 and out.count("neighbor solicitation") >= 40
    assert alerts_of(path) == []
