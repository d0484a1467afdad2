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
    for key in ("sensor_pps", "sensor_steady_pps", "dpkt_pps", "sensor_peak_rss_mib"):
        assert r[key] > 0, key
    assert r["sensor_steady_pps"] >= r["sensor_pps"]      # the loop alone is never slower
    assert r["alerts"] >= 1                                # the synthetic scanners are found
    if "tcpdump_pps" in r:
        assert r["sensor_vs_tcpdump"] == round(r["sensor_pps"] / r["tcpdump_pps"], 3)


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
