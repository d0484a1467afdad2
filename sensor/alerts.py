"""Alert records: plain data that every formatter renders the same way.

Field names are a contract with SIEM content: later versions add fields but
never rename these. See README "Alert fields".
"""
import dataclasses
import datetime
import uuid

import numpy as np

ALERT_NAMESPACE = uuid.UUID("6f1c3a52-6d1e-4c55-9a0e-5c2b9d7e8a41")


def compress_ports(ports):
    """Distinct ports, any order -> "21-23,80,443" (complete, never sampled)."""
    if isinstance(ports, np.ndarray):
        values = ports.astype(np.int64, copy=False)
    else:
        values = np.fromiter((int(p) for p in ports), np.int64)
    return ranges_text(np.unique(values))


def ranges_text(ports):
    """Sorted distinct integers (an int64 array) -> "21-23,80,443". Vectorised: a
    scan of 65,536 ports in random order has ~20,000 ranges."""
    if len(ports) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(ports) != 1)
    starts = np.concatenate((ports[:1], ports[breaks + 1])).tolist()
    ends = np.concatenate((ports[breaks], ports[-1:])).tolist()
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def expand_ports(text):
    """Inverse of compress_ports."""
    out = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def rfc3339(ts_ns):
    """Packet time in ns -> RFC 3339 UTC with microseconds, e.g. 2024-06-24T03:01:10.258764Z."""
    sec, rem = divmod(int(ts_ns), 1_000_000_000)
    dt = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


def alert_id(sensor, rule, key, first_seen_ns):
    """Stable id: the same scan replayed again gets the same id."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{sensor}|{rule}|{key}|{int(first_seen_ns)}"))


@dataclasses.dataclass
class Alert:
    """One detection, with its complete evidence. Field order is the output order.

    Optional fields that do not apply to a rule are None and left out of the
    rendered record.
    """
    rule: str                 # "port_scan", "host_sweep", ...
    src_ip: str               # canonical text: IPv4-mapped addresses print as IPv4
    dst_ips: list             # distinct targets, capped (see dst_ips_omitted)
    dst_ip_count: int         # distinct targets in all
    dst_ips_omitted: int      # dst_ip_count - len(dst_ips)
    dst_ip_count_estimated: bool  # True when dst_ip_count came from a sketch (list was full)
    dst_ports: str            # every distinct port, as ranges "21-23,80,443"
    dst_port_count: int
    first_seen: str           # RFC 3339 UTC, packet time
    last_seen: str
    packets: int              # rows the rule counted for this alert
    severity: str             # "medium"; "high" at 10x the threshold
    mitre: list               # ATT&CK technique ids
    sensor: str
    id: str                   # stable: same episode, same sensor -> same id (updates keep it)
    threshold: int
    window_s: float
    count: int = 0            # the rule's count (what crossed the threshold)
    count_kind: str = ""      # distinct_ports, distinct_hosts, attempts, refused_pairs, closed_ports
    count_estimated: bool = False
    direction: str = None     # inbound, outbound, internal, external (prober's view)
    src_mac: str = None       # arp_sweep, ndp_sweep: the sender's MAC, aa:bb:cc:dd:ee:ff
    seq: int = 1              # 1 for the first report of an episode, 2.. for updates
    update: bool = False      # seq > 1
    scope: str = None         # port_scan: "source" or "pair"
    dst_port: int = None      # rules keyed by one port (host_sweep, port_sweep)
    sources: list = None      # port_sweep: every prober of the episode up to max_sources,
                              # most probes first: [{"ip", "probes", "hosts": [...],
                              # "host_count", "hosts_omitted"}]
    source_count: int = None  # port_sweep: distinct probers (exact unless estimated)
    source_count_estimated: bool = None  # port_sweep: more probers than max_sources
    sources_omitted: int = None  # port_sweep: source_count - len(sources)
    sources_complete: bool = None  # port_sweep: every prober is listed (= not estimated)
    probe_types: list = None  # stealth_scan: ["fin", "null", "xmas", "other"]
    sensitive_ports: str = None  # port_scan with `sensitive_ports` set: those probed, as ranges
    outcomes: dict = None     # {"open", "closed", "filtered", "unknown"} of the prober's attempts
    open_ports: str = None    # ports the scan found open, as ranges
    pairs_omitted: int = None  # failed_connections: refusing host+port pairs not listed
                               # (dst_ips/dst_ports come from the listed pairs)
    slow: bool = None         # slow_scan (the long-horizon tier): True
    slow_shape: str = None    # slow_scan: "ports_on_target" or "targets_on_port"
    slow_target: str = None   # slow_scan, ports_on_target: the target (dst_port: targets_on_port)
    span_s: float = None      # slow_scan: seconds from the first to the last counted attempt
    rules: list = None        # merged prober alert (sensor/episodes.py): every rule that
                              # matched, in priority order; `rule` is the first
    rule_evidence: dict = None  # merged: {rule: {count, count_kind, threshold, window_s,
                                # first_seen, last_seen, packets, count_estimated}}
    emitted_ns: int = dataclasses.field(default=0, repr=False)  # packet time of emission (not rendered)

    def to_dict(self):
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "emitted_ns":
                continue
            out[f.name] = value
        return out
