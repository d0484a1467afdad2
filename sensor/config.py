"""Settings: one table of every setting, its default, type, bounds and meaning.

The same table validates TOML files and ``--set key=value`` overrides,
prints the commented default config (``scan-sensor dump-config``) and
generates CONFIG.md, so the three can never disagree.
"""
import dataclasses
import socket

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """A setting is unknown, has the wrong type or is out of range (message names the key)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str              # "section.name"
    default: object
    help: str
    min: float = None
    max: float = None
    choices: tuple = None

    @property
    def type(self):
        return type(self.default)


SECTIONS = {
    "sensor": "Identity of this sensor and process-wide behaviour.",
    "capture": "How capture input is read and batched.",
    "port_scan": "One source probing many distinct destination ports (vertical scan). "
                 "Counts TCP connection attempts (SYN without ACK/RST) per source.",
}

SETTINGS = (
    Setting("sensor.name", "",
            "Name written in every alert's `sensor` field. Empty: this machine's host name."),
    Setting("sensor.hash_seed", 0,
            "Seed of the keyed hash that places addresses in the state tables. 0: a random "
            "seed per run, so spoofed traffic cannot be aimed at one table bucket. Set a "
            "value to make table placement (and so eviction under pressure) repeatable.",
            min=0, max=2**63 - 1),
    Setting("capture.batch_packets", 65536,
            "Packets decoded per batch: one kernel call per batch. Larger batches amortise "
            "call overhead; memory is about 100 bytes per packet.", min=64, max=16_777_216),
    Setting("capture.read_chunk_bytes", 4 << 20,
            "Bytes read at a time from compressed files and standard input (plain files "
            "are memory-mapped whole).", min=4096, max=1 << 30),
    Setting("port_scan.enabled", True, "Run the port_scan detector."),
    Setting("port_scan.threshold", 50,
            "Alert when one source has sent connection attempts to at least this many "
            "distinct destination ports within `window_s`.", min=2, max=65536),
    Setting("port_scan.window_s", 300.0,
            "Sliding window, in seconds of packet time. Ports probed within one window of "
            "each other always count together; probes up to two windows apart may.",
            min=0.001, max=86400),
    Setting("port_scan.report_delay_s", 5.0,
            "Seconds (packet time) between a source reaching the threshold and its alert "
            "being sent, to collect the rest of the scan's evidence. 0 sends at once. At "
            "most `window_s`.", min=0, max=86400),
    Setting("port_scan.max_sources", 4096,
            "Sources tracked at once (table slots); each costs about 17 KiB plus 16 bytes "
            "per `max_dst_ips`. When full, the least recently seen source is evicted "
            "(counted in stats).", min=8, max=1 << 22),
    Setting("port_scan.table_ways", 8,
            "Slots searched per lookup (set associativity). `max_sources` is rounded up "
            "to a multiple of it.", min=1, max=64),
    Setting("port_scan.max_dst_ips", 64,
            "Destination addresses kept exactly per source for the alert's `dst_ips`; "
            "beyond that `dst_ip_count` is estimated and `dst_ips_omitted` says how many "
            "were left out.", min=1, max=4096),
    Setting("port_scan.max_pending_alerts", 4096,
            "Alerts that may wait for `report_delay_s` at once; past that an alert is "
            "sent at once (never dropped).", min=1, max=1 << 20),
)
SETTING_BY_KEY = {s.key: s for s in SETTINGS}


def _check(setting, value, origin):
    expected = setting.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: `{setting.key}` must be {_type_name(expected)}, "
                          f"got {value!r}")
    if setting.min is not None and value < setting.min:
        raise ConfigError(f"{origin}: `{setting.key}` must be >= {setting.min}, got {value!r}")
    if setting.max is not None and value > setting.max:
        raise ConfigError(f"{origin}: `{setting.key}` must be <= {setting.max}, got {value!r}")
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{origin}: `{setting.key}` must be one of {list(setting.choices)}, "
                          f"got {value!r}")
    return value


def _type_name(t):
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(t, t.__name__)


class Config:
    """Validated settings; read as ``cfg["port_scan.threshold"]``."""

    def __init__(self, values=None):
        self._values = {s.key: s.default for s in SETTINGS}
        if values:
            self._values.update(values)

    def __getitem__(self, key):
        return self._values[key]

    def section(self, name):
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self._values.items() if k.startswith(prefix)}

    def items(self):
        return self._values.items()

    @property
    def sensor_name(self):
        return self["sensor.name"] or socket.gethostname()

    def validate_relations(self):
        if self["port_scan.report_delay_s"] > self["port_scan.window_s"]:
            raise ConfigError("`port_scan.report_delay_s` must not exceed `port_scan.window_s` "
                              f"({self['port_scan.report_delay_s']} > {self['port_scan.window_s']})")


def _flatten(table, origin, prefix=""):
    out = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if prefix or name not in SECTIONS:
                raise ConfigError(f"{origin}: unknown section [{key}] "
                                  f"(known: {', '.join(sorted(SECTIONS))})")
            out.update(_flatten(value, origin, key + "."))
            continue
        if key not in SETTING_BY_KEY:
            raise ConfigError(f"{origin}: unknown setting `{key}`" + _suggest(key))
        out[key] = _check(SETTING_BY_KEY[key], value, origin)
    return out


def _suggest(key):
    import difflib
    close = difflib.get_close_matches(key, SETTING_BY_KEY, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def parse_override(text):
    """``key=value`` with a TOML value; a bare word is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key not in SETTING_BY_KEY:
        raise ConfigError(f"--set: unknown setting `{key}`" + _suggest(key))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, _check(SETTING_BY_KEY[key], value, "--set")


