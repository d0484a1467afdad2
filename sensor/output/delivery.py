"""Delivery of alert records to every configured output at once.

    outputs = Outputs(specs, DeliverySettings.from_config(cfg), sensor_name=...,
                      state_dir="/var/lib/scan-sensor", log=print_warning)
    outputs.submit(alerts)           # never blocks: bounded queues, sender threads
    outputs.stats()                  # {output name: {sent, spooled, retried, ...}}
    outputs.reconfigure(new_specs)   # SIGHUP: same-name outputs keep their spool
    left = outputs.close(30.0)       # {output name: messages not delivered}

``Outputs(...)`` opens what must be opened (the jsonl file, the TLS CA and
client certificate, the spool directories), so a configuration problem is a
``ValueError`` naming the output before any capture starts.

Delivery guarantee, TCP and TLS (``senders.py``, ``stream.py``, ``spool.py``):
every message goes to the output's spool first and is sent from it in order; it
counts as ``sent`` (and leaves the spool) only when the collector's TCP has
acknowledged every byte of it (``tcpi_bytes_acked``). After a failed connection
everything not acknowledged is sent again, in order, on the next one; after a
restart of the sensor the spool (in the state directory) is sent first.
An acknowledged message is held ``ack_hold_ms`` more: if the collector then
*resets* the connection (it closed with bytes it had not read, measured with
rsyslog under CPU load) the held ones are sent again (``resent_after_reset``:
possibly twice, never lost); if it *closes* it (FIN), they were read: once.
So across a collector stop/start every message arrives exactly once, in order,
provided the collector processes what its TCP acknowledged before it closed --
rsyslog does (measured: on SIGTERM under a full-rate stream, the messages it
wrote equalled the messages whose bytes were acknowledged, every time; and
tests/test_delivery.py stops and restarts it during a burst). What can still
go wrong, and when:
  * lost: a collector that acknowledges bytes and then discards them (killed
    with -9 holding messages in its memory queue, or a relay that drops on
    overload); the spool full (counted as ``dropped``, logged); the in-memory
    queue full (same); a power loss within ``spool_fsync_interval_ms`` of an
    append; messages still spooled at exit when there is no state directory
    (counted and reported by the caller).
  * duplicated (same ``id`` and ``seq``, so a SIEM can drop them): a connection
    that breaks after the collector received a message but before its
    acknowledgement reached the sensor (a network failure, not a collector
    restart); a message the collector had received only in part (sent again
    whole; a receiver may log the fragment); after a crash or power loss, up
    to ``spool_fsync_interval_ms`` of acknowledgements not yet on disk.
  * reordered: never by the sender; a relay between sensor and SIEM may.
UDP: no acknowledgement; "sent" is "handed to the kernel", nothing is spooled,
a collector that is down loses the datagrams unseen; send errors are counted.
JSON lines: written and flushed on the caller's thread, in order.
"""
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading

from sensor.output.formats import FormatContext
from sensor.output.senders import COUNTERS, StreamSender, UdpSender
from sensor.output.spec import OutputSpec, SpecError, jsonl_spec, parse_output_url, spec_from_table
from sensor.output.spool import Spool, SpoolBusy
from sensor.output.stream import tls_context

__all__ = ["Outputs", "DeliverySettings", "OutputSpec", "SpecError", "parse_output_url",
           "jsonl_spec", "spec_from_table", "summary_lines", "open_outputs"]


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    queue_records: int = 10000
    spool_max_bytes: int = 256 << 20
    spool_segment_bytes: int = 1 << 20
    spool_fsync_interval_ms: int = 200
    udp_max_bytes: int = 2048
    connect_timeout_s: float = 5.0
    send_timeout_s: float = 10.0
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 30.0
    drain_timeout_s: float = 30.0
    ack_hold_ms: int = 200

    @classmethod
    def from_config(cls, cfg):
        return cls(**{f.name: cfg["delivery." + f.name] for f in dataclasses.fields(cls)})


def open_outputs(cfg, syslog_urls=(), jsonl=None, log=None):
    """The outputs of a run, opened: ``--syslog`` URLs and ``--jsonl`` if given (they
    replace the config file's ``[[output]]`` list), else that list, else JSON lines on
    stdout. Spool under ``sensor.state_dir`` (a temporary one if empty). Any problem
    is a ``ConfigError`` naming the option or key (exit code 2, before capture)."""
    from sensor.config import ConfigError
    try:
        specs = [parse_output_url(url) for url in syslog_urls]
    except SpecError as exc:
        raise ConfigError(f"--syslog: {exc}") from None
    if jsonl is not None:
        specs.append(jsonl_spec(jsonl))
    if not specs:
        specs = list(cfg.outputs) or [jsonl_spec("-")]
    try:
        return Outputs(specs, DeliverySettings.from_config(cfg), sensor_name=cfg.sensor_name,
                       state_dir=cfg["sensor.state_dir"] or None, log=log)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


