"""``scan-sensor run -i IFACE``: the live daemon on a SPAN or TAP port.

Theory of operation
-------------------
One loop in one process (the engine may run a second kernel thread,
``sensor.workers``). The loop reads ring blocks into a batch (one kernel call
per block, decoded in place), hands the batch to ``Engine.process`` -- the
engine ``replay`` uses, so a live capture and its replay give the same
alerts -- and submits the alerts to the outputs. The engine does no I/O and
never reads the clock: this module does both, around it.

Time is packet time. When the link is quiet, ``read`` returns after
``capture.idle_tick_s`` and the loop gives the engine an *idle tick*: packet
time advanced from the clock, held back by the ring's block timeout plus a
margin, so that no packet still waiting in a block the kernel has not yet
handed over is older than the engine's time. An alert that falls due on a
quiet link is therefore written within ``idle_tick_s`` + block timeout +
0.1 s of its due time (0.25 s at the defaults), without waiting for the next
packet.

Signals only set flags; the loop acts on them between blocks (it wakes at
least every idle tick):

* SIGTERM, SIGINT: finish the current block, report the alerts due by now,
  write the state checkpoint, flush the outputs, exit 0. Alerts not yet due
  and attempts still waiting stay in the checkpoint, so a scan half-done
  before a restart is one scan after it.
* SIGHUP: reload the configuration (file, preset, ``--set``) into a new
  engine and carry the tables over; a configuration that does not load, or
  whose tables cannot be carried over, is rejected with a message and the
  old one stays in force.

Every ``sensor.checkpoint_interval_s`` the state is written to the state
directory (atomically), every ``sensor.stats_interval_s`` one stats line
goes to stderr (the journal under systemd) and ``--stats-json`` is
rewritten. Under systemd (``Type=notify``) the daemon sends READY=1 once the
kernels are loaded and the capture is open, STATUS= with each stats line,
WATCHDOG=1 from the loop, RELOADING=1 / STOPPING=1 around reloads and exit.
"""
import json
import os
import pathlib
import select
import signal
import sys
import time

from sensor.output.delivery import SYSLOG_OPTION_HELP
from sensor.config import ConfigError, load_config

STATE_FILE = "checkpoint.msgpack"
TICK_MARGIN_NS = 100_000_000      # added to the block timeout: scheduling slack
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def register(sub):
    p = sub.add_parser(
        "run", help="capture live on interfaces (SPAN/TAP port) and write alerts as they happen",
        description="Capture on one or more interfaces (AF_PACKET ring, or libpcap), detect "
                    "scans in real time and write alerts. SIGTERM/SIGINT stop (state saved), "
                    "SIGHUP reloads the configuration.")
    p.add_argument("-i", "--interface", action="append", default=[], metavar="IFACE",
                   dest="interfaces", help="interface to capture on (repeatable)")
    p.add_argument("-c", "--config", metavar="CONFIG.toml", help="TOML config file")
    p.add_argument("--preset", metavar="NAME", help="start from a preset (see replay --help)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (repeatable)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="capture processes per interface, joined by PACKET_FANOUT "
                        "(same as --set capture.workers=N)")
    p.add_argument("--filter", metavar="EXPR",
                   help="kernel filter, a tcpdump expression (default: what the rules need)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="directory for state checkpoints and the delivery spool "
                        "(same as --set sensor.state_dir=DIR)")
    p.add_argument("--syslog", action="append", default=[], metavar="URL",
                   help=SYSLOG_OPTION_HELP)
    p.add_argument("--jsonl", metavar="PATH|-", default=None,
                   help="write alerts as JSON lines to PATH (appended) or - for stdout "
                        "(the default when no other output is configured)")
    p.add_argument("--stats-json", metavar="PATH",
                   help="rewrite counters as JSON to PATH every stats interval and at exit")
    p.set_defaults(run=run)


def load_run_config(args):
    """The daemon's settings: defaults, preset, file, ``--set``, then the options."""
    overrides = list(args.set)
    if args.interfaces:
        overrides.append("capture.interfaces=" + json.dumps(args.interfaces))
    if args.workers is not None:
        overrides.append(f"capture.workers={args.workers}")
    if args.filter is not None:
        overrides.append("capture.filter=" + json.dumps(args.filter))
    if args.state_dir is not None:
        overrides.append("sensor.state_dir=" + json.dumps(args.state_dir))
    cfg = load_config(args.config, overrides, args.preset)
    if not cfg["capture.interfaces"]:
        raise ConfigError("no interface to capture on: give -i IFACE or set "
                          "`capture.interfaces`")
    return cfg


