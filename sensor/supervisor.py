"""``scan-sensor run --workers N``: N capture processes on one interface, one supervisor.

Theory of operation
-------------------
The supervisor (the process systemd starts) spawns N capture workers. Each
opens the interfaces and joins one PACKET_FANOUT group, so the kernel splits
the traffic between them with the fanout program of ``sensor/capture/bpf.py``:
keyed on the probing side's address, so that everything one prober sends
and every answer it gets reach the same worker. That worker's engine sees
the whole of that prober's activity: port_scan, host_sweep, udp_scan,
stealth_scan, failed_connections, trw_scanner, icmp_sweep and
exposed_host_probe are complete in one worker, and each alert is the one a
single worker would have written.

One rule is keyed across probers: port_sweep (one port, many home hosts,
any number of probers). A distributed sweep's probers are spread over the
workers, so no worker counts it: each worker exports the rows port_sweep
reads (those in its directions; outcome rows, or packet rows with
``count_open``) to the supervisor once per batch, and the supervisor counts
them in an engine of its own (``Engine.count_exported``). Every source and
every host of a sweep are merged in that one table, as with one worker; the
rows of different workers interleave out of order by at most a ring block
timeout, well inside the rule's panes.

One rate cap: ``alerts.max_per_minute`` holds for the daemon, so the workers'
engines cap nothing and the supervisor passes everything they and its
port_sweep engine report through one gate (``sensor/alert_gate.py``).

Workers talk to the supervisor over pipes, one message per batch or event,
never per packet: ``("ready", status)``, ``("alerts", [records])``,
``("rows", [exports])``, ``("stats", dict, final)``, ``("error", text,
exit_code)``, ``("bye", failures)``. The supervisor writes every output, so
alerts of all workers go to the same sinks in arrival order.

Signals: SIGTERM/SIGINT and SIGHUP are forwarded to the workers (each stops
or reloads as a single daemon does) and applied to the supervisor's own
port_sweep engine. A worker that dies unexpectedly stops the whole daemon
with exit 1 (systemd restarts it): a missing share of the traffic must not
go unnoticed.

State: each worker checkpoints its engine to ``checkpoint-worker<K>of<N>.msgpack``,
the supervisor its port_sweep engine to ``checkpoint-sweep.msgpack``. The
prober-to-worker assignment depends on N, so after a restart with another
worker count those files do not apply; they are left in place and the
workers start fresh (said in the log).
"""
import multiprocessing
import multiprocessing.connection
import os
import signal
import time

import numpy as np

from sensor.commands import run as single
from sensor.config import ConfigError

SWEEP_STATE = "checkpoint-sweep.msgpack"
STOP_TIMEOUT_S = 60
END_OF_TIME_NS = 2**62


def worker_state_name(index, count):
    return f"checkpoint-worker{index + 1}of{count}.msgpack"


class WorkerLink:
    """A worker's end of the pipe: stands in for the outputs and the systemd
    notifier of a single daemon (``single.Daemon(worker=...)``)."""

    def __init__(self, conn, index, count, fanout, tick_s):
        self.conn = conn
        self.fanout = fanout
        self.state_name = worker_state_name(index, count)
        self.tick_s = tick_s
        self._last_time_s = 0.0

    # outputs
    def submit(self, records):
        self.conn.send(("alerts", records))

    def submit_rows(self, exports, packet_time_ns):
        self.conn.send(("rows", exports, packet_time_ns))
        self._last_time_s = time.monotonic()

    def heartbeat(self, packet_time_ns, now_s):
        """Tell the supervisor how far this worker's packet time got (at least every
        idle tick), so it can release the rows of every worker up to there."""
        if now_s - self._last_time_s >= self.tick_s:
            self._last_time_s = now_s
            self.conn.send(("time", packet_time_ns))

    def send_stats(self, stats, final):
        self.conn.send(("stats", stats, final))

    def stats(self):
        return {}

    def close(self):
        return 0

    # notifier
    def ready(self, status=None):
        self.conn.send(("ready", status))

    def status(self, text):
        pass

    def reloading(self):
        pass

    def stopping(self):
        pass

    def watchdog(self, now_s=None):
        pass