SYSLOG_OPTION_HELP = ("send alerts to a syslog collector: udp://HOST:514, tcp://HOST:514, "
                      "tls://HOST:6514, with ?format=rfc5424|rfc3164|cef|leef|ecs|json and "
                      "more options (CONFIG.md, [[output]]); repeatable")


def summary_lines(stats):
    """One human-readable line per output, from ``Outputs.stats()``."""
    for name, c in stats.items():
        yield (f"output {name}: sent {c['sent']:,}, spooled {c['spooled']:,}, retried "
               f"{c['retried']:,}, dropped {c['dropped']:,}, send errors "
               f"{c['send_errors']:,}, rate-limited {c['rate_limited']:,}, undelivered "
               f"{c['queued']:,}")


class JsonlOutput:
    """Alerts as JSON lines, written and flushed on the caller's thread."""

    def __init__(self, spec, log=None):
        self.spec = spec
        self.log = log
        self.write_error = None          # the OSError that stopped writing, if any
        if spec.path == "-":
            self._fh = sys.stdout
        else:
            try:
                self._fh = open(spec.path, "a", encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{spec.path}: cannot open for writing: "
                                 f"{exc.strerror or exc}") from None
        self.counts = dict.fromkeys(COUNTERS, 0)

    def submit(self, records):
        if self.write_error is not None:
            self.counts["dropped"] += len(records)
            return
        lines = "".join(json.dumps(record.to_dict(), separators=(",", ":")) + "\n"
                        for record in records)
        try:
            self._fh.write(lines)
            self._fh.flush()
        except BrokenPipeError:
            if self._fh is sys.stdout:
                raise                       # the reader of stdout left (`| head`): caller stops
            self._failed(records, sys.exc_info()[1])
        except OSError as exc:              # disk full, I/O error: counted, the run goes on
            self._failed(records, exc)
        else:
            self.counts["sent"] += len(records)

    def _failed(self, records, exc):
        """Stop writing (every later record counted as dropped) and drop what is buffered."""
        self.write_error = exc
        self.counts["dropped"] += len(records)
        if self.log is not None:
            self.log(f"output {self.spec.name}: writing failed ({exc.strerror or exc}): "
                     "alerts from now on are not written (counted as dropped)")
        if self._fh is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())    # what is buffered goes nowhere at exit
            os.close(devnull)
        else:
            try:
                self._fh.close()
            except OSError:
                pass

    def stats(self):
        return dict(self.counts, queued=0)

    def stop(self, timeout_s):
        pass

    def join(self, timeout=None):
        if self._fh is not sys.stdout and not self._fh.closed:
            self._fh.close()

    def backlog(self):
        return 0

    def start(self):
        pass


