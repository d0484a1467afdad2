"""Live capture adapters on real sockets: RingCapture (AF_PACKET TPACKET_V3),
the libpcap fallback, kernel filters and the fanout key program.

    sudo python -m pytest tests/test_live_capture.py -q

Two network namespaces made for this run (``ring<pid>a`` scanner side,
``ring<pid>b`` sensor side) joined by a veth pair; real traffic (nmap, nping,
curl, frames built with scapy and sent on a raw socket) goes from a to b, and
the adapters capture on b's end. They are created in this process's netns
via setns(2) for the time it takes to open them (a socket stays in the
namespace it was created in). Everything is deleted in the fixture's
teardown, whatever the outcome.

Skipped (with the reason) unless root with ip, nmap, nping, tcpdump, curl.
"""
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import naive
from kernels.batch import COLUMN_NAMES, PacketBatch, new_stats, stats_dict
from sensor.capture import bpf
from sensor.capture.files import CaptureFile
from sensor.capture.ring import CaptureSetupError, FanoutSpec, RingCapture

pytestmark = pytest.mark.integration

TOOLS = ("ip", "nmap", "nping", "tcpdump", "curl")
PREFIX = f"ring{os.getpid() % 100000}"
NS_A, NS_B = f"{PREFIX}a", f"{PREFIX}b"
IF_A, IF_B = f"{PREFIX}-a", f"{PREFIX}-b"
A4, B4 = "10.99.0.1", "10.99.0.2"
A6, B6 = "fd99::1", "fd99::2"
SCANNERS4 = ("10.99.0.11", "10.99.0.12", "10.99.0.13")
SCANNER6 = "fd99::11"
OPEN_PORT = 8080
HTTP_PORT = 8000
CLONE_NEWNET = 0x40000000
SMALL_RING = dict(ring_bytes=4 << 20, block_bytes=1 << 20)


