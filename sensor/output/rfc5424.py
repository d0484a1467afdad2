"""RFC 5424 syslog: the alert fields as structured data (format ``rfc5424``, the default).

What it writes::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [scanSensor@32473 name="value" ...] MSG

* PRI = facility * 8 + severity; severity from the record (``fields.SEVERITY_SCALES``:
  high -> 3 err, medium -> 4 warning, rate-limit summary -> 5 notice).
* TIMESTAMP: the record's packet time (``Alert.emitted_ns``; the summary's
  ``minute_start``), RFC 3339 UTC with microseconds. Never the wall clock.
* HOSTNAME (the sensor name, <= 255), APP-NAME (<= 48), PROCID (<= 128) from the
  ``FormatContext``, MSGID = the rule (<= 32): printable US-ASCII only (any other
  character becomes ``_``), cut to the RFC's length, ``-`` if empty (config strings may
  be hostile: a space or LF there would shift or split the header).
* One SD-ELEMENT, SD-ID ``scanSensor@32473``: a private SD-ID of the form
  ``name@<enterprise number>``; 32473 is the number RFC 5612 reserves for
  documentation, to be replaced by the project's own IANA private enterprise number
  once it has one (``FormatContext.sd_id``). Its SD-PARAMs are every field of the record
  in order (``fields.flat_fields``: lists comma-separated in one PARAM-VALUE, ports as
  ranges, ``sources`` as parallel lists
  ``sources``, ``sources_probes``, ``sources_hosts`` ..., counters as ``key:n``), then
  ``truncated`` when shortened. PARAM-NAMEs are the record's field names (printable
  US-ASCII without ``=``, space, ``]``, ``"``, at most 32 characters; checked).
  PARAM-VALUE: text cleaned (``fields.clean_text``: controls and non-UTF-8 bytes become
  U+FFFD, so no raw CR/LF), then ``\\`` -> ``\\\\``, ``"`` -> ``\\"``, ``]`` -> ``\\]``.
* MSG: a one-line summary (``fields.summary_text``), cleaned; it starts with the UTF-8
  BOM (EF BB BF, RFC 5424 MSG-UTF8) only when it contains non-ASCII text, so pure ASCII
  messages (all the sensor itself produces) carry no BOM that a receiver could trip on.
"""
import re

from sensor.alerts import rfc3339
from sensor.output import fields as F

SD_NAME_FORBIDDEN = set('= ]"')
BOM = "\ufeff"


def pri(ctx, severity):
    if not 0 <= int(ctx.facility) <= 23:
        raise ValueError(f"syslog facility must be 0..23, not {ctx.facility!r}")
    return int(ctx.facility) * 8 + severity


def header(ctx, severity, ts_ns, msgid):
    """'<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID' (sanitised, no trailing space)."""
    return (f"<{pri(ctx, severity)}>1 {rfc3339(ts_ns)} {F.header_token(ctx.hostname, 255)} "
            f"{F.header_token(ctx.app_name, 48)} {F.header_token(ctx.procid, 128)} "
            f"{F.header_token(msgid, 32)}")


def check_sd_name(name):
    if not (1 <= len(name) <= 32) or any(not 33 <= ord(c) <= 126 or c in SD_NAME_FORBIDDEN
                                         for c in name):
        raise ValueError(f"not a valid RFC 5424 SD-NAME: {name!r}")
    return name


def check_sd_id(sd_id):
    name, at, number = sd_id.partition("@")
    check_sd_name(sd_id)
    if at and (not name or not re.fullmatch("[0-9]+", number)):
        raise ValueError(f"private SD-ID must be name@<enterprise number>: {sd_id!r}")
    return sd_id


def escape_param_value(text):
    return F.clean_text(text).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def message_text(text):
    """MSG: cleaned, with the BOM when it is not pure ASCII."""
    text = F.clean_text(text)
    return text if text.isascii() else BOM + text


def render(view, ctx):
    params = " ".join(f'{check_sd_name(name)}="{escape_param_value(value)}"'
                      for name, value in F.flat_fields(view))
    sd = f"[{check_sd_id(ctx.sd_id)}{' ' if params else ''}{params}]"
    head = header(ctx, F.severity(view, 0), view.emitted_ns, view.rule)
    return f"{head} {sd} {message_text(F.summary_text(view))}".encode("utf-8")