LOG_NAME = "scan-sensor"          # a capture worker of --workers N names itself


def log(message):
    """One line on stderr (the journal under systemd); a closed stderr is not fatal."""
    try:
        print(f"{LOG_NAME}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class StartupError(Exception):
    """The daemon cannot start; ``exit_code`` 2 for configuration, 1 otherwise."""

    def __init__(self, message, exit_code=EXIT_RUNTIME):
        super().__init__(message)
        self.exit_code = exit_code


class Flags:
    """What the signal handlers ask of the loop."""

    def __init__(self):
        self.stop = None        # the signal's name, once asked to stop
        self.reload = False


def install_signal_handlers():
    flags = Flags()

    def on_stop(signum, _frame):
        flags.stop = signal.Signals(signum).name

    def on_hup(_signum, _frame):
        flags.reload = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return flags


def run(args):
    from sensor.memory_budget import check_memory
    cfg = load_run_config(args)
    # as replay does: tables larger than the memory available are refused now (exit 2,
    # with the figure), not met as an allocation error or a swapping machine later
    check_memory(cfg, engines=cfg["capture.workers"])
    flags = install_signal_handlers()      # before the slow start: a TERM then still stops cleanly
    if cfg["capture.workers"] > 1:
        from sensor.supervisor import Supervisor
        return Supervisor(args, cfg).run(flags)
    daemon = Daemon(args, cfg)
    try:
        daemon.start()
    except StartupError as exc:
        log(f"error: {exc}")
        daemon.close()
        return exc.exit_code
    try:
        daemon.loop(flags)
    finally:
        daemon.shutdown()
    return EXIT_OK if not daemon.failures else EXIT_RUNTIME


def _tick_lag_ns(cfg):
    return int(cfg["capture.block_timeout_ms"]) * 1_000_000 + TICK_MARGIN_NS


def open_capture(ifname, cfg, fanout=None):
    """The live capture adapter for one interface: the AF_PACKET ring where the
    kernel has it (``capture.backend``), else libpcap."""
    import socket
    from sensor.capture.bpf import DEFAULT_FILTER, filter_program
    from sensor.capture.ring import CaptureSetupError, RingCapture
    expression = cfg["capture.filter"] or DEFAULT_FILTER
    backend = cfg["capture.backend"]
    if backend == "auto":
        backend = "af_packet" if hasattr(socket, "AF_PACKET") else "libpcap"
    try:
        if backend == "af_packet":
            try:
                # an operator's expression is compiled as tcpdump would on the
                # interface (``vlan 100`` then matches the tag the kernel stripped)
                program = filter_program(expression, cfg["capture.snaplen"], ifname=ifname)
            except ValueError as exc:
                raise StartupError(f"`capture.filter`: {exc}", EXIT_USAGE) from None
            return RingCapture(
                ifname, ring_bytes=cfg["capture.ring_bytes"],
                block_bytes=cfg["capture.block_bytes"], snaplen=cfg["capture.snaplen"],
                block_timeout_ms=cfg["capture.block_timeout_ms"],
                promisc=cfg["capture.promiscuous"], bpf=program, fanout=fanout)
        from sensor.capture.live_pcap import LivePcapCapture
        return LivePcapCapture(ifname, snaplen=cfg["capture.snaplen"],
                               promisc=cfg["capture.promiscuous"], filter_expression=expression,
                               timeout_ms=cfg["capture.block_timeout_ms"])
    except CaptureSetupError as exc:
        raise StartupError(str(exc), exc.exit_code) from None


class Daemon:
    """Captures, engine, outputs and state of one capture process.

    ``worker``: set in each capture process of ``--workers N``
    (``sensor/supervisor.py``): alerts, exported rows, readiness and stats go to
    the supervisor through it instead of to outputs, systemd and stderr."""

    def __init__(self, args, cfg, worker=None):
        self.args = args
        self.cfg = cfg
        self.worker = worker
        self.fanout = worker.fanout if worker else None
        self.state_name = worker.state_name if worker else STATE_FILE
        self.export = ("port_sweep",) if worker else ()
        self.engine = None
        self.captures = []
        self.outputs = None
        self.failures = 0
        self.alerts = 0
        self.started_s = time.monotonic()
        self.last_packet_ns = None
        self.packet_time_ns = 0         # the engine's packet time: last packet or tick
        self.last_drops = 0
        self.notifier = None
        self.checkpointer = None

    # --- start ---------------------------------------------------------------
    def start(self):
        from kernels.jit import COLD_CACHE
        from sensor.notify import Notifier

        self.notifier = self.worker or Notifier(warn=log)
        self.state_dir = check_state_dir(self.cfg)
        self.outputs = self.worker or open_outputs(self.args, self.cfg)
        # the capture first: a missing interface or permission is said at once, and
        # what arrives while the kernels load waits in the ring (filtered already)
        for ifname in self.cfg["capture.interfaces"]:
            self.captures.append(open_capture(ifname, self.cfg, self.fanout))
        if COLD_CACHE:
            log("first start: compiling the packet kernels (about 25 s, once; "
                "`scan-sensor compile` does it ahead of time)")
            self.notifier.status("compiling the packet kernels")
        self.engine = self._new_engine(self.cfg)
        if any(type(cap).__name__ == "RingCapture" for cap in self.captures):
            from sensor.capture.ring import warm_up
            warm_up()
        self.engine = restore(self.engine, self.state_dir, self.state_name,
                              lambda: self._new_engine(self.cfg))
        self.checkpointer = Checkpointer(self.state_dir, self.state_name, self.cfg)
        names = ", ".join(self.cfg["capture.interfaces"])
        log(f"capturing on {names} ({type(self.captures[0]).__name__}, "
            f"filter: {self.cfg['capture.filter'] or 'default'})")
        self.notifier.ready(f"capturing on {names}")

    # --- loop ----------------------------------------------------------------
    def loop(self, flags):
        cfg = self.cfg
        tick_s = cfg["capture.idle_tick_s"]
        lag_ns = _tick_lag_ns(cfg)
        next_checkpoint = time.monotonic() + cfg["sensor.checkpoint_interval_s"]
        next_stats = time.monotonic() + cfg["sensor.stats_interval_s"]
        while flags.stop is None:
            got = self._read_all(tick_s)
            if not got:
                self._tick(time.time_ns() - lag_ns)
            now = time.monotonic()
            self.notifier.watchdog(now)
            if self.worker is not None:
                self.worker.heartbeat(self.packet_time_ns, now)
            if flags.reload:
                flags.reload = False
                self.reload()
            if now >= next_checkpoint:
                self.checkpoint()
                next_checkpoint = now + self.cfg["sensor.checkpoint_interval_s"]
            if now >= next_stats:
                self.report_stats()
                next_stats = now + self.cfg["sensor.stats_interval_s"]
        log(f"{flags.stop}: stopping")
        self.notifier.stopping()

    def _drain(self):
        """At exit: process everything the kernel has handed over (bounded)."""
        for _ in range(100_000):
            if not self._read_all(0.0):
                return

    def _read_all(self, timeout_s):
        """Read every capture once (waiting at most ``timeout_s`` for the first
        packet); process each batch as it fills. Returns rows read."""
        engine = self.engine
        batch = engine.batch
        total = 0
        if len(self.captures) > 1:
            ready = select.select(self.captures, [], [], timeout_s)[0]
            timeout_s = 0.0
        else:
            ready = self.captures
        for cap in ready:
            while True:
                n = cap.read(batch, engine.decode_stats, timeout_s)
                timeout_s = 0.0
                if n == 0:
                    break
                total += n
                self._packets(batch)
                if n < batch.capacity:
                    break
        return total

    def _packets(self, batch):
        """One batch read from a capture through the engine."""
        self.last_packet_ns = int(batch.ts_ns[batch.n - 1])
        self.packet_time_ns = max(self.packet_time_ns, self.last_packet_ns)
        alerts = self.engine.process(batch)
        self._new_epochs()
        self._emit(alerts)

    def _tick(self, now_ns):
        """Packet time reached ``now_ns`` (the clock, held back by the tick lag) on a
        quiet link. A tick a little behind the last packet (the lag, a block still in
        the kernel) is taken as that packet's time; one more than
        ``capture.max_time_regression_s`` behind means the clock was stepped back:
        the engine starts a new time epoch (sensor/time_epochs.py) rather than wait,
        with every alert due, until the clock is back where the last packet was."""
        engine = self.engine
        if self.last_packet_ns is not None and now_ns < self.last_packet_ns and \
                now_ns >= self.last_packet_ns - engine.max_regression_ns:
            now_ns = self.last_packet_ns
        self.packet_time_ns = max(self.packet_time_ns, now_ns)
        alerts = engine.tick(now_ns)
        self._new_epochs()
        self._emit(alerts)

    def _new_epochs(self):
        """After the engine started a new time epoch: say so, and the daemon's packet
        time is the engine's (the old epoch's times no longer hold anything back)."""
        jumps = self.engine.take_time_jumps()
        if not jumps:
            return
        from sensor.alerts import rfc3339
        for from_ns, to_ns in jumps[:3]:
            log(f"warning: packet time went back {(from_ns - to_ns) / 1e9:,.3f} s, from "
                f"{rfc3339(from_ns)} to {rfc3339(to_ns)}: new time epoch (pending alerts "
                f"reported, tables emptied; counted in time_regressions)")
        self.packet_time_ns = self.engine.latest_ns
        if self.last_packet_ns is not None and self.last_packet_ns > self.packet_time_ns:
            self.last_packet_ns = None

    def _emit(self, alerts):
        if alerts:
            self.alerts += sum(1 for a in alerts if a.rule != "alert_rate_limited")
            self.outputs.submit(alerts)
        if self.engine.exports:
            self.outputs.submit_rows(self.engine.take_exports(), self.packet_time_ns)

    # --- reload, state, stats ------------------------------------------------
    def reload(self):
        from sensor.state import StateRefused, capture_state, restore_state
        self.notifier.reloading()
        log("SIGHUP: reloading the configuration")
        try:
            cfg = load_run_config(self.args)
            if cfg["capture.interfaces"] != self.cfg["capture.interfaces"]:
                log("note: the interface list changed; it takes effect on restart")
            engine = self._new_engine(cfg)
            try:
                messages = restore_state(engine, capture_state(self.engine))
            except StateRefused:
                engine.close()
                raise
        except (ConfigError, StateRefused) as exc:
            log(f"error: new configuration rejected, the old one stays in force: {exc}")
            self.notifier.ready("reload rejected; running with the previous configuration")
            return
        specs = output_specs(self.args, cfg)
        if specs is not None and self.worker is None:
            try:
                self.outputs.reconfigure(specs)
            except ValueError as exc:
                engine.close()
                log(f"error: new configuration rejected, the old one stays in force: {exc}")
                self.notifier.ready("reload rejected; running with the previous configuration")
                return
        for message in messages:
            log(message)
        self._emit(self.engine.gate.finish())     # held back so far: the new gate starts afresh
        self.engine.close()
        self.engine, self.cfg = engine, cfg
        log("configuration reloaded; table state kept")
        self.notifier.ready("configuration reloaded")

    def _new_engine(self, cfg):
        from sensor.engine import Engine
        # a capture worker's alerts are capped by the supervisor, with every worker's
        engine = Engine(cfg, export=self.export, rate_cap=self.worker is None)
        engine.warm_up()
        return engine

    def checkpoint(self, wait=False):
        if self.checkpointer is not None:
            self.checkpointer.save(self.engine, wait)

    def stats(self):
        out = {"uptime_s": round(time.monotonic() - self.started_s, 3), "alerts": self.alerts}
        out.update(self.engine.stats())
        drops = packets = 0
        for cap in self.captures:
            ks = cap.kernel_stats()
            packets += ks["packets"]
            drops += ks["drops"]
        out["kernel_packets"] = packets
        out["kernel_drops"] = drops
        out["outputs"] = self.outputs.stats()
        return out

    def report_stats(self, final=False):
        s = self.stats()
        if self.worker is not None:
            self.worker.send_stats(s, final)
            return
        self.last_drops = report_stats(s, self.notifier, self.args.stats_json,
                                       self.last_drops, final)

    # --- stop ----------------------------------------------------------------
    def shutdown(self):
        """Finish: report what is due, save state, final stats, close everything."""
        if self.engine is not None and self.captures:
            try:
                self._drain()
                self._tick(time.time_ns() - _tick_lag_ns(self.cfg))
                # the alerts held back by the rate cap this minute: its counts are not
                # part of the saved state, so say them now
                self._emit(self.engine.gate.finish())
            except Exception as exc:       # state and outputs must still be saved
                log(f"error while stopping: {exc}")
                self.failures += 1
            self.checkpoint(wait=True)
            self.report_stats(final=True)
        self.close()

    def close(self):
        for cap in self.captures:
            cap.close()
        self.captures = []
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.engine is not None:
            self.engine.close()
        if self.outputs is not None:
            if self.worker is None:
                self.failures += close_outputs(self.outputs, self.cfg, self.state_dir)
            self.outputs = None


def check_state_dir(cfg):
    """The state directory, created if missing; StartupError if it is not writable."""
    path = cfg["sensor.state_dir"]
    if not path:
        return None
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"state directory {path} is not writable: "
                           f"{exc.strerror or exc}", EXIT_USAGE) from None
    return path


