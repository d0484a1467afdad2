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

What is checked: ring rows == rows of tcpdump's capture of the same traffic
(VLAN tags restored, QinQ outer tag); reads return within their timeout on an
idle link and deliver a lone packet by the block retire timeout; the default
filter agrees with a reference on every shipped frame, drops the data segments
of a real curl download and keeps every SYN/FIN/RST/UDP/ICMP row; operator
expressions compile (or fail with one clear line) and work live; the fanout
key program, rule by rule and on real scans from four scanner addresses; the
libpcap fallback gives the ring's rows; start-up errors; a link flap; no
packet reaches a ring before its filter. About 25 s.

Skipped (with the reason) unless root with ip, nmap, nping, tcpdump, curl
(the two offline filter tests need only libpcap).
"""
import collections
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
C6 = "fd99::3"              # no host: a destination of odd parity for fanout frames
SCANNERS4 = ("10.99.0.11", "10.99.0.12", "10.99.0.13")
SCANNER6 = "fd99::11"
OPEN_PORT = 8080
HTTP_PORT = 8000
CLONE_NEWNET = 0x40000000
# 64 blocks: at a low packet rate every retired block holds a few packets, so the
# ring holds 64 block timeouts (3.2 s) of traffic while the reader thread waits
# for the GIL
SMALL_RING = dict(ring_bytes=4 << 20, block_bytes=1 << 16)


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
    import scapy.all  # noqa: F401  (imported now, not while a reader thread captures)
    try:
        sh("ip", "netns", "add", NS_B)
        sh("ip", "link", "add", IF_A, "netns", NS_A, "type", "veth", "peer", "name", IF_B,
           "netns", NS_B)
        for ns, ifname, a4, a6 in ((NS_A, IF_A, A4, A6), (NS_B, IF_B, B4, B6)):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "addr", "add", f"{a4}/24", "dev", ifname)
            in_ns(ns, "ip", "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            # MTU-sized TCP segments, as a SPAN port sees them (no 64 KiB GSO frames)
            in_ns(ns, "ip", "link", "set", ifname, "gso_max_segs", "1")
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
                             "--immediate-mode",
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
    send_frames([marker_frame()])


MARKER_PORT = 9999


def marker_frame():
    """A UDP frame ending a traffic run: rows are compared up to it (spontaneous
    neighbour discovery may follow at any time)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    mac_a, mac_b = macs()
    return Ether(src=mac_a, dst=mac_b) / IP(src=A4, dst=B4) / UDP(sport=MARKER_PORT, dport=MARKER_PORT)


def until_marker(columns):
    hits = np.flatnonzero((columns["sport"] == MARKER_PORT) & (columns["dport"] == MARKER_PORT))
    assert len(hits), "the end marker was captured"
    return {k: v[:hits[0] + 1] for k, v in columns.items()}


def between_markers(columns):
    hits = np.flatnonzero((columns["sport"] == MARKER_PORT) & (columns["dport"] == MARKER_PORT))
    assert len(hits) >= 2, "start and end markers were captured"
    return {k: v[hits[0]:hits[-1] + 1] for k, v in columns.items()}


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
        kstats = cap.kernel_stats()
    finally:
        cap.close()
    want = file_rows(pcap)
    assert kstats["drops"] == 0, kstats
    assert len(want["ts_ns"]) > 25
    # the ring opened before tcpdump: compare from tcpdump's first packet on
    keep = ring["ts_ns"] >= want["ts_ns"][0]
    got = until_marker({k: v[keep] for k, v in ring.items()})
    want = until_marker(want)
    got_rows, want_rows = row_dicts(got), row_dicts(want)
    for i, (a, b) in enumerate(zip(got_rows, want_rows)):
        assert a == b, (f"row {i}: ring {a}\n tcpdump {b}\n{kstats} {stats}\n"
                        + "\n".join(f"{x['ts_ns']} {x['proto']} {x['icmp_type']} / {y['ts_ns']} {y['proto']} {y['icmp_type']}" for x, y in zip(got_rows[i-3:i+8], want_rows[i-3:i+8])))
    assert len(got_rows) == len(want_rows), (got_rows[len(want_rows):], want_rows[len(got_rows):])
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


# ---------------------------------------------------------------- filters

