"""Settings: one table of every setting, its default, type, bounds and meaning.

The same table validates TOML files and ``--set key=value`` overrides,
prints the commented default config (``scan-sensor dump-config``) and
generates CONFIG.md, so the three can never disagree.
"""
import dataclasses
import ipaddress
import math
import socket

from sensor.rules import ALL_DIRECTIONS, RULES

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
    item_check: object = None   # for list settings: item -> error text or None

    @property
    def type(self):
        return type(self.default)


DEFAULT_HOME_NET = [
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",   # RFC 1918
    "100.64.0.0/10",                                     # RFC 6598 shared address space
    "127.0.0.0/8", "::1/128",                            # loopback
    "169.254.0.0/16", "fe80::/10",                       # link-local
    "fc00::/7",                                          # unique local (ULA)
]


def _cidr(value):
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        return f"{value!r} is not an address or network ({exc})"
    return None


def _port_spec(value):
    try:
        port_ranges([value])
    except ValueError as exc:
        return str(exc)
    return None


def _direction(value):
    if value not in ALL_DIRECTIONS:
        return f"{value!r} is not one of {ALL_DIRECTIONS}"
    return None


def port_ranges(specs):
    """[80, "8000-8100", "443"] -> sorted list of (lo, hi) ranges; ValueError on bad input."""
    out = []
    for spec in specs:
        if isinstance(spec, bool):
            raise ValueError(f"{spec!r} is not a port or port range")
        if isinstance(spec, int):
            lo = hi = spec
        elif isinstance(spec, str):
            a, sep, b = spec.strip().partition("-")
            try:
                lo = int(a)
                hi = int(b) if sep else lo
            except ValueError:
                raise ValueError(f"{spec!r} is not a port or port range") from None
        else:
            raise ValueError(f"{spec!r} is not a port or port range")
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"{spec!r} is not a port range within 0-65535")
        out.append((lo, hi))
    return sorted(out)


SECTIONS = {
    "sensor": "Identity of this sensor and process-wide behaviour.",
    "capture": "How capture input is read and batched.",
    "net": "Address semantics shared by every rule. Lists take IPv4 and IPv6 addresses and "
           "CIDR networks; IPv4-mapped IPv6 (::ffff:10.1.2.3) is the same host as its IPv4 "
           "address everywhere. Ports are numbers or \"low-high\" ranges.",
    "alerts": "How the rules' alerts are grouped, updated and limited, for all rules together.",
    "probes": "The probe table: what happened to each connection attempt (open, closed, "
              "filtered, unknown). Feeds failed_connections and trw_scanner and the "
              "`outcomes`/`open_ports` of every alert.",
}
for _rule in RULES:
    SECTIONS[_rule.name] = _rule.about

