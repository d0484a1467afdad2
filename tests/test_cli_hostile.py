"""The command line used carelessly or hostilely (issue 14 items 4-11): output
that cannot be written, outputs checked before any input is read, closed
standard streams, Ctrl-C, non-finite numbers, tables larger than memory,
config files that are not text or never end, outputs that would overwrite
inputs. Real processes; each case checks the exit status and that the message
is one line without a traceback."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, shipped
from sensor.config import load_config
from sensor.memory_budget import available_memory_bytes, table_bytes

BASE = ("replay", "--no-summary", "--set", "sensor.name=hostile", "--set", "sensor.hash_seed=1")
NMAP_ALERTS = 1          # nmap_syn_scan.pcap: one alert (port_scan and failed_connections merged)


def sensor(*args, stdin=None, close=(), timeout=120, **kw):
    """Run ``scan-sensor`` with the descriptors in ``close`` closed (like ``2>&-``)."""
    def closing():
        for fd in close:
            os.close(fd)
    argv = [a if isinstance(a, bytes) else str(a) for a in args]     # bytes go as they are
    return subprocess.run([sys.executable, "-m", "sensor", *argv], cwd=ROOT,
                          capture_output=True, input=stdin, timeout=timeout,
                          preexec_fn=closing if close else None, **kw)


def one_error_line(proc):
    text = proc.stderr.decode()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1, text
    return errors[0]


def alerts_of(data):
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@pytest.fixture
def scan():
    return shipped("nmap_syn_scan.pcap")


def idle_stdin():
    """A pipe whose writer stays open and silent: reading it blocks."""
    r, w = os.pipe()
    return r, w


# ----------------------------------------------------- item 4: writes that fail

def test_jsonl_to_a_full_device(scan):
    proc = sensor(*BASE, "--jsonl", "/dev/full", scan)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "No space left on device" in line and f"{NMAP_ALERTS} alert(s) not written" in line


def test_stdout_to_a_full_device(scan):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, str(scan)], cwd=ROOT,
                              stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 1
    assert f"{NMAP_ALERTS} alert(s) not written" in one_error_line(proc)


def test_stdout_closed_is_refused_before_reading(scan):
    r, w = idle_stdin()
    try:
        # the input would block forever: the refusal must come first
        proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, "-"], cwd=ROOT, stdin=r,
                              stderr=subprocess.PIPE, timeout=60,
                              preexec_fn=lambda: os.close(1))
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 1
    assert "standard output is closed" in one_error_line(proc)


def test_jsonl_file_on_a_full_disk_keeps_other_outputs(scan, tmp_path):
    """A failing JSON-lines file does not stop a second one."""
    good = tmp_path / "good.jsonl"
    cfg = tmp_path / "two.toml"
    cfg.write_text(f'[[output]]\njsonl = "/dev/full"\nname = "full"\n\n'
                   f'[[output]]\njsonl = "{good}"\nname = "good"\n')
    proc = sensor(*BASE, "-c", cfg, scan)
    assert proc.returncode == 1
    assert "output full" in one_error_line(proc)
    assert len(alerts_of(good.read_bytes())) == NMAP_ALERTS


# ----------------------------------------- item 5: output paths checked first

@pytest.mark.parametrize("target", ["missing/dir/stats.json", "."])
def test_stats_json_path_checked_before_reading_input(target, tmp_path):
    r, w = idle_stdin()
    try:
        proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, "--stats-json",
                               str(tmp_path / target), "-"], cwd=ROOT, stdin=r,
                              capture_output=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--stats-json" in line
    assert ("does not exist" in line) if target != "." else ("is a directory" in line)


def test_jsonl_in_a_missing_directory_before_reading_input(tmp_path):
    r, w = idle_stdin()
    try:
        proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, "--jsonl",
                               str(tmp_path / "no" / "a.jsonl"), "-"], cwd=ROOT, stdin=r,
                              capture_output=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 2 and "--jsonl" in one_error_line(proc)


def test_stats_json_to_a_full_device(scan):
    proc = sensor(*BASE, "--stats-json", "/dev/full", scan)
    assert proc.returncode == 1
    assert "--stats-json /dev/full" in one_error_line(proc)
    assert len(alerts_of(proc.stdout)) == NMAP_ALERTS        # the alerts were still written


# ------------------------------------------------------- item 6: stderr closed

def test_stderr_closed_changes_nothing(scan):
    proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, str(scan)], cwd=ROOT,
                          stdout=subprocess.PIPE, timeout=120, preexec_fn=lambda: os.close(2))
    assert proc.returncode == 0
    assert len(alerts_of(proc.stdout)) == NMAP_ALERTS


def test_stderr_closed_warnings_do_not_reach_the_alerts():
    """A warning (a damaged file) with stderr closed goes nowhere, not into stdout."""
    bad = shipped("hostile/corrupt_length_midfile.pcap")
    proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, str(bad)], cwd=ROOT,
                          stdout=subprocess.PIPE, timeout=120, preexec_fn=lambda: os.close(2))
    assert proc.returncode == 1
    for a in alerts_of(proc.stdout):          # every line is an alert
        assert "rule" in a


# ----------------------------------------------------- item 7: Ctrl-C, promptly

@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_on_an_idle_stdin(workers, scan):
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "sensor", *BASE, "--workers", workers, "-"],
                            cwd=ROOT, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(r)
    try:
        os.write(w, scan.read_bytes()[:24 + 16 + 54])    # the header and one packet, then idle
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:               # wait until it reads (kernels loaded)
            time.sleep(0.5)
            try:
                if os.path.realpath(f"/proc/{proc.pid}/fd/0").startswith("pipe:") and \
                        proc.poll() is None and _reading(proc.pid):
                    break
            except OSError:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        os.close(w)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "interrupted" in err.decode()
    assert took < 15, f"took {took:.1f} s to stop"


def _reading(pid):
    """True once some thread of ``pid`` sleeps in a read (the input is being waited for)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as fh:
                if "pipe" in fh.read():
                    return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="run -i lo needs root (CAP_NET_RAW)")