def open_outputs(args, cfg):
    """The outputs (``sensor/output/delivery.py``): ``--syslog``/``--jsonl``, else the
    config file's ``[[output]]`` list, else JSON lines on stdout."""
    from sensor.output.delivery import open_outputs as open_delivery
    try:
        return open_delivery(cfg, args.syslog, args.jsonl, log=lambda t: log(f"warning: {t}"))
    except ConfigError as exc:
        raise StartupError(str(exc), EXIT_USAGE) from None


def output_specs(args, cfg):
    """What a reload changes the outputs to: the file's list, unless the command line
    named the outputs (they replace the file's list and stay)."""
    from sensor.output.delivery import jsonl_spec
    if args.syslog or args.jsonl is not None:
        return None
    return list(cfg.outputs) or [jsonl_spec("-")]


def close_outputs(outputs, cfg, state_dir):
    """Drain the outputs (bounded); say what was left. Returns failures (what was lost)."""
    left = outputs.close(cfg["delivery.drain_timeout_s"])
    lost = 0
    for name, n in (left or {}).items():
        if n and state_dir is not None:
            log(f"output {name}: {n:,} message(s) not delivered yet, kept in "
                f"{state_dir}/spool/{name} for the next start")
        elif n:
            log(f"error: output {name}: {n:,} message(s) not delivered and lost "
                f"(no state directory to spool them in)")
            lost += 1
    return lost


