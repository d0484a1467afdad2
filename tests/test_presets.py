"""The SIEM presets on captures just above and just below their thresholds.

Captures and what they hold: pcaps/presets/README.md. Every check runs the
real CLI (``python -m sensor replay --preset NAME FILE``) in a subprocess.
"""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "pcaps" / "presets"
EXPOSED = ["--set", 'net.exposed_hosts=["10.1.0.80"]']
SCAN_PORTS_51 = ("21-23,25,53,80,110-111,135,139,143,443,445,993,995,1025-1055,"
                 "1723,3306,3389,5900,8080")

# preset -> (rule, extra args, fields of the one alert the above file raises)
CASES = {
    "sentinel-port-scan": ("port_scan", [], dict(
        src_ip="198.51.100.7", dst_ips=["10.1.0.10"], count=51, count_kind="distinct_ports",
        dst_port_count=51, dst_ports=SCAN_PORTS_51, direction="inbound", scope="source",
        threshold=51, window_s=300.0)),
    "sentinel-port-sweep": ("port_sweep", [], dict(
        src_ip="198.51.100.23", dst_port=3389, dst_ports="3389", count=21,
        count_kind="distinct_hosts", dst_ip_count=21,
        dst_ips=[f"10.4.0.{k}" for k in range(11, 32)],
        sources=[{"ip": "198.51.100.23", "probes": 14, "host_count": 14, "hosts_omitted": 0,
                  "hosts": [f"10.4.0.{k}" for k in range(11, 25)]},
                 {"ip": "203.0.113.45", "probes": 7, "host_count": 7, "hosts_omitted": 0,
                  "hosts": [f"10.4.0.{k}" for k in range(25, 32)]}],
        source_count=2, source_count_estimated=False, sources_omitted=0, sources_complete=True,
        direction="inbound", threshold=21, window_s=3600.0)),
    "defender-internet-facing": ("exposed_host_probe", EXPOSED, dict(
        src_ip="198.51.100.99", dst_ips=["10.1.0.80"], count=3, count_kind="attempts",
        dst_ports="22,445,3389", direction="inbound", threshold=3, window_s=3600.0)),
    "panos-internal-scan": ("failed_connections", [], dict(
        src_ip="10.2.0.15", dst_ips=["198.51.100.20", "203.0.113.30", "203.0.113.31"],
        count=10, count_kind="attempts", dst_ports="21-23,25,135,139,445,1433,3306,3389",
        direction="outbound", threshold=10, window_s=3600.0)),
    "elastic-network-scan": ("port_scan", [], dict(
        src_ip="10.3.0.5", dst_ips=["10.3.0.99"], count=50, count_kind="distinct_ports",
        dst_port_count=50, dst_ports="2000-2049", sensitive_ports="",
        direction="internal", scope="pair", threshold=50, window_s=60.0)),
}


def test_elastic_sensitive_ports_branch():
    """The rule's second condition: >= 5 of its 13 sensitive ports, whatever the total."""
    above = replay("--preset", "elastic-network-scan",
                   capture("elastic-network-scan_sensitive_above.pcap"))
    assert [a["rule"] for a in above] == ["port_scan"]
    assert above[0]["sensitive_ports"] == "21-23,53,88"
    assert above[0]["dst_port_count"] == 15 and above[0]["src_ip"] == "10.3.0.5"
    below = replay("--preset", "elastic-network-scan",
                   capture("elastic-network-scan_sensitive_below.pcap"))
    assert below == []


# The decoys in each below file are real: turn off the one filter that keeps each
# kind out and the below file fires.
DECOY_CASES = [
    ("panos-internal-scan", ["--set", "failed_connections.exclude_ports=[]"]),
    ("panos-internal-scan", ["--set", 'failed_connections.directions=["outbound","internal"]']),
    ("elastic-network-scan", ["--set", "port_scan.scope=source"]),
    ("sentinel-port-sweep", ["--set", 'port_sweep.directions=["inbound","internal"]']),
    ("defender-internet-facing", ["--set", 'net.exposed_hosts=["10.1.0.80","10.1.0.81"]']),
]


_RESULTS = {}


def _run(args):
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "--no-summary", "--no-progress", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def replay(*args):
    """Alerts (parsed JSON lines) of one CLI run; the run must succeed."""
    args = tuple(map(str, args))
    if args not in _RESULTS:
        _RESULTS[args] = _run(args)
    code, out, err = _RESULTS[args]
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def capture(name):
    path = PRESETS_DIR / name
    assert path.exists(), f"{path} missing: run pcaps/presets/make_preset_captures.py"
    return path


# the CLI runs of the tests below, as argument lists (also used to prefetch them)
def above_run(preset):
    return ["--preset", preset, *CASES[preset][1], capture(f"{preset}_above.pcap")]


def below_run(preset, *more):
    return ["--preset", preset, *CASES[preset][1], *more, capture(f"{preset}_below.pcap")]