def worker_main(args, index, count, group_id, conn):
    """Entry point of one capture worker (a spawned process)."""
    single.LOG_NAME = f"scan-sensor[worker {index + 1}/{count}]"
    flags = single.install_signal_handlers()
    try:
        cfg = single.load_run_config(args)
        from sensor.capture.ring import FanoutSpec
        link = WorkerLink(conn, index, count, FanoutSpec(group_id, count),
                          cfg["capture.idle_tick_s"])
        daemon = single.Daemon(args, cfg, worker=link)
    except ConfigError as exc:
        conn.send(("error", f"config error: {exc}", single.EXIT_USAGE))
        return
    try:
        daemon.start()
    except single.StartupError as exc:
        conn.send(("error", str(exc), exc.exit_code))
        daemon.close()
        return
    try:
        daemon.loop(flags)
    finally:
        daemon.shutdown()
        conn.send(("bye", daemon.failures))


class Supervisor:
    def __init__(self, args, cfg):
        self.args = args
        self.cfg = cfg
        self.count = cfg["capture.workers"]
        self.workers = []          # (process, connection)
        self.latest = {}           # worker index -> last stats
        self.sweep = None
        self.outputs = None
        self.failures = 0
        self.alerts = 0
        self.last_drops = 0
        self.watermarks = [None] * self.count    # each worker's packet time
        self.pending = []          # exported rows not yet released to the sweep engine
        self.swept_to_ns = None
        self.done = set()          # workers that said goodbye
        self.gate = None           # alerts.max_per_minute, for every worker's alerts at once

    def run(self, flags):
        from sensor.notify import Notifier
        self.notifier = Notifier(warn=single.log)
        try:
            self._start()
            self._wait_ready(flags)
        except single.StartupError as exc:
            single.log(f"error: {exc}")
            self._stop_workers()
            self._close()
            return exc.exit_code
        self.notifier.ready(f"capturing on {', '.join(self.cfg['capture.interfaces'])} "
                            f"with {self.count} workers")
        try:
            self._loop(flags)
        finally:
            self._stop_workers()
            self.sweep_tick(final=True)
            if self.gate is not None:
                self._submit(self.gate.finish())       # the last minute's summary
            if self.sweep is not None:
                self.checkpointer.save(self.sweep, wait=True)
            self.report_stats(final=True)
            self._close()
        return single.EXIT_OK if not self.failures else single.EXIT_RUNTIME

    # --- start -----------------------------------------------------------------
    def _start(self):
        from sensor.alert_gate import AlertGate
        self.state_dir = single.check_state_dir(self.cfg)
        self.outputs = single.open_outputs(self.args, self.cfg)
        self.gate = AlertGate(self.cfg["alerts.max_per_minute"], self.cfg.sensor_name)
        if self.cfg["port_sweep.enabled"]:
            self.sweep = self._sweep_engine(self.cfg)
            self.sweep = single.restore(self.sweep, self.state_dir, SWEEP_STATE,
                                        lambda: self._sweep_engine(self.cfg))
        self.checkpointer = single.Checkpointer(self.state_dir, SWEEP_STATE, self.cfg)
        if self.state_dir is not None:
            others = [p.name for p in self.state_dir.glob("checkpoint-worker*of*.msgpack")
                      if not p.name.endswith(f"of{self.count}.msgpack")]
            if others:
                single.log(f"note: state of another worker count ({', '.join(others)}) "
                           f"does not apply to {self.count} workers; they start fresh")
        ctx = multiprocessing.get_context("spawn")
        group_id = (os.getpid() & 0xFFFF) or 1
        for index in range(self.count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, name=f"scan-sensor-worker-{index + 1}",
                               args=(self.args, index, self.count, group_id, child))
            proc.start()
            child.close()
            self.workers.append((proc, parent))

    @staticmethod
    def _sweep_engine(cfg):
        from sensor.engine import Engine
        engine = Engine(cfg, rules={"port_sweep"}, rate_cap=False)   # capped in _emit
        engine.warm_up()
        return engine

    def _wait_ready(self, flags):
        ready = set()
        while len(ready) < self.count:
            if flags.stop is not None:
                raise single.StartupError(f"{flags.stop} during start-up", single.EXIT_OK)
            for index, msg in self._receive(1.0):
                if msg[0] == "ready":
                    ready.add(index)
                elif msg[0] == "error":
                    raise single.StartupError(msg[1], msg[2])
                else:
                    self._handle(index, msg)

    # --- loop ------------------------------------------------------------------
    def _loop(self, flags):
        cfg = self.cfg
        tick_s = cfg["capture.idle_tick_s"]
        next_checkpoint = time.monotonic() + cfg["sensor.checkpoint_interval_s"]
        next_stats = time.monotonic() + cfg["sensor.stats_interval_s"]
        while flags.stop is None:
            for index, msg in self._receive(tick_s):
                self._handle(index, msg)
            self.sweep_tick()
            now = time.monotonic()
            if all(proc.is_alive() for proc, _ in self.workers):
                self.notifier.watchdog(now)
            if flags.reload:
                flags.reload = False
                self.reload()
            if now >= next_checkpoint and self.sweep is not None:
                self.checkpointer.save(self.sweep)
                next_checkpoint = now + self.cfg["sensor.checkpoint_interval_s"]
            if now >= next_stats:
                self.report_stats()
                next_stats = now + self.cfg["sensor.stats_interval_s"]
        single.log(f"{flags.stop}: stopping {self.count} workers")
        self.notifier.stopping()

    def _receive(self, timeout_s):
        """(worker index, message) pairs ready within ``timeout_s``; a worker gone
        without saying goodbye is an error that stops the daemon."""
        conns = [conn for _, conn in self.workers if not conn.closed]
        out = []
        for conn in multiprocessing.connection.wait(conns, timeout_s):
            index = next(i for i, (_, c) in enumerate(self.workers) if c is conn)
            try:
                while True:
                    out.append((index, conn.recv()))
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                conn.close()
                if not out or out[-1][1][0] not in ("bye", "error"):
                    out.append((index, ("died", self.workers[index][0])))
        return out

    def _handle(self, index, msg):
        kind = msg[0]
        if kind == "alerts":
            self._emit(msg[1])
        elif kind == "rows":
            self.pending.extend(msg[1])
            self.watermarks[index] = msg[2]
        elif kind == "time":
            self.watermarks[index] = msg[1]
        elif kind == "stats":
            self.latest[index] = msg[1]
        elif kind == "bye":
            self.failures += msg[1]
            self.done.add(index)                         # nothing more comes from it
        elif kind == "error":
            single.log(f"error: worker {index + 1}: {msg[1]}")
            self.failures += 1
            os.kill(os.getpid(), signal.SIGTERM)
        elif kind == "died":
            proc = msg[1]
            proc.join(1)
            single.log(f"error: worker {index + 1} exited unexpectedly (code {proc.exitcode}); "
                       f"stopping")
            self.failures += 1
            os.kill(os.getpid(), signal.SIGTERM)

    def _emit(self, records):
        """Alerts of the workers and of the port_sweep engine, through the one rate
        gate (the workers' engines cap nothing)."""
        self._submit(self.gate.admit(records))

    def _submit(self, records):
        if records:
            self.alerts += sum(1 for r in records if r.rule != "alert_rate_limited")
            self.outputs.submit(records)

    def sweep_tick(self, final=False):
        """Count the exported rows every worker's packet time has passed, in packet
        time order (as one engine would have seen them), then advance the port_sweep
        engine to that time. Each worker's later rows are newer than its packet
        time, so nothing released here can be overtaken."""
        seen = [w for w in self.watermarks if w is not None]
        active = [w for i, w in enumerate(self.watermarks) if i not in self.done]
        if final or not active:
            upto, tick_to = END_OF_TIME_NS, max(seen, default=0)
        elif None in active:
            return
        else:
            upto = tick_to = min(active)
        groups = {}
        for rule, reads_outcomes, columns, outcome in self.pending:
            groups.setdefault((rule, reads_outcomes), []).append((columns, outcome))
        self.pending = []
        for (rule, reads_outcomes), chunks in groups.items():
            columns = {name: np.concatenate([c[name] for c, _ in chunks])
                       for name in chunks[0][0]}
            outcome = np.concatenate([o for _, o in chunks])
            order = np.argsort(columns["ts_ns"], kind="stable")
            ready = order[columns["ts_ns"][order] <= upto]
            later = order[columns["ts_ns"][order] > upto]
            if later.size:
                self.pending.append((rule, reads_outcomes,
                                     {k: v[later] for k, v in columns.items()}, outcome[later]))
            if ready.size and self.sweep is not None:
                self._emit(self.sweep.count_exported(
                    rule, reads_outcomes, {k: v[ready] for k, v in columns.items()},
                    outcome[ready]))
        if self.sweep is not None and tick_to and (self.swept_to_ns is None
                                                   or tick_to > self.swept_to_ns):
            self.swept_to_ns = tick_to
            self._emit(self.sweep.tick(tick_to))

    # --- reload, stats, stop -------------------------------------------------
    def reload(self):
        from sensor.state import StateRefused, capture_state, restore_state
        self.notifier.reloading()
        for proc, _ in self.workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGHUP)
        try:
            cfg = single.load_run_config(self.args)
            sweep = None
            if cfg["port_sweep.enabled"]:
                sweep = self._sweep_engine(cfg)
                if self.sweep is not None:
                    for message in restore_state(sweep, capture_state(self.sweep)):
                        single.log(message)
        except (ConfigError, StateRefused) as exc:
            single.log(f"error: new configuration rejected by the supervisor, the old one "
                       f"stays in force: {exc}")
            self.notifier.ready("reload rejected; running with the previous configuration")
            return
        specs = single.output_specs(self.args, cfg)
        if specs is not None:
            try:
                self.outputs.reconfigure(specs)
            except ValueError as exc:
                single.log(f"error: new outputs rejected, the old ones stay: {exc}")
        if cfg["capture.workers"] != self.count:
            single.log("note: capture.workers changed; it takes effect on restart")
        self.sweep, self.cfg = sweep, cfg
        self.gate.cap = cfg["alerts.max_per_minute"]
        self.notifier.ready("configuration reloaded")

    def stats(self):
        total = {}
        for s in self.latest.values():
            for key, value in s.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        if self.sweep is not None:
            total.update({k: v for k, v in self.sweep.stats().items()
                          if k.startswith("port_sweep_")})
        for key in ("records", "decoded", "kernel_packets", "kernel_drops", "probes_tracked",
                    "probes_evictions"):
            total.setdefault(key, 0)
        total["alerts"] = self.alerts
        total["alerts_rate_limited"] = self.gate.total_held if self.gate is not None else 0
        total["workers"] = self.count
        total["per_worker"] = {str(i + 1): {k: s.get(k) for k in
                                            ("kernel_packets", "kernel_drops", "decoded",
                                             "alerts")}
                               for i, s in sorted(self.latest.items())}
        total["outputs"] = self.outputs.stats() if self.outputs is not None else {}
        return total

    def report_stats(self, final=False):
        self.last_drops = single.report_stats(self.stats(), self.notifier,
                                              self.args.stats_json, self.last_drops, final)

    def _stop_workers(self):
        for proc, _ in self.workers:
            if proc.is_alive():
                proc.terminate()                 # SIGTERM: a worker stops as a daemon does
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(not conn.closed for _, conn in self.workers):
            if time.monotonic() > deadline:
                single.log(f"error: workers did not stop within {STOP_TIMEOUT_S} s; killed")
                for proc, conn in self.workers:
                    if proc.is_alive():
                        proc.kill()
                    conn.close()
                self.failures += 1
                break
            for index, msg in self._receive(0.5):
                if msg[0] != "died":
                    self._handle(index, msg)
        for proc, _ in self.workers:
            proc.join(5)

    def _close(self):
        if getattr(self, "checkpointer", None) is not None:
            self.checkpointer.close()
        if self.sweep is not None:
            self.sweep.close()
        if self.outputs is not None:
            self.failures += single.close_outputs(self.outputs, self.cfg,
                                                  getattr(self, "state_dir", None))
            self.outputs = None
