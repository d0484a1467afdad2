"""Delivery to a real rsyslog: UDP, TCP (both framings), TLS; outages, restarts, spool.

rsyslogd runs as a test-local collector on loopback high ports (tests/rsyslog.py);
what rsyslog's own parser makes of each message (PRI, HOSTNAME, APP-NAME, MSGID,
STRUCTURED-DATA, MSG) is what the tests check.
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, shipped
from delivery_checks import (BURST_SETTINGS, assert_delivered, ident, jsonl_idents,
                             write_burst_pcap)
from rsyslog import Collector, free_port, make_pki, require_rsyslog
from sensor.alerts import Alert
from sensor.output import formats
from sensor.output.delivery import DeliverySettings, Outputs, SpecError, parse_output_url

STUB_FORMATS = "CONTRACT STUB" in (formats.__doc__ or "")
FAST = DeliverySettings(connect_timeout_s=2.0, reconnect_min_s=0.05, reconnect_max_s=0.3,
                        spool_fsync_interval_ms=0)
MINUTE_NS = 60_000_000_000


def alert(i, emitted_ns=None, **fields):
    base = dict(rule="port_scan", src_ip=f"10.9.{i // 250}.{i % 250}", dst_ips=["10.0.0.9"],
                dst_ip_count=1, dst_ips_omitted=0, dst_ip_count_estimated=False,
                dst_ports="1-1000", dst_port_count=1000, first_seen="2026-11-22T15:11:15.884358Z",
                last_seen="2026-11-22T15:11:15.892534Z", packets=1000, severity="high",
                mitre=["T1046"], sensor="edge-7", id=f"00000000-0000-5000-8000-{i:012d}",
                threshold=50, window_s=300.0, count=1000, count_kind="distinct_ports",
                direction="internal", seq=1, scope="source",
                outcomes={"open": 3, "closed": 997, "filtered": 0, "unknown": 0},
                open_ports="22,80,443",
                emitted_ns=1_795_000_000_000_000_000 + i * 1000 if emitted_ns is None
                else emitted_ns)
    base.update(fields)
    return Alert(**base)


@pytest.fixture
def collector(tmp_path):
    require_rsyslog()
    c = Collector(tmp_path / "rsyslog").start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    require_rsyslog(tls=True)
    return make_pki(tmp_path_factory.mktemp("pki"))


def deliver(specs, records, state_dir, settings=FAST, timeout_s=10.0, log=None):
    outs = Outputs(specs, settings, sensor_name="edge-7", state_dir=state_dir,
                   log=log if log is not None else (lambda text: None))
    outs.submit(records)
    left = outs.close(timeout_s)
    return left, outs.stats()


# -- the wire, as rsyslog parses it ---------------------------------------------------------

def test_udp_and_tcp_in_both_framings_arrive_with_the_expected_header(collector, tmp_path):
    p = collector.port
    urls = {"via-udp": f"udp://127.0.0.1:{p}", "via-octet": f"tcp://127.0.0.1:{p}",
            "via-lf": f"tcp://127.0.0.1:{p}?framing=lf"}
    specs = [parse_output_url(url + ("&" if "?" in url else "?")
                              + f"app_name={app}&facility=local3")
             for app, url in urls.items()]
    alerts = [alert(i) for i in range(20)]
    left, stats = deliver(specs, alerts, tmp_path / "state")
    assert set(left.values()) == {0}
    got = collector.wait_for(60)
    assert len(got) == 60
    deterministic = formats.render("rfc5424", alerts[0], formats.FormatContext("edge-7")) == \
        formats.render("rfc5424", alerts[0], formats.FormatContext("edge-7"))
    for spec, app in zip(specs, urls):
        msgs = [m for m in got if m["app_name"] == app]
        assert [ident(m) for m in msgs] == [(a.id, a.seq) for a in alerts], app
        assert stats[spec.name]["sent"] == 20 and stats[spec.name]["dropped"] == 0
        for m, a in zip(msgs, alerts):
            assert m["hostname"] == "edge-7"
            assert m["msgid"] == "port_scan"
            assert int(m["pri"]) // 8 == 19            # local3
            assert m["inputname"] == ("imudp" if app == "via-udp" else "imtcp")
            if deterministic:   # the frame carried the message byte for byte
                ctx = formats.FormatContext("edge-7", app_name=app, facility=19)
                assert m["rawmsg"] == formats.render("rfc5424", a, ctx).decode()


@pytest.mark.skipif(STUB_FORMATS, reason="the rfc5424 formatter is still the contract stub")
def test_rfc5424_structured_data_reaches_rsyslog(collector, tmp_path):
    a = alert(1)
    left, _ = deliver([parse_output_url(f"tcp://127.0.0.1:{collector.port}")], [a],
                      tmp_path / "state")
    (m,) = collector.wait_for(1)
    sd = m["structured_data"]
    assert sd.startswith("[") and sd.endswith("]")
    for name, value in (("id", a.id), ("seq", "1"), ("src_ip", a.src_ip),
                        ("dst_ports", "1-1000"), ("rule", "port_scan")):
        assert f'{name}="{value}"' in sd, (name, sd)


def test_tls_with_a_test_ca_and_hostname_verification(pki, tmp_path):
    with Collector(tmp_path / "tls", "tls", cert=pki["server_cert"], key=pki["server_key"],
                   ca=pki["ca"]) as c:
        specs = [parse_output_url(f"tls://localhost:{c.port}?ca={pki['ca']}&app_name=by-name"),
                 parse_output_url(f"tls://127.0.0.1:{c.port}?ca={pki['ca']}&app_name=by-ip")]
        alerts = [alert(i) for i in range(5)]
        left, stats = deliver(specs, alerts, tmp_path / "state")
        assert set(left.values()) == {0}
        got = c.wait_for(10)
    for app in ("by-name", "by-ip"):
        msgs = [m for m in got if m["app_name"] == app]
        assert [ident(m) for m in msgs] == [(a.id, a.seq) for a in alerts]
        assert all(m["hostname"] == "edge-7" and m["msgid"] == "port_scan" for m in msgs)


def test_tls_refuses_a_certificate_for_another_name(pki, tmp_path):
    with Collector(tmp_path / "tls", "tls", cert=pki["other_cert"], key=pki["other_key"],
                   ca=pki["ca"]) as c:
        log = []
        spec = parse_output_url(f"tls://localhost:{c.port}?ca={pki['ca']}")
        left, stats = deliver([spec], [alert(1), alert(2)], tmp_path / "state", timeout_s=1.0,
                              log=log.append)
        assert left[spec.name] == 2 and stats[spec.name]["sent"] == 0
        assert stats[spec.name]["send_errors"] >= 1
        assert any("certificate verify failed" in line and "localhost" in line
                   for line in log), log
        # verify=no skips the name check only (the chain to the CA is still checked);
        # the same output name takes over the spool: the two held back go first
        loose = parse_output_url(f"tls://localhost:{c.port}?ca={pki['ca']}&verify=no")
        left, _ = deliver([loose], [alert(3)], tmp_path / "state")
        assert left[loose.name] == 0
        assert [ident(m) for m in c.wait_for(3)] == [(alert(i).id, 1) for i in (1, 2, 3)]


def test_udp_datagrams_keep_to_the_size_limit(collector, tmp_path):
    big = alert(1, dst_ips=[f"10.1.{i // 250}.{i % 250}" for i in range(300)],
                dst_ip_count=300, dst_ports=",".join(str(p) for p in range(1, 2000, 2)))
    spec = parse_output_url(f"udp://127.0.0.1:{collector.port}?max_bytes=1000")
    left, stats = deliver([spec], [big, alert(2)], tmp_path / "state")
    got = collector.wait_for(2)
    assert len(got) == 2
    assert all(len(m["rawmsg"].encode()) <= 1000 for m in got)
    assert got[1]["msgid"] == "port_scan" and got[0]["hostname"] == "edge-7"
    if not STUB_FORMATS:   # the format shortened it, with a marker: the sender cut nothing
        assert stats[spec.name]["truncated_by_sender"] == 0
        assert 'truncated="dst_ips:' in got[0]["structured_data"]
        assert f'id="{big.id}"' in got[0]["structured_data"]
        # a limit no shortening can meet: the message is dropped, counted and logged,
        # never sent cut in the middle
        log = []
        tiny = parse_output_url(f"udp://127.0.0.1:{collector.port}?max_bytes=480&name=tiny")
        left, stats = deliver([tiny], [big], tmp_path / "state", log=log.append)
        assert stats["tiny"]["dropped"] == 1 and stats["tiny"]["sent"] == 0
        assert any("cannot render" in line for line in log)


def test_rate_limit_holds_back_and_sends_one_summary(collector, tmp_path):
    spec = parse_output_url(f"tcp://127.0.0.1:{collector.port}?rate=5")
    t0 = 1_795_000_020 * 1_000_000_000 // MINUTE_NS * MINUTE_NS
    burst = [alert(i, emitted_ns=t0 + i * 1_000_000_000) for i in range(12)]
    later = alert(99, emitted_ns=t0 + MINUTE_NS + 1)
    left, stats = deliver([spec], burst + [later], tmp_path / "state")
    got = collector.wait_for(7)
    assert [m["msgid"] for m in got] == ["port_scan"] * 5 + ["alert_rate_limited", "port_scan"]
    assert [ident(m) for m in got[:5]] == [(a.id, 1) for a in burst[:5]]
    assert ident(got[6]) == (later.id, 1)
    assert re.search(r'suppressed_total\D{1,4}7\b', got[5]["rawmsg"])
    assert stats[spec.name]["rate_limited"] == 7 and stats[spec.name]["sent"] == 7


# -- bad specifications ----------------------------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("tcp//x:514", "expected udp://HOST:PORT"),
    ("http://x:514", "scheme 'http'"),
    ("tcp://:514", "host: missing"),
    ("tcp://x:99999", "port: not a number"),
    ("tcp://x:5a4", "port: not a number"),
    ("tcp://::1:514", "IPv6 address in brackets"),
    ("tcp://x:514/path", "no path"),
    ("tcp://x:514?format=syslog", "format='syslog': unknown format"),
    ("tcp://x:514?framing=nul", "framing='nul'"),
    ("udp://x:514?framing=lf", "framing= applies to tcp:// and tls://"),
    ("tcp://x:514?ca=/etc/hostname", "ca= applies to tls:// only"),
    ("tcp://x:514?colour=red", "unknown option 'colour'"),
    ("tcp://x:514?facility=local9", "facility='local9'"),
    ("tcp://x:514?rate=-1", "rate=-1: must be"),
    ("tcp://x:514?app_name=two%20words", "app_name='two words'"),
    ("tcp://x:514?format=cef&format=leef", "given twice"),
    ("tls://x:6514?ca=/nonexistent/ca.pem", "ca=/nonexistent/ca.pem: cannot read"),
    ("tls://x:6514?cert=/etc/hostname", "cert= and key= go together"),
])
def test_malformed_output_urls_name_the_part(url, fragment):
    with pytest.raises(SpecError) as err:
        parse_output_url(url)
    assert fragment in str(err.value)


def test_good_urls():
    s = parse_output_url("tls://[::1]:6514?format=cef&framing=lf&facility=local0&rate=60")
    assert (s.kind, s.host, s.port, s.format, s.framing, s.facility, s.rate_per_min) == \
        ("tls", "::1", 6514, "cef", "lf", 16, 60)
    assert s.verify_hostname is True
    assert parse_output_url("udp://collector").port == 514
    assert parse_output_url("tls://collector").port == 6514
    assert parse_output_url("tcp://h:1").format == "rfc5424"


def run_sensor(*args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "sensor", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, input=stdin, timeout=timeout)


def test_cli_bad_url_and_unusable_ca_are_config_errors(tmp_path):
    pcap = shipped("nmap_syn_scan.pcap")
    proc = run_sensor("replay", pcap, "--syslog", "tcp://localhost:99999")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("scan-sensor: config error: --syslog: "
                                   "tcp://localhost:99999: port: not a number within 1-65535")
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    proc = run_sensor("replay", pcap, "--syslog", f"tls://localhost:6514?ca={junk}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"ca={junk}: not a usable CA file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_output_tables_and_errors_naming_the_key(tmp_path):
    from sensor.config import ConfigError, load_config
    conf = tmp_path / "c.toml"
    conf.write_text('[[output]]\nurl = "tcp://127.0.0.1:514"\nformat = "cef"\nrate = 60\n'
                    '[[output]]\njsonl = "alerts.jsonl"\n'
                    '[delivery]\nqueue_records = 500\n')
    cfg = load_config(conf)
    assert [(s.kind, s.format, s.rate_per_min) for s in cfg.outputs] == \
        [("tcp", "cef", 60), ("jsonl", "json", 0)]
    assert cfg["delivery.queue_records"] == 500
    for body, fragment in [
            ('[[output]]\nurl = "tcp://a:514"\n[[output]]\nurl = "tcp://b:514"\n'
             'format = "syslog"\n', "`output[2].format`"),
            ('[[output]]\nurl = "tls://a:6514"\nca = "/nonexistent/ca.pem"\n',
             "`output[1].ca`"),
            ('[[output]]\nurl = "tcp://a:99999"\n', "`output[1].url`"),
            ('[[output]]\nformat = "cef"\n', "`output[1].url`"),
            ('[output]\nurl = "tcp://a:514"\n', "write [[output]]"),
            ('[[output]]\nurl = "tcp://a:514?format=cef"\nformat = "cef"\n',
             "`output[1].format`")]:
        conf.write_text(body)
        with pytest.raises(ConfigError) as err:
            load_config(conf)
        assert fragment in str(err.value), str(err.value)


# -- outages, restarts, the spool -----------------------------------------------------------



def test_outage_during_a_burst_every_alert_delivered_once_in_order(collector, tmp_path):
    # compile the kernels first if the cache is cold, so the paced feed below is
    # read as it is written
    assert run_sensor("replay", shipped("nmap_syn_scan.pcap"), timeout=300).returncode == 0
    pcap = write_burst_pcap(tmp_path / "burst.pcap")
    data = pcap.read_bytes()
    sent_jsonl = tmp_path / "alerts.jsonl"
    stats_json = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensor", "replay", "-", *BURST_SETTINGS,
         "--syslog", f"tcp://127.0.0.1:{collector.port}", "--jsonl", sent_jsonl,
         "--state-dir", tmp_path / "state", "--stats-json", stats_json],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.txt", "wb"))
    events = {}

    def outage():
        # stop the collector once alerts are flowing, restart it once many more were
        # produced while it was down
        deadline = time.monotonic() + 60
        while len(collector.messages()) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        collector.stop()
        events["received_before_stop"] = len(collector.messages())
        while (not sent_jsonl.exists() or len(sent_jsonl.read_text().splitlines())
               < events["received_before_stop"] + 120) and time.monotonic() < deadline:
            time.sleep(0.02)
        events["produced_while_down"] = (len(sent_jsonl.read_text().splitlines())
                                         - events["received_before_stop"])
        collector.start()

    watcher = threading.Thread(target=outage)
    watcher.start()
    try:
        for i in range(0, len(data), 1024):      # paced: alerts come out over seconds
            proc.stdin.write(data[i:i + 1024])
            proc.stdin.flush()
            time.sleep(0.02)
        proc.stdin.close()
        proc.wait(timeout=90)
    finally:
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, err
    expected = jsonl_idents(sent_jsonl)
    assert len(expected) >= 390
    assert 0 < events["received_before_stop"] < len(expected)
    assert events["produced_while_down"] >= 100
    (counters,) = [c for name, c in json.loads(stats_json.read_text())["outputs"].items()
                   if name.startswith("tcp-")]
    received = [ident(m) for m in collector.wait_for(len(expected))]
    assert_delivered(received, expected, counters)    # every alert, in order
    assert counters["sent"] == len(expected) and counters["dropped"] == 0
    assert counters["spooled"] > 0 and counters["send_errors"] >= 1
    assert "connection lost" in err


def test_sensor_restart_while_collector_down_delivers_spooled_alerts_first(tmp_path):
    require_rsyslog()
    port = free_port()
    state = tmp_path / "state"
    pcap = shipped("nmap_syn_scan.pcap")
    first_jsonl, second_jsonl = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    url = f"tcp://127.0.0.1:{port}"
    common = ["--set", "delivery.reconnect_min_s=0.05", "--set", "delivery.reconnect_max_s=0.3"]
    proc = run_sensor("replay", pcap, "--syslog", url, "--jsonl", first_jsonl,
                      "--state-dir", state, "--set", "sensor.name=first-run",
                      "--set", "delivery.drain_timeout_s=1", *common)
    assert proc.returncode == 1
    spooled = jsonl_idents(first_jsonl)
    assert len(spooled) >= 1
    assert (f"{len(spooled)} message(s) not delivered (kept in {state}/spool/"
            in proc.stderr), proc.stderr
    with Collector(tmp_path / "rsyslog", port=port) as c:
        proc = run_sensor("replay", pcap, "--syslog", url, "--jsonl", second_jsonl,
                          "--state-dir", state, "--set", "sensor.name=second-run", *common)
        assert proc.returncode == 0, proc.stderr
        assert "spooled by an earlier run will be delivered first" in proc.stderr
        fresh = jsonl_idents(second_jsonl)
        got = [ident(m) for m in c.wait_for(len(spooled) + len(fresh))]
    assert got == spooled + fresh
    assert not [f for f in os.listdir(state / "spool" / os.listdir(state / "spool")[0])
                if f.endswith(".spool")]


def test_spool_full_is_counted_logged_and_reported(tmp_path):
    port = free_port()                          # nothing listens: everything is spooled
    spec = parse_output_url(f"tcp://127.0.0.1:{port}")
    settings = DeliverySettings(connect_timeout_s=0.5, reconnect_min_s=0.05,
                                reconnect_max_s=0.2, spool_max_bytes=65536,
                                spool_segment_bytes=16384)
    log = []
    outs = Outputs([spec], settings, sensor_name="edge-7", state_dir=tmp_path / "state",
                   log=log.append)
    records = [alert(i) for i in range(300)]
    for i in range(0, 300, 30):
        outs.submit(records[i:i + 30])
        time.sleep(0.05)
    left = outs.close(0.5)
    c = outs.stats()[spec.name]
    assert c["dropped"] > 0 and left[spec.name] > 0
    assert left[spec.name] + c["dropped"] == 300
    assert c["spooled"] == left[spec.name]
    assert any("spool full" in line and "dropped (counted)" in line for line in log)


def test_damaged_spool_segment_is_reported_and_the_rest_delivered(collector, tmp_path):
    state = tmp_path / "state"
    port = collector.port
    collector.stop()
    spec = parse_output_url(f"tcp://127.0.0.1:{port}?name=siem")
    alerts = [alert(i) for i in range(40)]
    left, _ = deliver([spec], alerts, state, timeout_s=0.3)
    assert left["siem"] == 40
    (seg,) = [f for f in os.listdir(state / "spool" / "siem") if f.endswith(".spool")]
    path = state / "spool" / "siem" / seg
    data = bytearray(path.read_bytes())
    data[data.index(alerts[10].id.encode()) + 3] ^= 0x20         # one flipped bit
    at = data.index(alerts[25].id.encode())
    data[at - 40:at + 8] = b"\xfe" * 48                           # a torn stretch
    path.write_bytes(bytes(data))
    collector.start()
    log = []
    left, stats = deliver([spec], [alert(40)], state, log=log.append)
    assert left["siem"] == 0
    got = [ident(m) for m in collector.wait_for(39)]
    survivors = [(a.id, 1) for a in alerts + [alert(40)]]
    assert all(x in survivors for x in got)
    assert got == [x for x in survivors if x in got]                # in order
    assert (alerts[10].id, 1) not in got and (alerts[25].id, 1) not in got
    assert len(got) >= 38                                          # only damaged ones lost
    assert stats["siem"]["spool_damaged"] >= 2
    assert any(f"{path} at byte" in line for line in log), log


def test_reconfigure_keeps_what_the_old_outputs_held(collector, tmp_path):
    port = collector.port
    collector.stop()
    old = parse_output_url(f"tcp://127.0.0.1:{port}?name=siem&app_name=before")
    outs = Outputs([old], FAST, sensor_name="edge-7", state_dir=tmp_path / "state",
                   log=lambda text: None)
    first = [alert(i) for i in range(10)]
    outs.submit(first)
    deadline = time.monotonic() + 10
    while outs.stats()["siem"]["spooled"] < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    with pytest.raises(ValueError, match="not a usable CA file"):
        outs.reconfigure([old, parse_output_url(f"tls://localhost:{port}?ca={junk}")])
    assert list(outs.stats()) == ["siem"]               # the old set still runs
    new = [parse_output_url(f"tcp://127.0.0.1:{port}?name=siem&app_name=after"),
           parse_output_url(f"udp://127.0.0.1:{port}?app_name=udp-added")]
    outs.reconfigure(new)
    second = [alert(i) for i in range(10, 15)]
    outs.submit(second)
    collector.start()
    left = outs.close(10)
    assert set(left.values()) == {0}
    got = collector.wait_for(20)
    tcp = [m for m in got if m["inputname"] == "imtcp"]
    assert [ident(m) for m in tcp] == [(a.id, 1) for a in first + second]
    assert {m["app_name"] for m in tcp[:10]} == {"before"}    # spooled as rendered then
    assert {m["app_name"] for m in tcp[10:]} == {"after"}
    assert len([m for m in got if m["app_name"] == "udp-added"]) <= 5


def test_ipv6_literal_hosts(tmp_path):
    require_rsyslog()
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        c = Collector(tmp_path / "rsyslog6", address="::1").start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        specs = [parse_output_url(f"tcp://[::1]:{c.port}?app_name=v6-tcp"),
                 parse_output_url(f"udp://[::1]:{c.port}?app_name=v6-udp")]
        left, _ = deliver(specs, [alert(1)], tmp_path / "state")
        assert set(left.values()) == {0}
        got = c.wait_for(2)
    finally:
        c.stop()
    assert sorted(m["app_name"] for m in got) == ["v6-tcp", "v6-udp"]


def test_replay_without_state_dir_says_what_was_lost(tmp_path):
    port = free_port()                          # no collector
    proc = run_sensor("replay", shipped("nmap_syn_scan.pcap"), "--syslog",
                      f"tcp://127.0.0.1:{port}", "--set", "delivery.drain_timeout_s=0.5",
                      "--set", "delivery.connect_timeout_s=0.2", "--summary")
    assert proc.returncode == 1
    assert proc.stdout == ""                    # --syslog given: no JSON lines on stdout
    name = f"tcp-127.0.0.1-{port}-rfc5424"
    n = len(run_sensor("replay", shipped("nmap_syn_scan.pcap")).stdout.splitlines())
    assert n >= 1
    assert (f"scan-sensor: error: output {name}: {n} message(s) not delivered "
            "(lost: no --state-dir to keep them in)") in proc.stderr
    assert f"output {name}: sent 0, spooled {n}," in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["tls", "tcp"])
def test_stream_outage_every_message_once_in_order(kind, pki, tmp_path):
    """A stop/start of the collector mid-stream loses and repeats nothing (for TLS the
    stream offsets, TLS records being larger than the messages, are read from the
    kernel)."""
    if kind == "tls":
        c = Collector(tmp_path / "tls", "tls", cert=pki["server_cert"],
                      key=pki["server_key"], ca=pki["ca"]).start()
        spec = parse_output_url(f"tls://localhost:{c.port}?ca={pki['ca']}")
    else:
        c = Collector(tmp_path / "tcp").start()
        spec = parse_output_url(f"tcp://127.0.0.1:{c.port}")
    try:
        log = []
        outs = Outputs([spec], FAST, sensor_name="edge-7", state_dir=tmp_path / "state",
                       log=log.append)
        alerts = [alert(i) for i in range(300)]
        stopped_at = None
        for i, a in enumerate(alerts):
            outs.submit([a])
            time.sleep(0.004)
            if i == 100:
                c.stop()
                stopped_at = len(c.messages())
            if i == 200:
                c.start()
        left = outs.close(15)
        got = [ident(m) for m in c.wait_for(300)]
    finally:
        c.stop()
    expected = [(a.id, 1) for a in alerts]
    counters = outs.stats()[spec.name]
    assert_delivered(got, expected, counters)
    assert left[spec.name] == 0
    assert 0 < stopped_at < 300
    assert counters["sent"] == 300 and counters["spooled"] > 0
    assert any("connection lost" in line for line in log)
