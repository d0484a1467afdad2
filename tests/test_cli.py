"""The command line as a user meets it: real processes, exit codes, one-line errors."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, shipped

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib


def sensor(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "sensor", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, input=stdin, timeout=300)


def alerts_of(stdout, rule=None):
    alerts = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return [a for a in alerts if rule is None or a["rule"] == rule]


def test_nmap_syn_scan_gives_one_port_scan_alert():
    proc = sensor("replay", shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 0, proc.stderr
    (alert,) = alerts_of(proc.stdout, "port_scan")
    assert alert["rule"] == "port_scan"
    assert alert["src_ip"] == "10.77.0.1"
    assert alert["dst_ips"] == ["10.77.0.2"]
    assert alert["dst_port_count"] == 1000
    assert alert["dst_ports"] == "1-1000"
    assert alert["mitre"] == ["T1046"]
    for field in ("rule", "src_ip", "dst_ips", "dst_ip_count", "dst_ports", "dst_port_count",
                  "first_seen", "last_seen", "packets", "severity", "mitre", "sensor"):
        assert field in alert
    assert alert["first_seen"].endswith("Z") and alert["first_seen"] <= alert["last_seen"]


def test_benign_capture_gives_no_alert():
    proc = sensor("replay", shipped("benign_clients.pcap"))
    assert proc.returncode == 0, proc.stderr
    assert alerts_of(proc.stdout) == []


def test_file_then_stdin_into_jsonl_file(tmp_path):
    syn = shipped("nmap_syn_scan.pcap")
    out = tmp_path / "alerts.jsonl"
    # benign file first, then the scan from standard input: one stream of packet time
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay",
                           str(shipped("benign_clients.pcap")), "-", "--jsonl", str(out)],
                          cwd=ROOT, input=syn.read_bytes(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    (alert,) = alerts_of(out.read_text(), "port_scan")
    assert alert["dst_port_count"] == 1000


def test_missing_file_is_one_line_exit_1_and_other_files_still_read():
    proc = sensor("replay", "/nonexistent/x.pcap", shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "scan-sensor: error: /nonexistent/x.pcap: cannot open: No such file or directory"]
    assert len(alerts_of(proc.stdout, "port_scan")) == 1


def test_not_a_capture_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello world, not a pcap\n")
    proc = sensor("replay", bad)
    assert proc.returncode == 1
    assert "not a pcap or pcapng file" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, fragment", [
    (["--set", "port_scan.treshold=3"], "unknown setting `port_scan.treshold` (did you mean `port_scan.threshold`?)"),
    (["--set", "port_scan.threshold=abc"], "`port_scan.threshold` must be an integer"),
    (["--set", "port_scan.threshold=0"], "`port_scan.threshold` must be >= 1"),
    (["--set", "port_scan.report_delay_s=600"], "must not exceed `port_scan.window_s`"),
    (["-c", "/nonexistent.toml"], "cannot read config"),
])
def test_config_errors_exit_2_naming_the_key(args, fragment):
    proc = sensor("replay", *args, shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_bad_config_file_names_file_and_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[port_scan]\nthreshold = 20\nwindow = 3\n")
    proc = sensor("replay", "-c", cfg, shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 2
    assert f"{cfg}: unknown setting `port_scan.window`" in proc.stderr


def test_usage_error_exit_2():
    proc = sensor("replay")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_config_file_threshold_changes_result(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[port_scan]\nthreshold = 1001\n")
    proc = sensor("replay", "-c", cfg, shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 0 and alerts_of(proc.stdout, "port_scan") == []


def test_dump_config_round_trips_as_valid_config(tmp_path):
    proc = sensor("dump-config")
    assert proc.returncode == 0
    table = tomllib.loads(proc.stdout)
    assert table["port_scan"]["threshold"] == 50
    cfg = tmp_path / "full.toml"
    cfg.write_text(proc.stdout)
    proc = sensor("replay", "-c", cfg, shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 0 and len(alerts_of(proc.stdout, "port_scan")) == 1


def test_summary_and_stats_json(tmp_path):
    stats = tmp_path / "stats.json"
    proc = sensor("replay", "--summary", "--stats-json", stats, shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 0
    assert re.search(r"^port_scan\s+10\.77\.0\.1\s+internal\s+1000\s+1000", proc.stderr, re.M)
    data = json.loads(stats.read_text())
    # port_scan + failed_connections: one merged alert (sensor/episodes.py)
    assert data["alerts"] == 1 and data["records"] == data["decoded"] + sum(
        v for k, v in data.items() if k in ("non_ip", "truncated_link", "truncated_ip",
                                            "malformed_ip", "fragment_noninitial",
                                            "truncated_l4", "malformed_l4",
                                            "unsupported_linktype"))


def test_corrupt_file_is_exit_1_with_offset_and_other_files_still_read():
    proc = sensor("replay", shipped("edge/corrupt_record.pcap"), shipped("nmap_syn_scan.pcap"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    # issue 14: the reader skips to the next plausible record and says how far
    # (the label becomes "error:" once replay.py prints CaptureWarning.level)
    assert re.fullmatch(r"scan-sensor: (warning|error): .*corrupt_record\.pcap: corrupt record "
                        r"header at byte offset 164 \(captured length above 262144\); skipped "
                        r"16 bytes to the next plausible record, at byte offset 180; the rest of "
                        r"the file was decoded", line)
    assert len(alerts_of(proc.stdout, "port_scan")) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_gzip_damaged_midway_keeps_alerts_before_it(tmp_path, workers):
    """A read error in the middle of a file (here a corrupt gzip stream, found while
    the next batch is decoded on the worker thread) is reported once; alerts of
    the packets before it and of the next file are still delivered."""
    import zlib
    data = open(shipped("nmap_syn_scan.pcap"), "rb").read()
    gz = zlib.compressobj(wbits=31)
    # a full flush ends a deflate block; 0xFF there is an invalid block type
    raw = gz.compress(data[:len(data) * 3 // 4]) + gz.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 16
    damaged = tmp_path / "damaged.pcap.gz"
    damaged.write_bytes(raw)
    args = ["replay", "--workers", workers, "--set", "capture.batch_packets=256",
            "--set", "capture.read_chunk_bytes=4096", "--set", "sensor.hash_seed=3",
            damaged, shipped("nmap_host_sweep.pcap")]
    proc = sensor(*args)
    assert proc.returncode == 1
    assert re.search(r"scan-sensor: error: .*damaged\.pcap\.gz: read failed after \d+ bytes",
                     proc.stderr)
    assert alerts_of(proc.stdout, "port_scan")          # the scan before the damage
    # and the next file: the same prober, so host_sweep joins its episode (sensor/episodes.py)
    assert any("host_sweep" in a.get("rules", [a["rule"]]) for a in alerts_of(proc.stdout))
    if workers == "2":
        one = sensor(*[a if a != "2" else "1" for a in args])
        assert (one.stdout, one.stderr) == (proc.stdout, proc.stderr)


def test_file_cut_mid_record_is_a_warning_not_an_error():
    proc = sensor("replay", shipped("edge/truncated_file.pcap"))
    assert proc.returncode == 0
    assert "file ends in the middle of a record at byte offset" in proc.stderr
