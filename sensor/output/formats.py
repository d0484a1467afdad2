"""Alert formats: one module per wire format; this module is their registry.

Every format renders the same alert record (``Alert`` or the rate-limit
summary ``RateLimited``; both have ``to_dict()``) into one complete syslog
message (header and body, no transport framing): ``render(fmt, record, ctx)``.
Delivery (``sensor/output/delivery.py``) adds framing and sends it.

``max_bytes`` (UDP: RFC 5426 size limits) asks for a message no longer than
that; a format shortens its evidence lists in a documented way (with an
explicit truncation marker and counts) rather than cut bytes.

CONTRACT STUB: the formats issue replaces the bodies below with the real
formats (rfc5424, rfc3164, cef, leef, ecs, json), keeping these names.
"""
import dataclasses
import datetime
import json

DEFAULT_FORMAT = "rfc5424"
FORMAT_NAMES = ("rfc5424", "rfc3164", "cef", "leef", "ecs", "json")


@dataclasses.dataclass(frozen=True)
class FormatContext:
    """What a message says about its sender (the same for every alert of one output)."""
    hostname: str                 # syslog HOSTNAME: the sensor name
    app_name: str = "scan-sensor"
    procid: str = "-"
    facility: int = 13            # log audit (RFC 5424 table 1)
    version: str = "0.1.0"        # product version (CEF/LEEF headers, ECS observer)


def render(fmt, record, ctx, max_bytes=None):
    """One alert record -> one syslog message (bytes, no framing)."""
    if fmt not in FORMAT_NAMES:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMAT_NAMES)})")
    body = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False)
    pri = ctx.facility * 8 + 5
    ts = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    msg = f"<{pri}>1 {ts} {ctx.hostname} {ctx.app_name} {ctx.procid} {record.rule} - {body}"
    return msg.encode("utf-8", "replace")