SETTINGS = [
    Setting("sensor.name", "",
            "Name written in every alert's `sensor` field. Empty: this machine's host name."),
    Setting("sensor.hash_seed", 0,
            "Seed of the keyed hash that places addresses in the state tables. 0: a random "
            "seed per run, so spoofed traffic cannot be aimed at one table bucket. Set a "
            "value to make table placement (and so eviction under pressure) repeatable.",
            min=0, max=2**63 - 1),
    Setting("sensor.workers", 1,
            "Threads that run the kernels. 2: the probe table and the rules fed by probe "
            "outcomes run on a second core while the first classifies the batch; the packet "
            "rules and the decode of the next batch go to whichever has less to do, by the "
            "time each took on the last batches. The alerts are identical to 1 worker (same "
            "content, same order). More than 2 would have nothing to run.", min=1, max=2),
    Setting("capture.batch_packets", 65536,
            "Packets decoded per batch: one kernel call per batch. Larger batches amortise "
            "call overhead; memory is about 100 bytes per packet.", min=64, max=16_777_216),
    Setting("capture.read_chunk_bytes", 4 << 20,
            "Bytes read at a time from compressed files and standard input (plain files "
            "are memory-mapped whole).", min=4096, max=1 << 30),
    Setting("capture.max_time_regression_s", 5.0,
            "Packet time may go back this many seconds (multi-queue capture, merged "
            "interfaces) and is processed as it comes. A packet further behind the latest "
            "packet time (files of different dates, a clock stepped back) starts a new time "
            "epoch: every pending alert is reported as at the end of input, the tables are "
            "emptied and the sensor goes on from the new time (counted in "
            "`time_regressions`, one warning each).", min=0.0, max=86400.0),
    # --- live capture (`scan-sensor run`) ---
    Setting("capture.interfaces", [],
            "Interfaces `scan-sensor run` captures on (`-i`, repeatable), e.g. the SPAN or "
            "TAP port.", item_check=lambda v: None if isinstance(v, str) and v
            else f"{v!r} is not an interface name"),
    Setting("capture.backend", "auto",
            "Live capture mechanism: `af_packet` (Linux memory-mapped TPACKET_V3 ring, decoded "
            "in place), `libpcap` (portable, clearly slower: one Python call per packet), "
            "`auto` (af_packet where the kernel has it).",
            choices=("auto", "af_packet", "libpcap")),
    Setting("capture.filter", "",
            "Kernel filter as a tcpdump expression (`--filter`), compiled by libpcap. Empty: "
            "the default filter, which passes what the rules need (TCP SYN/RST/FIN, odd flag "
            "combinations and bare ACKs, UDP, ICMP, ICMPv6, ARP) and drops the data "
            "segments of established flows before they reach the sensor."),
    Setting("capture.workers", 1,
            "Capture processes on each interface (`run --workers N`), joined by PACKET_FANOUT "
            "so that each prober's traffic and the answers to it reach the same process.",
            min=1, max=64),
    Setting("capture.ring_bytes", 64 << 20,
            "AF_PACKET ring size per capture process (locked memory, fixed at start). A "
            "larger ring rides out longer bursts before the kernel drops packets.",
            min=1 << 20, max=4 << 30),
    Setting("capture.block_bytes", 1 << 20,
            "Size of one ring block (a power of two, a multiple of the page size); the "
            "sensor decodes a whole block per kernel call.", min=4096, max=64 << 20),
    Setting("capture.snaplen", 256,
            "Bytes kept of each frame: headers are all the rules read (Ethernet, VLAN "
            "tags, IP with options or IPv6 extension headers, TCP/UDP/ICMP with the quoted "
            "header of ICMP errors).", min=96, max=65535),
    Setting("capture.block_timeout_ms", 50,
            "The kernel hands a partly filled ring block to the sensor after this many "
            "milliseconds, so packets on a quiet link are seen promptly.", min=1, max=1000),
    Setting("capture.promiscuous", True,
            "Put the interfaces in promiscuous mode (needed on a SPAN port; needs "
            "CAP_NET_RAW, and CAP_NET_ADMIN where the kernel asks for it)."),
    Setting("capture.idle_tick_s", 0.1,
            "On a quiet link, advance packet time from the clock this often, so alerts "
            "that fall due are written without waiting for the next packet.",
            min=0.01, max=10.0),
    Setting("sensor.state_dir", "",
            "Directory for detector/probe state checkpoints and the delivery spool "
            "(`--state-dir`; under systemd, StateDirectory=). Empty: nothing survives a "
            "restart.", ),
    Setting("sensor.checkpoint_interval_s", 60.0,
            "Seconds between state checkpoints (also written on exit). A SIGKILL loses at "
            "most this much state.", min=1.0, max=86400.0),
    Setting("sensor.stats_interval_s", 60.0,
            "Seconds between two stats lines on stderr (and rewrites of `--stats-json`).",
            min=1.0, max=86400.0),
    Setting("net.home_net", DEFAULT_HOME_NET,
            "Networks that are inside. Decides each alert's `direction` (inbound, outbound, "
            "internal, external) and the rules' direction filters. Default: RFC 1918, RFC "
            "6598, loopback, link-local, ULA.", item_check=_cidr),
    Setting("net.allow_sources", [],
            "Probers never flagged by any rule: authorised vulnerability scanners, monitoring "
            "(e.g. SolarWinds), load-balancer health checkers.", item_check=_cidr),
    Setting("net.ignore_destinations", [],
            "Targets never counted (e.g. honeypots you watch elsewhere, sinkholes).",
            item_check=_cidr),
    Setting("net.ignore_ports", [],
            "Destination ports never counted by any rule.", item_check=_port_spec),
    Setting("net.exposed_hosts", [],
            "Internet-facing hosts watched by exposed_host_probe.", item_check=_cidr),
    Setting("alerts.max_per_minute", 600,
            "At most this many alerts per minute of packet time; past it alerts are held "
            "back and one `alert_rate_limited` record says how many, per rule, when the "
            "minute ends. For the whole daemon: with `capture.workers` > 1 the supervisor caps "
            "what all the workers send together. 0: no limit.", min=0, max=10_000_000),
    # --- one alert per prober episode (sensor/episodes.py) ---
    Setting("alerts.group", "prober",
            "\"prober\": the rules' alerts about one source (all rules but port_sweep) are "
            "merged into one alert per episode, with `rules` (every rule that matched), "
            "`rule_evidence` (each rule's count) and the union of their evidence, which never "
            "shrinks; it ends when the source has been quiet for twice the longest window of "
            "its rules. \"rule\": one alert per rule and key, as each rule reports it. With a "
            "single rule enabled (the presets) both are the same.", choices=("prober", "rule")),
    Setting("alerts.first_report_delay_s", 5.0,
            "group = \"prober\": seconds (packet time) the first report of an episode waits, "
            "so rules that match the same activity at about the same time are in it.",
            min=0, max=3600),
    Setting("alerts.update_interval_s", 300.0,
            "group = \"prober\": minimum seconds between two reports of one episode. An "
            "update is sent only for a new rule, growth (`update_growth`) or a new target; "
            "what changed since is always sent when the episode ends.", min=0, max=7 * 86400),
    Setting("alerts.update_growth", 2.0,
            "group = \"prober\": send an update when the episode's size (largest of port "
            "count, target count, any rule's count) reaches this many times the last sent "
            "size. 0: no growth updates.", min=0, max=1 << 20),
    Setting("alerts.new_target_updates_until", 8,
            "group = \"prober\": a target not in the last sent report is worth an update "
            "while that report listed fewer than this many targets (a scan moving on to "
            "another host); past it only growth (`update_growth`) is (a sweep's new targets "
            "are its growth). 0: never.", min=0, max=1 << 20),
]
for _rule in RULES:
    _p = _rule.name + "."
    _own = dict(_rule.defaults)
    SETTINGS += [
        Setting(_p + "enabled", True, f"Run the {_rule.name} rule."),
        Setting(_p + "threshold", _rule.threshold,
                f"Alert when the count ({_rule.count_kind.replace('_', ' ')}) reaches this "
                "within `window_s`.", min=1, max=1 << 30),
        Setting(_p + "window_s", _rule.window_s,
                "Sliding window in seconds of packet time: what happens within one window "
                "always counts together, what is up to two windows apart may.",
                min=0.001, max=7 * 86400),
        Setting(_p + "report_delay_s", 5.0,
                "Seconds (packet time) from reaching the threshold to sending the alert, to "
                "collect the rest of the evidence. 0 sends at once. At most `window_s`.",
                min=0, max=86400),
        Setting(_p + "directions", list(_rule.directions),
                "Directions counted, from the prober's side: inbound (outside -> home_net), "
                "outbound, internal, external.", item_check=_direction),
        Setting(_p + "exclude_ports", list(_rule.exclude_ports),
                "Destination ports this rule ignores (for failed_connections: the refusing "
                "port).", item_check=_port_spec),
        Setting(_p + "max_keys", _rule.max_keys,
                "Keys tracked at once (table slots; memory is fixed by this). When full, the "
                "least recently seen key is evicted (counted in stats). Memory per key: "
                "about 18 KiB for port-set rules, 3-40 KiB for host-set rules (by "
                "`max_listed`); `--stats-json` `*_table_bytes` gives the figure; the start "
                "is refused when all tables together exceed the available memory.",
                min=8, max=1 << 18),
        Setting(_p + "table_ways", 8,
                "Slots searched per lookup (set associativity); `max_keys` is rounded up to a "
                "multiple of it.", min=1, max=64),
        Setting(_p + "max_listed", _rule.max_listed,
                "Targets (or items) kept exactly per key for the alert's lists and exact "
                "counts; beyond it the count is estimated (flagged in the alert) and "
                "`*_omitted` says how many are not listed.", min=1, max=4096),
        Setting(_p + "max_pending_alerts", 4096,
                "Alerts that may wait for `report_delay_s` at once; past that an alert is "
                "sent at once (never dropped).", min=1, max=1 << 20),
        Setting(_p + "growth_factor", _own.get("growth_factor", 10),
                "Send an update (same id, next `seq`) when the count reaches this many times "
                "the last reported count. 0: no growth updates.", min=0, max=1 << 20),
        Setting(_p + "new_target_updates", _own.get("new_target_updates", True),
                "Send an update when the key hits a target not in its last report."),
        Setting(_p + "update_interval_s", _own.get("update_interval_s", 60.0),
                "Minimum seconds between two reports of one episode.", min=0, max=7 * 86400),
        Setting(_p + "suppress_s", _own.get("suppress_s", 3600.0),
                "Longest episode: after this long, a key that is still active starts a new "
                "alert (new id). An episode also ends when the key is idle for two windows.",
                min=1, max=30 * 86400),
    ]
    for _name, _default, _help, _bounds in _rule.extra:
        if _bounds.get("item_check") == "port":
            _bounds = dict(_bounds, item_check=_port_spec)
        SETTINGS.append(Setting(_p + _name, _default, _help, **_bounds))