def test_run_stops_promptly_on_sigint(tmp_path):
    # started is judged by the daemon's own READY=1 (as systemd would): a socket in
    # /proc/PID/fd appears before the kernels load, and fds come and go while we look
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", "-i", "lo", "--set",
                             "sensor.name=hostile", "--jsonl", str(tmp_path / "a.jsonl")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180          # a cold kernel cache compiles first
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = "READY=1" in notify.recv(4096).decode().split("\n")
            except socket.timeout:
                pass
        assert ready, f"no READY=1 (exit {proc.poll()})"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err.decode()
    assert proc.returncode == 0, err.decode()          # the daemon's documented clean stop
    assert took < 15


# -------------------------------------------------- item 8: nan and inf refused

@pytest.mark.parametrize("key,value", [("probes.timeout_s", "nan"),
                                       ("port_scan.window_s", "inf"),
                                       ("capture.max_time_regression_s", "-inf")])
def test_non_finite_settings(key, value, scan, tmp_path):
    proc = sensor(*BASE, "--set", f"{key}={value}", scan)
    assert proc.returncode == 2 and f"`{key}`" in one_error_line(proc)
    section, name = key.split(".")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{name} = {value}\n")
    proc = sensor(*BASE, "-c", cfg, scan)
    assert proc.returncode == 2 and f"`{key}`" in one_error_line(proc)


# --------------------------------------------------- item 9: the memory budget

def test_tables_larger_than_memory_refused_with_the_figure(scan):
    big = [f"{r}.max_keys=262144" for r in ("port_scan", "failed_connections", "trw_scanner",
                                            "host_sweep", "stealth_scan")]
    big += [f"{r}.max_listed=4096" for r in ("failed_connections", "trw_scanner", "host_sweep")]
    need = sum(table_bytes(load_config(None, big)).values())
    avail = available_memory_bytes()
    if avail is None or need <= avail:
        pytest.skip("this machine has the memory for the largest tables")
    sets = [a for s in big for a in ("--set", s)]
    proc = sensor(*BASE, *sets, scan)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "GiB" in line and f"{need:,} bytes" in line and "MemAvailable" in line


