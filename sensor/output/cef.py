"""ArcSight CEF (format ``cef``), mapped for Microsoft Sentinel's CommonSecurityLog.

What it writes (RFC 3164 header without a TAG, the form Sentinel's AMA documents and
recognises by the ``CEF:`` that starts the content)::

    <PRI>Mmm dd hh:mm:ss HOSTNAME CEF:0|Vendor|Product|Version|rule|Title|Severity|ext

Header: Vendor/Product/Version from the ``FormatContext`` (``scan-sensor``, cut to 63,
63, 31 characters), SignatureID (DeviceEventClassID) = the rule, Name (Activity) = the
rule's title, Severity (LogSeverity) = high 8, medium 5, rate-limit summary 3. Header
text: CR/LF become spaces, other controls and non-UTF-8 bytes U+FFFD, then ``\\`` ->
``\\\\`` and ``|`` -> ``\\|``.

Extension, in this order (``KEY_MAP`` / ``CS_SLOTS`` / ``CN_SLOTS``; column in
CommonSecurityLog after the arrow):

* ``rt`` -> ReceiptTime: packet time of the report; ``start``/``end`` -> StartTime/EndTime:
  first/last packet. All integer epoch milliseconds (the one form every parser reads).
* ``src`` -> SourceIP (the prober; IPv6 too); ``dst`` -> DestinationIP and ``dpt`` ->
  DestinationPort only when the alert has exactly one target / one port.
* ``smac`` -> SourceMACAddress (arp_sweep, ndp_sweep: the sender's MAC).
* ``cnt`` -> EventCount (packets counted; for the summary: alerts held back).
* ``act`` -> DeviceAction: ``alert`` (first report), ``update`` (seq > 1), ``summary``.
* ``dvchost`` -> DeviceName (the sensor name); ``externalId`` -> ExtID (the alert id:
  updates keep it); ``deviceDirection`` -> CommunicationDirection (0 inbound, 1
  outbound; only for those two directions); ``msg`` -> Message (one-line summary).
* ``cs1..cs6`` with ``csNLabel`` = the field name -> DeviceCustomString1..6(+Label):
  cs1 dst_ports (summary: suppressed), cs2 dst_ips, cs3 sources (summary:
  example_sources), cs4 outcomes, cs5 open_ports, cs6 mitre.
* ``cn1..cn3`` with labels -> DeviceCustomNumber1..3: cn1 count (summary:
  suppressed_total), cn2 dst_port_count (summary: max_per_minute), cn3 dst_ip_count.
* Every other field as ``scanSensor<FieldInCamelCase>`` (``scanSensorSeq``,
  ``scanSensorFirstSeen``, ``scanSensorTruncated``, ...): Sentinel keeps these in
  AdditionalExtensions.

Extension values: controls other than CR/LF and non-UTF-8 bytes become U+FFFD, then
``\\`` -> ``\\\\``, ``=`` -> ``\\=``, LF -> ``\\n``, CR -> ``\\r`` (pipes are not escaped,
per the spec). Keys are alphanumeric.
"""
from sensor.output import fields as F
from sensor.output import rfc3164

CS_SLOTS = {"dst_ports": 1, "suppressed": 1, "dst_ips": 2, "sources": 3,
            "example_sources": 3, "outcomes": 4, "open_ports": 5, "mitre": 6}
CN_SLOTS = {"count": 1, "suppressed_total": 1, "dst_port_count": 2, "max_per_minute": 2,
            "dst_ip_count": 3}
# fields fully carried by a standard key (not repeated as scanSensor* keys)
CONSUMED = {"rule", "src_ip", "src_mac", "id", "packets"}
HEADER_LIMITS = (63, 63, 31, 1023, 512)
CUSTOM_PREFIX = "scanSensor"


def escape_header(text, max_len):
    text = F.clean_text(str(text).replace("\r", " ").replace("\n", " "))[:max_len]
    return text.replace("\\", "\\\\").replace("|", "\\|")


def escape_value(text):
    text = F.clean_text(text, keep_newlines=True)
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\n", "\\n").replace("\r", "\\r"))


def custom_key(name):
    return CUSTOM_PREFIX + "".join(p[:1].upper() + p[1:] for p in name.split("_") if p)


def extension_pairs(view, ctx):
    """(key, text) pairs in output order, before escaping."""
    f = view.fields
    pairs = [("rt", F.epoch_ms(view.emitted_ns))]
    if view.first_ns is not None:
        pairs.append(("start", F.epoch_ms(view.first_ns)))
    if view.last_ns is not None:
        pairs.append(("end", F.epoch_ms(view.last_ns)))
    if "src_ip" in f:
        pairs.append(("src", f["src_ip"]))
    if "src_mac" in f:
        pairs.append(("smac", f["src_mac"]))
    target, port = F.single_target(view), F.single_port(view)
    if target is not None:
        pairs.append(("dst", target))
    if port is not None:
        pairs.append(("dpt", port))
    if "packets" in f or "suppressed_total" in f:
        pairs.append(("cnt", f.get("packets", f.get("suppressed_total"))))
    pairs.append(("act", F.action(view)))
    pairs.append(("dvchost", ctx.hostname))
    if "id" in f:
        pairs.append(("externalId", f["id"]))
    direction = {"inbound": 0, "outbound": 1}.get(f.get("direction"))
    if direction is not None:
        pairs.append(("deviceDirection", direction))
    pairs.append(("msg", F.summary_text(view)))
    flat = F.flat_fields(view)
    custom = []
    slots = {}
    for name, text in flat:
        if name in CS_SLOTS:
            slots[("cs", CS_SLOTS[name])] = (name, text)
        elif name in CN_SLOTS:
            slots[("cn", CN_SLOTS[name])] = (name, text)
        elif name not in CONSUMED:
            custom.append((custom_key(name), text))
    for kind in ("cs", "cn"):
        for n in range(1, 7):
            if (kind, n) in slots:
                label, text = slots[(kind, n)]
                pairs += [(f"{kind}{n}Label", label), (f"{kind}{n}", text)]
    return pairs + custom


def render(view, ctx):
    head = "|".join(escape_header(v, lim) for v, lim in zip(
        (ctx.vendor, ctx.product, ctx.version, view.rule, F.RULE_TITLES.get(view.rule, view.rule)),
        HEADER_LIMITS))
    ext = " ".join(f"{k}={escape_value(F.scalar_text(v))}" for k, v in extension_pairs(view, ctx))
    syslog = rfc3164.header(ctx, F.severity(view, 0), view.emitted_ns)
    return f"{syslog} CEF:0|{head}|{F.severity(view, 1)}|{ext}".encode("utf-8")
