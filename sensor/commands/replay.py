"""``scan-sensor replay FILE...``: run the detectors over capture files offline."""
import argparse
import json
import os
import sys
import time

from sensor.alerts import rfc3339
from sensor.capture.files import CaptureError, CaptureFile
from sensor.commands.paths import check_output_paths
from sensor.output.delivery import SYSLOG_OPTION_HELP
from sensor.config import load_config
from sensor.memory_budget import check_memory
from sensor.presets import PRESETS
from sensor.engine import Engine
from sensor.output.delivery import open_outputs, summary_lines
from sensor.output.summary import render_summary

PROGRESS_MIN_BYTES = 32 << 20
TIME_JUMPS_SHOWN = 10       # time-regression warnings printed; the rest are counted


def register(sub):
    p = sub.add_parser(
        "replay", help="detect scans in pcap/pcapng files (gzip ok, - for stdin)",
        description="Read capture files in order as one stream of packet time and send "
                    "the alerts to the outputs (--syslog, --jsonl, [[output]]; JSON lines "
                    "on stdout when none is given). Damaged files are reported (with the "
                    "byte offset) and the rest is still read. At the end the outputs get "
                    "delivery.drain_timeout_s to deliver; exit status 1 if anything was "
                    "not delivered.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="pcap or pcapng file, optionally gzip-compressed; - reads standard input")
    p.add_argument("-c", "--config", metavar="CONFIG.toml", help="TOML config file")
    p.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help="start from a preset reproducing a SIEM rule: " + ", ".join(PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set port_scan.threshold=20 (repeatable)")
    p.add_argument("--workers", type=int, choices=(1, 2), metavar="N",
                   help="kernel threads, 1 or 2 (same as --set sensor.workers=N)")
    p.add_argument("--jsonl", metavar="PATH|-",
                   help="write alerts as JSON lines to PATH (appended) or - for stdout "
                        "(the default when no other output is given)")
    p.add_argument("--syslog", action="append", default=[], metavar="URL",
                   help=SYSLOG_OPTION_HELP)
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep the TCP/TLS spool in DIR/spool: what is not delivered by the "
                        "end is kept and sent first by the next run (same as --set "
                        "sensor.state_dir=DIR; default: a temporary spool, lost at exit "
                        "and counted)")
    p.add_argument("--stats-json", metavar="PATH",
                   help="write decode and detector counters as JSON to PATH")
    p.add_argument("--summary", action=argparse.BooleanOptionalAction, default=None,
                   help="print a summary table on stderr (default: when stderr is a terminal)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: on a terminal, for inputs "
                        f"over {PROGRESS_MIN_BYTES >> 20} MiB)")
    p.set_defaults(run=run)


def _progress_bar(files, enabled):
    sizes = []
    for f in files:
        try:
            sizes.append(os.stat(f).st_size if f != "-" else 0)
        except OSError:
            sizes.append(0)
    total = sum(sizes)
    if enabled is None:
        enabled = sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024,
                desc="replay", file=sys.stderr, leave=False, dynamic_ncols=True)


def _output_paths(args, cfg):
    """[(option, path)] of every file this replay will write."""
    paths = []
    if args.stats_json is not None:
        paths.append(("--stats-json", args.stats_json))
    if args.jsonl is not None:
        paths.append(("--jsonl", args.jsonl))
    elif not args.syslog:
        paths += [(f"[[output]] jsonl", spec.path) for spec in cfg.outputs
                  if spec.kind == "jsonl"]
    return paths


def _to_stdout(args, cfg):
    """True if alerts go to standard output."""
    if args.jsonl is not None or args.syslog:
        return args.jsonl == "-"
    return not cfg.outputs or any(s.kind == "jsonl" and s.path == "-" for s in cfg.outputs)


def _time_jump_warnings(engine, path, shown):
    """One warning per new time epoch (the first TIME_JUMPS_SHOWN); returns shown."""
    for from_ns, to_ns in engine.take_time_jumps():
        shown += 1
        if shown > TIME_JUMPS_SHOWN:
            continue
        back_s = (from_ns - to_ns) / 1e9
        more = ("; further ones are counted (time_regressions), not shown"
                if shown == TIME_JUMPS_SHOWN else "")
        print(f"scan-sensor: warning: {path}: packet time went back {back_s:,.3f} s, from "
              f"{rfc3339(from_ns)} to {rfc3339(to_ns)}: new time epoch (pending alerts "
              f"reported, tables emptied){more}", file=sys.stderr)
    return shown


