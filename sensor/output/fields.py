"""What every alert format shares: the record view, value cleaning, list encodings,
severity scales, packet-time conversions and the shortening procedure.

Theory of operation. ``view(record)`` turns an ``Alert`` or ``RateLimited`` into a
``View``: its ``to_dict()`` fields in order, its packet times in ns, and which evidence
lists were cut (``truncated``). Each format renders a ``View``; ``formats.render``
shortens the view (``shortened(view, k)``) until the message fits ``max_bytes``.

Value rules (the same in every format; each format then applies its own escaping):

* Text is cleaned by ``clean_text``: a lone surrogate (a non-UTF-8 byte decoded with
  ``surrogateescape``), a C0 control (NUL, TAB, CR, LF, ...), DEL or a C1 control
  becomes U+FFFD. Formats with an escape for newlines (CEF extension values) keep CR
  and LF and escape them; JSON bodies keep every control (JSON escapes them).
* Lists of strings (``dst_ips``, ``mitre``, ``probe_types``, ``example_sources``):
  items joined with ``,``; in an item ``%`` is written ``%25`` and ``,`` ``%2C`` (so
  ``a,b`` as one item stays one item). An empty list is the empty string.
* Port sets are already range text (``"1-1000,2000"``) and are written as they are.
* Lists of objects (``sources: [{"ip", "probes", "hosts", "host_count",
  "hosts_omitted"}]``): parallel lists, one field per key of the first object, in the
  same order: ``sources`` (the ``ip`` values), then ``sources_<key>`` in alphabetical
  order (``sources_host_count``, ``sources_hosts``, ``sources_hosts_omitted``,
  ``sources_probes``). A value that is itself a list (each source's ``hosts``) is
  written as its items joined with a space, ``%``, ``,`` and space percent-encoded
  (``%25``, ``%2C``, ``%20``): ``sources_hosts=10.0.0.1 10.0.0.2,10.0.0.7`` is two
  sources, the first with two hosts.
* Counters (``outcomes``, ``suppressed``, ``truncated``): ``key:value`` pairs joined
  with ``,`` (``open:3,closed:997,filtered:0,unknown:0``); in a key ``%``, ``,`` and
  ``:`` are percent-encoded as in lists.
* Maps of maps (``rule_evidence: {rule: {count, threshold, ...}}``): one field per inner
  key, ``rule_evidence_count``, ``rule_evidence_threshold``, ... (in the inner keys'
  order), each a counter of ``rule:value`` pairs (``port_scan:1000,failed_connections:997``)
  in the rules' order; values are encoded as list items.
* Booleans ``true``/``false``; integers in decimal; floats as Python ``repr`` (``300.0``).

Shortening (``max_bytes``): the evidence lists (``EVIDENCE_LISTS``) keep their first
``k`` items (port range text: its first ``k`` comma parts), for the largest ``k`` whose
message fits; every list that was cut is named in ``truncated`` with how much was left
out (``dst_ports:900`` = 900 ports not listed, ``dst_ips:3`` = 3 addresses). Counts
(``dst_port_count``, ``dst_ip_count``, ...) and every other field stay whole, so the
header is intact and no escape or UTF-8 sequence is ever cut. If the message does not
fit even with every list empty, ``MessageTooLarge`` is raised.
"""
import calendar
import dataclasses
import datetime
import ipaddress
import re

_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_TEXT_KEEP_NL = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
REPLACEMENT = "\ufffd"
_ASCII_NUMBER = re.compile("[0-9]+")   # str.isdigit() also accepts '¹', '٣', ...

RATE_LIMIT_RULE = "alert_rate_limited"

# Lists shortened (in this order of fields) when a message must fit max_bytes.
EVIDENCE_LISTS = ("dst_ips", "dst_ports", "open_ports", "sensitive_ports", "sources",
                  "example_sources")
_RANGE_TEXT = frozenset(("dst_ports", "open_ports", "sensitive_ports"))

# record severity -> (syslog severity, CEF 0-10, LEEF sev 1-10, ECS event.severity)
SEVERITY_SCALES = {
    "high": (3, 8, 8, 73),       # syslog err;     CEF High;   Elastic "high"
    "medium": (4, 5, 5, 47),     # syslog warning; CEF Medium; Elastic "medium"
    "summary": (5, 3, 3, 21),    # rate-limit summary: syslog notice; CEF Low; Elastic "low"
}