def kernel_view(frame):
    """The frame as a socket filter sees it: the kernel stripped the outer VLAN tag."""
    if len(frame) >= 18 and struct.unpack(">H", frame[12:14])[0] in (0x8100, 0x88A8, 0x9100):
        return frame[:12] + frame[16:]
    return frame


def default_filter_keeps(frame):
    """Reference of DEFAULT_FILTER on the kernel's view of a frame: True / False, or
    None when a byte it reads is past the captured end (BPF rejects then, in an
    order the reference does not model)."""
    try:
        def u8(i):
            return frame[i]

        def u16(i):
            return struct.unpack(">H", frame[i:i + 2])[0] if i + 2 <= len(frame) else u8(len(frame))

        at = 14
        etype = u16(12)
        if etype in (0x8100, 0x88A8, 0x9100):        # one tag still in the packet (QinQ inner)
            etype = u16(16)
            at = 18
        if etype == 0x0806:
            return True
        if etype == 0x0800:
            if u8(at + 9) != 6:
                return True
            frag = u16(at + 6)
            if frag & 0x1FFF:
                return False                          # a later fragment of TCP
            if frag & 0x3FFF == 0x2000:
                return True                           # first fragment: passed whole
            tcp = at + (u8(at) & 0xF) * 4
            flags = u8(tcp + 13)
            if flags & 0x07 or not flags & 0x10:
                return True
            payload = (u16(at + 2) - (u8(at) & 0xF) * 4 - (u8(tcp + 12) >> 4) * 4) & 0xFFFFFFFF
            return payload == 0
        if etype == 0x86DD:
            if u8(at + 6) != 6:
                return True
            flags = u8(at + 53)
            if flags & 0x07 or not flags & 0x10:
                return True
            return (u16(at + 4) - (u8(at + 52) >> 4) * 4) & 0xFFFFFFFF == 0
        return False
    except IndexError:
        return None


def shipped_frames():
    for path in sorted(p for p in naive_pcaps() if "hostile" not in p.parts):
        for event in naive.walk_pcap(path.read_bytes()):
            if event[0] == "frame" and event[1] == naive.LINKTYPE_ETHERNET:
                yield path, event[3], event[4]


