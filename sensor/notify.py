"""systemd service notifications (sd_notify) without a dependency.

``Notifier`` sends ``READY=1``, ``STATUS=...``, ``RELOADING=1``, ``STOPPING=1``
and ``WATCHDOG=1`` datagrams to ``$NOTIFY_SOCKET`` (a path or an abstract
``@name``), as systemd's own self-contained example does; outside systemd
(no ``$NOTIFY_SOCKET``) every call does nothing. The protocol is newline-
separated ``KEY=value`` assignments, stable per systemd's portability
promise. ``WATCHDOG_USEC`` (from ``WatchdogSec=``) sets how often the daemon
loop must call ``watchdog()``: half the interval, as sd_watchdog_enabled(3)
advises. A failed send is reported once and never stops the daemon, nor does
a receiver that stopped reading: a ``STATUS=`` update that does not fit in the
socket's queue at once is skipped (the next one supersedes it; counted in
``skipped``), the other messages wait at most ``WAIT_S``.
"""
import os
import socket
import time

WAIT_S = 1.0        # longest a READY/RELOADING/STOPPING/WATCHDOG send may block


class Notifier:
    def __init__(self, environ=None, warn=None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = None
        if path[:1] == "@":
            self.address = "\0" + path[1:]
        elif path[:1] == "/":
            self.address = path
        self.warn = warn
        self._warned = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2
        self._last_ping = 0.0
        self.skipped = 0            # status updates not sent: the receiver's queue was full

    @property
    def enabled(self):
        return self.address is not None

    def send(self, *assignments, wait_s=WAIT_S):
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(wait_s)
                sock.connect(self.address)
                sock.sendall(message)
            return True
        except (BlockingIOError, socket.timeout) as exc:
            if wait_s == 0:
                self.skipped += 1
                return False
            return self._failed(exc)
        except OSError as exc:
            return self._failed(exc)

    def _failed(self, exc):
        if self.warn is not None and not self._warned:
            self._warned = True
            self.warn(f"cannot notify systemd at $NOTIFY_SOCKET: {exc}")
        return False

    def ready(self, status=None):
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text):
        self.send(f"STATUS={text}", wait_s=0)

    def reloading(self):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self):
        self.send("STOPPING=1")

    def watchdog(self, now_s=None):
        """Ping the watchdog if half its interval has passed (call from the main loop)."""
        if self.watchdog_interval_s is None:
            return
        now_s = time.monotonic() if now_s is None else now_s
        if now_s - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now_s
            self.send("WATCHDOG=1")