SETTINGS += [
    Setting("probes.max_probes", 262144,
            "Connection attempts tracked at once (initiator, responder, port, protocol), about "
            "101 bytes each (plus 512 KiB of initiator counts), fixed at start. When a "
            "bucket is full, the attempt whose initiator opened the fewest lately is "
            "evicted, the oldest among equals (counted in stats as probes_evictions): under "
            "a spoofed flood, the flood's one-packet sources go first and a scanner's "
            "attempts live to their timeout.", min=64, max=1 << 26),
    Setting("probes.table_ways", 8, "Slots searched per lookup (set associativity).",
            min=1, max=64),
    Setting("probes.timeout_s", 5.0,
            "Seconds (packet time) without an answer after which an attempt is `filtered` "
            "(or `unknown` when the sensor has seen no reply at all: a one-directional "
            "capture). Zeek uses 5 s.", min=0.001, max=3600),
]
# --- delivery: outputs, queues, spool (issue 10) -------------------------------------
SECTIONS["delivery"] = (
    "How alerts reach the outputs (`--syslog URL`, `--jsonl PATH`, `[[output]]` tables): "
    "a bounded queue per output, sender threads, and for TCP/TLS an on-disk spool under "
    "`<state dir>/spool/<output name>/`. A message counts as sent when the collector's "
    "TCP has acknowledged it; what was not acknowledged is sent again, in order.")
