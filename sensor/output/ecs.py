"""Elastic Common Schema JSON as the message (format ``ecs``).

What it writes: an RFC 5424 header (as ``rfc5424``) with no structured data (``-``) and
the ECS document as MSG, one line of ASCII JSON (non-ASCII as ``\\u`` escapes, so no
BOM is needed; lone surrogates from non-UTF-8 bytes become U+FFFD first)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID rule - {"@timestamp": ..., "event": {...}, ...}

Fields (ECS 8.x; types in ``tests/test_formats.py:ECS_TYPES``):

* ``@timestamp``: packet time of the report. ``message``: the one-line summary (Elastic's
  External Alerts rule uses it as the alert name).
* ``event.kind: alert``, ``event.category: [network, intrusion_detection]`` (summary:
  ``[intrusion_detection]``), ``event.type: [info]`` (the allowed type for both
  categories), ``event.action`` = the rule, ``event.severity`` and ``event.risk_score``
  on Elastic's scale (high 73, medium 47, rate-limit summary 21), ``event.start`` /
  ``event.end`` (first / last packet), ``event.id`` = the alert id and
  ``event.sequence`` = ``seq`` (updates share the id), ``event.dataset: scan_sensor.alert``.
* ``source.ip`` (the prober), ``source.mac`` (arp_sweep, ndp_sweep: the sender's MAC,
  upper case with hyphens as ECS writes it), ``destination.ip`` / ``destination.port`` only when single,
  ``network.direction`` (inbound, outbound, internal, external: ECS's perimeter values),
  ``related.ip`` (prober, listed targets, listed sources). Address fields hold only
  values that parse as IP addresses (others stay in ``scan_sensor`` only).
* ``threat.framework: MITRE ATT&CK``, ``threat.technique.id``/``name``/``reference``,
  ``threat.technique.subtechnique.*`` and ``threat.tactic.*`` for the ids the rules emit
  (``fields.ATTACK``), as arrays; ids it does not know stay in ``scan_sensor.mitre``.
* ``rule.id`` = the rule, ``rule.name`` = its title, ``rule.ruleset: scan-sensor``;
  ``observer.name`` (sensor name), ``observer.type: ids``, ``observer.vendor``,
  ``observer.product``, ``observer.version``; ``ecs.version``.
* ``scan_sensor``: the whole record (``to_dict()``: every field under its own name, lists
  as JSON arrays, ports as range text), plus ``scan_sensor.truncated`` (list -> items
  left out) when shortened.
"""
import json
import re

from sensor.alerts import rfc3339
from sensor.output import fields as F
from sensor.output import rfc5424

ECS_VERSION = "8.11.0"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_json(value):
    """Lone surrogates -> U+FFFD everywhere in a JSON-able value (JSON escapes controls)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def dumps(doc):
    return json.dumps(clean_json(doc), ensure_ascii=True, separators=(",", ":"))


def threat(mitre):
    known = [F.ATTACK[t] for t in mitre if isinstance(t, str) and t in F.ATTACK]
    if not known:
        return None
    out = {"framework": "MITRE ATT&CK"}
    tech_ids = list(dict.fromkeys(k[0] for k in known))
    names = {k[0]: k[1] for k in known}
    out["technique"] = {
        "id": tech_ids, "name": [names[t] for t in tech_ids],
        "reference": [f"https://attack.mitre.org/techniques/{t}/" for t in tech_ids]}
    subs = [k for k in known if k[2]]
    if subs:
        out["technique"]["subtechnique"] = {
            "id": [k[2] for k in subs], "name": [k[3] for k in subs],
            "reference": [f"https://attack.mitre.org/techniques/{k[2].replace('.', '/')}/"
                          for k in subs]}
    tactics = list(dict.fromkeys((k[4], k[5]) for k in known))
    out["tactic"] = {"id": [t[0] for t in tactics], "name": [t[1] for t in tactics],
                     "reference": [f"https://attack.mitre.org/tactics/{t[0]}/" for t in tactics]}
    return out


def document(view, ctx):
    f = view.fields
    event = {"kind": "alert",
             "category": ["intrusion_detection"] if view.summary else
             ["network", "intrusion_detection"],
             "type": ["info"], "action": view.rule,
             "severity": F.severity(view, 3), "risk_score": float(F.severity(view, 3)),
             "dataset": "scan_sensor.alert"}
    if view.first_ns is not None:
        event["start"] = rfc3339(view.first_ns)
    if view.last_ns is not None:
        event["end"] = rfc3339(view.last_ns)
    if "id" in f:
        event["id"] = str(f["id"])
    if isinstance(f.get("seq"), int):
        event["sequence"] = f["seq"]
    doc = {"@timestamp": rfc3339(view.emitted_ns), "message": F.summary_text(view),
           "ecs": {"version": ECS_VERSION}, "event": event}
    src = F.ip_or_none(f.get("src_ip", ""))
    if src:
        doc["source"] = {"ip": src}
    mac = F.mac_or_none(f.get("src_mac"))
    if mac:     # ECS spells MACs upper case, hyphen-separated
        doc.setdefault("source", {})["mac"] = mac
    target, port = F.single_target(view), F.single_port(view)
    target = F.ip_or_none(target) if target is not None else None
    if target or port is not None:
        doc["destination"] = {k: v for k, v in (("ip", target), ("port", port)) if v is not None}
    if f.get("direction") in ("inbound", "outbound", "internal", "external"):
        doc["network"] = {"direction": f["direction"]}
    related = [src] + [F.ip_or_none(i) for i in f.get("dst_ips") or []]
    related += [F.ip_or_none(s.get("ip")) for s in f.get("sources") or [] if isinstance(s, dict)]
    related += [F.ip_or_none(i) for i in f.get("example_sources") or []]
    related = list(dict.fromkeys(i for i in related if i))
    if related:
        doc["related"] = {"ip": related}
    t = threat(f.get("mitre") or [])
    if t:
        doc["threat"] = t
    doc["rule"] = {"id": view.rule, "name": F.RULE_TITLES.get(view.rule, view.rule),
                   "ruleset": "scan-sensor"}
    doc["observer"] = {"name": str(ctx.hostname), "type": "ids", "vendor": ctx.vendor,
                       "product": ctx.product, "version": ctx.version}
    doc["scan_sensor"] = dict(f, truncated=dict(view.truncated)) if view.truncated else dict(f)
    return doc


def render(view, ctx):
    head = rfc5424.header(ctx, F.severity(view, 0), view.emitted_ns, view.rule)
    return f"{head} - {dumps(document(view, ctx))}".encode("ascii")