class Outputs:
    def __init__(self, specs, settings=None, *, sensor_name, state_dir=None, log=None,
                 version="0.1.0"):
        self.settings = settings or DeliverySettings()
        self.sensor_name = sensor_name
        self.version = version
        self.log = log or (lambda text: print(f"scan-sensor: {text}", file=sys.stderr))
        self._temp_dir = None
        if state_dir is None:
            self.spool_root = None
        else:
            self.spool_root = os.path.join(str(state_dir), "spool")
            try:
                os.makedirs(self.spool_root, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"state directory {state_dir}: cannot create "
                                 f"{self.spool_root}: {exc.strerror or exc}") from None
        self.outputs = {}
        self._lock = threading.Lock()
        self._held = None
        self._open_all(specs)

    # -- building outputs ----------------------------------------------------------------
    def _context(self, spec):
        kw = {"hostname": self.sensor_name, "version": self.version}
        if spec.app_name:
            kw["app_name"] = spec.app_name
        if spec.facility is not None:
            kw["facility"] = spec.facility
        return FormatContext(**kw)

    def _spool_dir(self, name):
        if self.spool_root is None:
            if self._temp_dir is None:
                self._temp_dir = tempfile.mkdtemp(prefix="scan-sensor-spool-")
            return os.path.join(self._temp_dir, name)
        return os.path.join(self.spool_root, name)

    def _build(self, spec):
        if spec.kind == "jsonl":
            return JsonlOutput(spec, self.log)
        ctx = self._context(spec)
        if spec.kind == "udp":
            return UdpSender(spec, ctx, self.settings, self.sensor_name, self.log)
        ssl_context = tls_context(spec) if spec.kind == "tls" else None
        directory = self._spool_dir(spec.name)
        try:
            spool = Spool(directory, spec.name, self.settings.spool_max_bytes,
                          self.settings.spool_segment_bytes,
                          self.settings.spool_fsync_interval_ms / 1000, self.log)
        except SpoolBusy as exc:
            raise ValueError(f"{spec.source}: {exc}") from None
        except OSError as exc:
            raise ValueError(f"{spec.source}: spool {directory}: {exc.strerror or exc}") from None
        if spool.backlog:
            self.log(f"output {spec.name}: {spool.backlog} message(s) spooled by an earlier "
                     "run will be delivered first")
        return StreamSender(spec, ctx, self.settings, self.sensor_name, self.log, spool,
                            ssl_context)

    def _build_all(self, specs, skip=()):
        """Build (not start) an output per spec whose name is not in skip."""
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two outputs named {sorted(dup)[0]!r}: give one a "
                             "different name (&name=...)")
        built = {}
        try:
            for spec in specs:
                if spec.name not in skip:
                    built[spec.name] = self._build(spec)
        except BaseException:
            for out in built.values():
                if isinstance(out, StreamSender):
                    out.spool.close()
                else:
                    out.join()
            raise
        return built

    def _open_all(self, specs):
        built = self._build_all(specs)
        for name, out in built.items():
            self.outputs[name] = out
            out.start()

    # -- the caller's API -----------------------------------------------------------------
    def submit(self, records):
        """Hand records to every output; never waits on a socket or the disk."""
        if not records:
            return
        with self._lock:
            for out in self.outputs.values():
                out.submit(records)
            if self._held is not None:         # reconfigure() in progress
                self._held.extend(records)

    def write_errors(self):
        """{output name: OSError} of the outputs whose writes failed (JSON lines)."""
        with self._lock:
            outs = list(self.outputs.values())
        return {out.spec.name: out.write_error for out in outs
                if getattr(out, "write_error", None) is not None}

    def stats(self):
        """{output name: counters}; counters are those of ``COUNTERS`` plus ``queued``
        (waiting in memory or in the spool), and for TCP/TLS ``connected``,
        ``reconnects``, ``spool_bytes``, ``spool_damaged``."""
        with self._lock:
            outs = list(self.outputs.values())
        return {out.spec.name: out.stats() for out in outs}

    def reconfigure(self, specs):
        """Replace the set of outputs (config reload), losing nothing queued.

        Outputs whose spec is unchanged keep running. A changed or removed output
        stops first; a TCP/TLS one leaves what it has not delivered in its spool,
        and a new output of the same name takes the spool over (spooled messages
        keep the format they were rendered in). Records submitted meanwhile are
        held and handed to the new outputs. If the new set cannot be opened
        (ValueError), the old outputs are restored, with their spools.
        """
        specs = list(specs)
        with self._lock:
            keep = {s.name for s in specs if s.name in self.outputs
                    and self.outputs[s.name].spec == s}
            leaving = {n: o for n, o in self.outputs.items() if n not in keep}
            for name in leaving:
                del self.outputs[name]
            self._held = []
        for out in leaving.values():           # release the spools before reopening
            out.stop(0.0)
            out.join()
        try:
            built = self._build_all(specs, skip=keep)
        except BaseException:
            built = self._build_all([o.spec for o in leaving.values()])
            self._install(built)
            raise
        self._install(built)
        for name, out in leaving.items():
            if name not in built and out.backlog():
                self.log(f"output {name} removed with {out.backlog()} message(s) "
                         "undelivered (kept in its spool)")

    def _install(self, built):
        with self._lock:
            held, self._held = self._held, None
            for name, out in built.items():
                self.outputs[name] = out
                if held:
                    out.submit(held)
                out.start()

    def close(self, timeout_s=None):
        """Deliver what can be delivered within timeout_s, then stop every output.
        Returns {output name: messages not delivered} (spooled ones stay in the
        state directory for the next start; without one they are lost and counted)."""
        timeout_s = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            outs = dict(self.outputs)
        for out in outs.values():
            out.stop(timeout_s)
        for out in outs.values():
            out.join()
        left = {name: out.backlog() for name, out in outs.items()}
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        return left