SETTINGS += [
    Setting("delivery.queue_records", 10000,
            "Records waiting in memory per output before its sender takes them (to the "
            "socket, or to the spool for TCP/TLS). Past it records are dropped and counted "
            "(`dropped`); the packet loop never waits.", min=16, max=10_000_000),
    Setting("delivery.spool_max_bytes", 256 << 20,
            "Disk used by one TCP/TLS output's spool at most. A message that does not fit "
            "is dropped, counted and logged.", min=65536, max=1 << 40),
    Setting("delivery.spool_segment_bytes", 1 << 20,
            "Size at which a spool segment is closed and a new one started; a segment is "
            "deleted once all its messages are delivered.", min=4096, max=1 << 30),
    Setting("delivery.spool_fsync_interval_ms", 200,
            "Spool data (and the record of what was delivered) is fsync'ed at most this "
            "often, and at exit: a power loss can lose this much of the newest spooled "
            "messages and resend this much of the last delivered. 0: after every batch.",
            min=0, max=60000),
    Setting("delivery.udp_max_bytes", 2048,
            "Largest UDP datagram (one message each, RFC 5426): the format shortens its "
            "evidence lists (marked truncated, with counts) to fit. 2048 is the size RFC "
            "5426 section 3.2 says every receiver should accept; set 1180 (the size every "
            "IPv6 receiver must accept, no fragmentation on any IPv6 path) or 480 (the "
            "IPv4 minimum) where datagrams must not be fragmented. Per output: "
            "`&max_bytes=`.", min=480, max=65507),
    Setting("delivery.connect_timeout_s", 5.0,
            "Seconds to wait for a TCP/TLS connection (and TLS handshake).",
            min=0.1, max=600),
    Setting("delivery.send_timeout_s", 10.0,
            "Seconds a TCP/TLS write may wait for room in the connection; longer and the "
            "connection is given up and what it had not acknowledged is sent again on a "
            "new one.", min=0.1, max=600),
    Setting("delivery.reconnect_min_s", 0.1,
            "First wait before reconnecting to a TCP/TLS collector; each failure doubles "
            "it up to `reconnect_max_s` (each wait drawn from 50-100 % of the step).",
            min=0.01, max=3600),
    Setting("delivery.reconnect_max_s", 30.0,
            "Longest wait between reconnection attempts.", min=0.01, max=3600),
    Setting("delivery.ack_hold_ms", 200,
            "A TCP/TLS message acknowledged by the collector's TCP stays in the spool this "
            "long more. If the collector closes the connection meanwhile, it had read it "
            "(delivered once); if it resets the connection (it closed with bytes it had not "
            "read), the held messages are sent again: possibly twice (same id and seq), "
            "never lost. 0: acknowledged is delivered.", min=0, max=60000),
    Setting("delivery.drain_timeout_s", 30.0,
            "At exit (end of a replay, daemon stop), seconds to wait for the outputs to "
            "deliver what they hold; what is left stays in the spool of the state "
            "directory (replay: exit status 1 and a count).", min=0, max=86400),
]
# --- end of delivery --------------------------------------------------------------------
SETTINGS = tuple(SETTINGS)
SETTING_BY_KEY = {s.key: s for s in SETTINGS}


