"""Per-output sender threads: a bounded queue in, messages out to one collector.

``submit()`` runs on the caller's (the packet loop's) thread and only appends
to a bounded in-memory queue; rendering, disk and sockets happen on the
sender's own thread, so packet processing never waits on a collector.

* ``UdpSender``: one datagram per message (RFC 5426), the format asked to fit
  ``max_bytes``. UDP has no acknowledgement: "sent" means handed to the kernel;
  a collector that is down loses the datagram unseen. Send errors are counted.
* ``StreamSender`` (TCP and TLS): every message is first appended to the
  output's spool (``spool.py``), then sent from it in order; a message leaves
  the spool only when the collector's TCP has acknowledged all of its bytes
  (``stream.py``). When the connection fails, what was written but not
  acknowledged is sent again, in order, on the next connection; reconnects
  back off exponentially (``reconnect_min_s`` doubling to ``reconnect_max_s``,
  each wait drawn from 50-100 % of the step).

Rate limit (``&rate=N``): at most N messages per minute of *packet time* (the
alert's emission time, like ``alerts.max_per_minute``), so a replay holds back
exactly what live capture would; when a minute with held-back messages is
over, one summary record says how many, per rule: the same ``alert_rate_limited``
record as the engine's ``alerts.max_per_minute`` gate (so every format renders it as
a summary), plus ``output`` naming the output that held them back.
"""
import collections
import random
import socket
import ssl
import threading
import time

from sensor.alert_gate import MINUTE_NS, RateLimited
from sensor.alerts import rfc3339
from sensor.output.formats import render
from sensor.output.stream import PeerClosed, StreamLink, frame

COUNTERS = ("sent", "spooled", "retried", "dropped", "send_errors", "rate_limited",
            "resent_after_reset")
READ_BATCH = 256
MAX_IN_FLIGHT_BYTES = 1 << 20


class RateGate:
    """Per-output cap on messages per minute of packet time."""

    def __init__(self, per_minute, output_name, sensor_name):
        self.cap = per_minute
        self.output_name = output_name
        self.sensor_name = sensor_name
        self.minute = None
        self.passed = 0
        self.held = collections.Counter()
        self.sources = []

    def admit(self, record):
        """Records to send for this one (the summary of a closed minute first)."""
        emitted_ns = getattr(record, "emitted_ns", None)
        if not self.cap or emitted_ns is None:
            return [record], 0
        out = []
        minute = emitted_ns // MINUTE_NS
        if minute != self.minute:
            out += self.finish()
            self.minute, self.passed = minute, 0
        if self.passed >= self.cap:
            self.held[record.rule] += 1
            if len(self.sources) < 2:
                self.sources.append(record.src_ip)
            else:
                self.sources[1] = record.src_ip
            return out, 1
        self.passed += 1
        return out + [record], 0

    def finish(self):
        if not self.held:
            return []
        record = RateLimited(
            rule="alert_rate_limited", sensor=self.sensor_name, output=self.output_name,
            minute_start=rfc3339(self.minute * MINUTE_NS), max_per_minute=self.cap,
            suppressed=dict(self.held), suppressed_total=sum(self.held.values()),
            example_sources=list(self.sources))
        self.held.clear()
        self.sources = []
        return [record]


class Sender(threading.Thread):
    """Common part: queue, counters, rendering, lifecycle."""

    def __init__(self, spec, ctx, settings, sensor_name, log):
        super().__init__(name=f"scan-sensor-out-{spec.name}", daemon=True)
        self.spec = spec
        self.ctx = ctx
        self.settings = settings
        self.log = log
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.queue = collections.deque()
        self.gate = RateGate(spec.rate_per_min, spec.name, sensor_name)
        self.stopping = False         # close() called: deliver until drained or deadline
        self.deadline = None
        self.done = threading.Event()
        self.error = None

    # -- caller's thread ---------------------------------------------------------------
    def submit(self, records):
        with self.lock:
            for record in records:
                admitted, held = self.gate.admit(record)
                self.counts["rate_limited"] += held
                self._enqueue(admitted)
            self.wake.notify()

    def _enqueue(self, records):
        for record in records:
            if len(self.queue) >= self.settings.queue_records:
                self.counts["dropped"] += 1
                if self.counts["dropped"] == 1:
                    self.log(f"output {self.spec.name}: queue full "
                             f"({self.settings.queue_records} records): dropping (counted)")
                continue
            self.queue.append(record)

    def stop(self, timeout_s):
        with self.lock:
            self._enqueue(self.gate.finish())
            self.stopping = True
            self.deadline = time.monotonic() + timeout_s
            self.wake.notify()

    def backlog(self):
        return len(self.queue)

    def stats(self):
        with self.lock:
            out = dict(self.counts)
            out["queued"] = self.backlog()
        if self.error is not None:
            out["error"] = repr(self.error)
        return out

    # -- sender's thread ----------------------------------------------------------------
    def _take(self):
        with self.lock:
            records = list(self.queue)
            self.queue.clear()
        return records

    def _render(self, record, max_bytes=None):
        try:
            return render(self.spec.format, record, self.ctx, max_bytes=max_bytes)
        except Exception as exc:          # a formatter bug must not kill delivery
            with self.lock:
                self.counts["dropped"] += 1
            self.log(f"output {self.spec.name}: cannot render a {record.rule} record "
                     f"({exc!r}): dropped (counted)")
            return None

    def _wait(self, timeout_s):
        with self.lock:
            if not self.queue:
                self.wake.wait(timeout_s)

    def _count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def run(self):
        try:
            self._run()
        except Exception as exc:           # reported by Outputs, never silent
            self.error = exc
            self.log(f"output {self.spec.name}: sender stopped: {exc!r}")
        finally:
            self._finish()
            self.done.set()

    def _finish(self):
        pass


