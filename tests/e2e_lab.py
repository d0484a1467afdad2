"""The end-to-end table's laboratory: a routed network of namespaces, real
services on the target, a tcpdump capture of each row and its replay.

    scan 10.91.0.1 --- r1 --- r2 --- target 10.91.2.10 (.11, .12)
                  .0.254 .1.1 .1.2 .2.1
                                   |     10.91.3.0/24: every address is the
                                   |     target's (a local route), 445 open on .10 .20 .30
                                   +---- 10.91.9.0/24: blackhole (drops everything)

Both routers forward (ip_forward=1) and answer traceroute (ICMP time
exceeded, no rate limit); the target answers closed ports at once (no ICMP
rate limit) and runs ``serve`` below. The capture is taken on the scanner's
own link, as a sensor on its access port would see it.

``python tests/e2e_lab.py serve READY_FILE`` runs the target's services:
TCP 21 (FTP control, passive mode), 22 and 25 (a banner), 80 (HTTP), 443
(accept, close), UDP 7 (echo) and 53 (DNS: NXDOMAIN for every query).
``python tests/e2e_lab.py ftp|dns|monitor|nat ...`` are the benign clients.
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCANNER = "10.91.0.1"
TARGET = "10.91.2.10"
SERVERS = ("10.91.2.10", "10.91.2.11", "10.91.2.12")
SWEEP_NET = "10.91.3"             # routed /24, answered by the target
SWEEP_OPEN = ("10.91.3.10", "10.91.3.20", "10.91.3.30")
DROPPED = "10.91.9.5"             # in the blackholed 10.91.9.0/24
OPEN_TCP = (21, 22, 25, 80, 443)
OPEN_UDP = (7, 53)
SNAPLEN = 256

BANNERS = {22: b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", 25: b"220 target ESMTP ready\r\n"}
HTTP_BODY = b"hello from the e2e target\n"
HTTP_RESPONSE = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(HTTP_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + HTTP_BODY)


# ------------------------------------------------------------------ topology

class Lab:
    """The routed network above; ``close()`` deletes every namespace."""

    def __init__(self, prefix):
        from sensor.testbed import Topology
        self.prefix = prefix
        self.top = t = Topology(prefix)
        self.dev = {"scan": f"{prefix}s0", "r1a": f"{prefix}r1a", "r1b": f"{prefix}r1b",
                    "r2a": f"{prefix}r2a", "r2b": f"{prefix}r2b", "tgt": f"{prefix}t0"}
        self.services = None
        try:
            for name in ("scan", "r1", "r2", "target"):
                t.add_ns(name)
            t.link("scan", "r1", self.dev["scan"], self.dev["r1a"], "10.91.0.1/24", "10.91.0.254/24")
            t.link("r1", "r2", self.dev["r1b"], self.dev["r2a"], "10.91.1.1/24", "10.91.1.2/24")
            t.link("r2", "target", self.dev["r2b"], self.dev["tgt"], "10.91.2.1/24", "10.91.2.10/24")
            for extra in SERVERS[1:]:
                t.run("target", ["ip", "addr", "add", f"{extra}/24", "dev", self.dev["tgt"]])
            t.run("scan", ["ip", "route", "add", "default", "via", "10.91.0.254"])
            t.run("target", ["ip", "route", "add", "default", "via", "10.91.2.1"])
            t.run("target", ["ip", "route", "add", "local", f"{SWEEP_NET}.0/24", "dev", "lo"])
            for net in ("10.91.2.0/24", f"{SWEEP_NET}.0/24", "10.91.9.0/24"):
                t.run("r1", ["ip", "route", "add", net, "via", "10.91.1.2"])
            t.run("r2", ["ip", "route", "add", "10.91.0.0/24", "via", "10.91.1.1"])
            t.run("r2", ["ip", "route", "add", f"{SWEEP_NET}.0/24", "via", TARGET])
            t.run("r2", ["ip", "route", "add", "blackhole", "10.91.9.0/24"])
            for name in ("r1", "r2"):
                t.router(name)
            for name in ("r1", "r2", "target"):
                for setting in ("net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000",
                                "net.ipv4.icmp_msgs_burst=100000"):
                    t.sysctl(name, setting)
            self.router_mac = t.mac("r1", self.dev["r1a"])
            self._start_services()
        except Exception:
            self.close()
            raise

    def _start_services(self):
        ready = pathlib.Path(f"/tmp/{self.prefix}-services.ready")
        ready.unlink(missing_ok=True)
        self.services = self.top.popen("target", [sys.executable, str(pathlib.Path(__file__)),
                                                  "serve", str(ready)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.services.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("target services did not start: "
                                   + self.services.stderr.read().decode(errors="replace"))
            time.sleep(0.05)
        ready.unlink()
        # warm the ARP caches along the path, so the first probe of a row is not
        # held back or lost while a router resolves the next hop
        for host in (*SERVERS, f"{SWEEP_NET}.1"):
            self.top.run("scan", ["curl", "-s", "-o", "/dev/null", "-m", "3", f"http://{host}/"],
                         check=False)

    def capture(self, path):
        return Capture(self, path)

    def run(self, argv, timeout, cwd=None):
        """Run one tool in the scanner's namespace; returns CompletedProcess."""
        return self.top.run("scan", argv, check=False, timeout=timeout, cwd=cwd)

    def close(self):
        self.top.close()

    def left_behind(self):
        return self.top.left_behind()


