"""The long-horizon tier (slow_scan, kernels/slow_tier.py) on captures paced under every
5-minute window, on benign pollers that run all day, and inside a spoofed flood.

Captures: pcaps/make_slow_scans.py (slow sweep, nmap -T1 pacing),
pcaps/slow_scan_60ports.py, pcaps/benign/make_benign_captures.py (24 h poller);
the flood and the failing client are made here (numpy / pcapgen), in tmp_path.
Every check runs the real CLI (``python -m sensor replay``) under the default preset.
"""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import PCAPS, ROOT, shipped

sys.path.insert(0, str(PCAPS / "presets"))
from pcapgen import Capture, US, syn_probe  # noqa: E402

SEC = 1_000_000_000


def replay(path, tmp_path, *sets):
    stats = tmp_path / "stats.json"
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", "--no-summary",
                           "--no-progress", "--stats-json", str(stats),
                           *sum((["--set", s] for s in sets), []), str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], json.loads(stats.read_text())


def last_of(alerts, src):
    mine = [a for a in alerts if a["src_ip"] == src]
    assert mine, alerts
    assert len({a["id"] for a in mine}) == 1, "one scan, one alert (and its updates)"
    return mine[-1]


def test_nmap_t1_paced_scan_is_found_by_the_failed_attempt_rules(tmp_path):
    """15 s between probes, answers never seen: 20 ports per 5 minutes (port_scan needs 50)
    and every outcome unknown (failed_connections counts none). vertical_scan sees the 20
    of one window; slow_scan reports it once 25 ports of the target were tried over more
    than min_span_s (5 minutes): one alert naming both."""
    alerts, stats = replay(shipped("nmap_t1_scan.pcap"), tmp_path)
    a = last_of(alerts, "198.51.100.9")
    assert a["rules"] == ["vertical_scan", "slow_scan"]
    assert a["slow"] is True and a["slow_shape"] == "ports_on_target"
    assert a["slow_target"] == "10.30.0.5" and a["dst_ips"] == ["10.30.0.5"]
    assert a["rule_evidence"]["slow_scan"]["count"] >= 25
    assert a["span_s"] >= 300
    assert a["outcomes"]["unknown"] >= 25 and a["outcomes"]["open"] == 0
    # the first attempt only marked the doorkeeper
    assert stats["slow_scan_doorkeeper_held"] == 1 and stats["slow_scan_doorkeeper_admitted"] == 1


def test_slow_sweep_of_100_hosts_at_one_probe_per_90_s(tmp_path):
    """4 hosts per 5-minute window (host_sweep needs 25); trw_scanner (1-hour window) is
    switched off to show the tier finds it on its own."""
    alerts, _ = replay(shipped("slow_sweep_3389.pcap"), tmp_path, "trw_scanner.enabled=false")
    a = last_of(alerts, "203.0.113.50")
    assert a["rules"] == ["slow_scan"]
    assert a["slow_shape"] == "targets_on_port" and a["dst_port"] == 3389
    assert a["dst_ports"] == "3389"
    assert a["dst_ip_count"] >= 50
    assert all(ip.startswith("10.20.0.") for ip in a["dst_ips"])


def test_slow_sweep_merges_with_trw_into_one_alert(tmp_path):
    alerts, _ = replay(shipped("slow_sweep_3389.pcap"), tmp_path)
    a = last_of(alerts, "203.0.113.50")
    assert set(a["rules"]) == {"trw_scanner", "slow_scan"} and a["slow"] is True


def test_sixty_ports_at_one_a_minute(tmp_path):
    alerts, _ = replay(shipped("slow_scan_60ports.pcap"), tmp_path)
    a = last_of(alerts, "198.51.100.77")
    assert a["rules"] == ["failed_connections", "slow_scan"] and a["slow_target"] == "10.77.0.2"
    assert a["dst_ports"] == "1-60"


def test_fast_scan_is_not_called_slow(tmp_path):
    """A scan that reaches the threshold within min_span_s is the fast rules' alone."""
    alerts, stats = replay(shipped("nmap_syn_scan.pcap"), tmp_path)
    assert alerts and not any("slow_scan" in (a.get("rules") or [a["rule"]]) for a in alerts)
    assert stats["slow_scan_counted"] > 0        # counted, just not slow


