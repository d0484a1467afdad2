"""Live benchmark: a capture sent into a veth as fast as the machine can, the
daemon and tcpdump listening on the other end at the same time.

    python -m sensor.bench --live [--packets N] [--workers N] [--json PATH]

Two network namespaces joined by a veth pair (``sensor/testbed.py``); in the
receiving one, ``scan-sensor run`` (AF_PACKET ring, default kernel filter)
and ``tcpdump -w /dev/null`` (libpcap's defaults) capture the same
interface; in the sending one, ``tcpreplay --topspeed`` replays the
benchmark's synthetic capture (``sensor/bench.py``). Reported for both:
packets received and packets the kernel dropped (the daemon's from
PACKET_STATISTICS via ``--stats-json``, counted after its kernel filter;
tcpdump's from its closing lines), beside what tcpreplay sent. Nothing here
asserts a speed: ``tests/test_bench_live.py`` checks only that the daemon
drops no more than tcpdump.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180


def _wait_line(path, needle, proc, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in pathlib.Path(path).read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}) before '{needle}':\n"
                               f"{pathlib.Path(path).read_text()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"no '{needle}' within {timeout_s} s")


def measure(capture, workdir, workers=1, settle_s=2.0, prefix=None):
    """Replay ``capture`` into a fresh veth; returns the figures as a dict."""
    from sensor.testbed import Link
    workdir = pathlib.Path(workdir)
    link = Link(prefix or f"bl{os.getpid() % 100000}")
    try:
        dev = link.dev["b"]
        d_err = workdir / "daemon.stderr"
        t_err = workdir / "tcpdump.stderr"
        stats = workdir / "daemon.stats.json"
        with open(d_err, "w") as de, open(t_err, "w") as te:
            daemon = link.popen("b", [sys.executable, "-m", "sensor", "run", "-i", dev,
                                      "--workers", str(workers), "--jsonl", os.devnull,
                                      "--stats-json", str(stats)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=de)
            _wait_line(d_err, "capturing on", daemon, READY_TIMEOUT_S)
            dump = link.popen("b", ["tcpdump", "-i", dev, "-n", "-w", os.devnull],
                              stdout=subprocess.DEVNULL, stderr=te)
            _wait_line(t_err, "listening on", dump, 30)
            sent = link.run("a", ["tcpreplay", "--topspeed", "-i", link.dev["a"],
                                  str(capture)], timeout=600)
            time.sleep(settle_s)
            dump.send_signal(signal.SIGINT)
            daemon.send_signal(signal.SIGTERM)
            dump.wait(30)
            daemon.wait(60)
        t_text = t_err.read_text()
        d = json.loads(stats.read_text())
        result = {
            "sent": _tcpreplay_sent(sent.stdout),
            "tcpreplay_pps": _tcpreplay_rate(sent.stdout),
            "workers": workers,
            "daemon_received": d["kernel_packets"],
            "daemon_dropped": d["kernel_drops"],
            "daemon_decoded": d["decoded"],
            "daemon_exit": daemon.returncode,
            "tcpdump_received": _tcpdump_count(t_text, "packets received by filter"),
            "tcpdump_dropped": _tcpdump_count(t_text, "packets dropped by kernel"),
        }
        return result
    finally:
        link.close()


def _tcpreplay_sent(text):
    m = re.search(r"Actual: (\d+) packets", text)
    return int(m.group(1)) if m else None


def _tcpreplay_rate(text):
    m = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", text)
    return float(m.group(1)) if m else None


def _tcpdump_count(text, what):
    m = re.search(rf"(\d+) {what}", text)
    return int(m.group(1)) if m else None


def main(args):
    from sensor.bench import write_capture
    with tempfile.TemporaryDirectory(prefix="scan-sensor-bench-live-") as tmp:
        capture = pathlib.Path(args.keep or tmp) / f"live-{args.packets}.pcap"
        if not capture.exists():
            write_capture(capture, args.packets, flood=args.flood_share, ipv6=args.ipv6,
                          vlan=args.vlan)
        results = [measure(capture, tmp, workers=w) for w in sorted({1, args.workers})]
    for r in results:
        print(f"live, {r['workers']} worker(s): tcpreplay sent {r['sent']:,} packets "
              f"({r['tcpreplay_pps']:,.0f} packets/s); daemon received {r['daemon_received']:,}"
              f" (after its kernel filter), dropped {r['daemon_dropped']:,}; tcpdump received "
              f"{r['tcpdump_received']:,}, dropped {r['tcpdump_dropped']:,}; daemon drops no "
              f"more than tcpdump: {'met' if r['daemon_dropped'] <= r['tcpdump_dropped'] else 'NOT met'}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