RULE_TITLES = {
    "port_scan": "Port scan",
    "host_sweep": "Host sweep",
    "port_sweep": "Port sweep",
    "failed_connections": "Failed connections",
    "exposed_host_probe": "Exposed host probed",
    "stealth_scan": "Stealth scan",
    "udp_scan": "UDP port scan",
    "icmp_sweep": "ICMP sweep",
    "trw_scanner": "Scanner (threshold random walk)",
    "arp_sweep": "ARP sweep",
    "ndp_sweep": "IPv6 neighbour discovery sweep",
    "slow_scan": "Slow scan",
    "vertical_scan": "Vertical scan (failed ports)",
    RATE_LIMIT_RULE: "Alert rate limit",
}

# ATT&CK ids the rules emit -> (technique id, technique name, subtechnique id or None,
# subtechnique name, tactic id, tactic name)
ATTACK = {
    "T1046": ("T1046", "Network Service Discovery", None, None, "TA0007", "Discovery"),
    "T1018": ("T1018", "Remote System Discovery", None, None, "TA0007", "Discovery"),
    "T1595.001": ("T1595", "Active Scanning", "T1595.001", "Scanning IP Blocks",
                  "TA0043", "Reconnaissance"),
}


class MessageTooLarge(ValueError):
    """The message does not fit max_bytes even with every evidence list cut."""


@dataclasses.dataclass(frozen=True)
class View:
    fields: dict                 # to_dict() of the record, evidence lists possibly cut
    emitted_ns: int              # packet time of the message (header timestamps)
    first_ns: int                # first packet of the evidence, or None
    last_ns: int                 # last packet, or None
    truncated: dict              # evidence list -> items (ports, addresses) left out
    summary: bool                # True for the rate-limit summary record

    @property
    def rule(self):
        return str(self.fields.get("rule", ""))


def parse_rfc3339_ns(text):
    """'2026-11-22T15:11:15.884358Z' -> ns since the epoch; None if it is not that form."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z", str(text))
    if not m:
        return None
    try:
        dt = datetime.datetime(*(int(g) for g in m.groups()[:6]))
    except ValueError:
        return None
    frac = (m.group(7) or "").ljust(9, "0")
    return calendar.timegm(dt.timetuple()) * 1_000_000_000 + int(frac)


def view(record):
    """Alert or RateLimited -> View (all times from packet time, never the clock)."""
    fields = record.to_dict()
    summary = fields.get("rule") == RATE_LIMIT_RULE and "minute_start" in fields
    if summary:
        first = parse_rfc3339_ns(fields["minute_start"])
        last = None
        emitted = first
    else:
        first = parse_rfc3339_ns(fields.get("first_seen", ""))
        last = parse_rfc3339_ns(fields.get("last_seen", ""))
        emitted = getattr(record, "emitted_ns", 0) or last or first
    if emitted is None:
        raise ValueError(f"{fields.get('rule')!r} record has no packet time to render")
    return View(fields, int(emitted), first, last, {}, summary)


def severity(view_, scale):
    """scale: 0 syslog, 1 CEF, 2 LEEF, 3 ECS. Any severity other than 'high' is medium."""
    if view_.summary:
        key = "summary"
    else:
        key = "high" if view_.fields.get("severity") == "high" else "medium"
    return SEVERITY_SCALES[key][scale]


def epoch_ms(ns):
    return int(ns) // 1_000_000


def clean_text(value, keep_newlines=False):
    """Text with controls and lone surrogates replaced by U+FFFD (CR/LF kept if asked)."""
    pattern = _BAD_TEXT_KEEP_NL if keep_newlines else _BAD_TEXT
    return pattern.sub(REPLACEMENT, str(value))


def header_token(value, max_len):
    """An RFC 5424 header field: printable US-ASCII only, others as '_', cut, '-' if empty."""
    text = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in str(value))[:max_len]
    return text or "-"


def _pct(item, extra=""):
    out = str(item).replace("%", "%25").replace(",", "%2C")
    return out.replace(":", "%3A") if ":" in extra else out


def encode_list(items):
    return ",".join(_pct(i) for i in items)


def encode_inner_list(items):
    """A list inside one item of a list of objects: items joined with a space."""
    return " ".join(_pct(scalar_text(i)).replace(" ", "%20") for i in items)


def _object_item(value):
    if isinstance(value, (list, tuple)):
        return encode_inner_list(value)
    return _pct(scalar_text(value))


def encode_counts(mapping):
    return ",".join(f"{_pct(k, ':')}:{v}" for k, v in mapping.items())


def scalar_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def flat_fields(view_):
    """(name, text) pairs of every field, lists and counters encoded, then `truncated`."""
    out = []
    for name, value in view_.fields.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            inner = list(dict.fromkeys(k for v in value.values() for k in v))
            for key in inner:
                out.append((f"{name}_{key}", encode_counts(
                    {outer: _pct(scalar_text(v[key])) for outer, v in value.items() if key in v})))
        elif isinstance(value, dict):
            out.append((name, encode_counts(value)))
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, dict) for v in value):
                keys = sorted(value[0], key=lambda k: (k != "ip", k))
                for key in keys:
                    sub = name if key == "ip" else f"{name}_{key}"
                    out.append((sub, ",".join(_object_item(v.get(key, "")) for v in value)))
            else:
                out.append((name, encode_list(scalar_text(v) for v in value)))
        else:
            out.append((name, scalar_text(value)))
    if view_.truncated:
        out.append(("truncated", encode_counts(view_.truncated)))
    return out


def ip_or_none(text):
    """Canonical text of an IP address, or None if the text is not one."""
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        return None


_MAC = re.compile("[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def mac_or_none(text):
    """``aa:bb:cc:dd:ee:ff`` -> ECS's ``AA-BB-CC-DD-EE-FF``; None if the text is not a MAC."""
    if not isinstance(text, str) or not _MAC.fullmatch(text):
        return None
    return text.upper().replace(":", "-")


