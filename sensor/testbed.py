"""Network namespaces for the live tests and the live benchmark: two hosts on a
veth pair, all deleted afterwards. Traffic stays inside namespaces made here.

``Link(prefix)`` creates ``<prefix>-a`` (10.88.0.1/24, fd88::1/64) and
``<prefix>-b`` (10.88.0.2/24, fd88::2/64) joined by a veth pair ``<prefix>a`` /
``<prefix>b``; ``link.run(ns, argv)`` and ``link.popen(ns, argv)`` run a
command inside one of them. ``close()`` kills what still runs there and
deletes both namespaces; a test fixture calls it whatever happens.

``Topology(prefix)`` is the general form for the end-to-end table: any number
of namespaces (``add_ns(name)`` makes ``<prefix>-<name>``), veth links between
them (``link(a, b, addr_a, addr_b)``, interfaces ``<prefix><a>`` style names
chosen by the caller), forwarding routers (``router(name)``) and routes; the
same ``run``/``popen``/``close``/``left_behind`` as ``Link``.
"""
import os
import shutil
import signal
import subprocess


def why_not_runnable(tools=("ip",)):
    """None when live tests can run here, else the reason to skip."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = f"nsprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class _Namespaces:
    """What Link and Topology share: ``self.ns`` (name -> namespace) and the
    processes started in them (``self.procs``), run, popen, close, left_behind."""

    def argv(self, side, argv):
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def run(self, side, argv, check=True, timeout=120, **kw):
        return subprocess.run(self.argv(side, argv), capture_output=True, text=True,
                              check=check, timeout=timeout, **kw)

    def popen(self, side, argv, **kw):
        proc = subprocess.Popen(self.argv(side, argv), **kw)
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in self.ns.values():
            r = _ip("netns", "pids", ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)

    def left_behind(self):
        out = _ip("netns", "list", check=False).stdout
        names = {line.split()[0] for line in out.splitlines() if line.strip()}
        return sorted(names & set(self.ns.values()))


class Link(_Namespaces):
    ADDR = {"a": ("10.88.0.1", "fd88::1"), "b": ("10.88.0.2", "fd88::2")}

    def __init__(self, prefix):
        self.prefix = prefix
        self.ns = {side: f"{prefix}-{side}" for side in "ab"}
        self.dev = {side: f"{prefix}{side}" for side in "ab"}
        self.procs = []
        try:
            for side in "ab":
                _ip("netns", "add", self.ns[side])
                self.run(side, ["ip", "link", "set", "lo", "up"])
            _ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type", "veth",
                "peer", "name", self.dev["b"], "netns", self.ns["b"])
            for side in "ab":
                v4, v6 = self.ADDR[side]
                self.run(side, ["ip", "addr", "add", f"{v4}/24", "dev", self.dev[side]])
                self.run(side, ["ip", "addr", "add", f"{v6}/64", "dev", self.dev[side],
                                "nodad"])
                self.run(side, ["ip", "link", "set", self.dev[side], "up"])
        except Exception:
            self.close()
            raise


class Topology(_Namespaces):
    """Several namespaces joined by veth pairs; ``close()`` deletes them all."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.ns = {}
        self.procs = []

    def add_ns(self, name):
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        self.ns[name] = ns
        self.run(name, ["ip", "link", "set", "lo", "up"])
        return ns

    def link(self, a, b, dev_a, dev_b, addr_a=None, addr_b=None):
        """A veth pair ``dev_a`` (in ``a``) -- ``dev_b`` (in ``b``), both up;
        ``addr_*`` are CIDR strings (or None)."""
        for dev in (dev_a, dev_b):
            if len(dev) > 15:
                raise ValueError(f"interface name {dev!r} is longer than 15 characters")
        _ip("link", "add", dev_a, "netns", self.ns[a], "type", "veth",
            "peer", "name", dev_b, "netns", self.ns[b])
        for side, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            if addr:
                self.run(side, ["ip", "addr", "add", addr, "dev", dev])
            self.run(side, ["ip", "link", "set", dev, "up"])

    def router(self, name):
        """Make ``name`` forward IPv4 between its links."""
        self.run(name, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def sysctl(self, name, setting):
        self.run(name, ["sysctl", "-q", "-w", setting])

    def mac(self, name, dev):
        out = self.run(name, ["cat", f"/sys/class/net/{dev}/address"]).stdout
        return out.strip()