def restore(engine, state_dir, name, rebuild):
    """Load the engine's checkpoint, if there is one, and say what happened.
    Returns the engine to use: ``rebuild()`` gives a fresh one if a refused
    restore had already touched this one."""
    if state_dir is None:
        return engine
    from sensor.state import load_checkpoint
    result = load_checkpoint(engine, state_dir / name)
    for message in result.messages:
        log(("warning: " if result.status in ("moved_aside", "refused") else "") + message)
    if result.engine_touched:
        engine.close()
        engine = rebuild()
    return engine


class Checkpointer:
    """Checkpoints of one engine to ``state_dir/name``. The state is taken between
    batches (``capture_state`` copies the live slots: tens of ms even for full
    tables) and the file written on a thread, one write at a time, so a large
    checkpoint never holds up the capture loop; the last one, at exit, is
    written before the process ends."""

    def __init__(self, state_dir, name, cfg):
        self.path = None if state_dir is None else state_dir / name
        self.meta = {"interfaces": list(cfg["capture.interfaces"])}
        self.thread = None
        self.skipped = 0

    def save(self, engine, wait=False):
        if self.path is None:
            return
        import threading
        from sensor.state import capture_state
        if self.thread is not None and self.thread.is_alive():
            if not wait:
                self.skipped += 1          # the previous one is still being written
                return
            self.thread.join()
        state = capture_state(engine)
        if wait:
            self._write(state)
        else:
            self.thread = threading.Thread(target=self._write, args=(state,),
                                           name="scan-sensor-checkpoint", daemon=True)
            self.thread.start()

    def _write(self, state):
        from sensor.state import write_checkpoint
        try:
            write_checkpoint(state, self.path, self.meta, created_ns=time.time_ns())
        except OSError as exc:
            log(f"warning: checkpoint {self.path} not written: {exc.strerror or exc}")

    def close(self):
        if self.thread is not None:
            self.thread.join()