MAX_CONFIG_BYTES = 4 << 20      # a config file larger than this is refused, not read


def _text_problem(value):
    """Why a string cannot be a setting (it must survive being written as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


def _check(setting, value, origin):
    expected = setting.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: `{setting.key}` must be {_type_name(expected)}, "
                          f"got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{origin}: `{setting.key}` must be a finite number, got {value!r}")
    for text in ([value] if isinstance(value, str) else
                 [v for v in value if isinstance(v, str)] if isinstance(value, list) else []):
        if _text_problem(text):
            raise ConfigError(f"{origin}: `{setting.key}` {_text_problem(text)}: "
                              f"{text.encode('utf-8', 'surrogateescape')!r}")
    if setting.min is not None and value < setting.min:
        raise ConfigError(f"{origin}: `{setting.key}` must be >= {setting.min}, got {value!r}")
    if setting.max is not None and value > setting.max:
        raise ConfigError(f"{origin}: `{setting.key}` must be <= {setting.max}, got {value!r}")
    if setting.item_check is not None:
        for item in value:
            problem = setting.item_check(item)
            if problem:
                raise ConfigError(f"{origin}: `{setting.key}`: {problem}")
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{origin}: `{setting.key}` must be one of {list(setting.choices)}, "
                          f"got {value!r}")
    return value


def _type_name(t):
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(t, t.__name__)


class Config:
    """Validated settings; read as ``cfg["port_scan.threshold"]``."""

    def __init__(self, values=None, outputs=()):
        self.outputs = list(outputs)     # OutputSpec per [[output]] table, in order
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
        for rule in RULES:
            delay, window = self[rule.name + ".report_delay_s"], self[rule.name + ".window_s"]
            if delay > window:
                raise ConfigError(f"`{rule.name}.report_delay_s` must not exceed "
                                  f"`{rule.name}.window_s` ({delay} > {window})")
        for name in ("slow_scan", "vertical_scan"):
            span, window = self[name + ".min_span_s"], self[name + ".window_s"]
            if span > window:
                raise ConfigError(f"`{name}.min_span_s` must not exceed `{name}.window_s` "
                                  f"({span} > {window})")


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
    except (RecursionError, UnicodeError):
        raise ConfigError(f"--set {key}: value nested too deeply or not valid text") from None
    return key, _check(SETTING_BY_KEY[key], value, "--set")


def load_config(path=None, overrides=(), preset=None):
    """Defaults, then the preset, then the file, then ``--set`` overrides."""
    from sensor.presets import PRESETS
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        values.update(PRESETS[preset].settings)
    if path is not None:
        table = read_config_file(path)
        outputs = parse_output_tables(table.pop("output", []), str(path))
        values.update(_flatten(table, str(path)))
    else:
        outputs = []
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    cfg = Config(values, outputs)
    cfg.validate_relations()
    return cfg


def read_config_file(path):
    """The TOML table of a config file, read at most MAX_CONFIG_BYTES; every problem
    (unreadable, too large, not UTF-8, not TOML, nested too deeply) a ConfigError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file larger than {MAX_CONFIG_BYTES >> 20} MiB: "
                          "not read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {exc.start} is "
                          f"{data[exc.start:exc.start + 1].hex()})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None


