"""``scan-sensor dump-config``: print the full default config as commented TOML."""
from sensor.config import default_config_toml


def register(sub):
    p = sub.add_parser("dump-config", help="print the default configuration as commented TOML",
                       description="Print every setting with its default and meaning, as TOML "
                                   "that -c accepts.")
    p.set_defaults(run=run)


def run(args):
    print(default_config_toml())
    return 0