class Capture:
    """tcpdump on the scanner's link while the block runs (``with``)."""

    def __init__(self, lab, path):
        self.lab, self.path = lab, pathlib.Path(path)
        self.proc = None

    def __enter__(self):
        # --immediate-mode: without it the packets of the last ring block
        # (up to 1 s) are lost when tcpdump is stopped
        self.proc = self.lab.top.popen(
            "scan", ["tcpdump", "-i", self.lab.dev["scan"], "-n", "-s", str(SNAPLEN), "-U",
                     "--immediate-mode", "-w", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode(errors="replace")     # "listening on ..."
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)                    # last answers, ICMP errors
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return False


# ------------------------------------------------------------------ services

def _serve_tcp(sock, handler):
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _listener(addr, port, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(512)
    return s


def _closing(conn):
    conn.close()


def _banner(port):
    def handle(conn):
        try:
            conn.sendall(BANNERS[port])
            conn.settimeout(2.0)
            conn.recv(1024)
        except OSError:
            pass
        finally:
            conn.close()
    return handle


def _http(conn):
    try:
        conn.settimeout(2.0)
        buf = b""
        while b"\r\n\r\n" not in buf and len(buf) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        conn.sendall(HTTP_RESPONSE)
    except OSError:
        pass
    finally:
        conn.close()


def _ftp(conn):
    """FTP control connection: 220, then PASV / RETR / QUIT (the data
    connection goes to a fresh ephemeral port for every PASV, as vsftpd does)."""
    conn.settimeout(5.0)
    data_sock = None
    try:
        conn.sendall(b"220 (vsFTPd 3.0.3)\r\n")
        f = conn.makefile("rb")
        for line in f:
            cmd = line.strip().split(b" ")[0].upper()
            if cmd == b"PASV":
                data_sock = _listener(conn.getsockname()[0], 0)
                h = conn.getsockname()[0].replace(".", ",")
                p = data_sock.getsockname()[1]
                conn.sendall(f"227 Entering Passive Mode ({h},{p >> 8},{p & 255})\r\n".encode())
            elif cmd == b"RETR" and data_sock is not None:
                conn.sendall(b"150 sending\r\n")
                data_sock.settimeout(5.0)
                d, _ = data_sock.accept()
                d.sendall(b"x" * 2000)
                d.close()
                data_sock.close()
                data_sock = None
                conn.sendall(b"226 done\r\n")
            elif cmd == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"200 ok\r\n")
    except OSError:
        pass
    finally:
        if data_sock is not None:
            data_sock.close()
        conn.close()


def _dns_reply(data):
    """The query back with QR=1, RA=1, RCODE=NXDOMAIN (question kept)."""
    if len(data) < 12:
        return data
    return data[:2] + bytes([0x80 | (data[2] & 0x79), 0x83]) + data[4:6] + bytes(6) + data[12:]


def _serve_udp(sock, reply):
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(reply(data), peer)
        except OSError:
            continue


def serve(ready):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    handlers = {21: _ftp, 22: _banner(22), 25: _banner(25), 80: _http, 443: _closing}
    threads = [threading.Thread(target=_serve_tcp, args=(_listener("0.0.0.0", port), h),
                                daemon=True) for port, h in handlers.items()]
    threads += [threading.Thread(target=_serve_tcp, args=(_listener(a, 445), _closing),
                                 daemon=True) for a in SWEEP_OPEN]
    threads.append(threading.Thread(target=_serve_udp, args=(
        _listener("0.0.0.0", 7, socket.SOCK_DGRAM), lambda d: d), daemon=True))
    threads.append(threading.Thread(target=_serve_udp, args=(
        _listener("0.0.0.0", 53, socket.SOCK_DGRAM), _dns_reply), daemon=True))
    for t in threads:
        t.start()
    pathlib.Path(ready).write_text(f"{os.getpid()}\n")
    signal.pause()


# ------------------------------------------------------------ benign clients

def ftp_client(transfers):
    """One FTP session with ``transfers`` passive-mode downloads."""
    c = socket.create_connection((TARGET, 21), timeout=5)
    f = c.makefile("rb")
    f.readline()
    for _ in range(transfers):
        c.sendall(b"PASV\r\n")
        reply = f.readline().decode()
        nums = reply[reply.index("(") + 1:reply.index(")")].split(",")
        port = int(nums[4]) << 8 | int(nums[5])
        c.sendall(b"RETR file.bin\r\n")
        d = socket.create_connection((TARGET, port), timeout=5)
        f.readline()                                   # 150
        while d.recv(4096):
            pass
        d.close()
        f.readline()                                   # 226
    c.sendall(b"QUIT\r\n")
    f.readline()
    c.close()


def dns_client(queries):
    """A stub resolver: each query from a fresh source port, to three servers."""
    import random
    rng = random.Random(11)
    for i in range(queries):
        name = f"host{i}.example".encode()
        q = (rng.randrange(65536).to_bytes(2, "big") + b"\x01\x00\x00\x01" + bytes(6)
             + b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2.0)
        s.sendto(q, (SERVERS[i % len(SERVERS)], 53))
        s.recvfrom(4096)
        s.close()


def monitor_client(rounds, interval_s):
    """A monitoring host: every ``interval_s`` a TCP check of 5 services on each
    of three hosts, all succeeding."""
    for r in range(rounds):
        for host in SERVERS:
            for port in OPEN_TCP:
                socket.create_connection((host, port), timeout=3).close()
        if r + 1 < rounds:
            time.sleep(interval_s)


def nat_client(connections):
    """Many clients behind one address: successful connections from one
    address to several servers and ports (HTTP requests and banner reads)."""
    import random
    rng = random.Random(7)
    for _ in range(connections):
        host, port = rng.choice(SERVERS), rng.choice((22, 25, 80, 443))
        s = socket.create_connection((host, port), timeout=3)
        if port == 80:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if port != 443:
            s.settimeout(3)
            s.recv(4096)
        s.close()


def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "serve":
        serve(args[0])
    elif cmd == "ftp":
        ftp_client(int(args[0]))
    elif cmd == "dns":
        dns_client(int(args[0]))
    elif cmd == "monitor":
        monitor_client(int(args[0]), float(args[1]))
    elif cmd == "nat":
        nat_client(int(args[0]))
    else:
        sys.exit(f"e2e_lab.py: unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
