"""Drive a real ``scan-sensor run`` inside a network namespace (for the live tests).

``LiveDaemon`` starts the daemon as a subprocess in one namespace of a
``netns.Link``, with ``NOTIFY_SOCKET`` pointing at a datagram socket of the
test, so start-up is judged by the daemon's own READY=1 (as systemd would),
and gives the alerts it wrote (JSON lines) with the wall time each line
first appeared.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180          # a cold kernel cache compiles for ~35 s (longer on a busy CI)


class LiveDaemon:
    def __init__(self, link, side, workdir, args=(), name="daemon"):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.workdir / f"{name}.jsonl"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.notify_path = self.workdir / f"{name}.notify"
        if self.notify_path.exists():
            self.notify_path.unlink()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        self.messages = []
        self.seen = {}              # line -> wall time first seen
        self._offset = 0
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "sensor", "run", "--jsonl", str(self.jsonl), *args]
        self._stderr = open(self.stderr_path, "w")
        self.proc = link.popen(side, argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=self._stderr)

    # --- systemd notifications ---------------------------------------------
    def _drain_notify(self):
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return

    def wait_notify(self, key, timeout_s=START_TIMEOUT_S, after=0):
        """Wait for a notification containing ``key`` (e.g. "READY=1") past index ``after``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._drain_notify()
            for i, m in enumerate(self.messages[after:], after):
                if key in m.split("\n"):
                    return i
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {key}:\n"
                                     f"{self.stderr()}")
        raise AssertionError(f"no {key} within {timeout_s} s:\n{self.stderr()}")

    # --- output ----------------------------------------------------------------
    def poll_alerts(self):
        """Read new lines; remember when each appeared."""
        if not self.jsonl.exists():
            return
        with open(self.jsonl, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        now = time.time()
        for line in data[:end].decode().splitlines():
            self.seen.setdefault(line, now)

    def alerts(self):
        self.poll_alerts()
        return [json.loads(line) for line in self.seen]

    def wait_alert(self, predicate, timeout_s=30):
        """The first alert matching ``predicate`` and the wall time it appeared."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll_alerts()
            for line, when in self.seen.items():
                record = json.loads(line)
                if predicate(record):
                    return record, when
            time.sleep(0.01)
        raise AssertionError(f"no matching alert within {timeout_s} s; have "
                             f"{self.alerts()}\n{self.stderr()}")

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    # --- lifecycle ---------------------------------------------------------------
    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout_s=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout_s} s:\n{self.stderr()}")
        self.poll_alerts()
        self.close()
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self._stderr.close()