def test_daemon_refuses_tables_larger_than_memory_at_start():
    """``run`` checks the budget before it opens a capture (the interface does not
    exist: without the check that is what it would say), for every capture worker."""
    sets = ["port_scan.max_keys=262144"]
    one = sum(table_bytes(load_config(None, sets)).values())
    avail = available_memory_bytes()
    workers = min(64, avail // one + 1) if avail is not None else 0
    if avail is None or workers < 2:
        pytest.skip("cannot tell, or one worker's tables already exceed the memory")
    argv = ["run", "-i", "nosuch0", "--jsonl", os.devnull, "--set", sets[0]]
    proc = sensor(*argv, "--workers", workers)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"{one * workers:,} bytes, {workers} capture workers" in line and "MemAvailable" in line
    # one worker's tables fit: the start goes on and fails on the interface instead
    proc = sensor(*argv)
    assert "nosuch0" in one_error_line(proc) and "MemAvailable" not in proc.stderr.decode()


def test_documented_maximum_of_max_keys_runs(scan):
    """The largest `max_keys` CONFIG.md allows runs (tables are zero pages until used)."""
    need = sum(table_bytes(load_config(None, ["port_scan.max_keys=262144"])).values())
    avail = available_memory_bytes()
    if avail is None or need > avail:
        pytest.skip(f"needs {need} bytes of memory")
    proc = sensor(*BASE, "--set", "port_scan.max_keys=262144", scan)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(alerts_of(proc.stdout)) == NMAP_ALERTS
    proc = sensor(*BASE, "--set", "port_scan.max_keys=262145", scan)
    assert proc.returncode == 2 and "max_keys" in one_error_line(proc)


def test_table_bytes_match_the_stats(tmp_path, scan):
    """The budget is computed as --stats-json reports the tables it then allocates."""
    sets = ["port_scan.max_keys=1000", "failed_connections.max_listed=100",
            "probes.max_probes=5000", "probes.table_ways=4"]
    proc = sensor(*BASE, *[a for s in sets for a in ("--set", s)], "--stats-json",
                  tmp_path / "s.json", scan)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads((tmp_path / "s.json").read_text())
    want = table_bytes(load_config(None, sets))
    assert stats["probe_table_bytes"] == want.pop("probes")
    want.pop("batches")
    assert {k: stats[k + "_table_bytes"] for k in want} == want


# ------------------------------------ item 10: names, config files, closed stdin

def test_non_utf8_sensor_name(scan):
    """The name's bytes reach the sensor as they are (not as the text "b'...'", which
    would be refused as an unknown setting, today and before the fix alike), and
    refused at start (exit 2, naming the key), not a traceback at the first alert."""
    proc = sensor("replay", "--no-summary", "--set", b"sensor.name=\xff\xfe", scan)
    line = one_error_line(proc)
    assert proc.returncode == 2, line
    assert "`sensor.name` is not valid UTF-8 text: b'\\xff\\xfe'" in line
    assert proc.stdout == b""


@pytest.mark.parametrize("content,expect", [
    (b'[sensor]\nname = "\xff"\n', "not UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"x = {" * 3000 + b"}" * 3000, "invalid TOML"),
])
def test_config_file_not_text_or_too_deep(content, expect, tmp_path, scan):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(content)
    proc = sensor(*BASE, "-c", cfg, scan)
    assert proc.returncode == 2 and expect in one_error_line(proc)


def test_config_from_dev_zero_is_bounded(scan):
    proc = sensor(*BASE, "-c", "/dev/zero", scan, timeout=60)
    assert proc.returncode == 2 and "larger than" in one_error_line(proc)


def test_stdin_closed(scan):
    proc = sensor(*BASE, "-", close=(0,))
    assert proc.returncode == 1 and "standard input is closed" in one_error_line(proc)
    proc = sensor(*BASE, scan, "-", close=(0,))
    assert proc.returncode == 1 and "standard input is closed" in one_error_line(proc)
    assert len(alerts_of(proc.stdout)) == NMAP_ALERTS       # the file was still read


# --------------------------------------- item 11: outputs that would overwrite inputs

def test_stats_json_naming_an_input_through_a_symlink(scan, tmp_path):
    capture = tmp_path / "in.pcap"
    shutil.copy(scan, capture)
    link = tmp_path / "link.json"
    link.symlink_to(capture)
    before = capture.read_bytes()
    proc = sensor(*BASE, "--stats-json", link, capture)
    assert proc.returncode == 2 and "is also input" in one_error_line(proc)
    assert capture.read_bytes() == before


def test_jsonl_naming_an_input_or_the_config(scan, tmp_path):
    capture = tmp_path / "in.pcap"
    shutil.copy(scan, capture)
    hard = tmp_path / "hard.jsonl"
    os.link(capture, hard)
    before = capture.read_bytes()
    proc = sensor(*BASE, "--jsonl", hard, capture)
    assert proc.returncode == 2 and "is also input" in one_error_line(proc)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sensor]\nname = 'x'\n")
    proc = sensor(*BASE, "-c", cfg, "--stats-json", cfg, capture)
    assert proc.returncode == 2 and "config file" in one_error_line(proc)
    assert capture.read_bytes() == before and cfg.read_text() == "[sensor]\nname = 'x'\n"


def test_stdin_redirected_from_the_output(scan, tmp_path):
    capture = tmp_path / "in.pcap"
    shutil.copy(scan, capture)
    with open(capture, "rb") as fh:
        proc = subprocess.run([sys.executable, "-m", "sensor", *BASE, "--jsonl", str(capture),
                               "-"], cwd=ROOT, stdin=fh, capture_output=True, timeout=120)
    assert proc.returncode == 2 and "standard input" in one_error_line(proc)
    assert capture.read_bytes() == scan.read_bytes()


def test_two_outputs_one_file(scan, tmp_path):
    out = tmp_path / "x"
    proc = sensor(*BASE, "--jsonl", out, "--stats-json", out, scan)
    assert proc.returncode == 2 and "same file" in one_error_line(proc)
    proc = sensor(*BASE, "--jsonl", "/dev/null", "--stats-json", "/dev/null", scan)
    assert proc.returncode == 0, proc.stderr.decode()           # devices never collide