def run(args):
    from sensor.cli import CLOSED_STREAMS, EXIT_OK, EXIT_RUNTIME, SensorError

    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"sensor.workers={args.workers}")
    if args.state_dir is not None:
        overrides.append("sensor.state_dir=" + json.dumps(args.state_dir))
    cfg = load_config(args.config, overrides, args.preset)
    inputs = [("input", f) for f in args.files]
    if args.config is not None:
        inputs.append(("the config file", args.config))
    check_output_paths(_output_paths(args, cfg), inputs)
    if "stdout" in CLOSED_STREAMS and _to_stdout(args, cfg):
        raise SensorError("standard output is closed: no alert could be written (nothing "
                          "was read; give --jsonl PATH)")
    check_memory(cfg)
    from kernels.jit import COLD_CACHE
    if COLD_CACHE and sys.stderr.isatty():
        print("scan-sensor: first run: compiling the packet kernels (about 15 s, once)",
              file=sys.stderr)
    outputs = open_outputs(cfg, args.syslog, args.jsonl, log=_warn)
    try:
        engine = Engine(cfg)
        engine.warm_up()
    except BaseException:
        outputs.close(0)
        raise
    bar = _progress_bar(args.files, args.progress)
    all_alerts = []
    failed = False
    started = time.perf_counter()

    def emit(alerts):
        outputs.submit(alerts)
        all_alerts.extend(alerts)

    jumps_shown = 0
    try:
        for path in args.files:
            if path == "-" and "stdin" in CLOSED_STREAMS:
                print("scan-sensor: error: -: standard input is closed", file=sys.stderr)
                failed = True
                continue
            try:
                capture = CaptureFile(path, cfg["capture.read_chunk_bytes"])
            except CaptureError as exc:
                print(f"scan-sensor: error: {exc}", file=sys.stderr)
                failed = True
                continue
            with capture:
                done = 0
                batches = capture.batches(engine.batches, engine.decode_stats)
                errors = []

                def decode_next():
                    try:
                        return next(batches, None)
                    except CaptureError as exc:
                        errors.append(exc)
                        return None

                batch = decode_next()
                while batch is not None:
                    alerts, batch = engine.process_then(batch, decode_next)
                    emit(alerts)
                    if engine.time_jumps:
                        jumps_shown = _time_jump_warnings(engine, path, jumps_shown)
                    if bar is not None:
                        bar.update(capture.bytes_done - done)
                        done = capture.bytes_done
                for exc in errors:
                    print(f"scan-sensor: error: {exc}", file=sys.stderr)
                    failed = True
                for warning in capture.warnings:
                    print(f"scan-sensor: {warning.level}: {warning}", file=sys.stderr)
                    if warning.is_error:
                        failed = True
        loop_seconds = time.perf_counter() - started
        emit(engine.finish())
        finish_seconds = time.perf_counter() - started - loop_seconds
    except BrokenPipeError:
        # the reader of stdout went away (e.g. `| head`): nothing more can be delivered
        outputs.close(0)
        sys.stderr.close()
        return EXIT_RUNTIME
    except BaseException:
        outputs.close(0)
        raise
    finally:
        if bar is not None:
            bar.close()
    left = outputs.close(cfg["delivery.drain_timeout_s"])
    seconds = time.perf_counter() - started
    stats = engine.stats()
    delivery = outputs.stats()
    if args.stats_json:
        try:
            with open(args.stats_json, "w", encoding="utf-8") as fh:
                # seconds: reading, detecting and delivering (start-up excluded);
                # loop_seconds: the packets only (up to the end of input), finish_seconds:
                # the end of input (attempts still waiting decided, alerts reported)
                json.dump({"seconds": seconds, "loop_seconds": loop_seconds,
                           "finish_seconds": finish_seconds, "alerts": len(all_alerts),
                           **stats, "outputs": delivery}, fh, indent=2)
        except OSError as exc:
            print(f"scan-sensor: error: --stats-json {args.stats_json}: cannot write: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            failed = True
    show_summary = args.summary if args.summary is not None else sys.stderr.isatty()
    if show_summary:
        print(render_summary(all_alerts, stats, len(args.files), seconds), file=sys.stderr)
        for line in summary_lines(delivery):
            print(line, file=sys.stderr)
    if report_undelivered(left, delivery, cfg["sensor.state_dir"] or None,
                          outputs.write_errors()):
        failed = True
    return EXIT_RUNTIME if failed else EXIT_OK


def _warn(text):
    print(f"scan-sensor: warning: {text}", file=sys.stderr, flush=True)


def report_undelivered(left, delivery, state_dir, write_errors=None):
    """One line per output that did not deliver everything; True if any did not.
    ``write_errors``: {output name: OSError} of outputs whose writes failed."""
    bad = False
    for name, c in delivery.items():
        exc = (write_errors or {}).get(name)
        if exc is not None:
            print(f"scan-sensor: error: output {name}: writing failed "
                  f"({exc.strerror or exc}): {c['dropped']:,} alert(s) not written",
                  file=sys.stderr)
            bad = True
            continue
        n = left.get(name, 0)
        if n:
            where = (f"kept in {state_dir}/spool/{name}, sent first by the next run"
                     if state_dir and c.get("spool_bytes") is not None
                     else "lost: no --state-dir to keep them in")
            print(f"scan-sensor: error: output {name}: {n:,} message(s) not delivered "
                  f"({where})", file=sys.stderr)
            bad = True
        if c["dropped"]:
            print(f"scan-sensor: error: output {name}: {c['dropped']:,} message(s) dropped "
                  "(queue or spool full, send errors: see warnings)", file=sys.stderr)
            bad = True
    return bad
