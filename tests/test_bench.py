"""The benchmark runs and its numbers are sane (no speed is asserted here)."""
import json
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_and_reports_sane_numbers(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "sensor.bench", "--packets", "50000",
                           "--dpkt-packets", "5000", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["packets"] == 50000
    for prefix in ("sensor", "sensor2"):
        for key in ("_pps", "_steady_pps", "_peak_rss_mib"):
            assert r[prefix + key] > 0, prefix + key
        assert r[prefix + "_steady_pps"] >= r[prefix + "_pps"]   # the loop alone is never slower
    assert r["dpkt_pps"] > 0
    assert r["alerts"] >= 1                                # the synthetic scanners are found
    assert r["workers_same_alerts"] is True
    assert r["target_14.88_mpps_2_workers"].startswith(("met", "not met ("))
    if "tcpdump_pps" in r:
        assert r["sensor_vs_tcpdump"] == round(r["sensor_pps"] / r["tcpdump_pps"], 3)
        assert r["target_2x_tcpdump"].startswith(("met", "not met ("))


def test_synthetic_capture_decodes_completely(tmp_path):
    from kernels.batch import PacketBatch, new_stats, stats_dict
    from sensor.bench import write_capture
    from sensor.capture.files import CaptureFile
    path = tmp_path / "s.pcap"
    write_capture(path, 20000, ipv6=0.3, vlan=0.3)
    stats = new_stats()
    with CaptureFile(str(path)) as cf:
        rows = sum(b.n for b in cf.batches(PacketBatch(4096), stats))
    s = stats_dict(stats)
    assert rows == 20000 and s["records"] == 20000 and s["decoded"] == 20000