# --- delivery: [[output]] tables (issue 10) --------------------------------------------
OUTPUT_TABLES_DOC = """\
Each `[[output]]` table is one destination; several may be given, all receive every
alert. `url = "udp://HOST:514"`, `"tcp://HOST:514"` or `"tls://HOST:6514"` (an IPv6
host in brackets: `"tcp://[2001:db8::5]:514"`), or `jsonl = "PATH"` (`"-"`: standard
output). Options go in the URL's query (`?format=cef&framing=lf`) or as keys of the
table (not both for one option):

| key | values | default |
|---|---|---|
| `format` | `rfc5424`, `rfc3164`, `cef`, `leef`, `ecs`, `json` | `rfc5424` |
| `framing` | TCP/TLS: `octet` (RFC 6587 octet counting), `lf` | `octet` |
| `facility` | `0`-`23` or a name (`audit`, `local0`, ...) | the format's (13, log audit) |
| `app_name` | RFC 5424 APP-NAME | `scan-sensor` |
| `rate` | messages per minute of packet time, then one `alert_rate_limited` summary (with `output` = this output's name); 0 = no limit | `0` |
| `max_bytes` | UDP: largest datagram | `delivery.udp_max_bytes` |
| `name` | name in stats and of the spool directory | from the URL |
| `ca` | TLS: CA file (PEM) the collector's certificate must chain to | system CAs |
| `cert`, `key` | TLS: client certificate and key (PEM) | none |
| `verify` | TLS: `yes`/`no`: check the collector's host name (`no` still checks the chain) | `yes` |

On the command line, `--syslog URL` (repeatable) and `--jsonl PATH` replace the file's
`[[output]]` list. Without any output, alerts go to standard output as JSON lines.

```toml
[[output]]
url = "tls://siem.example.net:6514?format=cef"
ca = "/etc/scan-sensor/ca.pem"

[[output]]
jsonl = "/var/log/scan-sensor/alerts.jsonl"
```
"""


def parse_output_tables(tables, origin):
    """``[[output]]`` tables -> OutputSpecs; errors name ``output[N].key`` (1-based)."""
    from sensor.output.spec import SpecError, spec_from_table
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: `output` must be a list of tables: write [[output]]")
    specs = []
    for i, table in enumerate(tables, 1):
        try:
            specs.append(spec_from_table(table))
        except SpecError as exc:
            raise ConfigError(f"{origin}: `output[{i}].{exc.part}`: {exc}") from None
    names = [s.name for s in specs]
    for i, name in enumerate(names, 1):
        if names.index(name) != i - 1:
            raise ConfigError(f"{origin}: `output[{i}].name`: {name!r} is also output "
                              f"[{names.index(name) + 1}]; give one a different name")
    return specs
# --- end of delivery --------------------------------------------------------------------


def _toml_value(value):
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
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
    out += ["## [[output]]", "", OUTPUT_TABLES_DOC]
    return "\n".join(out)


if __name__ == "__main__":
    print(config_reference_markdown())
