"""The benchmark runs and its numbers are sane (no speed is asserted here)."""
import json
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_and_reports_sane_numbers(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "sensor.bench", "--packets", "50000",
                           "--dpkt-packets", "5000", "--scaling", "1000",
                           "--scaling-packets", "40000", "--no-cold-start",
                           "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["packets"] == 50000
    for prefix in ("sensor", "sensor2", "clean", "clean2"):
        for key in ("_pps", "_steady_pps", "_peak_rss_mib"):
            assert r[prefix + key] > 0, prefix + key
        assert r[prefix + "_steady_pps"] >= r[prefix + "_pps"]   # the loop alone is never slower
    assert r["dpkt_pps"] > 0
    assert r["sensor_alerts"] >= 1                         # the synthetic scanners are found
    assert r["clean_alerts"] >= 1
    assert r["sensor_workers_same_alerts"] is True
    assert r["clean_workers_same_alerts"] is True
    # scaling: 1,000 sources in turn, then a spoofed flood (20,000 flood packets each)
    assert [row["sources"] for row in r["scaling"]] == [1000, "spoofed"]
    assert [row["distinct_flood_sources"] for row in r["scaling"]] == [1000, 20000]
    assert r["scaling"][1]["probes_evictions"] >= 0 and r["scaling_table_mib"] > 0
    # every target this run measured is printed met or not met, with its measurement
    names = [t["target"] for t in r["targets"]]
    assert sum("--workers 2 >= 1.8x" in n for n in names) == 2
    assert any(n.startswith("flat as live keys grow") for n in names)
    assert not any("cold start" in n for n in names)       # --no-cold-start
    if r["sensor_tcpdump_pps"]:
        assert sum("2x tcpdump" in n for n in names) == 2
    printed = proc.stdout.split("targets (issue #13):")[1].splitlines()[1:]
    assert len(printed) == len(r["targets"])
    for line, t in zip(printed, r["targets"]):
        assert t["target"] in line and ("NOT MET" in line) != t["met"]


def test_flood_free_mix_is_connections_dns_and_few_scanners(tmp_path):
    """The flood-free mix decodes completely; 20 % of it is DNS (UDP 53), every query
    answered; scanners send about 2 % of the packets; no spoofed flood at all."""
    from kernels.batch import PacketBatch, new_stats
    from sensor.bench import CLEAN_MIX, write_capture
    from sensor.capture.files import CaptureFile
    path = tmp_path / "c.pcap"
    write_capture(path, 20000, **CLEAN_MIX)
    rows = {k: [] for k in ("src_lo", "sport", "dport", "proto")}
    with CaptureFile(str(path)) as cf:
        for b in cf.batches(PacketBatch(4096), new_stats()):
            for k in rows:
                rows[k].extend(getattr(b, k)[:b.n].tolist())
    proto = rows["proto"]
    assert len(proto) == 20000
    dns = [i for i, p in enumerate(proto) if p == 17]
    assert 0.17 < len(dns) / 20000 < 0.23
    queries = sum(rows["dport"][i] == 53 for i in dns)
    answers = sum(rows["sport"][i] == 53 for i in dns)
    assert queries + answers == len(dns) and abs(queries - answers) <= 1
    scanners = sum((s & 0xFFFF0000) == 0x0A420000 for s in rows["src_lo"])
    assert 0.01 < scanners / 20000 < 0.03
    assert len(set(rows["src_lo"])) < 2500             # clients, servers, scanners: no flood


def test_flood_sources_cycle_through_k_distinct_addresses(tmp_path):
    """flood_sources=K: the flood's sources are K distinct addresses in turn, also
    across the generator's chunks."""
    from kernels.batch import PacketBatch, new_stats
    from sensor.bench import write_capture
    from sensor.capture.files import CaptureFile
    path = tmp_path / "k.pcap"
    write_capture(path, 30000, chunk=7000, flood=1.0, flood_sources=5000)
    srcs = []
    with CaptureFile(str(path)) as cf:
        for b in cf.batches(PacketBatch(4096), new_stats()):
            srcs.extend(b.src_lo[:b.n].tolist())
    assert len(srcs) == 30000 and len(set(srcs)) == 5000
    assert srcs[:5000] == srcs[5000:10000]            # in turn, continued across chunks


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
