"""Small vertical scans (issue 12 part 3) under the default preset: vertical_scan.

A 20-30-port probe of one host stays under port_scan's 50 ports; on a SPAN port that
sees only the traffic entering the network every outcome is ``unknown``, which
failed_connections does not count. vertical_scan counts, per prober, the distinct ports
of one target whose attempts did not succeed (refused, filtered or unknown), 20 within
5 minutes. Captures are built here with the deterministic frame helpers of
pcaps/presets/pcapgen.py (as the preset captures are) and replayed with the real CLI;
the benign captures and the end-to-end table (tests/test_benign.py,
tests/test_e2e_table.py) show the rule adds no false alert.
"""
import json
import subprocess
import sys

import pytest

from conftest import PCAPS, ROOT

sys.path.insert(0, str(PCAPS / "presets"))
from pcapgen import Capture, US, connect, syn_probe  # noqa: E402

T0 = 1_767_250_800 * US
PROBER, TARGET = "198.51.100.33", "10.40.0.9"


def replay(path):
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", "--no-summary",
                           "--no-progress", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def probe(tmp_path, ports, outcome):
    cap = Capture()
    for k in range(ports):
        syn_probe(cap, T0 + k * US // 10, PROBER, 45000, TARGET, 1000 + 7 * k, outcome)
    path = tmp_path / f"probe{ports}{outcome}.pcap"
    cap.write(path)
    return path


@pytest.mark.parametrize("ports", [20, 29])
def test_unanswered_probe_seen_one_way_is_found(tmp_path, ports):
    """One probe every 0.1 s, no answer ever seen (outcomes unknown)."""
    alerts = replay(probe(tmp_path, ports, "filtered"))
    assert [a["rules"] for a in alerts] == [["vertical_scan"]], alerts
    a = alerts[0]
    assert a["src_ip"] == PROBER and a["dst_ips"] == [TARGET]
    assert a["dst_port_count"] == ports and a["outcomes"]["unknown"] == ports


def test_nineteen_ports_are_not_a_scan(tmp_path):
    assert replay(probe(tmp_path, 19, "filtered")) == []


def test_refused_probe_is_one_alert_of_two_rules(tmp_path):
    """Answered by RSTs (closed), failed_connections matches too: one alert."""
    alerts = replay(probe(tmp_path, 29, "closed"))
    assert len({a["id"] for a in alerts}) == 1
    assert set(alerts[-1]["rules"]) == {"failed_connections", "vertical_scan"}


def test_successful_connections_to_many_ports_are_not_counted(tmp_path):
    """A client opening 40 connections to 40 ports of one server (passive FTP data
    ports, RPC), every one completing its handshake: nothing failed."""
    cap = Capture()
    for k in range(40):
        connect(cap, T0 + k * 200_000, "10.40.0.20", 40000 + k, TARGET, 50000 + k)
    path = tmp_path / "clients.pcap"
    cap.write(path)
    assert replay(path) == []
