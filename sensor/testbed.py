"""Network namespaces for the live tests and the live benchmark: two hosts on a
veth pair, all deleted afterwards. Traffic stays inside namespaces made here.

``Link(prefix)`` creates ``<prefix>-a`` (10.88.0.1/24, fd88::1/64) and
``<prefix>-b`` (10.88.0.2/24, fd88::2/64) joined by a veth pair ``<prefix>a`` /
``<prefix>b``; ``link.run(ns, argv)`` and ``link.popen(ns, argv)`` run a
command inside one of them. ``close()`` kills what still runs there and
deletes both namespaces; a test fixture calls it whatever happens.
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


class Link:
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