def naive_pcaps():
    from fixtures_decode import PCAP_DIR
    return [p for p in PCAP_DIR.rglob("*.pcap") if p.read_bytes()[:4] in
            (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")]


def filter_figures(frames, program):
    """-> dict(packets, passed, bytes, passed_bytes) for (wire_len, frame) pairs."""
    keep = bpf.OfflineFilter(program)
    fig = dict(packets=0, passed=0, bytes=0, passed_bytes=0)
    for wire_len, frame in frames:
        fig["packets"] += 1
        fig["bytes"] += wire_len
        if keep(kernel_view(frame), wire_len):
            fig["passed"] += 1
            fig["passed_bytes"] += wire_len
    return fig


def test_default_filter_matches_its_reference_on_shipped_frames():
    """libpcap's compiled DEFAULT_FILTER decides like the reference on every shipped
    Ethernet frame (with the outer tag stripped as the kernel does)."""
    keep = bpf.OfflineFilter(bpf.compile_filter(bpf.DEFAULT_FILTER, 256))
    compared = dropped = 0
    for path, wire_len, frame in shipped_frames():
        view = kernel_view(frame)
        want = default_filter_keeps(view)
        if want is None:
            continue
        compared += 1
        got = keep(view, wire_len)
        assert got == want, f"{path.name}: filter {got}, reference {want}: {frame.hex()}"
        dropped += not got
    assert compared > 10000 and dropped > 100


def test_filter_expressions_compile_or_fail_clearly():
    prog = bpf.compile_filter("tcp port 80 or udp", 128)
    assert prog[-1] == (bpf.BPF_RET_K, 0, 0, 0) and (bpf.BPF_RET_K, 0, 0, 128) in prog
    for bad in ("tcp port", "hots 10.0.0.1", "udp and and icmp"):
        with pytest.raises(ValueError) as info:
            bpf.compile_filter(bad)
        message = str(info.value)
        assert repr(bad) in message and "does not compile" in message and "\n" not in message


def _wait_listening(addr, port, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with netns(NS_A):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(0.5)
            s.connect((addr, port))
            return
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()
    raise AssertionError(f"nothing listens on {addr}:{port}")


@pytest.fixture(scope="module")
def http_server(net, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "blob").write_bytes(os.urandom(4 << 20))
    proc = subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-m", "http.server",
                             str(HTTP_PORT), "--bind", B4, "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(B4, HTTP_PORT)
        yield f"http://{B4}:{HTTP_PORT}/blob"
    finally:
        proc.kill()
        proc.wait()


def test_default_filter_drops_bulk_data_keeps_probes(net, http_server, tmp_path):
    """A real 4 MiB curl download plus scans: the default filter drops the flow's data
    segments in the kernel and keeps SYN/FIN/RST, bare ACKs, UDP and ICMP."""
    pcap = tmp_path / "bulk.pcap"
    full = open_ring()
    kept = open_ring(bpf=bpf.compile_filter(bpf.DEFAULT_FILTER, 256))
    try:
        readers = [Reader(full), Reader(kept)]
        with tcpdump(pcap, snaplen=128):
            send_frames([marker_frame()])          # both rings are open from here on
            in_ns(NS_A, "curl", "-s", "-o", "/dev/null", http_server, timeout=60)
            run_mixed_traffic()
            time.sleep(0.2)
        (all_cols, _), (kept_cols, kept_stats) = [r.finish() for r in readers]
        kernel_full, kernel_kept = full.kernel_stats(), kept.kernel_stats()
    finally:
        full.close()
        kept.close()
    all_rows, kept_rows = row_dicts(between_markers(all_cols)), row_dicts(between_markers(kept_cols))
    # two sockets may stamp one packet microseconds apart (each takes the time
    # when it gets its copy): compare rows without their time
    def untimed(rows):
        return collections.Counter(tuple(v for k, v in r.items() if k != "ts_ns") for r in rows)
    all_set, kept_set = untimed(all_rows), untimed(kept_rows)
    assert not kept_set - all_set, "kept rows are rows of the traffic"
    dropped = [dict(zip([k for k in COLUMN_NAMES if k != "ts_ns"], key))
               for key in (all_set - kept_set).elements()]
    # what was dropped: TCP with ACK, no SYN/RST/FIN, carrying data
    assert len(dropped) > 100
    wrong = [r for r in dropped
             if not (r["proto"] == 6 and r["tcp_flags"] & 0x10 and not r["tcp_flags"] & 0x07)]
    assert not wrong, (wrong[:3], kernel_full, kernel_kept)
    assert all(r["wire_len"] > 66 for r in dropped)
    # what was kept: every SYN / FIN / RST / UDP / ICMP row of the traffic
    needed = [r for r in all_rows if r["proto"] in (1, 17, 58) or (
        r["proto"] == 6 and (r["tcp_flags"] & 0x07 or not r["tcp_flags"] & 0x10))]
    assert not untimed(needed) - kept_set, "every SYN/FIN/RST/UDP/ICMP row was kept"
    assert {r["proto"] for r in kept_rows} >= {1, 6, 17, 58}
    assert any(r["proto"] == 6 and r["tcp_flags"] == 0x10 for r in kept_rows), "bare ACKs kept"
    assert kernel_kept["packets"] < kernel_full["packets"] / 2
    # the figures for the README: the live filter agrees with libpcap applying it offline
    frames = [(e[3], e[4]) for e in naive.walk_pcap(pcap.read_bytes()) if e[0] == "frame"]
    fig = filter_figures(frames, bpf.compile_filter(bpf.DEFAULT_FILTER, 256))
    print(f"\ncurl 4 MiB + scans: {fig}  live: {kernel_kept} of {kernel_full}")
    assert fig["passed"] < fig["packets"] / 2 and fig["passed_bytes"] < fig["bytes"] / 10
    assert kept_stats["records"] == kernel_kept["packets"]


# ---------------------------------------------------------------- fanout

def rule_frames():
    """One frame per rule of the fanout key, from scanners of both parities."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6,
                                    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                    IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    mac_a, mac_b = macs()
    eth = Ether(src=mac_a, dst=mac_b)
    out = []
    for n, s in enumerate(SCANNERS4[:2]):
        base = 41000 + 100 * n
        ip_out, ip_in = IP(src=s, dst=B4), IP(src=B4, dst=s)
        out += [
            eth / ip_out / TCP(sport=base + 1, dport=81, flags="S"),
            eth / ip_in / TCP(sport=81, dport=base + 2, flags="SA"),
            eth / ip_in / TCP(sport=82, dport=base + 3, flags="RA"),
            eth / ip_in / TCP(sport=83, dport=base + 4, flags="R"),
            eth / ip_out / TCP(sport=base + 5, dport=84, flags="F"),
            eth / ip_out / TCP(sport=base + 6, dport=85, flags=""),
            eth / ip_out / TCP(sport=base + 7, dport=86, flags="FPU"),
            eth / ip_out / TCP(sport=base + 8, dport=87, flags="A"),
            eth / ip_in / TCP(sport=88, dport=base + 9, flags="PA") / b"data",
            eth / ip_out / UDP(sport=base + 10, dport=53),
            eth / ip_in / UDP(sport=53, dport=base + 11),
            eth / ip_out / UDP(sport=500 + n, dport=500 + n),
            eth / ip_out / ICMP(type=8, id=base),
            eth / ip_in / ICMP(type=0, id=base),
            eth / ip_out / ICMP(type=13, id=base),
            eth / ip_in / ICMP(type=3, code=3) / IP(src=s, dst=B4) / UDP(sport=base + 12, dport=9),
            eth / Dot1Q(vlan=7) / ip_out / TCP(sport=base + 13, dport=89, flags="S"),
            eth / IPv6(src=f"::ffff:{s}", dst=B6) / TCP(sport=base + 14, dport=90, flags="S"),
        ]
    for n, s in enumerate((SCANNER6, "fd99::12")):
        base = 42000 + 100 * n
        out += [
            eth / IPv6(src=s, dst=B6) / TCP(sport=base + 1, dport=91, flags="S"),
            eth / IPv6(src=B6, dst=s) / TCP(sport=91, dport=base + 2, flags="SA"),
            eth / IPv6(src=s, dst=B6) / UDP(sport=base + 3, dport=53),
            eth / IPv6(src=s, dst=B6) / ICMPv6EchoRequest(id=base),
            eth / IPv6(src=B6, dst=s) / ICMPv6EchoReply(id=base),
            eth / IPv6(src=s, dst=B6) / ICMPv6ND_NS(tgt=B6),
            # behind extension headers: keyed as without them (an evasion otherwise);
            # to an address of odd parity, so the symmetric key would land elsewhere
            eth / IPv6(src=s, dst=C6) / IPv6ExtHdrHopByHop() / TCP(sport=base + 4, dport=92,
                                                                 flags="S"),
            eth / IPv6(src=C6, dst=s) / IPv6ExtHdrDestOpt() / TCP(sport=92, dport=base + 5,
                                                                flags="SA"),
            eth / IPv6(src=s, dst=C6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
            / UDP(sport=base + 6, dport=53),
            eth / IPv6(src=s, dst=C6) / IPv6ExtHdrFragment(offset=0, m=1, id=base)
            / TCP(sport=base + 7, dport=93, flags="S"),
            eth / IPv6(src=C6, dst=s) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
            / ICMPv6EchoReply(id=base + 8),
        ]
    out.append(eth / ARP(psrc=A4, pdst=B4))
    return out


def row_key(r):
    return (r["src_lo"], r["dst_lo"], r["sport"], r["dport"], r["proto"], r["tcp_flags"],
            r["icmp_type"], r["inner_sport"], r["pkt_flags"])


def read_fanout_group(traffic, group_id):
    caps = []
    try:
        for _ in range(2):                          # joined in order: member 0, member 1
            caps.append(open_ring(bpf=bpf.compile_filter("not (icmp6 and "
                                                         "ip6[40] >= 130 and ip6[40] != 135)", 256),
                                  fanout=FanoutSpec(group_id, 2)))
        readers = [Reader(c) for c in caps]
        traffic()
        send_frames([marker_frame()])
        results = [r.finish()[0] for r in readers]
    finally:
        for c in caps:
            c.close()
    return results


def test_fanout_key_program_rule_by_rule(net):
    """Each crafted frame lands on member (reference key % 2), and on that one only."""
    from scapy.layers.l2 import Ether
    frames = rule_frames()
    results = read_fanout_group(lambda: send_frames(frames), 0x7A01)
    where = {}
    for member, cols in enumerate(results):
        for r in row_dicts(cols):
            where.setdefault(row_key(r), []).append(member)
    checked = ext_checked = 0
    for f in frames:
        view = bytes(f)
        if f.haslayer("Dot1Q"):
            view = view[:12] + view[16:]         # as the kernel sees it: the tag stripped
        rows, _ = naive.decode_frame(bytes(f), naive.LINKTYPE_ETHERNET, 0, len(view))
        assert rows is not None                    # ARP too: decoded, keyed 0
        want = naive.fanout_key(view) % 2
        if f.haslayer("IPv6ExtHdrHopByHop") or f.haslayer("IPv6ExtHdrDestOpt") or f.haslayer(
                "IPv6ExtHdrFragment"):
            ext_checked += 1             # the old symmetric key would have put it elsewhere
            assert want != naive.fanout_key(view, walk_extension_headers=False) % 2
        # (b's own answers to the crafted probes can give equal rows: same rule)
        got = set(where.get(row_key(rows), ()))
        assert got == {want}, f"{Ether(bytes(f)).summary()}: on members {got}, key says {want}"
        checked += 1
    assert checked == len(frames) and ext_checked == 10
    assert {m for ms in where.values() for m in ms} == {0, 1}


def test_fanout_keeps_each_scanner_on_one_worker(net):
    """Real scans from three IPv4 and one IPv6 scanner address through a 2-member group:
    each scanner's probes and the answers to them are all on one member."""
    def traffic():
        procs = [subprocess.Popen(["ip", "netns", "exec", NS_A, *cmd], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for cmd in (
            ["nmap", "-n", "-Pn", "-sS", "--max-retries", "0", "-e", IF_A, "-S", SCANNERS4[0],
             "-p", f"1-60,{OPEN_PORT}", B4],
            ["nmap", "-n", "-Pn", "-sS", "--max-retries", "0", "-e", IF_A, "-S", SCANNERS4[1],
             "-p", f"100-160,{OPEN_PORT}", B4],
            ["nmap", "-n", "-Pn", "-sU", "--max-retries", "0", "-e", IF_A, "-S", SCANNERS4[2],
             "-p", "200-210", B4],
            ["nping", "--icmp", "-S", SCANNERS4[1], "-c", "3", "--delay", "20ms", B4],
            ["nmap", "-6", "-n", "-Pn", "-sS", "--max-retries", "0", "-e", IF_A, "-S", SCANNER6,
             "-p", f"1-40,{OPEN_PORT}", B6])]
        for p in procs:
            assert p.wait(60) == 0
    results = read_fanout_group(traffic, 0x7A02)
    members = {}
    counts = collections.Counter()
    for member, cols in enumerate(results):
        for r in row_dicts(cols):
            if r["proto"] not in (1, 6, 17, 58) or (r["proto"] == 58 and 133 <= r["icmp_type"] <= 137):
                continue                  # neighbour discovery is neither probe nor answer
            for scanner in (*SCANNERS4, SCANNER6):
                lo = addr_lo(scanner)
                probe = r["src_lo"] == lo and not (r["proto"] == 6 and r["tcp_flags"] & 0x04)
                answer = r["dst_lo"] == lo
                if probe or answer:
                    members.setdefault(scanner, set()).add(member)
                    counts[scanner, "probe" if probe else "answer"] += 1
    for scanner in (*SCANNERS4, SCANNER6):
        assert counts[scanner, "probe"] > 5 and counts[scanner, "answer"] > 5, counts
        assert len(members[scanner]) == 1, (scanner, members[scanner])
    assert {m for ms in members.values() for m in ms} == {0, 1}


# ---------------------------------------------------------------- start-up errors

def setup_error(**kw):
    ifname = kw.pop("ifname", IF_B)
    with netns(NS_B), pytest.raises(CaptureSetupError) as info:
        RingCapture(ifname, **kw)
    err = info.value
    assert "\n" not in str(err)
    return err


def test_startup_errors_name_the_problem(net):
    err = setup_error(ifname=f"{PREFIX}-nope")
    assert err.kind == "no_interface" and err.exit_code == 2
    assert f"{PREFIX}-nope does not exist" in str(err) and IF_B in str(err) and "lo" in str(err)

    down_a, down_b = f"{PREFIX}-d", f"{PREFIX}-e"
    in_ns(NS_B, "ip", "link", "add", down_a, "type", "veth", "peer", "name", down_b)
    try:
        err = setup_error(ifname=down_a)
        assert err.kind == "interface_down" and err.exit_code == 1
        assert f"interface {down_a} is down" in str(err)
    finally:
        in_ns(NS_B, "ip", "link", "del", down_a, check=False)

    err = setup_error(ring_bytes=1 << 50, block_bytes=1 << 20)
    assert err.kind == "ring_size" and "ring_bytes" in str(err) and "MiB" in str(err)
    err = setup_error(ring_bytes=1 << 31, block_bytes=1 << 31)
    assert err.kind == "ring_size" and "the kernel refused" in str(err), str(err)
    err = setup_error(block_bytes=3 << 12)
    assert err.kind == "bad_setting" and "power of two" in str(err)
    err = setup_error(snaplen=10)
    assert err.kind == "bad_setting" and "snap length" in str(err)

    members = [open_ring(fanout=FanoutSpec(0x7A03, 2)) for _ in range(2)]
    try:
        err = setup_error(fanout=FanoutSpec(0x7A03, 2), **SMALL_RING)
        assert err.kind == "bad_setting" and "fanout group" in str(err)
    finally:
        for m in members:
            m.close()


def test_startup_without_privilege_says_which_capability(net):
    """An unprivileged user (uid nobody, no capabilities) gets the CAP_NET_RAW message."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child: drop to nobody, try, report
        code = 1
        try:
            os.close(rfd)
            with netns(NS_B):
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                try:
                    RingCapture(IF_B, **SMALL_RING)
                    msg = "opened"
                except CaptureSetupError as exc:
                    msg = f"{exc.kind}|{exc.exit_code}|{exc}"
            os.write(wfd, msg.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        msg = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0, msg
    kind, code, text = msg.split("|", 2)
    assert kind == "permission" and code == "1" and "CAP_NET_RAW" in text, msg


# ---------------------------------------------------------------- libpcap fallback

def test_libpcap_fallback_gives_the_ring_rows(net):
    from sensor.capture.live_pcap import LivePcapCapture
    ring = open_ring(bpf=bpf.filter_program(None, 256))
    with netns(NS_B):
        fallback = LivePcapCapture(IF_B, snaplen=256, filter_expression=bpf.DEFAULT_FILTER)
    try:
        readers = [Reader(ring), Reader(fallback)]
        run_mixed_traffic()
        (ring_cols, _), (pcap_cols, pcap_stats) = [r.finish() for r in readers]
        assert fallback.kernel_stats()["packets"] >= len(pcap_cols["ts_ns"])
    finally:
        ring.close()
        fallback.close()
    got = row_dicts(until_marker(pcap_cols))
    want = row_dicts(until_marker(ring_cols))
    n = min(len(got), len(want))
    # both opened before the traffic; a packet of neighbour discovery may come first
    start_got = next(i for i, r in enumerate(got) if r["ts_ns"] >= want[0]["ts_ns"]) if n else 0
    got = got[start_got:]
    for i, (a, b) in enumerate(zip(got, want)):
        assert {**a, "ts_ns": 0} == {**b, "ts_ns": 0}, f"row {i}: libpcap {a}\n ring {b}"
    assert len(got) == len(want) > 25
    assert sorted({r["vlan"] for r in got if r["pkt_flags"] & naive.PF_HAS_VLAN}) == [100, 300, 4001]
    assert pcap_stats["records"] == pcap_stats["decoded"] + sum(pcap_stats[k] for k in naive.SKIP_REASONS)


def test_libpcap_fallback_startup_errors(net):
    from sensor.capture.live_pcap import LivePcapCapture
    with netns(NS_B), pytest.raises(CaptureSetupError) as info:
        LivePcapCapture(f"{PREFIX}-nope")
    assert info.value.kind == "no_interface" and IF_B in str(info.value)


def test_operator_filter_expressions_work_live(net):
    """--filter style expressions compiled for the interface: 'vlan 100' matches the
    tag the kernel stripped (as with tcpdump there), 'udp' keeps only UDP."""
    from sensor.capture.live_pcap import LivePcapCapture
    with netns(NS_B):
        vlan_prog = bpf.filter_program("vlan 100", 256, ifname=IF_B)
        udp_prog = bpf.compile_filter("udp", 256, ifname=IF_B)
        fallback = LivePcapCapture(IF_B, filter_expression="vlan 100")
        with pytest.raises(CaptureSetupError) as bad:
            LivePcapCapture(IF_B, filter_expression="vlan and and")
        with pytest.raises(ValueError) as info:
            bpf.filter_program("vlan and and", 256, ifname=IF_B)
    assert bad.value.kind == "bad_setting" and "'vlan and and' does not compile" in str(bad.value)
    assert "'vlan and and' does not compile" in str(info.value)
    # compiled for no interface, 'vlan 100' looks for a tag still in the packet only
    assert vlan_prog != bpf.compile_filter("vlan 100", 256)
    vlan_cap, udp_cap = open_ring(bpf=vlan_prog), open_ring(bpf=udp_prog)
    try:
        readers = [Reader(vlan_cap), Reader(udp_cap), Reader(fallback)]
        send_frames(crafted_frames() + [marker_frame()])
        in_ns(NS_A, "nping", "--tcp", "-p", "22", "-c", "2", "--delay", "20ms", B4, timeout=30)
        (vlan_cols, _), (udp_cols, _), (fallback_cols, _) = [r.finish() for r in readers]
    finally:
        vlan_cap.close()
        udp_cap.close()
        fallback.close()
    assert [(r["vlan"], r["dport"]) for r in row_dicts(fallback_cols)] == [(100, 22)]
    vlan_rows, udp_rows = row_dicts(vlan_cols), row_dicts(udp_cols)
    assert [(r["vlan"], r["proto"], r["dport"]) for r in vlan_rows] == [(100, 6, 22)]
    assert udp_rows and all(r["proto"] == 17 for r in udp_rows)
    assert {r["dport"] for r in udp_rows} >= {53, 161, MARKER_PORT}


def test_link_flap_while_capturing(net):
    """The link goes down and up under a running capture: reads keep returning
    within their timeout, the error is counted, and capture resumes."""
    cap = open_ring(bpf=bpf.compile_filter("udp port 161", 65535), snaplen=128)
    batch, stats = PacketBatch(64), new_stats()
    try:
        in_ns(NS_B, "ip", "link", "set", IF_B, "down")
        for _ in range(3):
            t0 = time.monotonic()
            assert cap.read(batch, stats, 0.2) == 0
            assert time.monotonic() - t0 < 1.0
        assert cap.link_errors >= 1 and "down" in cap.last_error
    finally:
        in_ns(NS_B, "ip", "link", "set", IF_B, "up")
        # a link going down drops its static IPv6 addresses (keep_addr_on_down=0)
        in_ns(NS_B, "ip", "-6", "addr", "replace", f"{B6}/64", "dev", IF_B, "nodad")
    try:
        deadline = time.monotonic() + 10
        got = 0
        while not got and time.monotonic() < deadline:   # until the veth carries again
            send_frames(crafted_frames()[3:])
            got = cap.read(batch, stats, 0.3)
        assert got == 1 and batch.dport[0] == 161
        assert stats[0] == 1 and cap.kernel_stats()["packets"] >= 1
    finally:
        cap.close()


def test_no_packet_reaches_the_ring_before_the_filter(net):
    """Rings opened while TCP floods the link, with a UDP-only filter: not one TCP
    row (the filter is attached before the socket is bound)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    mac_a, mac_b = macs()
    syn = bytes(Ether(src=mac_a, dst=mac_b) / IP(src=A4, dst=B4) / TCP(sport=40999, dport=23, flags="S"))
    stop, sent = threading.Event(), [0]

    def flood():
        with netns(NS_A):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        with s:
            s.bind((IF_A, 0))
            while not stop.is_set():
                for _ in range(50):
                    s.send(syn)
                sent[0] += 50
                time.sleep(0.001)
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(0.2)
        program = bpf.compile_filter("udp", 256)
        protos = collections.Counter()
        for _ in range(3):
            for kw in (dict(bpf=program), dict(bpf=program, fanout=FanoutSpec(0x7A04, 1))):
                before = sent[0]
                cap = open_ring(**kw)
                try:
                    send_frames([marker_frame()])
                    batch, stats = PacketBatch(4096), new_stats()
                    deadline = time.monotonic() + 0.3
                    while time.monotonic() < deadline:
                        n = cap.read(batch, stats, 0.1)
                        protos.update(batch.proto[:n].tolist())
                finally:
                    cap.close()
                assert sent[0] > before, "the flood ran while the ring was opened"
    finally:
        stop.set()
        flooder.join(5)
    assert protos[17] >= 6 and set(protos) == {17}, protos
