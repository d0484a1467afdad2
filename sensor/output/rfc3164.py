"""RFC 3164 (BSD) syslog, format ``rfc3164``; its header also carries CEF and LEEF.

What it writes::

    <PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG          e.g.
    <108>Nov 22 15:11:15 edge-sensor-1 scan-sensor: rule="port_scan" src_ip="10.77.0.1" ...

* PRI as in RFC 5424 (facility * 8 + the record's syslog severity).
* TIMESTAMP: the record's packet time in **UTC** (RFC 3164 says local time; UTC keeps
  replay equal to live and needs no zone), English month, day space-padded, no year,
  whole seconds (the exact times are in the fields).
* HOSTNAME: the sensor name, printable US-ASCII (others as ``_``), <= 255.
* TAG: APP-NAME, then ``[PROCID]`` when PROCID is set: letters, digits, ``_ . -``
  only (others as ``_``), APP-NAME cut to 32 characters (RFC 3164's TAG limit; ``-``
  is accepted by rsyslog, syslog-ng and Sentinel's AMA although the RFC says
  alphanumeric).
* MSG: every field of the record as ``name="value"`` separated by one space, in record
  order (lists and counters encoded as in ``fields``), ``truncated`` last when
  shortened; values cleaned (no controls, no raw CR/LF) with ``\\`` -> ``\\\\`` and
  ``"`` -> ``\\"``. That is the ``key="value"`` form Splunk and most log tools extract
  automatically. UTF-8, no BOM. RFC 3164 caps a packet at 1024 bytes: over UDP pass
  ``max_bytes=1024`` to honour it.
"""
import re
import time

from sensor.output import fields as F
from sensor.output.rfc5424 import pri

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def bsd_timestamp(ts_ns):
    t = time.gmtime(int(ts_ns) // 1_000_000_000)
    return f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def header(ctx, severity, ts_ns):
    """'<PRI>Mmm dd hh:mm:ss HOSTNAME' (no trailing space)."""
    return f"<{pri(ctx, severity)}>{bsd_timestamp(ts_ns)} {F.header_token(ctx.hostname, 255)}"


def tag(ctx):
    app = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ctx.app_name))[:32] or "scan-sensor"
    procid = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ctx.procid))[:128]
    return app if procid in ("", "-") else f"{app}[{procid}]"


def quote(text):
    return '"' + F.clean_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(view, ctx):
    body = " ".join(f"{name}={quote(value)}" for name, value in F.flat_fields(view))
    return f"{header(ctx, F.severity(view, 0), view.emitted_ns)} {tag(ctx)}: {body}".encode("utf-8")
