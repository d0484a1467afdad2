"""A real rsyslogd as a test-local collector on loopback high ports.

``Collector(workdir, kind)`` writes a config and runs ``rsyslogd -n -f CONF -i
PIDFILE`` (foreground, its own pid file, no system inputs: it never touches
/dev/log or the journal). ``kind``:

* ``"plain"``: imudp and imtcp on one port number (imtcp takes octet-counted
  and LF-framed messages on the same connection: SupportOctetCountedFraming
  is on by default and detected per frame);
* ``"tls"``: imtcp with the gtls stream driver (TLS, anonymous client auth),
  with a server certificate signed by a CA made by ``make_pki``.

Every message is written as one JSON line with the properties rsyslog's own
parser found: ``pri``, ``hostname``, ``app_name``, ``procid``, ``msgid``,
``structured_data``, ``msg``, ``rawmsg``, ``inputname``. ``stop()`` and
``start()`` again reuse the same port. ``netns=NAME`` runs rsyslogd inside a
network namespace (``ip netns exec``), listening on that namespace's loopback:
the live daemon's tests put it beside the daemon.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd"
                                        if os.path.exists("/usr/sbin/rsyslogd") else None)
GTLS = any(os.path.exists(os.path.join(d, "lmnsd_gtls.so")) for d in
           ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog",
            "/usr/lib/rsyslog", "/usr/lib64/rsyslog"))

FIELDS = [("pri", "pri"), ("hostname", "hostname"), ("app-name", "app_name"),
          ("procid", "procid"), ("msgid", "msgid"), ("structured-data", "structured_data"),
          ("msg", "msg"), ("rawmsg", "rawmsg"), ("inputname", "inputname")]


def require_rsyslog(tls=False):
    if RSYSLOGD is None:
        pytest.skip("rsyslogd not installed (Debian package rsyslog)")
    if tls and not GTLS:
        pytest.skip("rsyslog TLS driver missing (Debian package rsyslog-gnutls)")
    if tls and shutil.which("openssl") is None:
        pytest.skip("openssl not installed (needed to make the test CA)")


def free_port(address="127.0.0.1"):
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory):
    """A test CA, a server certificate for localhost/127.0.0.1 and one for another
    name (other.invalid), all signed by the CA. Returns a dict of paths."""
    d = str(directory)
    os.makedirs(d, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=scan-sensor test CA", cwd=d)
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"),
                      ("other", "DNS:other.invalid")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={san.split(',')[0][4:]}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as fh:
            fh.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    return {k: os.path.join(d, v) for k, v in (
        ("ca", "ca.pem"), ("server_cert", "server.pem"), ("server_key", "server.key"),
        ("other_cert", "other.pem"), ("other_key", "other.key"))}


class Collector:
    def __init__(self, workdir, kind="plain", port=None, cert=None, key=None, ca=None,
                 address="127.0.0.1", netns=None):
        self.dir = str(workdir)
        self.address = address
        self.netns = netns
        os.makedirs(self.dir, exist_ok=True)
        self.kind = kind
        self.port = port or free_port(address)
        self.out = os.path.join(self.dir, "received.jsonl")
        self.conf = os.path.join(self.dir, "rsyslog.conf")
        self.pidfile = os.path.join(self.dir, "rsyslogd.pid")
        self.proc = None
        with open(self.conf, "w") as fh:
            fh.write(self._config(cert, key, ca))

    def _config(self, cert, key, ca):
        props = "\n".join(
            f'  constant(value="{"," if i else ""}")\n'
            f'  property(name="{prop}" format="jsonf" outname="{out}")'
            for i, (prop, out) in enumerate(FIELDS))
        lines = []
        if self.kind == "tls":
            lines.append(f'global(workDirectory="{self.dir}" maxMessageSize="64k"\n'
                         f'       DefaultNetstreamDriver="gtls"\n'
                         f'       DefaultNetstreamDriverCAFile="{ca}"\n'
                         f'       DefaultNetstreamDriverCertFile="{cert}"\n'
                         f'       DefaultNetstreamDriverKeyFile="{key}")')
            lines.append('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                         'StreamDriver.Authmode="anon")')
        else:
            lines.append(f'global(workDirectory="{self.dir}" maxMessageSize="64k")')
            lines.append('module(load="imudp")')
            lines.append('module(load="imtcp")')
        lines.append('main_queue(queue.timeoutShutdown="10000")')
        lines.append(f'template(name="Fields" type="list") {{\n  constant(value="{{")\n'
                     f'{props}\n  constant(value="}}\\n")\n}}')
        lines.append(f'ruleset(name="capture") {{ action(type="omfile" file="{self.out}" '
                     'template="Fields") }')
        if self.kind == "plain":
            lines.append(f'input(type="imudp" address="{self.address}" port="{self.port}" '
                         'ruleset="capture")')
        lines.append(f'input(type="imtcp" address="{self.address}" port="{self.port}" '
                     'ruleset="capture")')
        return "\n".join(lines) + "\n"

    def start(self, timeout_s=10.0):
        self.stderr = open(os.path.join(self.dir, "rsyslogd.stderr"), "ab")
        argv = [RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile]
        if self.netns:          # ip netns exec execs rsyslogd: the pid is rsyslogd's
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stdout=self.stderr, stderr=self.stderr)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited ({self.proc.returncode}): "
                                   + open(os.path.join(self.dir, "rsyslogd.stderr")).read())
            if self._listening():
                time.sleep(0.1)       # imudp binds in the same start-up
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen on port {self.port}")

    def _listening(self):
        if self.netns:
            r = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Hltn",
                                f"sport = :{self.port}"], capture_output=True, text=True)
            return bool(r.stdout.strip())
        try:
            socket.create_connection((self.address, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.stderr.close()

    def messages(self):
        try:
            with open(self.out, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def wait_for(self, n, timeout_s=20.0, quiet_s=0.3):
        """The messages once there are at least n and none came for quiet_s (or what
        there is at timeout)."""
        deadline = time.monotonic() + timeout_s
        count, since = -1, time.monotonic()
        while True:
            got = self.messages()
            now = time.monotonic()
            if len(got) != count:
                count, since = len(got), now
            if (len(got) >= n and now - since >= quiet_s) or now >= deadline:
                return got
            time.sleep(0.05)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