def test_monitoring_poller_for_24_hours_is_silent(tmp_path):
    """15 connections a minute for 24 h, every one succeeding: nothing for the tier to count."""
    alerts, stats = replay(shipped("benign/monitoring_poller_24h.pcap.gz"), tmp_path)
    assert alerts == []
    assert stats["slow_scan_counted"] == 0 and stats["slow_scan_doorkeeper_held"] == 0


def test_client_retrying_a_few_dead_services_all_day_is_silent(tmp_path):
    """A client whose connections to 3 ports of one server are refused every minute for
    6 hours: 1,080 failures, 3 distinct pairs: far from 25 ports or 25 targets."""
    cap = Capture()
    t0 = 1_767_250_800 * US
    for r in range(360):
        for k, port in enumerate((8443, 9000, 9200)):
            syn_probe(cap, t0 + r * 60 * US + k * 1000, "10.0.5.9", 40000 + (r * 3 + k) % 20000,
                      "10.0.6.1", port, "closed")
    path = tmp_path / "retrying.pcap"
    cap.write(path)
    alerts, stats = replay(path, tmp_path)
    assert not any("slow_scan" in (a.get("rules") or []) for a in alerts), alerts
    assert stats["slow_scan_counted"] > 1000


def _flood_and_sweep(path, flood_sources):
    """The slow sweep's frames with a spoofed SYN flood (one SYN from each of
    ``flood_sources`` random sources to 10.0.0.80:80, never answered) in its middle."""
    sweep = Capture()
    t0 = 1_767_250_800 * US
    for k in range(100):
        syn_probe(sweep, t0 + k * 90 * US, "203.0.113.50", 50000 + k, f"10.20.0.{k + 1}", 3389,
                  "filtered")
    body = sweep.to_bytes()[24:]
    records = []
    p = 0
    while p < len(body):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", body, p)
        records.append((sec * US + usec, body[p:p + 16 + caplen]))
        p += 16 + caplen
    rng = np.random.default_rng(7)
    # distinct sources (a repeated one would be a real second attempt)
    srcs = np.unique(rng.integers(0x01000000, 0xDF000000, flood_sources * 11 // 10,
                                  dtype=np.uint64))[:flood_sources]
    rng.shuffle(srcs)
    start = t0 + 40 * 90 * US           # from the 40th probe of the sweep, over 10 minutes
    frame = bytearray(bytes.fromhex("020000000002020000000001" "0800"
                                    "45000028000040003406" "0000" "00000000" "0a000050"
                                    "d43100500000000100000000" "50020400" "00000000"))
    flood = []
    for k, src in enumerate(srcs):
        t = start + k * (600 * US) // flood_sources
        struct.pack_into(">I", frame, 26, int(src))
        struct.pack_into(">H", frame, 34, 1024 + k % 60000)
        flood.append((t, struct.pack("<IIII", t // US, t % US, 60, 60) + bytes(frame) + bytes(6)))
    merged = sorted(records + flood, key=lambda r: r[0])
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        fh.write(b"".join(r for _, r in merged))


def test_spoofed_flood_neither_grows_nor_flushes_the_tier(tmp_path):
    """200,000 one-packet spoofed sources in the middle of the slow sweep, with the tier's
    table cut to 64 slots: the flood only writes doorkeeper marks (no slot is claimed, no
    key evicted), the table's bytes are what the configuration says, and the sweep is
    still found whole."""
    path = tmp_path / "flood.pcap"
    _flood_and_sweep(path, 200_000)
    sets = ("trw_scanner.enabled=false", "slow_scan.max_keys=64", "probes.timeout_s=2")
    alerts, stats = replay(path, tmp_path, *sets)
    quiet, quiet_stats = replay(shipped("nmap_t1_scan.pcap"), tmp_path, *sets)
    assert stats["slow_scan_table_bytes"] == quiet_stats["slow_scan_table_bytes"]
    assert stats["slow_scan_doorkeeper_held"] >= 190_000
    assert stats["slow_scan_doorkeeper_admitted"] == 1      # the sweeper alone
    assert stats["slow_scan_evictions"] == 0
    sweeps = [a for a in alerts if a["src_ip"] == "203.0.113.50"]
    assert sweeps and sweeps[-1]["rules"] == ["slow_scan"]
    assert sweeps[-1]["dst_ip_count"] >= 50
