"""``scan-sensor`` command line: one module per subcommand, each with ``register``.

Exit codes: 0 success, 1 runtime error (unreadable or damaged input, output
failure), 2 usage or configuration error. Expected errors print one line on
stderr, never a traceback.
"""
import argparse
import sys

from sensor.commands import compile as compile_cmd, dump_config, replay, run
from sensor.config import ConfigError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

COMMANDS = (replay, run, compile_cmd, dump_config)


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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"scan-sensor: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SensorError as exc:
        print(f"scan-sensor: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("scan-sensor: interrupted", file=sys.stderr)
        return 130
