"""Alert records: plain data that every formatter renders the same way.

Field names are a contract with SIEM content: later versions add fields but
never rename these. See README "Alert fields".
"""
import dataclasses
import datetime
import uuid

ALERT_NAMESPACE = uuid.UUID("6f1c3a52-6d1e-4c55-9a0e-5c2b9d7e8a41")


def compress_ports(ports):
    """Sorted distinct ports -> "21-23,80,443" (complete, never sampled)."""
    parts = []
    ports = sorted(set(int(p) for p in ports))
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        parts.append(str(ports[i]) if i == j else f"{ports[i]}-{ports[j]}")
        i = j + 1
    return ",".join(parts)


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
    """One detection, with its complete evidence. Field order is the output order."""
    rule: str                 # "port_scan", ...
    src_ip: str               # canonical text: IPv4-mapped addresses print as IPv4
    dst_ips: list             # distinct destinations, capped (see dst_ips_omitted)
    dst_ip_count: int         # distinct destinations in all
    dst_ips_omitted: int      # dst_ip_count - len(dst_ips)
    dst_ip_count_estimated: bool  # True when dst_ip_count came from the sketch (list was full)
    dst_ports: str            # every distinct port, as ranges "21-23,80,443"
    dst_port_count: int
    first_seen: str           # RFC 3339 UTC, packet time
    last_seen: str
    packets: int              # probes counted for this alert
    severity: str             # "medium"; "high" at 10x the threshold
    mitre: list               # ATT&CK technique ids
    sensor: str
    id: str                   # stable: same scan, same sensor -> same id
    threshold: int
    window_s: float

    def to_dict(self):
        return dataclasses.asdict(self)
