"""Alert formats (sensor/output/formats.py): real alerts from the shipped nmap capture in
every format, a field-by-field round trip through the strict parsers of
tests/strict_parsers.py, max_bytes shortening, and hypothesis property tests with
hostile strings in every string field (SCAN_SENSOR_DEEP=1 runs 20x more examples).

The expected values are computed here from the documented rules (sensor/output/fields.py
docstring), not by calling the formatter's own encoders.
"""
import datetime
import ipaddress
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sensor.alert_gate import RateLimited
from sensor.alerts import Alert, compress_ports, expand_ports
from sensor.output import cef as cef_module
from sensor.output.formats import (DEFAULT_FORMAT, FORMAT_NAMES, FormatContext,
                                   MessageTooLarge, UDP_DEFAULT_MAX_BYTES, render)
from strict_parsers import (ParseError, parse_3164_header, parse_cef, parse_leef,
                            parse_rfc3164, parse_rfc5424)

DEEP = os.environ.get("SCAN_SENSOR_DEEP") == "1"
EXAMPLES = int(os.environ.get("SCAN_SENSOR_EXAMPLES", 1000 if DEEP else 50))
CTX = FormatContext(hostname="edge-sensor-1")
EVIDENCE = ("dst_ips", "dst_ports", "open_ports", "sensitive_ports", "sources", "example_sources")
RANGE_TEXT = ("dst_ports", "open_ports", "sensitive_ports")
SYSLOG_SEV = {"high": 3, "medium": 4, "summary": 5}
CEF_SEV = {"high": 8, "medium": 5, "summary": 3}
ECS_SEV = {"high": 73, "medium": 47, "summary": 21}


# ---------------------------------------------------------------- the documented rules

def clean(text, keep_newlines=False):
    out = []
    for ch in str(text):
        o = ord(ch)
        bad = o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF
        if bad and not (keep_newlines and ch in "\r\n"):
            ch = "\ufffd"
        out.append(ch)
    return "".join(out)


def text_of(value):
    if value is True or value is False:
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def item(text):
    return text.replace("%", "%25").replace(",", "%2C")


def counts(mapping):
    return ",".join(f"{item(str(k)).replace(':', '%3A')}:{v}" for k, v in mapping.items())


def flat(d, truncated=None):
    """The record's fields as (name, text), per the documented encodings."""
    out = []
    for name, value in d.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            # rule_evidence: one counter per inner key, rule:value, values encoded as items
            for key in dict.fromkeys(k for v in value.values() for k in v):
                out.append((f"{name}_{key}", counts(
                    {rule: item(text_of(v[key])) for rule, v in value.items() if key in v})))
        elif isinstance(value, dict):
            out.append((name, counts(value)))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            # one field per key: ip first, the rest alphabetical; a list inside an
            # object as its items joined by spaces
            for key in sorted(value[0], key=lambda k: (k != "ip", k)):
                out.append((name if key == "ip" else f"{name}_{key}", ",".join(
                    " ".join(item(text_of(h)).replace(" ", "%20") for h in s.get(key, ""))
                    if isinstance(s.get(key), list) else item(text_of(s.get(key, "")))
                    for s in value)))
        elif isinstance(value, list):
            out.append((name, ",".join(item(text_of(v)) for v in value)))
        else:
            out.append((name, text_of(value)))
    if truncated:
        out.append(("truncated", counts(truncated)))
    return out


def severity_key(d):
    if d.get("rule") == "alert_rate_limited":
        return "summary"
    return "high" if d.get("severity") == "high" else "medium"


def header_token(text, limit):
    return "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(text))[:limit] or "-"


def ns_of(text):
    dt = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int(dt.replace(tzinfo=datetime.timezone.utc).timestamp()) * 10**9 + dt.microsecond * 1000


def message_time_ns(record):
    d = record.to_dict()
    if d["rule"] == "alert_rate_limited":
        return ns_of(d["minute_start"])
    return record.emitted_ns or ns_of(d["last_seen"])