def single_target(view_):
    """The one destination address, when the alert has exactly one."""
    f = view_.fields
    ips = f.get("dst_ips") or []
    if len(ips) == 1 and f.get("dst_ip_count", 1) == 1:
        return str(ips[0])
    return None


def single_port(view_):
    """The one destination port: dst_port, or dst_ports when it is a single number."""
    f = view_.fields
    if isinstance(f.get("dst_port"), int) and not isinstance(f.get("dst_port"), bool):
        return f["dst_port"]
    text = str(f.get("dst_ports", ""))
    if _ASCII_NUMBER.fullmatch(text) and f.get("dst_port_count", 1) == 1 and int(text) <= 65535:
        return int(text)
    return None


def action(view_):
    """What kind of report this is: alert (first), update (seq > 1) or summary."""
    if view_.summary:
        return "summary"
    return "update" if view_.fields.get("update") else "alert"


def summary_text(view_):
    """One human-readable line (RFC 5424 MSG, CEF msg, ECS message)."""
    f = view_.fields
    title = RULE_TITLES.get(view_.rule, view_.rule)
    if view_.summary:
        return (f"{title}: {_n(f.get('suppressed_total'), 'alert')} held back (over "
                f"{f.get('max_per_minute')} per minute) in the minute from {f.get('minute_start')}")
    kind = str(f.get("count_kind", "")).replace("_", " ")
    text = (f"{title} from {f.get('src_ip')}: {f.get('count')} {kind}, "
            f"{_n(f.get('dst_port_count'), 'port')} on {_n(f.get('dst_ip_count'), 'host')}")
    rules = f.get("rules")
    if isinstance(rules, list) and len(rules) > 1:
        text += f"; rules: {', '.join(str(r) for r in rules)}"
    if f.get("update"):
        text += f" (update {f.get('seq')})"
    return text


def _n(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _range_size(part):
    lo, sep, hi = part.partition("-")
    if _ASCII_NUMBER.fullmatch(lo) and (not sep or _ASCII_NUMBER.fullmatch(hi)):
        return max(1, int(hi or lo) - int(lo) + 1)
    return 1


def longest_list(view_):
    n = 0
    for name in EVIDENCE_LISTS:
        value = view_.fields.get(name)
        if isinstance(value, str):
            n = max(n, len(value.split(",")) if value else 0)
        elif isinstance(value, list):
            n = max(n, len(value))
    return n


def shortened(view_, keep):
    """The view with each evidence list cut to its first `keep` items, cuts recorded."""
    fields = dict(view_.fields)
    truncated = dict(view_.truncated)
    for name in EVIDENCE_LISTS:
        value = fields.get(name)
        if name in _RANGE_TEXT and isinstance(value, str) and value:
            parts = value.split(",")
            if len(parts) > keep:
                fields[name] = ",".join(parts[:keep])
                truncated[name] = sum(_range_size(p) for p in parts[keep:])
        elif isinstance(value, list) and len(value) > keep:
            fields[name] = value[:keep]
            truncated[name] = len(value) - keep
    return dataclasses.replace(view_, fields=fields, truncated=truncated)