def _why_not_runnable():
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET sockets)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def sh(*args, check=True, timeout=30, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def netns(name):
    """Run the block with this thread in network namespace ``name``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def _delete_namespaces():
    for ns in (NS_A, NS_B):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def net():
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    r = sh("ip", "netns", "add", NS_A, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    servers = []
    try:
        sh("ip", "netns", "add", NS_B)
        sh("ip", "link", "add", IF_A, "netns", NS_A, "type", "veth", "peer", "name", IF_B,
           "netns", NS_B)
        for ns, ifname, a4, a6 in ((NS_A, IF_A, A4, A6), (NS_B, IF_B, B4, B6)):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "addr", "add", f"{a4}/24", "dev", ifname)
            in_ns(ns, "ip", "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            in_ns(ns, "ip", "link", "set", ifname, "up")
        for s in SCANNERS4:
            in_ns(NS_A, "ip", "addr", "add", f"{s}/24", "dev", IF_A)
        in_ns(NS_A, "ip", "-6", "addr", "add", f"{SCANNER6}/64", "dev", IF_A, "nodad")
        # b listens on OPEN_PORT (the kernel answers SYNs; nothing is accepted)
        with netns(NS_B):
            for family, addr in ((socket.AF_INET, ""), (socket.AF_INET6, "::")):
                s = socket.socket(family, socket.SOCK_STREAM)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, OPEN_PORT))
                s.listen(64)
                servers.append(s)
        yield
    finally:
        for s in servers:
            s.close()
        _delete_namespaces()
        left = set(sh("ip", "netns", "list").stdout.split()) & {NS_A, NS_B}
        assert not left, f"network namespaces left behind: {sorted(left)}"


# ---------------------------------------------------------------- helpers

def open_ring(**kw):
    with netns(NS_B):
        return RingCapture(IF_B, **{**SMALL_RING, **kw})


def collect(cap, stop, idle_s=0.3, capacity=512):
    """Read until ``stop`` is set and one read then came back empty -> (rows, stats)."""
    batch, stats = PacketBatch(capacity), new_stats()
    parts = {name: [] for name in COLUMN_NAMES}
    while True:
        done = stop.is_set()
        n = cap.read(batch, stats, idle_s)
        for name, col in batch.rows().items():
            parts[name].append(col.copy())
        if done and n == 0:
            break
    columns = {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}
    return columns, stats_dict(stats)


class Reader:
    """Collect rows from a capture in a thread while traffic runs."""

    def __init__(self, cap):
        self.cap = cap
        self.stop = threading.Event()
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result = collect(self.cap, self.stop)

    def finish(self):
        time.sleep(0.2)            # > the block retire timeout: the last block retires
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.result


@contextlib.contextmanager
def tcpdump(path, snaplen=256, expr=()):
    proc = subprocess.Popen(["ip", "netns", "exec", NS_B, "tcpdump", "-i", IF_B, "-n", "-U",
                             "-s", str(snaplen), "--time-stamp-precision=nano", "-w", str(path),
                             *expr], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on" in line, line
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def file_rows(path):
    batch, stats = PacketBatch(4096), new_stats()
    parts = {name: [] for name in COLUMN_NAMES}
    with CaptureFile(str(path)) as cf:
        for b in cf.batches(batch, stats):
            for name, col in b.rows().items():
                parts[name].append(col.copy())
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}


def send_frames(frames):
    """Send raw Ethernet frames out of a's end."""
    with netns(NS_A):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((IF_A, 0))
        for f in frames:
            s.send(bytes(f))
    finally:
        s.close()


def macs():
    def mac(ns, ifname):
        out = in_ns(ns, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()
        return out
    return mac(NS_A, IF_A), mac(NS_B, IF_B)


def addr_lo(ip):
    """The lo half of the sensor's 128-bit key for an address."""
    return naive.addr_key(socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip))[1]


def row_dicts(columns):
    n = len(columns["ts_ns"])
    return [{name: int(columns[name][i]) for name in COLUMN_NAMES} for i in range(n)]


def crafted_frames():
    """Frames with a VLAN tag in front (one tag, and QinQ) and plain ones, built with scapy."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
    mac_a, mac_b = macs()
    eth = Ether(src=mac_a, dst=mac_b)
    return [
        eth / Dot1Q(vlan=100) / IP(src=A4, dst=B4) / TCP(sport=40000, dport=22, flags="S"),
        eth / Dot1Q(vlan=4001, prio=5) / IPv6(src=A6, dst=B6) / UDP(sport=5353, dport=53),
        eth / Dot1AD(vlan=300) / Dot1Q(vlan=42) / IP(src=A4, dst=B4) / ICMP(),
        eth / IP(src=A4, dst=B4) / UDP(sport=1234, dport=161),
    ]


# ---------------------------------------------------------------- tests

def run_mixed_traffic():
    in_ns(NS_A, "nmap", "-n", "-Pn", "-sS", "--max-retries", "0", "-p", f"20-25,{OPEN_PORT}", B4,
          timeout=60)
    in_ns(NS_A, "nmap", "-6", "-n", "-Pn", "-sS", "--max-retries", "0", "-p",
          f"20-22,{OPEN_PORT}", B6, timeout=60)
    in_ns(NS_A, "nping", "--icmp", "-c", "2", "--delay", "50ms", B4, timeout=30)
    in_ns(NS_A, "nping", "--udp", "-p", "33434", "-c", "2", "--delay", "50ms", B4, timeout=30)
    send_frames(crafted_frames())


def test_ring_rows_equal_tcpdump_capture(net, tmp_path):
    """The rows the ring gives equal those of tcpdump's capture of the same traffic
    read through CaptureFile (time, addresses, ports, flags, VLAN, wire length)."""
    pcap = tmp_path / "b.pcap"
    cap = open_ring(snaplen=256)
    try:
        reader = Reader(cap)
        with tcpdump(pcap):
            run_mixed_traffic()
            time.sleep(0.2)
        ring, stats = reader.finish()
    finally:
        cap.close()
    want = file_rows(pcap)
    assert len(want["ts_ns"]) > 25
    # the ring opened before tcpdump: compare over tcpdump's time span
    lo, hi = want["ts_ns"][0], want["ts_ns"][-1]
    keep = (ring["ts_ns"] >= lo) & (ring["ts_ns"] <= hi)
    got = {k: v[keep] for k, v in ring.items()}
    got_rows, want_rows = row_dicts(got), row_dicts(want)
    for i, (a, b) in enumerate(zip(got_rows, want_rows)):
        assert a == b, f"row {i}: ring {a}\n tcpdump {b}"
    assert len(got_rows) == len(want_rows)
    assert stats["records"] == stats["decoded"] + sum(stats[k] for k in naive.SKIP_REASONS)
    # the VLAN tags the kernel stripped are back (QinQ: the outer, stripped one)
    vlans = sorted({(r["vlan"], r["proto"]) for r in got_rows if r["pkt_flags"] & naive.PF_HAS_VLAN})
    assert vlans == [(100, 6), (300, 1), (4001, 17)], vlans
    # the scan is there: SYNs to every port, one SYN-ACK from the open one
    syn_ports = {r["dport"] for r in got_rows if r["proto"] == 6 and r["tcp_flags"] == 0x02
                 and r["src_lo"] == addr_lo(A4)}
    assert set(range(20, 26)) | {OPEN_PORT} <= syn_ports


def test_read_returns_within_timeout_on_idle_link(net):
    # idle: a filter keeps the neighbour discovery of earlier tests out
    cap = open_ring(bpf=bpf.compile_filter("udp port 161", 256))
    try:
        batch, stats = PacketBatch(64), new_stats()
        cap.read(batch, stats, 0.2)                       # whatever was there
        for timeout_s in (0.0, 0.1, 0.3):
            t0 = time.monotonic()
            n = cap.read(batch, stats, timeout_s)
            elapsed = time.monotonic() - t0
            assert n == 0 and batch.n == 0
            assert elapsed < timeout_s + 0.5, (timeout_s, elapsed)
        # one packet on a quiet link is delivered by the block retire timeout
        send_frames(crafted_frames()[3:])
        t0 = time.monotonic()
        n = cap.read(batch, stats, 2.0)
        assert n == 1 and time.monotonic() - t0 < 1.0
        assert batch.dport[0] == 161
        assert cap.kernel_stats()["packets"] >= 1
    finally:
        cap.close()