def json_clean(value):
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    if isinstance(value, dict):
        return {json_clean(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_clean(v) for v in value]
    return value


# ---------------------------------------------------------------- decoding a message

def camel_to_snake(key):
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def fields_of(fmt, message, ctx=CTX):
    """Parse with the strict parser and return (field name -> text as written, parsed)."""
    if fmt == "rfc5424":
        p = parse_rfc5424(message)
        assert p["sd"] is not None and len(p["sd"]) == 1 and p["sd"][0][0] == ctx.sd_id
        return p["sd"][0][1], p
    if fmt == "rfc3164":
        p = parse_rfc3164(message)
        return p["pairs"], p
    if fmt == "leef":
        pri, ts, host, content = parse_3164_header(message)
        p = parse_leef(content)
        standard = [a for a in p["attrs"] if a[0] in ("devTime", "devTimeFormat", "sev", "cat",
                                                       "src", "srcMAC", "dst", "dstPort")]
        assert p["attrs"][:len(standard)] == standard, "standard attributes come first"
        p.update(pri=pri, hostname=host, standard=dict(standard))
        return p["attrs"][len(standard):], p
    if fmt == "cef":
        pri, ts, host, content = parse_3164_header(message)
        p = parse_cef(content)
        ext = p["ext"]
        keys = [k for k, _ in ext]
        assert len(keys) == len(set(keys)), f"a CEF key twice: {keys}"
        e = dict(ext)
        p.update(pri=pri, hostname=host, e=e)
        out = {"rule": p["signature_id"]}
        if "src" in e:
            out["src_ip"] = e["src"]
        if "smac" in e:
            out["src_mac"] = e["smac"]
        if "externalId" in e:
            out["id"] = e["externalId"]
        for kind in ("cs", "cn"):
            for n in range(1, 7):
                if f"{kind}{n}" in e:
                    out[e[f"{kind}{n}Label"]] = e[f"{kind}{n}"]
                else:
                    assert f"{kind}{n}Label" not in e
        for k, v in ext:
            if k.startswith("scanSensor"):
                out[camel_to_snake(k[len("scanSensor"):])] = v
        allowed = {"rt", "start", "end", "src", "smac", "dst", "dpt", "cnt", "act", "dvchost",
                   "externalId", "deviceDirection", "msg"}
        extra = [k for k in keys if k not in allowed and not k.startswith("scanSensor")
                 and not re.fullmatch(r"c[sn][1-6](Label)?", k)]
        assert not extra, f"unexpected CEF keys {extra}"
        return list(out.items()), p
    if fmt in ("ecs", "json"):
        p = parse_rfc5424(message)
        assert p["sd"] is None and not p["bom"] and message.isascii()
        p["doc"] = json.loads(p["msg"])
        return None, p
    raise AssertionError(fmt)


def check_round_trip(fmt, record, message, ctx=CTX, truncated=None, full=None):
    """Every field of `record` (cut lists as in `full` with `truncated`) comes back."""
    d = record.to_dict() if full is None else full
    assert b"\n" not in message and b"\r" not in message
    got, p = fields_of(fmt, message, ctx)
    sev = severity_key(d)
    if fmt in ("ecs", "json"):
        doc = p["doc"]
        expect = json_clean(d)
        if truncated:
            expect["truncated"] = truncated
        assert (doc["scan_sensor"] if fmt == "ecs" else doc) == expect
        if fmt == "ecs":
            check_ecs(doc, d, ctx)
    elif fmt == "cef":
        expect = dict((k, clean(v, True)) for k, v in flat(d, truncated))
        expect["rule"] = clean(d["rule"].replace("\r", " ").replace("\n", " "))[:1023]
        got = dict(got)
        if "packets" in expect:
            assert p["e"]["cnt"] == expect.pop("packets")
        assert got == expect
        assert p["severity"] == CEF_SEV[sev]
        assert p["vendor"] == clean(ctx.vendor.replace("\n", " ").replace("\r", " "))[:63]
        assert p["e"]["dvchost"] == clean(ctx.hostname, True)
        assert int(p["e"]["rt"]) == message_time_ns(record) // 10**6
    elif fmt == "leef":
        assert got == [(k, clean(v).replace("^", "\ufffd")) for k, v in flat(d, truncated)]
        assert p["standard"]["sev"] == str(CEF_SEV[sev])
        assert p["delimiter"] == "^"
    else:
        assert got == [(k, clean(v)) for k, v in flat(d, truncated)]
    if fmt in ("rfc5424", "ecs", "json"):
        assert p["hostname"] == header_token(ctx.hostname, 255)
        assert p["app_name"] == header_token(ctx.app_name, 48)
        assert p["msgid"] == header_token(d["rule"], 32)
        ts = message_time_ns(record)
        assert ns_of(p["timestamp"]) == ts // 1000 * 1000
    assert p["pri"] == ctx.facility * 8 + SYSLOG_SEV[sev]
    return p


# ---------------------------------------------------------------- ECS field types

# ECS types of the fields the ecs format writes (elastic/ecs schemas; ecosystem.md 2.1).
ECS_TYPES = {
    "@timestamp": "date", "message": "match_only_text", "ecs.version": "keyword",
    "event.kind": "keyword", "event.category": "keyword", "event.type": "keyword",
    "event.action": "keyword", "event.severity": "long", "event.risk_score": "float",
    "event.dataset": "keyword", "event.start": "date", "event.end": "date",
    "event.id": "keyword", "event.sequence": "long",
    "source.ip": "ip", "source.mac": "keyword", "destination.ip": "ip", "destination.port": "long",
    "network.direction": "keyword", "related.ip": "ip",
    "threat.framework": "keyword", "threat.technique.id": "keyword",
    "threat.technique.name": "keyword", "threat.technique.reference": "keyword",
    "threat.technique.subtechnique.id": "keyword", "threat.technique.subtechnique.name": "keyword",
    "threat.technique.subtechnique.reference": "keyword", "threat.tactic.id": "keyword",
    "threat.tactic.name": "keyword", "threat.tactic.reference": "keyword",
    "rule.id": "keyword", "rule.name": "keyword", "rule.ruleset": "keyword",
    "observer.name": "keyword", "observer.type": "keyword", "observer.vendor": "keyword",
    "observer.product": "keyword", "observer.version": "keyword",
}
ECS_ALLOWED = {
    "event.kind": {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error"},
    "event.category": {"network", "intrusion_detection"},
    "network.direction": {"ingress", "egress", "inbound", "outbound", "internal", "external",
                          "unknown"},
}
# event.category -> the event.type values ECS expects with it
ECS_CATEGORY_TYPES = {"network": {"access", "allowed", "connection", "denied", "end", "info",
                                  "protocol", "start"},
                      "intrusion_detection": {"allowed", "denied", "info"}}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def ecs_leaves(doc, prefix=""):
    for key, value in doc.items():
        path = prefix + key
        if isinstance(value, dict):
            yield from ecs_leaves(value, path + ".")
        else:
            yield path, value


def check_ecs_type(path, value):
    kind = ECS_TYPES[path]
    for v in value if isinstance(value, list) else [value]:
        if kind in ("keyword", "match_only_text"):
            assert isinstance(v, str), (path, v)
        elif kind == "long":
            assert isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63, (path, v)
        elif kind == "float":
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (path, v)
        elif kind == "ip":
            ipaddress.ip_address(v)
        elif kind == "date":
            assert isinstance(v, str) and RFC3339.fullmatch(v), (path, v)


def check_ecs(doc, d, ctx):
    for path, value in ecs_leaves({k: v for k, v in doc.items() if k != "scan_sensor"}):
        assert path in ECS_TYPES, f"{path} is not an ECS field this format declares"
        check_ecs_type(path, value)
        if path in ECS_ALLOWED:
            for v in value if isinstance(value, list) else [value]:
                assert v in ECS_ALLOWED[path], (path, v)
    event = doc["event"]
    assert event["kind"] == "alert"
    for t in event["type"]:
        assert all(t in ECS_CATEGORY_TYPES[c] for c in event["category"])
    assert event["action"] == json_clean(d["rule"])
    assert event["severity"] == ECS_SEV[severity_key(d)]
    if "id" in d:
        assert event["id"] == json_clean(d["id"]) and event["sequence"] == d["seq"]
    if "destination" in doc and "port" in doc["destination"]:
        assert 0 <= doc["destination"]["port"] <= 65535
    assert doc["observer"]["type"] == "ids"
    assert doc["observer"]["name"] == json_clean(ctx.hostname)


# ---------------------------------------------------------------- real alerts

@pytest.fixture(scope="module")
def nmap_alerts():
    from sensor.capture.files import CaptureFile
    from sensor.config import load_config
    from sensor.engine import Engine
    from conftest import shipped
    cfg = load_config(None, ['sensor.name="edge-sensor-1"', "sensor.hash_seed=1",
                             'alerts.group="rule"'])
    engine = Engine(cfg)
    alerts = []
    with CaptureFile(str(shipped("nmap_syn_scan.pcap")), cfg["capture.read_chunk_bytes"]) as cap:
        for batch in cap.batches(engine.batches, engine.decode_stats):
            alerts += engine.process(batch)
    alerts += engine.finish()
    return alerts


@pytest.fixture(scope="module")
def port_scan(nmap_alerts):
    [alert] = [a for a in nmap_alerts if a.rule == "port_scan"]
    return alert


def test_registry_contract():
    assert DEFAULT_FORMAT == "rfc5424" and set(FORMAT_NAMES) == {
        "rfc5424", "rfc3164", "cef", "leef", "ecs", "json"}
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render("xml", None, CTX)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_nmap_alerts_round_trip(fmt, nmap_alerts):
    assert {a.rule for a in nmap_alerts} == {"port_scan", "vertical_scan", "failed_connections"}
    for alert in nmap_alerts:
        message = render(fmt, alert, CTX)
        check_round_trip(fmt, alert, message)
        assert render(fmt, alert, CTX) == message, "deterministic (packet time only)"


def test_rfc5424_port_scan(port_scan):
    m = render("rfc5424", port_scan, CTX)
    p = parse_rfc5424(m)
    assert m.startswith(b"<107>1 2026-11-22T15:11:20.884666Z edge-sensor-1 scan-sensor - port_scan "
                        b"[scanSensor@32473 rule=\"port_scan\" src_ip=\"10.77.0.1\" ")
    sd = dict(p["sd"][0][1])
    assert sd["dst_ports"] == "1-1000" and sd["outcomes"] == "open:3,closed:997,filtered:0,unknown:0"
    assert sd["open_ports"] == "22,80,443" and sd["id"] == "54befe91-1a98-5cfd-95ae-f8dacb024d95"
    assert p["msg"] == "Port scan from 10.77.0.1: 1000 distinct ports, 1000 ports on 1 host"
    assert not p["bom"]


def test_rfc3164_port_scan(port_scan):
    m = render("rfc3164", port_scan, CTX)
    assert m.startswith(b"<107>Nov 22 15:11:20 edge-sensor-1 scan-sensor: rule=\"port_scan\" ")
    assert ("dst_ports", "1-1000") in parse_rfc3164(m)["pairs"]


def test_cef_port_scan_maps_sentinel_columns(port_scan):
    m = render("cef", port_scan, CTX)
    assert m.startswith(b"<107>Nov 22 15:11:20 edge-sensor-1 "
                        b"CEF:0|scan-sensor|scan-sensor|0.1.0|port_scan|Port scan|8|")
    e = parse_cef(parse_3164_header(m)[3])["ext"]
    e = dict(e)
    assert e["src"] == "10.77.0.1" and e["dst"] == "10.77.0.2" and "dpt" not in e  # 1000 ports
    assert e["rt"] == "1795360280884" and e["start"] == "1795360275884" and e["end"] == "1795360275892"
    assert e["cnt"] == "1000" and e["act"] == "alert" and e["dvchost"] == "edge-sensor-1"
    assert e["externalId"] == port_scan.id
    assert (e["cs1Label"], e["cs1"]) == ("dst_ports", "1-1000")
    assert (e["cs4Label"], e["cs4"]) == ("outcomes", "open:3,closed:997,filtered:0,unknown:0")
    assert (e["cs6Label"], e["cs6"]) == ("mitre", "T1046")
    assert (e["cn1Label"], e["cn1"]) == ("count", "1000")
    assert e["scanSensorSeq"] == "1"


def test_cef_single_port_and_direction(port_scan):
    d = port_scan.to_dict()
    a = Alert(**{**d, "dst_ports": "445", "dst_port_count": 1, "direction": "outbound",
                 "seq": 3, "update": True}, emitted_ns=port_scan.emitted_ns)
    e = dict(parse_cef(parse_3164_header(render("cef", a, CTX))[3])["ext"])
    assert e["dpt"] == "445" and e["deviceDirection"] == "1" and e["act"] == "update"
    assert e["externalId"] == port_scan.id and e["scanSensorSeq"] == "3"


def test_leef_port_scan(port_scan):
    m = render("leef", port_scan, CTX)
    assert m.startswith(b"<107>Nov 22 15:11:20 edge-sensor-1 "
                        b"LEEF:2.0|scan-sensor|scan-sensor|0.1.0|port_scan|^|"
                        b"devTime=Nov 22 2026 15:11:20.884 UTC^devTimeFormat=MMM dd yyyy HH:mm:ss.SSS z"
                        b"^sev=8^cat=alert^src=10.77.0.1^dst=10.77.0.2^")


def test_ecs_port_scan(port_scan):
    doc = json.loads(parse_rfc5424(render("ecs", port_scan, CTX))["msg"])
    assert doc["event"]["category"] == ["network", "intrusion_detection"]
    assert doc["event"]["start"] == port_scan.first_seen and doc["event"]["end"] == port_scan.last_seen
    assert doc["source"] == {"ip": "10.77.0.1"} and doc["destination"] == {"ip": "10.77.0.2"}
    assert doc["threat"]["technique"]["id"] == ["T1046"]
    assert doc["threat"]["tactic"]["name"] == ["Discovery"]
    assert doc["related"]["ip"] == ["10.77.0.1", "10.77.0.2"]
    assert doc["scan_sensor"]["dst_ports"] == "1-1000"


def test_arp_sweep_names_the_mac_in_every_format(port_scan):
    """src_mac: CEF smac (SourceMACAddress), LEEF srcMAC, ECS source.mac (upper case,
    hyphens), RFC 5424 / RFC 3164 / JSON under its own name."""
    a = Alert(**{**port_scan.to_dict(), "rule": "arp_sweep", "src_mac": "02:42:ac:11:00:0a",
                 "dst_ports": "", "dst_port_count": 0, "count_kind": "unanswered_hosts"},
              emitted_ns=port_scan.emitted_ns)
    e = dict(parse_cef(parse_3164_header(render("cef", a, CTX))[3])["ext"])
    assert e["smac"] == "02:42:ac:11:00:0a" and "scanSensorSrcMac" not in e
    leef = dict(parse_leef(parse_3164_header(render("leef", a, CTX))[3])["attrs"])
    assert leef["srcMAC"] == "02:42:ac:11:00:0a"
    doc = json.loads(parse_rfc5424(render("ecs", a, CTX))["msg"])
    assert doc["source"] == {"ip": "10.77.0.1", "mac": "02-42-AC-11-00-0A"}
    assert dict(parse_rfc5424(render("rfc5424", a, CTX))["sd"][0][1])["src_mac"] == "02:42:ac:11:00:0a"
    for fmt in FORMAT_NAMES:
        check_round_trip(fmt, a, render(fmt, a, CTX))


def test_updates_keep_id_and_seq(port_scan):
    update = Alert(**{**port_scan.to_dict(), "seq": 2, "update": True}, emitted_ns=port_scan.emitted_ns + 10**9)
    for fmt in FORMAT_NAMES:
        first, again = (fields_of(fmt, render(fmt, a, CTX)) for a in (port_scan, update))
        if fmt in ("ecs", "json"):
            d1, d2 = first[1]["doc"], again[1]["doc"]
            if fmt == "ecs":
                d1, d2 = d1["scan_sensor"], d2["scan_sensor"]
            assert d1["id"] == d2["id"] and (d1["seq"], d2["seq"]) == (1, 2)
        else:
            f1, f2 = dict(first[0]), dict(again[0])
            assert f1["id"] == f2["id"] == port_scan.id and (f1["seq"], f2["seq"]) == ("1", "2")


@pytest.fixture(scope="module")
def merged():
    """The default (alerts.group = "prober") alert of the nmap -sS scan: one alert,
    port_scan primary, vertical_scan and failed_connections beside it (sensor/episodes.py)."""
    from sensor.capture.files import CaptureFile
    from sensor.config import load_config
    from sensor.engine import Engine
    from conftest import shipped
    engine = Engine(load_config(None, ['sensor.name="edge-sensor-1"', "sensor.hash_seed=1"]))
    alerts = []
    with CaptureFile(str(shipped("nmap_syn_scan.pcap")), 1 << 20) as cap:
        for batch in cap.batches(engine.batches, engine.decode_stats):
            alerts += engine.process(batch)
    alerts += engine.finish()
    [alert] = alerts
    assert alert.rules == ["port_scan", "vertical_scan", "failed_connections"]
    return alert


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_merged_alert_round_trip(fmt, merged):
    """rules and rule_evidence come back from every format, by the documented encodings."""
    message = render(fmt, merged, CTX)
    p = check_round_trip(fmt, merged, message)
    if fmt in ("ecs", "json"):
        doc = p["doc"]["scan_sensor"] if fmt == "ecs" else p["doc"]
        assert doc["rules"] == ["port_scan", "vertical_scan", "failed_connections"]
        assert doc["rule_evidence"]["failed_connections"]["count"] == 997
        if fmt == "ecs":
            assert p["doc"]["rule"]["id"] == "port_scan" and p["doc"]["event"]["action"] == "port_scan"
    else:
        got = dict(fields_of(fmt, message)[0])
        assert got["rules"] == "port_scan,vertical_scan,failed_connections"
        assert got["rule_evidence_count"] == "port_scan:1000,vertical_scan:64,failed_connections:997"
        assert got["rule_evidence_count_kind"] == ("port_scan:distinct_ports,vertical_scan:distinct_ports,"
                                                   "failed_connections:failed_pairs")
        assert got["rule_evidence_first_seen"] == ("port_scan:2026-11-22T15:11:15.884358Z,"
                                                  "vertical_scan:2026-11-22T15:11:15.884377Z,"
                                                  "failed_connections:2026-11-22T15:11:15.884377Z")


def test_merged_alert_names_its_rules(merged):
    p = parse_rfc5424(render("rfc5424", merged, CTX))
    assert p["msgid"] == "port_scan"
    assert p["msg"] == ("Port scan from 10.77.0.1: 1000 distinct ports, 1000 ports on 1 host; "
                        "rules: port_scan, vertical_scan, failed_connections")
    e = dict(parse_cef(parse_3164_header(render("cef", merged, CTX))[3])["ext"])
    assert e["scanSensorRules"] == "port_scan,vertical_scan,failed_connections"
    assert e["scanSensorRuleEvidenceThreshold"] == "port_scan:50,vertical_scan:20,failed_connections:10"


def rate_limited(**over):
    fields = dict(rule="alert_rate_limited", sensor="edge-sensor-1",
                  minute_start="2026-11-22T15:11:00.000000Z", max_per_minute=10,
                  suppressed={"port_scan": 3, "host_sweep": 1}, suppressed_total=4,
                  example_sources=["203.0.113.9", "198.51.100.7"])
    fields.update(over)
    return RateLimited(**fields)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_rate_limited_summary(fmt):
    record = rate_limited()
    p = check_round_trip(fmt, record, render(fmt, record, CTX))
    assert p["pri"] == 13 * 8 + 5


# ---------------------------------------------------------------- max_bytes

def big_alert(port_scan, n_ports=3000, n_ips=200):
    d = port_scan.to_dict()
    d.update(dst_ports=compress_ports(range(1, 2 * n_ports, 2)), dst_port_count=n_ports,
             dst_ips=[f"10.{i // 250}.{i % 250}.7" for i in range(n_ips)], dst_ip_count=n_ips,
             open_ports=compress_ports(range(3, 600, 3)))
    return Alert(**d, emitted_ns=port_scan.emitted_ns)


def written(fmt, text):
    """A value as the text formats write it (before their escaping)."""
    text = clean(text, keep_newlines=fmt == "cef")
    return text.replace("^", "\ufffd") if fmt == "leef" else text


def range_size(part):
    """Ports in one comma part of range text; a part that is no number or range counts 1."""
    if re.fullmatch(r"[0-9]+(-[0-9]+)?", part):
        return max(1, len(expand_ports(part)))
    return 1


def check_truncated(fmt, record, message, max_bytes, ctx=CTX):
    """The cut message: within max_bytes, lists are prefixes, counts of what was left out."""
    assert len(message) <= max_bytes
    d = record.to_dict()
    got, p = fields_of(fmt, message, ctx)
    if fmt in ("ecs", "json"):
        shown = p["doc"]["scan_sensor"] if fmt == "ecs" else p["doc"]
        truncated = shown.get("truncated", {})
        shown = {k: v for k, v in shown.items() if k != "truncated"}
    else:
        g = dict(got)
        truncated = {k: int(v) for k, _, v in (x.rpartition(":") for x in g.get("truncated", "").split(",") if x)}
        shown = {}
    assert truncated, "a message that had to be cut says so"
    full = dict(d)
    for name in EVIDENCE:
        if name not in d:
            continue
        if fmt in ("ecs", "json"):
            value = shown[name]
        elif name == "sources":
            ips = dict(got)["sources"]
            value = [s for s in d["sources"]][:len(ips.split(",")) if ips else 0]
        else:
            text = dict(got)[name]
            value = text if name in RANGE_TEXT else (text.split(",") if text else [])
        if name in RANGE_TEXT and fmt not in ("ecs", "json"):
            parts = d[name].split(",") if d[name] else []
            kept = value.split(",") if value else []
            assert [written(fmt, x) for x in parts[:len(kept)]] == kept
            assert truncated.get(name, 0) == sum(range_size(x) for x in parts[len(kept):])
            value = ",".join(parts[:len(kept)])
        elif name in RANGE_TEXT:
            parts = d[name].split(",") if d[name] else []
            kept = value.split(",") if value else []
            assert parts[:len(kept)] == kept
            assert truncated.get(name, 0) == sum(range_size(x) for x in parts[len(kept):])
        elif fmt in ("ecs", "json") or name == "sources":
            # sources outside JSON: the count comes from the message, the values are
            # compared by check_round_trip below
            assert name == "sources" or json_clean(d[name][:len(value)]) == value
            assert truncated.get(name, 0) == len(d[name]) - len(value)
            value = d[name][:len(value)]
        else:
            assert [item(written(fmt, x)) for x in d[name][:len(value)]] == value
            assert truncated.get(name, 0) == len(d[name]) - len(value)
            value = d[name][:len(value)]
        full[name] = value
    check_round_trip(fmt, record, message, ctx, truncated=truncated, full=full)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("max_bytes", [480, 1024, UDP_DEFAULT_MAX_BYTES])
def test_max_bytes_cuts_evidence_lists(fmt, max_bytes, port_scan):
    record = big_alert(port_scan)
    full = render(fmt, record, CTX)
    assert len(full) > max_bytes
    if len(render(fmt, emptied(record), CTX)) > max_bytes - 100 and max_bytes < UDP_DEFAULT_MAX_BYTES:
        # the fields that are never cut do not leave room: a clear error, not a broken message
        with pytest.raises(MessageTooLarge, match=f"max_bytes is {max_bytes}"):
            render(fmt, record, CTX, max_bytes=max_bytes)
        return
    message = render(fmt, record, CTX, max_bytes=max_bytes)
    check_truncated(fmt, record, message, max_bytes)
    assert len(message) > max_bytes - 120, "keeps as much evidence as fits"


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_max_bytes_untouched_when_it_fits(fmt, port_scan):
    full = render(fmt, port_scan, CTX)
    assert render(fmt, port_scan, CTX, max_bytes=len(full)) == full
    with pytest.raises(MessageTooLarge):
        render(fmt, port_scan, CTX, max_bytes=100)


# ---------------------------------------------------------------- hostile strings

HOSTILE = ['"', "]", "[", "|", "=", "^", "\u00b9", "\u0663", "7-\u0663", "\\", "\n", "\r", "\x00", "\t", " ", ",", "%", ":", "\ufeff",
           "é", "\u2028", "\x85", "\x7f", "-", "<", ">", "}", "{", "\\n", "\\=", "=x", " k=v",
           '" x="y', '] [evil@1 a="b"', "CEF:0|", "LEEF:2.0|", "%2C", "\udcff", "\udc80"]


def text_strategy(min_size=0):
    fragments = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=6),
                          st.binary(max_size=6).map(lambda b: b.decode("utf-8", "surrogateescape")))
    short = st.lists(fragments, min_size=min_size, max_size=8).map("".join)
    long = st.tuples(fragments, st.integers(300, 3000)).map(lambda t: (t[0] or "x") * (t[1] // max(1, len(t[0] or "x"))))
    return st.one_of(short, short, short, long)


def items_strategy(max_size=30):
    # list items are never empty (documented: an empty item cannot be told from no item)
    return st.lists(text_strategy(min_size=1).filter(bool), max_size=max_size)


TIMES = st.integers(1_600_000_000_000_000, 1_900_000_000_000_000)   # microseconds
COUNT = st.integers(0, 2**40)


def rfc3339_us(us):
    dt = datetime.datetime.fromtimestamp(us // 10**6, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 10**6:06d}Z"


@st.composite
def hostile_alerts(draw):
    t1, t2 = sorted((draw(TIMES), draw(TIMES)))
    opt = lambda s: draw(st.one_of(st.none(), s))  # noqa: E731
    sources = opt(st.lists(st.fixed_dictionaries({"ip": text_strategy(1).filter(bool),
                                                  "probes": COUNT,
                                                  "hosts": items_strategy(4),
                                                  "host_count": COUNT,
                                                  "hosts_omitted": COUNT}),
                           min_size=1, max_size=20))
    return Alert(
        rule=draw(st.one_of(st.sampled_from(["port_scan", "port_sweep", "udp_scan"]), text_strategy())),
        src_ip=draw(st.one_of(st.sampled_from(["10.77.0.1", "2001:db8::1"]), text_strategy())),
        dst_ips=draw(st.one_of(items_strategy(), st.just(["10.0.0.1"]))),
        dst_ip_count=draw(COUNT), dst_ips_omitted=draw(COUNT),
        dst_ip_count_estimated=draw(st.booleans()),
        dst_ports=draw(st.one_of(st.lists(st.integers(0, 65535), max_size=300).map(compress_ports),
                                 text_strategy())),
        dst_port_count=draw(COUNT), first_seen=rfc3339_us(t1), last_seen=rfc3339_us(t2),
        packets=draw(COUNT), severity=draw(st.one_of(st.sampled_from(["medium", "high"]), text_strategy())),
        mitre=draw(st.one_of(st.just(["T1046", "T1595.001"]), items_strategy(4))),
        sensor=draw(text_strategy()), id=draw(text_strategy()), threshold=draw(COUNT),
        window_s=draw(st.floats(0, 1e6, allow_nan=False)), count=draw(COUNT),
        count_kind=draw(text_strategy()), count_estimated=draw(st.booleans()),
        direction=opt(st.one_of(st.sampled_from(["inbound", "outbound", "internal"]), text_strategy())),
        src_mac=opt(st.one_of(st.just("02:42:ac:11:00:02"), text_strategy())),
        seq=draw(st.integers(1, 1000)), update=draw(st.booleans()), scope=opt(text_strategy()),
        dst_port=opt(st.integers(0, 65535)), sources=sources,
        source_count=opt(COUNT), source_count_estimated=opt(st.booleans()),
        sources_omitted=opt(COUNT),
        sources_complete=opt(st.booleans()), probe_types=opt(items_strategy(4)),
        sensitive_ports=opt(text_strategy()),
        outcomes=opt(st.dictionaries(text_strategy(1).filter(bool), COUNT, max_size=5)),
        open_ports=opt(text_strategy()), pairs_omitted=opt(COUNT),
        emitted_ns=draw(st.one_of(st.just(0), st.integers(t2 * 1000, t2 * 1000 + 10**10))))


@st.composite
def hostile_summaries(draw):
    return rate_limited(sensor=draw(text_strategy()),
                        minute_start=rfc3339_us(draw(TIMES) // 60_000_000 * 60_000_000),
                        max_per_minute=draw(COUNT),
                        suppressed=draw(st.dictionaries(text_strategy(1).filter(bool), COUNT, max_size=5)),
                        suppressed_total=draw(COUNT), example_sources=draw(items_strategy(2)))


@st.composite
def hostile_contexts(draw):
    return FormatContext(hostname=draw(text_strategy()), app_name=draw(text_strategy()),
                         procid=draw(st.one_of(st.just("-"), text_strategy())),
                         facility=draw(st.integers(0, 23)), version=draw(text_strategy()),
                         vendor=draw(text_strategy()), product=draw(text_strategy()))


HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def emptied(record):
    d = record.to_dict()
    for name in EVIDENCE:
        if name in d:
            d[name] = "" if isinstance(d[name], str) else []
    if isinstance(record, RateLimited):
        return RateLimited(**d)
    return Alert(**d, emitted_ns=record.emitted_ns)


@HYPOTHESIS
@given(record=st.one_of(hostile_alerts(), hostile_summaries()), ctx=hostile_contexts(),
       max_bytes=st.one_of(st.none(), st.integers(200, 8000)))
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_hostile_strings_round_trip(fmt, record, ctx, max_bytes):
    """Any value: the strict parser gets back exactly the (cleaned) fields, nothing more."""
    message = render(fmt, record, ctx)
    check_round_trip(fmt, record, message, ctx)
    if max_bytes is None or len(message) <= max_bytes:
        return
    try:
        cut = render(fmt, record, ctx, max_bytes=max_bytes)
    except MessageTooLarge as exc:
        assert f"max_bytes is {max_bytes}" in str(exc)
        # only when the fields that are never cut nearly fill the budget on their own
        assert len(render(fmt, emptied(record), ctx)) > max_bytes - 200
        return
    check_truncated(fmt, record, cut, max_bytes, ctx)


def test_strict_parsers_reject_injection():
    """The parsers are strict: the attacks the formatter must prevent do fail them."""
    with pytest.raises(ParseError):
        parse_rfc5424(b'<107>1 - h a - m [x@1 a="b"c"] msg')
    with pytest.raises(ParseError):
        parse_rfc5424(b'<107>1 - h a - m [x@1 a="b]"]')
    with pytest.raises(ParseError):
        parse_rfc5424(b"<107>1 - h a - m - line\nnext")
    with pytest.raises(ParseError):
        parse_cef("CEF:0|a|b|c|d|e|5|msg=x src=1.2.3.4 y=z =q")
    with pytest.raises(ParseError):
        parse_cef("CEF:0|a|b|c|d|e|5|msg=a\\|b")
    with pytest.raises(ParseError):
        parse_leef("LEEF:2.0|a|b|c|d|^|k=v^broken")
    assert parse_leef("LEEF:2.0|a|b|c|d|x09|k=v=w\tj=")["attrs"] == [("k", "v=w"), ("j", "")]
    assert parse_cef("CEF:0|a\\|b|p|1|id|n|5|msg=a \\= b\\\\ c\\n k=v")["ext"] == [
        ("msg", "a = b\\ c\n"), ("k", "v")]
    assert cef_module.escape_value("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"


# ---------------------------------------------------------------- SIEM content

SIEM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sensor", "siem")


def test_sentinel_parser_reads_what_cef_writes(port_scan):
    """Every label and AdditionalExtensions key the ASIM parser reads is one cef.py writes."""
    with open(os.path.join(SIEM, "sentinel", "ASimNetworkSessionScanSensor.kql")) as fh:
        kql = fh.read()
    labels = dict((int(n), name) for n, name in
                  re.findall(r'DeviceCustomString(\d)Label == "(\w+)"', kql))
    assert labels == {1: "dst_ports", 2: "dst_ips", 3: "sources", 4: "outcomes",
                      5: "open_ports", 6: "mitre"}
    assert all(cef_module.CS_SLOTS[name] == n for n, name in labels.items())
    numbers = dict((name, int(n)) for name, n in
                   re.findall(r"ScanSensor(\w+) = FieldDeviceCustomNumber(\d)", kql))
    assert numbers == {"Count": cef_module.CN_SLOTS["count"],
                       "PortCount": cef_module.CN_SLOTS["dst_port_count"],
                       "TargetCount": cef_module.CN_SLOTS["dst_ip_count"]}
    sweep = Alert(**{**port_scan.to_dict(), "rule": "port_sweep", "dst_port": 3389,
                     "sources": [{"ip": "203.0.113.5", "probes": 4,
                                  "hosts": ["10.0.0.1", "10.0.0.2"], "host_count": 2,
                                  "hosts_omitted": 0}],
                     "source_count": 1, "source_count_estimated": False, "sources_omitted": 0,
                     "sources_complete": True},
                  emitted_ns=port_scan.emitted_ns)
    written = set()
    for record in (port_scan, sweep):
        written |= {k for k, _ in parse_cef(parse_3164_header(render("cef", record, CTX))[3])["ext"]}
    written.add(cef_module.custom_key("truncated"))
    read = set(re.findall(r";(scanSensor\w+)=", kql))
    assert read and read <= written, read - written
    assert 'DeviceVendor == "scan-sensor" and DeviceProduct == "scan-sensor"' in kql
    assert (CTX.vendor, CTX.product) == ("scan-sensor", "scan-sensor")


def test_elastic_pipeline_dissects_the_ecs_message(port_scan):
    with open(os.path.join(SIEM, "elastic", "ingest-pipeline.json")) as fh:
        pipeline = json.load(fh)
    [dissect] = [p["dissect"] for p in pipeline["processors"] if "dissect" in p]
    keys = re.findall(r"%\{([^}]*)\}", dissect["pattern"])
    literal = re.split(r"%\{[^}]*\}", dissect["pattern"])
    regex = "".join(re.escape(lit) + ("(.*)" if i == len(keys) - 1 else "([^ ]*?)")
                    for i, lit in enumerate(literal[:-1])) + re.escape(literal[-1])
    message = render("ecs", port_scan, CTX).decode()
    m = re.fullmatch(regex, message)
    assert m, dissect["pattern"]
    got = dict(zip(keys, m.groups()))
    assert got["log.syslog.msgid"] == "port_scan" and got["log.syslog.hostname"] == "edge-sensor-1"
    assert json.loads(got["_scan_sensor.json"])["event"]["kind"] == "alert"
    [js] = [p["json"] for p in pipeline["processors"] if "json" in p]
    assert js["field"] == "_scan_sensor.json" and js["add_to_root"] is True


# ---------------------------------------------------------------- a real syslog parser

def hostile_examples(port_scan):
    d = port_scan.to_dict()
    nasty = ['a"b', "back\\slash", "close]bracket", '] [evil@1 x="y"', "eq=ual k=v", "pipe|",
             "caf\u00e9 \u2603", "bad\udcff\udc80bytes", "nul\x00cr\rlf\nend", "\ufeffbom", ""]
    out = []
    for i, text in enumerate(nasty):
        out.append(Alert(**{**d, "sensor": text, "count_kind": text, "scope": text,
                            "dst_ips": [text or "x", "10.0.0.1"], "id": f"id-{i}"},
                         emitted_ns=port_scan.emitted_ns))
    return out


@pytest.fixture
def rsyslog(tmp_path):
    """An unprivileged rsyslogd on a loopback UDP port, SD parsed by its mmpstrucdata."""
    import shutil
    import socket
    import subprocess
    import time
    exe = shutil.which("rsyslogd")
    if exe is None:
        pytest.skip("rsyslogd not installed (Debian package rsyslog)")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    out = tmp_path / "out.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{tmp_path}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
module(load="imudp")
module(load="mmpstrucdata")
template(name="fields" type="list") {{
  property(name="hostname") constant(value="\\t") property(name="app-name") constant(value="\\t")
  property(name="msgid") constant(value="\\t") property(name="syslogtag") constant(value="\\t")
  property(name="$!") constant(value="\\n")
}}
ruleset(name="r") {{
  action(type="mmpstrucdata" sd_name.lowercase="off")
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imudp" address="127.0.0.1" port="{port}" ruleset="r")
''')
    proc = subprocess.Popen([exe, "-n", "-f", str(conf), "-i", str(tmp_path / "pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send_and_read(messages, timeout_s=20):
        start = len(out.read_bytes().splitlines()) if out.exists() else 0
        for m in messages:
            sock.sendto(m, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = out.read_bytes().splitlines() if out.exists() else []
            if len(lines) >= start + len(messages):
                return lines[start:start + len(messages)]
            time.sleep(0.05)
        raise AssertionError(f"rsyslog wrote {len(lines) - start} of {len(messages)} lines: "
                             f"{proc.stdout.read1(4096) if proc.poll() is not None else ''}")

    try:
        ready = time.monotonic() + 20      # UDP: resend a probe until rsyslog has written one
        while True:
            try:
                send_and_read([b"<13>1 - probe - - - - ready"], timeout_s=0.5)
                break
            except AssertionError:
                if time.monotonic() > ready or proc.poll() is not None:
                    raise
        yield send_and_read
    finally:
        sock.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_rsyslog_parses_rfc5424_structured_data(rsyslog, port_scan, nmap_alerts):
    """rsyslog's own parser (mmpstrucdata) reads the same header and SD params as ours."""
    records = list(nmap_alerts) + hostile_examples(port_scan) + [rate_limited()]
    messages = [render("rfc5424", r, CTX) for r in records]
    for record, message, line in zip(records, messages, rsyslog(messages)):
        host, app, msgid, _tag, sd_json = line.decode("utf-8").split("\t", 4)
        p = parse_rfc5424(message)
        assert (host, app, msgid) == (p["hostname"], p["app_name"], p["msgid"])
        params = json.loads(sd_json)["rfc5424-sd"][CTX.sd_id]
        assert params == dict(p["sd"][0][1]), record.to_dict()


def test_rsyslog_reads_cef_and_leef_as_sentinel_expects(rsyslog, port_scan):
    """CEF/LEEF in an RFC 3164 header without TAG: HOSTNAME is the sensor, the tag is CEF:/LEEF:."""
    lines = rsyslog([render("cef", port_scan, CTX), render("leef", port_scan, CTX),
                     render("rfc3164", port_scan, CTX)])
    fields = [line.decode("utf-8").split("\t")[:4] for line in lines]
    assert fields[0][0] == fields[1][0] == fields[2][0] == "edge-sensor-1"
    assert fields[0][3] == "CEF:" and fields[1][3] == "LEEF:" and fields[2][3] == "scan-sensor:"
