"""Alert formats: one module per wire format; this module is their registry.

Every format renders the same alert record (``Alert`` or the rate-limit summary
``RateLimited``; both have ``to_dict()``) into one complete syslog message (header and
body, no transport framing): ``render(fmt, record, ctx, max_bytes=None) -> bytes``.
Delivery (``sensor/output/delivery.py``) adds framing and sends it. Output depends only
on the record and the context (times are packet times), so replay equals live.

Formats (each module's docstring says exactly what it writes):

* ``rfc5424`` (default, ``rfc5424.py``): RFC 5424 header + one SD-ELEMENT
  ``[scanSensor@32473 ...]`` with every field + a one-line MSG.
* ``rfc3164`` (``rfc3164.py``): BSD header, MSG of ``name="value"`` pairs.
* ``cef`` (``cef.py``): CEF:0 in an RFC 3164 header, keys mapped to Sentinel's
  CommonSecurityLog columns.
* ``leef`` (``leef.py``): LEEF 2.0 in an RFC 3164 header, TAB-delimited attributes.
* ``ecs`` (``ecs.py``): ECS JSON as MSG of an RFC 5424 header without SD.
* ``json``: the record's ``to_dict()`` as one line of ASCII JSON, as MSG of an RFC 5424
  header without SD (``<PRI>1 TIMESTAMP HOST APP PROCID rule - {...}``), with a
  ``truncated`` object when shortened. Lone surrogates become U+FFFD.

Shared rules (value cleaning, list encodings, severity scales, shortening) are in
``fields.py``. ``max_bytes`` asks for a message of at most that many bytes: the
evidence lists are cut (``fields.shortened``: first k items, the cut lists and the
number of items left out named in ``truncated``), the header and every other field stay
whole; ``MessageTooLarge`` (a ``ValueError``) if even empty lists do not fit.

UDP (RFC 5426): use ``UDP_DEFAULT_MAX_BYTES`` = 2048, the size RFC 5426 section 3.2 says
every receiver SHOULD accept (480 is only the MUST minimum; rsyslog accepts 8 KiB and
Elastic's UDP input 10 KiB by default; 65507 is merely the IPv4 datagram maximum, which
a collector may truncate). Alerts of the shipped captures are 0.6-1.5 KiB, so most never
reach it; paths that must avoid IP fragmentation configure 1180 (RFC 5426's safe IPv6
size) or 480.
"""
import dataclasses

from sensor.output import cef, ecs, leef, rfc3164, rfc5424
from sensor.output import fields as F
from sensor.output.fields import MessageTooLarge  # noqa: F401  (re-exported)

DEFAULT_FORMAT = "rfc5424"
FORMAT_NAMES = ("rfc5424", "rfc3164", "cef", "leef", "ecs", "json")
UDP_DEFAULT_MAX_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class FormatContext:
    """What a message says about its sender (the same for every alert of one output)."""
    hostname: str                 # syslog HOSTNAME: the sensor name
    app_name: str = "scan-sensor"
    procid: str = "-"
    facility: int = 13            # log audit (RFC 5424 table 1)
    version: str = "0.1.0"        # product version (CEF/LEEF headers, ECS observer)
    vendor: str = "scan-sensor"   # CEF/LEEF Vendor, ECS observer.vendor
    product: str = "scan-sensor"  # CEF/LEEF Product, ECS observer.product
    sd_id: str = "scanSensor@32473"  # RFC 5424 SD-ID (32473: RFC 5612 documentation PEN)


def _render_json(view, ctx):
    doc = dict(view.fields, truncated=dict(view.truncated)) if view.truncated else view.fields
    head = rfc5424.header(ctx, F.severity(view, 0), view.emitted_ns, view.rule)
    return f"{head} - {ecs.dumps(doc)}".encode("ascii")


_RENDERERS = {"rfc5424": rfc5424.render, "rfc3164": rfc3164.render, "cef": cef.render,
              "leef": leef.render, "ecs": ecs.render, "json": _render_json}


def render(fmt, record, ctx, max_bytes=None):
    """One alert record -> one syslog message (bytes, no framing), at most max_bytes."""
    if fmt not in FORMAT_NAMES:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMAT_NAMES)})")
    renderer = _RENDERERS[fmt]
    view = F.view(record)
    message = renderer(view, ctx)
    if max_bytes is None or len(message) <= max_bytes:
        return message
    best = None
    lo, hi = 0, F.longest_list(view) - 1       # largest k of list items that fits
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = renderer(F.shortened(view, mid), ctx)
        if len(candidate) <= max_bytes:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    if best is None:
        minimal = len(renderer(F.shortened(view, 0), ctx))
        raise MessageTooLarge(
            f"{fmt} message for {view.rule} alert {view.fields.get('id', '')} needs "
            f"{minimal} bytes even with every evidence list cut; max_bytes is {max_bytes}")
    return best
