"""Live end-to-end test: real nmap traffic between fresh network namespaces,
recorded by tcpdump, replayed through the sensor.

    sudo python -m pytest tests/test_integration_live.py -q     # ~1 min

It runs ``pcaps/make_captures.sh --out <tmp> nmap_syn_scan benign_clients
nmap_host_sweep`` (see pcaps/README.md for what each capture is), checks that
the fresh captures have the documented facts (``pcaps/verify_pcaps.py --dir``),
then runs ``python -m sensor replay FILE`` on each and checks the alerts
against those facts:

* nmap_syn_scan: 10.77.0.1 sends SYNs to exactly the 1000 dports 1-1000
  -> one port_scan alert, src 10.77.0.1, dst_port_count 1000, dst_ports "1-1000".
* benign_clients: every client reaches at most 3 distinct ports, no refused
  connection, no ICMP -> no output at all.
* nmap_host_sweep: 10.77.0.1 SYNs 40 distinct hosts on TCP 445, open on 3 of
  them -> one host_sweep alert, src 10.77.0.1, dst_port 445, count 37 (the
  default host_sweep counts attempts that did not succeed), outcomes 3 open,
  37 closed.

Skipped (with the reason) unless running as root with ip, nmap, tcpdump and
curl available and network namespaces usable.  The namespaces get a prefix
unique to this run (``make_captures.sh --ns-prefix``), so the test cannot
touch namespaces of a concurrent manual run; whatever the outcome (failure,
timeout, Ctrl-C), they are deleted again and the fixture fails if any is left.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "pcaps" / "make_captures.sh"
VERIFY = ROOT / "pcaps" / "verify_pcaps.py"
CAPTURES = ("nmap_syn_scan", "benign_clients", "nmap_host_sweep")
TOOLS = ("ip", "nmap", "tcpdump", "curl", "bash")
SCRIPT_TIMEOUT_S = 150     # the three captures take ~35 s
SENSOR_TIMEOUT_S = 120

# Documented facts (pcaps/README.md, checked on the fresh files by
# verify_pcaps.py --dir before the sensor is judged).
SCANNER = "10.77.0.1"
SYN_SCAN_PORTS = 1000          # dports 1-1000, each probed
SYN_SCAN_PORT_RANGE = "1-1000"
SWEEP_PORT = 445
SWEEP_HOSTS = 40               # 10.77.0.10 - 10.77.0.49
SWEEP_OPEN_HOSTS = 3           # 445 listens on .10, .25 and .40


def _why_not_runnable():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets, tcpdump)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def _ns_names(prefix):
    return (f"{prefix}-scan", f"{prefix}-target")


def _existing_ns():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _delete_ns(prefix):
    """Delete this run's namespaces (killing what still runs inside them)."""
    for ns in _ns_names(prefix):
        if ns not in _existing_ns():
            continue
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=10).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _netns_usable(prefix):
    probe = f"{prefix}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@pytest.fixture(scope="module")
def fresh_captures(tmp_path_factory):
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    prefix = f"sst{os.getpid() % 1000000}"          # <= 12 chars, unique per run
    reason = _netns_usable(prefix)
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("live_captures")
    cmd = ["bash", str(SCRIPT), "--out", str(out), "--ns-prefix", prefix, *CAPTURES]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        try:
            log, _ = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM: the script's trap stops tcpdump/services, deletes its namespaces
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                log, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                log, _ = proc.communicate()
            pytest.fail(f"make_captures.sh took longer than {SCRIPT_TIMEOUT_S} s:\n{log[-4000:]}")
        (out / "make_captures.out").write_text(log)
        assert proc.returncode == 0, f"make_captures.sh failed ({proc.returncode}):\n{log[-4000:]}"
        for name in CAPTURES:
            assert (out / f"{name}.pcap").stat().st_size > 0, f"{name}.pcap missing or empty"
        yield out
    finally:
        if proc.poll() is None:                      # e.g. KeyboardInterrupt while waiting
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        _delete_ns(prefix)
        left = set(_ns_names(prefix)) & _existing_ns()
        assert not left, f"network namespaces left behind: {sorted(left)}"


def replay(path):
    """Run the sensor on one capture as a subprocess; return its JSON records."""
    r = subprocess.run([sys.executable, "-m", "sensor", "replay", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=SENSOR_TIMEOUT_S)
    assert r.returncode == 0, f"sensor exited {r.returncode}:\n{r.stderr[-4000:]}"
    records = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return records


def test_fresh_captures_have_documented_facts(fresh_captures):
    r = subprocess.run([sys.executable, str(VERIFY), "--dir", str(fresh_captures), *CAPTURES],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"fresh captures differ from pcaps/README.md:\n{r.stdout[-6000:]}{r.stderr}"


def test_syn_scan_gives_one_port_scan_alert(fresh_captures):
    records = replay(fresh_captures / "nmap_syn_scan.pcap")
    scans = [a for a in records if a.get("rule") == "port_scan"]
    assert len(scans) == 1, f"expected one port_scan alert, got {scans}"
    a = scans[0]
    assert a["src_ip"] == SCANNER
    assert a["dst_port_count"] == SYN_SCAN_PORTS
    assert a["dst_ports"] == SYN_SCAN_PORT_RANGE


def test_benign_clients_give_no_alert(fresh_captures):
    records = replay(fresh_captures / "benign_clients.pcap")
    assert records == [], f"benign traffic raised alerts: {records}"


def test_host_sweep_gives_one_host_sweep_alert(fresh_captures):
    records = replay(fresh_captures / "nmap_host_sweep.pcap")
    sweeps = [a for a in records if a.get("rule") == "host_sweep"]
    assert len(sweeps) == 1, f"expected one host_sweep alert, got {sweeps}"
    a = sweeps[0]
    assert a["src_ip"] == SCANNER
    assert a["dst_port"] == SWEEP_PORT
    assert a["count"] == SWEEP_HOSTS - SWEEP_OPEN_HOSTS
    assert a["outcomes"] == {"open": SWEEP_OPEN_HOSTS, "closed": SWEEP_HOSTS - SWEEP_OPEN_HOSTS,
                             "filtered": 0, "unknown": 0}
