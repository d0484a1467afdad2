"""``scan-sensor`` command line: one module per subcommand, each with ``register``.

Exit codes: 0 success, 1 runtime error (unreadable or damaged input, output
failure), 2 usage or configuration error, 130 interrupted (SIGINT). Expected
errors print one line on stderr, never a traceback.

A standard stream the sensor was started without (``2>&-``, ``>&-``,
``<&-``) is opened on /dev/null first, so no file the sensor opens later
takes its descriptor and nothing meant for stderr lands in the alerts;
``CLOSED_STREAMS`` says which were closed (replay refuses to write alerts to a
closed stdout and to read a closed stdin).
"""
import argparse
import os
import sys

from sensor.commands import compile as compile_cmd, dump_config, replay, run
from sensor.commands.paths import UsageError
from sensor.config import ConfigError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = (replay, run, compile_cmd, dump_config)
CLOSED_STREAMS = set()       # of "stdin", "stdout", "stderr"


class SensorError(Exception):
    """An expected runtime failure; its message is shown as is."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scan-sensor",
        description="Detect port scans and network sweeps in packet captures and live traffic.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def reopen_closed_streams():
    """Put /dev/null on each of descriptors 0, 1, 2 that is closed; note which."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        got = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if got != fd:                   # a lower one was closed too: it got it first
            os.dup2(got, fd)
            os.close(got)
        CLOSED_STREAMS.add(name)
        setattr(sys, name, open(fd, mode, closefd=False, encoding="utf-8"))


def main(argv=None):
    reopen_closed_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"scan-sensor: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"scan-sensor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SensorError as exc:
        print(f"scan-sensor: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("scan-sensor: interrupted", file=sys.stderr)
        # a thread may still be blocked reading the input (--workers 2 on an idle
        # pipe): exit now rather than wait for it at interpreter shutdown
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_INTERRUPTED)
