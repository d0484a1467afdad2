"""Golden alerts: shipped captures (real nmap runs and scapy edge cases) -> expected alerts.

Regenerate after an intended change with ``python tests/test_golden.py`` and review the diff.
"""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

# (capture under pcaps/, extra replay arguments, golden file name)
CASES = [
    ("nmap_syn_scan.pcap", [], "nmap_syn_scan.jsonl"),
    ("nmap_connect_scan.pcap", [], "nmap_connect_scan.jsonl"),
    ("nmap_syn_filtered.pcap", [], "nmap_syn_filtered.jsonl"),
    ("nmap_syn_scan_ipv6.pcap", [], "nmap_syn_scan_ipv6.jsonl"),
    ("nmap_stealth_scans.pcap", [], "nmap_stealth_scans.jsonl"),
    ("nmap_udp_scan.pcap", [], "nmap_udp_scan.jsonl"),
    ("nmap_ack_maimon_scans.pcap", [], "nmap_ack_maimon_scans.jsonl"),
    ("benign_clients.pcap", [], "benign_clients.jsonl"),
    ("nmap_syn_scan.pcap", ["--preset", "elastic-network-scan"], "nmap_syn_scan.elastic.jsonl"),
    ("nmap_syn_scan.pcap", ["--set", "port_scan.scope=\"pair\"", "--set",
                            "failed_connections.enabled=false"], "nmap_syn_scan.pair.jsonl"),
    ("nmap_host_sweep.pcap", [], "nmap_host_sweep.jsonl"),
    ("nmap_ping_sweep.pcap", [], "nmap_ping_sweep.jsonl"),
    ("distributed_port_sweep.pcap", [], "distributed_port_sweep.jsonl"),
    ("distributed_port_sweep.pcap", ["--preset", "sentinel-port-sweep"],
     "distributed_port_sweep.sentinel.jsonl"),
    ("distributed_sweep_445.pcap", ["--preset", "sentinel-port-sweep"],
     "distributed_sweep_445.sentinel.jsonl"),
    ("exposed_host_probe.pcap", ["--set", 'net.exposed_hosts=["10.77.0.2"]'],
     "exposed_host_probe.jsonl"),
    ("exposed_host_probe.pcap", ["--preset", "defender-internet-facing", "--set",
                                 'net.exposed_hosts=["10.77.0.2"]'],
     "exposed_host_probe.defender.jsonl"),
    ("edge/mapped_ipv6.pcap", [], "mapped_ipv6.jsonl"),
    ("edge/ipv4_twin_scan.pcap", [], "ipv4_twin_scan.jsonl"),
    # alerts.group = "rule": one alert per rule, exactly as before prober episodes
    *[(f"{name}.pcap", ["--set", 'alerts.group="rule"'], f"{name}.rule.jsonl")
      for name in ("nmap_syn_scan", "nmap_udp_scan", "nmap_host_sweep", "nmap_syn_filtered",
                   "nmap_connect_scan", "distributed_port_sweep")],
]
COMMON = ["--set", "sensor.name=\"golden\"", "--set", "sensor.hash_seed=1", "--no-summary"]


def replay(capture, args):
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", *COMMON, *args,
                           str(ROOT / "pcaps" / capture)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("run", [["--workers", "1"], ["--workers", "2"],
                                 ["--workers", "2", "--set", "capture.batch_packets=64"]],
                         ids=["1-worker", "2-workers", "2-workers-batch-64"])
@pytest.mark.parametrize("capture, args, golden", CASES, ids=[c[2] for c in CASES])
def test_golden(capture, args, golden, run):
    """Same alerts, same order, whether the probe stage runs on a second thread or not,
    and whatever the batch size (alerts fall due inside batches and between them)."""
    if not (ROOT / "pcaps" / capture).exists():
        pytest.skip(f"pcaps/{capture} not present")
    expected = [json.loads(line) for line in (GOLDEN / golden).read_text().splitlines()]
    assert replay(capture, args + run) == expected


def test_mapped_ipv6_scan_equals_its_ipv4_twin():
    """::ffff:10.1.2.3 in IPv6 headers is the same internal host as 10.1.2.3."""
    mapped = replay("edge/mapped_ipv6.pcap", [])
    twin = replay("edge/ipv4_twin_scan.pcap", [])
    assert mapped and mapped == twin
    assert {a["src_ip"] for a in mapped} == {"10.1.2.3"}
    assert {a["direction"] for a in mapped} == {"internal"}


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for capture, args, golden in CASES:
        alerts = replay(capture, args)
        (GOLDEN / golden).write_text("".join(json.dumps(a) + "\n" for a in alerts))
        print(f"{golden}: {len(alerts)} alert(s)")