class UdpSender(Sender):
    def __init__(self, spec, ctx, settings, sensor_name, log):
        super().__init__(spec, ctx, settings, sensor_name, log)
        self.max_bytes = spec.max_bytes or settings.udp_max_bytes
        self.sock = None
        self.addr = None
        self.oversize = 0

    def _send(self, message):
        if len(message) > self.max_bytes:     # the format overran the limit: cut, counted
            self.oversize += 1
            message = message[:self.max_bytes].decode("utf-8", "ignore").encode("utf-8")
        try:
            if self.addr is None:
                family, _, _, _, self.addr = socket.getaddrinfo(
                    self.spec.host, self.spec.port, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.sendto(message, self.addr)
            self._count("sent")
        except OSError as exc:
            self.addr = None
            with self.lock:
                self.counts["send_errors"] += 1
                self.counts["dropped"] += 1
                first = self.counts["send_errors"] == 1
            if first:
                self.log(f"output {self.spec.name}: UDP send failed ({exc}); "
                         "counting send errors")

    def _run(self):
        while True:
            records = self._take()
            for record in records:
                message = self._render(record, self.max_bytes)
                if message is not None:
                    self._send(message)
            if not records:
                if self.stopping:
                    return
                self._wait(0.5)

    def stats(self):
        out = super().stats()
        out["truncated_by_sender"] = self.oversize
        return out

    def _finish(self):
        left = self._take()
        if left:
            self._count("dropped", len(left))
        if self.sock is not None:
            self.sock.close()


class StreamSender(Sender):
    def __init__(self, spec, ctx, settings, sensor_name, log, spool, ssl_context):
        super().__init__(spec, ctx, settings, sensor_name, log)
        self.spool = spool
        self.link = StreamLink(spec, ssl_context, settings.connect_timeout_s,
                               settings.send_timeout_s)
        self.connected = False
        self.in_flight = collections.deque()     # (end offset, seq), in order
        self.held = collections.deque()          # (monotonic time acked, seq): on hold
        self.hold_s = settings.ack_hold_ms / 1000
        self.max_written_seq = spool.acked_seq
        self.backoff_s = settings.reconnect_min_s
        self.next_attempt = 0.0
        self.failures_in_row = 0
        self.reconnects = 0
        self.spool_backlog = spool.backlog
        self.spooled_upto = spool.acked_seq

    def backlog(self):
        return len(self.queue) + self.spool_backlog

    def stats(self):
        out = super().stats()
        out.update(connected=self.connected, reconnects=self.reconnects,
                   spool_bytes=self.spool.total_bytes, spool_damaged=self.spool.damaged)
        return out

    def _spool_queue(self):
        records = self._take()
        if not records:
            return
        messages = [m for m in (self._render(r) for r in records) if m is not None]
        taken = self.spool.append(messages)
        if not self.connected and self.failures_in_row:   # collector unreachable
            self._mark_spooled()
        with self.lock:
            if taken < len(messages):
                lost = len(messages) - taken
                self.counts["dropped"] += lost
                self.log(f"output {self.spec.name}: spool full "
                         f"({self.spool.max_bytes} bytes in {self.spool.dir}): {lost} "
                         "message(s) dropped (counted)")
            self.spool_backlog = self.spool.backlog

    def _mark_spooled(self):
        """Count, once each, the messages held in the spool while the collector is
        unreachable (``spooled``)."""
        top = self.spool.next_seq - 1
        base = max(self.spooled_upto, self.spool.acked_seq)
        if top > base:
            self._count("spooled", top - base)
            self.spooled_upto = top

    def _drained(self):
        return not self.queue and self.spool.backlog == 0

    def _run(self):
        while True:
            self._spool_queue()
            if self.stopping and (self._drained() or time.monotonic() >= self.deadline):
                return
            if not self.connected:
                if self.spool.backlog == 0:
                    self._wait(0.5)
                    continue
                now = time.monotonic()
                if now < self.next_attempt:
                    self._wait(min(self.next_attempt - now, 0.2))
                    continue
                self._connect()
                continue
            try:
                self._pump()
            except (OSError, ssl.SSLError) as exc:
                self._lost(exc)

    def _connect(self):
        try:
            self.link.connect()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._count("send_errors")
            self.failures_in_row += 1
            self._mark_spooled()
            if self.failures_in_row == 1:
                self.log(f"output {self.spec.name}: cannot connect to "
                         f"{self.spec.host}:{self.spec.port} ({exc}); spooling and retrying")
            step = self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, self.settings.reconnect_max_s)
            self.next_attempt = time.monotonic() + step * random.uniform(0.5, 1.0)
            return
        if self.failures_in_row:
            self.log(f"output {self.spec.name}: connected to {self.spec.host}:"
                     f"{self.spec.port}; sending {self.spool.backlog} spooled message(s)")
        self.failures_in_row = 0
        self.backoff_s = self.settings.reconnect_min_s
        self.spool.rewind()
        self.in_flight.clear()
        self.held.clear()
        with self.lock:
            self.connected = True
            self.reconnects += 1

    def _settle(self, release_all=False):
        """Move what the peer's TCP acknowledged to the hold; release (count as sent,
        drop from the spool) what has been held ``ack_hold_ms`` (all if release_all)."""
        now = time.monotonic()
        acked = self.link.acked()
        while self.in_flight and self.in_flight[0][0] <= acked:
            self.held.append((now, self.in_flight.popleft()[1]))
        last = None
        n = 0
        while self.held and (release_all or self.held[0][0] <= now - self.hold_s):
            last = self.held.popleft()[1]
            n += 1
        if (not self.in_flight and not self.held and not self.spool.unread
                and self.spool.backlog):
            last = self.spool.next_seq - 1       # what is left was lost to damage (reported)
        if last is not None:
            self.spool.ack(last)
            with self.lock:
                self.counts["sent"] += n
                self.spool_backlog = self.spool.backlog

    def _pump(self):
        self.link.check_peer()
        self._settle()
        in_flight_bytes = (self.in_flight[-1][0] - self.link.acked()) if self.in_flight else 0
        batch = []
        if (self.spool.unread and in_flight_bytes < MAX_IN_FLIGHT_BYTES
                and self.link.writable(0.05)):
            batch = self.spool.read(READ_BATCH)
        retried = 0
        for seq, message in batch:
            end = self.link.write(frame(message, self.spec.framing))
            self.in_flight.append((end, seq))
            if seq <= self.max_written_seq:
                retried += 1
            else:
                self.max_written_seq = seq
        if retried:
            self._count("retried", retried)
        if not batch:
            if self.in_flight:
                self.link.check_peer(0.002)      # poll for acknowledgements
            elif self.held:
                self.link.check_peer(min(0.05, self.hold_s))
            else:
                self._wait(0.5)

    def _lost(self, exc):
        """The connection failed: keep what the collector took, resend the rest later.

        A collector that closed the connection (FIN, TLS close_notify) had read every
        byte it acknowledged (a TCP stack closing with unread bytes resets instead):
        what is on hold is delivered. One that reset it may have dropped bytes it had
        acknowledged: what is on hold (acknowledged within ``ack_hold_ms``) is sent
        again, so it is not lost -- and may arrive twice."""
        try:
            self._settle()
            clean = self.link.peer_closed_cleanly()
        except OSError:
            clean = False
        if clean:
            self._settle(release_all=True)
        resent = len(self.held)
        pending = len(self.in_flight)
        self.in_flight.clear()
        self.held.clear()
        self.link.close()
        self.spool.rewind()
        with self.lock:
            self.connected = False
            self.counts["send_errors"] += 1
            self.counts["resent_after_reset"] += resent
        reason = str(exc) if isinstance(exc, PeerClosed) else repr(exc)
        self.log(f"output {self.spec.name}: connection lost ({reason}); {pending} "
                 "message(s) written but not acknowledged will be sent again"
                 + (f", and {resent} acknowledged in the last {self.settings.ack_hold_ms} "
                    "ms before the collector reset the connection (possibly twice)"
                    if resent else ""))
        self.failures_in_row = 1
        self._mark_spooled()
        self.next_attempt = time.monotonic() + self.backoff_s * random.uniform(0.5, 1.0)

    def _finish(self):
        try:
            self._spool_queue()
        finally:
            if self.connected:               # we close it: the collector is alive
                try:
                    self._settle(release_all=True)
                except OSError:
                    pass
                self.link.close()
                with self.lock:
                    self.connected = False
            self.spool.close()
            self.spool_backlog = self.spool.backlog