def report_stats(s, notifier, stats_json, last_drops, final=False):
    """One stats line (stderr, systemd STATUS=), a kernel-drop warning, --stats-json.
    Returns the drop count reported so far."""
    skipped = s["records"] - s["decoded"]
    evictions = sum(v for k, v in s.items() if k.endswith("_evictions")
                    and k != "probes_evictions" and isinstance(v, int))
    line = (f"{'final ' if final else ''}stats: {s['kernel_packets']:,} packets received, "
            f"{s['kernel_drops']:,} dropped by the kernel, {s['decoded']:,} decoded, "
            f"{skipped:,} skipped; {s['alerts']:,} alerts; probes {s['probes_tracked']:,} "
            f"tracked, {s['probes_evictions']:,} evicted; rule tables {evictions:,} evictions")
    log(line)
    notifier.status(line)
    from sensor.output.delivery import summary_lines
    for out_line in summary_lines(s.get("outputs", {})):
        log(out_line)
    if s["kernel_drops"] > last_drops:
        log(f"warning: the kernel dropped {s['kernel_drops'] - last_drops:,} packets since "
            f"the last report (raise capture.ring_bytes, or add --workers)")
        last_drops = s["kernel_drops"]
    if stats_json:
        write_json_atomically(stats_json, s)
    return last_drops


def write_json_atomically(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except OSError as exc:
        log(f"warning: --stats-json {path}: {exc.strerror or exc}")