def load_config(path=None, overrides=()):
    values = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        values.update(_flatten(table, str(path)))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    cfg = Config(values)
    cfg.validate_relations()
    return cfg


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def default_config_toml():
    """The full default config as commented TOML (valid input for ``-c``)."""
    import textwrap
    lines = ["# scan-sensor configuration. Every setting is shown with its default.",
             "# Reference: CONFIG.md. Override one setting on the command line with",
             "# --set section.name=value.", ""]
    for section, about in SECTIONS.items():
        lines.append(f"[{section}]")
        lines.extend("# " + ln for ln in textwrap.wrap(about, 76))
        for s in SETTINGS:
            if not s.key.startswith(section + "."):
                continue
            lines.append("")
            lines.extend("# " + ln for ln in textwrap.wrap(s.help, 76))
            lines.append(f"{s.key.split('.', 1)[1]} = {_toml_value(s.default)}")
        lines.append("")
    return "\n".join(lines)


def config_reference_markdown():
    """CONFIG.md body: one table per section."""
    out = ["# Configuration reference", "",
           "Generated from `sensor/config.py` (`python -m sensor.config > CONFIG.md`); "
           "a test checks it is current.", "",
           "Settings come from a TOML file (`-c FILE`) and `--set section.name=value` "
           "(TOML syntax for the value; a bare word is a string). "
           "`scan-sensor dump-config` prints every setting with its default. An unknown "
           "key, a wrong type or a value out of range is an error that names the key "
           "(exit code 2).", ""]
    for section, about in SECTIONS.items():
        out += [f"## [{section}]", "", about, "",
                "| setting | default | range | meaning |", "|---|---|---|---|"]
        for s in SETTINGS:
            if not s.key.startswith(section + "."):
                continue
            rng = ""
            if s.min is not None or s.max is not None:
                rng = f"{s.min if s.min is not None else ''} .. {s.max if s.max is not None else ''}"
            out.append(f"| `{s.key}` | `{_toml_value(s.default)}` | {rng} | {s.help} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(config_reference_markdown())