def one_short_run(preset):
    rule, _, expected = CASES[preset]
    return below_run(preset, "--set", f"{rule}.threshold={expected['threshold'] - 1}")


def twin_runs(preset):
    return [["--preset", preset, capture(f"sentinel-port-scan_{kind}.pcap")]
            for kind in ("mapped_internal", "ipv4_internal")]


def all_runs():
    runs = []
    for preset in CASES:
        runs += [above_run(preset), below_run(preset), one_short_run(preset)]
    runs += [below_run(preset, *relax) for preset, relax in DECOY_CASES]
    runs += twin_runs("sentinel-port-scan") + twin_runs("default")
    runs += [["--preset", "sentinel-port-scan", capture("sentinel-port-scan_mapped_external.pcap")],
             ["--preset", "defender-internet-facing",
              capture("defender-internet-facing_above.pcap")]]
    return runs


@pytest.fixture(scope="module", autouse=True)
def _prefetch():
    """Run every CLI invocation of this module concurrently, one per CPU (each takes ~1 s,
    mostly loading the compiled kernels); the tests then read the results."""
    todo = [tuple(map(str, r)) for r in all_runs()]
    todo = [r for r in dict.fromkeys(todo) if r not in _RESULTS]
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        for args, result in zip(todo, pool.map(_run, todo)):
            _RESULTS[args] = result
    yield


def check_fields(alert, expected):
    for key, want in expected.items():
        got = alert.get(key)
        if key == "dst_ips":
            got, want = sorted(got), sorted(want)
        assert got == want, f"{key}: {got!r} != {want!r}"


@pytest.mark.parametrize("preset", CASES)
def test_above_threshold_raises_one_alert(preset):
    rule, _, expected = CASES[preset]
    alerts = replay(*above_run(preset))
    assert [a["rule"] for a in alerts] == [rule], alerts
    check_fields(alerts[0], expected)
    assert alerts[0]["seq"] == 1 and alerts[0]["update"] is False


@pytest.mark.parametrize("preset", CASES)
def test_below_threshold_is_silent(preset):
    assert replay(*below_run(preset)) == []


@pytest.mark.parametrize("preset", CASES)
def test_below_is_exactly_one_short(preset):
    """With the threshold lowered by one, the below file raises one alert at that count."""
    rule, _, expected = CASES[preset]
    lower = expected["threshold"] - 1
    alerts = replay(*one_short_run(preset))
    assert [a["rule"] for a in alerts] == [rule], alerts
    assert alerts[0]["count"] == lower
    assert alerts[0]["src_ip"] == expected["src_ip"]


@pytest.mark.parametrize("preset,relax", DECOY_CASES,
                         ids=[f"{p}-{r[1].split('=')[0]}" for p, r in DECOY_CASES])
def test_below_file_decoys_would_count(preset, relax):
    rule = CASES[preset][0]
    alerts = replay(*below_run(preset, *relax))
    assert alerts and {a["rule"] for a in alerts} == {rule}


def test_exposed_host_probe_needs_exposed_hosts():
    assert replay("--preset", "defender-internet-facing",
                  capture("defender-internet-facing_above.pcap")) == []


def test_mapped_internal_scanner_is_internal_like_its_ipv4_twin():
    mapped, ipv4 = twin_runs("sentinel-port-scan")
    assert replay(*mapped) == []
    assert replay(*ipv4) == []
    # all directions on: the twins are detected, identically (same ids: same key)
    mapped_all, ipv4_all = (replay(*run) for run in twin_runs("default"))
    assert mapped_all == ipv4_all
    scans = [a for a in mapped_all if a["rule"] == "port_scan"]
    assert len(scans) == 1
    assert scans[0]["src_ip"] == "10.20.30.40" and scans[0]["dst_ips"] == ["10.20.30.50"]
    assert scans[0]["direction"] == "internal"


def test_mapped_external_scanner_prints_as_ipv4():
    alerts = replay("--preset", "sentinel-port-scan",
                    capture("sentinel-port-scan_mapped_external.pcap"))
    assert [a["rule"] for a in alerts] == ["port_scan"]
    check_fields(alerts[0], CASES["sentinel-port-scan"][2])
    assert "::ffff:" not in json.dumps(alerts)
    # the very same alert as the IPv4 capture of the same scan
    assert alerts == replay(*above_run("sentinel-port-scan"))


def test_captures_are_small():
    for path in PRESETS_DIR.glob("*.pcap"):
        assert path.stat().st_size < 300_000, path


def test_generator_is_deterministic(tmp_path):
    subprocess.run([sys.executable, str(PRESETS_DIR / "make_preset_captures.py"), str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    made = sorted(p.name for p in tmp_path.glob("*.pcap"))
    shipped = sorted(p.name for p in PRESETS_DIR.glob("*.pcap"))
    assert made == shipped
    assert len(made) == 2 * len(CASES) + 5
    for name in made:
        assert (tmp_path / name).read_bytes() == (PRESETS_DIR / name).read_bytes(), name
