"""IBM QRadar LEEF 2.0 (format ``leef``).

What it writes (RFC 3164 header, as IBM's LEEF documentation shows)::

    <PRI>Mmm dd hh:mm:ss HOSTNAME LEEF:2.0|Vendor|Product|Version|rule|^|attr^attr...

* Header: Vendor/Product/Version from the ``FormatContext``, EventID = the rule. LEEF
  defines no escape for ``|`` in the header, so header text has ``|`` replaced by ``_``
  (and controls, non-UTF-8 bytes by U+FFFD); the sensor's own values never contain one.
* Delimiter: ``^``, declared in the header as ``^`` (LEEF 2.0 allows any character, or
  ``x``/``0x`` hex; IBM's own example uses ``^``). Not TAB: rsyslog relays rewrite
  control characters on receive by default (TAB -> ``#011``), which would merge every
  attribute. LEEF has no escape, so a ``^`` inside a value is replaced by U+FFFD, as
  are controls and non-UTF-8 bytes (``fields.clean_text``); the sensor's own values
  (addresses, ports, rule names) never contain one. ``=`` inside a value is left as
  is: an attribute is split at its first ``=`` (keys never hold one).
* Attributes, in order: the QRadar predefined ones ``devTime`` (packet time of the
  report) with ``devTimeFormat=MMM dd yyyy HH:mm:ss.SSS z`` (e.g. ``Nov 22 2026
  15:11:15.892 UTC``), ``sev`` (1-10: high 8, medium 5, rate-limit summary 3), ``cat``
  (``alert``, ``update`` or ``summary``), ``src``, ``srcMAC`` (arp_sweep, ndp_sweep),
  ``dst`` and ``dstPort`` (``dst`` and
  ``dstPort`` only when single), then every field of the record under its own name,
  encoded as in ``fields`` (lists comma-separated, ports as ranges, ``sources`` as
  parallel lists ``sources``, ``sources_probes``, ``sources_hosts`` ..., counters
  ``key:n``), ``truncated`` last when shortened.
"""
import time

from sensor.output import fields as F
from sensor.output import rfc3164

DELIMITER = "^"
DELIMITER_FIELD = "^"
DEV_TIME_FORMAT = "MMM dd yyyy HH:mm:ss.SSS z"


def dev_time(ts_ns):
    t = time.gmtime(int(ts_ns) // 1_000_000_000)
    ms = int(ts_ns) // 1_000_000 % 1000
    return (f"{rfc3164.MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ms:03d} UTC")


def header_text(text):
    return F.clean_text(text).replace("|", "_")


def value_text(value):
    return F.clean_text(F.scalar_text(value)).replace(DELIMITER, F.REPLACEMENT)


def attributes(view):
    """(key, text) pairs in output order, before cleaning."""
    pairs = [("devTime", dev_time(view.emitted_ns)), ("devTimeFormat", DEV_TIME_FORMAT),
             ("sev", F.severity(view, 2)), ("cat", F.action(view))]
    if view.fields.get("src_ip"):
        pairs.append(("src", view.fields["src_ip"]))
    if view.fields.get("src_mac"):
        pairs.append(("srcMAC", view.fields["src_mac"]))
    target, port = F.single_target(view), F.single_port(view)
    if target is not None:
        pairs.append(("dst", target))
    if port is not None:
        pairs.append(("dstPort", port))
    return pairs + F.flat_fields(view)


def render(view, ctx):
    head = "|".join(header_text(v) for v in (ctx.vendor, ctx.product, ctx.version, view.rule))
    attrs = DELIMITER.join(f"{k}={value_text(v)}" for k, v in attributes(view))
    syslog = rfc3164.header(ctx, F.severity(view, 0), view.emitted_ns)
    return f"{syslog} LEEF:2.0|{head}|{DELIMITER_FIELD}|{attrs}".encode("utf-8")
