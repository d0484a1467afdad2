"""port_scan kernel against the plain-Python reference, plus its bounds."""
import ipaddress

import numpy as np
from hypothesis import given, settings, strategies as st

import naive
from batch_builder import batches_from_rows, syn_row
from kernels.batch import TH_ACK, TH_RST, TH_SYN
from sensor.alerts import expand_ports
from sensor.config import DEFAULT_HOME_NET, load_config
from sensor.engine import Engine

SEC = 1_000_000_000
OTHER_RULES = ["host_sweep", "port_sweep", "failed_connections", "exposed_host_probe",
               "stealth_scan", "udp_scan", "icmp_sweep", "vertical_scan", "slow_scan",
               "arp_sweep", "ndp_sweep"]


def run_engine(rows, batch_capacity=4096, **settings_):
    overrides = [f"{k}={v}" for k, v in settings_.items()] + [
        "sensor.hash_seed=12345", "port_scan.growth_factor=0", "port_scan.new_target_updates=false"]
    overrides += [f"{r}.enabled=false" for r in OTHER_RULES]
    engine = Engine(load_config(None, overrides))
    alerts = []
    for batch in batches_from_rows(rows, batch_capacity):
        alerts.extend(engine.process(batch))
    alerts.extend(engine.finish())
    return engine, alerts


def as_comparable(alert):
    return (alert.src_ip, tuple(expand_ports(alert.dst_ports)), alert.dst_port_count,
            alert.packets, alert.first_seen, alert.last_seen, tuple(alert.dst_ips))


def reference_comparable(ref):
    from sensor.addresses import to_text
    from sensor.alerts import rfc3339
    return (to_text(*ref["key"][:2]), tuple(ref["ports"]), ref["count"], ref["probes"],
            rfc3339(ref["first_seen_ns"]), rfc3339(ref["last_seen_ns"]),
            tuple(to_text(*d) for d in ref["targets"]))


NET = dict(home=[ipaddress.ip_network(n) for n in DEFAULT_HOME_NET], allow=[], ignore=[],
           exposed=[], ignore_ports=set(), scope="source")


SOURCES = ["10.0.0.1", "10.0.0.2", "192.0.2.7", "2001:db8::5", "::ffff:10.0.0.1"]
DESTS = ["10.0.0.9", "10.0.0.10", "fd00::9"]
FLAG_CHOICES = [TH_SYN, TH_SYN, TH_SYN, TH_SYN | TH_ACK, TH_RST, TH_ACK, TH_SYN | 0x01]


@st.composite
def scan_rows(draw):
    n = draw(st.integers(1, 300))
    ts = 1_700_000_000 * SEC
    rows = []
    for _ in range(n):
        ts += draw(st.sampled_from([0, 1, 1000, SEC // 10, SEC, 7 * SEC, 40 * SEC]))
        rows.append(syn_row(ts, draw(st.sampled_from(SOURCES)), draw(st.sampled_from(DESTS)),
                            draw(st.integers(0, 40)) * draw(st.sampled_from([1, 1, 1637])),
                            flags=draw(st.sampled_from(FLAG_CHOICES))))
    return rows


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rows=scan_rows(), threshold=st.integers(2, 12), window_s=st.sampled_from([1, 10, 30]),
       delay_s=st.sampled_from([0, 1, 5]), capacity=st.sampled_from([1, 7, 4096]))
def test_kernel_matches_reference(rows, threshold, window_s, delay_s, capacity):
    _, alerts = run_engine(rows, batch_capacity=capacity, **{
        "port_scan.threshold": threshold, "port_scan.window_s": window_s,
        "port_scan.report_delay_s": min(delay_s, window_s)})
    ref = naive.counter_reference(
        "port_scan", rows, NET, threshold, window_s * SEC, min(delay_s, window_s) * SEC,
        {"inbound", "outbound", "internal", "external"}, suppress_ns=3600 * SEC)
    assert sorted(map(as_comparable, alerts)) == sorted(map(reference_comparable, ref))


@st.composite
def few_port_rows(draw):
    """Keys with a handful of ports over several windows: the inline entries a key
    keeps before it gets bitmaps (kernels/port_set.py TIER), their pane changes,
    ports seen again in the next pane, and the move into bitmaps."""
    n = draw(st.integers(1, 120))
    ts = 1_700_000_000 * SEC
    rows = []
    for _ in range(n):
        ts += draw(st.sampled_from([0, 1, SEC // 2, SEC, 3 * SEC, 10 * SEC, 25 * SEC]))
        rows.append(syn_row(ts, draw(st.sampled_from(SOURCES[:3])), draw(st.sampled_from(DESTS)),
                            draw(st.sampled_from([22, 80, 443, 3389, 8080, 64]))))
    return rows


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=few_port_rows(), threshold=st.integers(2, 6), window_s=st.sampled_from([1, 10]),
       delay_s=st.sampled_from([0, 1]))
def test_few_ports_per_key_match_reference(rows, threshold, window_s, delay_s):
    _, alerts = run_engine(rows, **{
        "port_scan.threshold": threshold, "port_scan.window_s": window_s,
        "port_scan.report_delay_s": delay_s})
    ref = naive.counter_reference(
        "port_scan", rows, NET, threshold, window_s * SEC, delay_s * SEC,
        {"inbound", "outbound", "internal", "external"}, suppress_ns=3600 * SEC)
    assert sorted(map(as_comparable, alerts)) == sorted(map(reference_comparable, ref))


def test_mapped_and_plain_ipv4_are_one_source():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i, "10.1.2.3" if i % 2 else "::ffff:10.1.2.3", "10.1.2.4", 1000 + i)
            for i in range(60)]
    _, alerts = run_engine(rows, **{"port_scan.threshold": 60})
    assert [a.src_ip for a in alerts] == ["10.1.2.3"]
    assert alerts[0].dst_port_count == 60 and alerts[0].dst_ips == ["10.1.2.4"]


def test_below_threshold_is_silent_and_at_threshold_alerts():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i * SEC, "198.51.100.1", "10.0.0.1", 20 + i) for i in range(9)]
    assert run_engine(rows, **{"port_scan.threshold": 10})[1] == []
    rows.append(syn_row(ts + 9 * SEC, "198.51.100.1", "10.0.0.1", 99))
    (alert,) = run_engine(rows, **{"port_scan.threshold": 10})[1]
    assert alert.dst_ports == "20-28,99" and alert.dst_port_count == 10 and alert.packets == 10


def test_ports_further_apart_than_two_windows_do_not_add_up():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i * 30 * SEC, "198.51.100.1", "10.0.0.1", i) for i in range(20)]
    _, alerts = run_engine(rows, **{"port_scan.threshold": 5, "port_scan.window_s": 10,
                                    "port_scan.report_delay_s": 0})
    assert alerts == []


def test_alert_waits_report_delay_to_collect_whole_scan():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i * 1_000_000, "203.0.113.5", "10.0.0.1", i + 1) for i in range(1000)]
    rows.append(syn_row(ts + 60 * SEC, "203.0.113.9", "10.0.0.1", 80))   # time moves on
    _, alerts = run_engine(rows, **{"port_scan.threshold": 50, "port_scan.report_delay_s": 5})
    (alert,) = alerts
    assert alert.dst_port_count == 1000 and alert.dst_ports == "1-1000"


def test_second_scan_after_quiet_period_alerts_again_with_new_id():
    ts = 1_700_000_000 * SEC
    first = [syn_row(ts + i, "203.0.113.5", "10.0.0.1", i + 1) for i in range(100)]
    later = ts + 3600 * SEC
    second = [syn_row(later + i, "203.0.113.5", "10.0.0.2", i + 200) for i in range(100)]
    _, alerts = run_engine(first + second, **{"port_scan.threshold": 50})
    assert len(alerts) == 2
    assert alerts[0].id != alerts[1].id
    assert alerts[1].dst_ips == ["10.0.0.2"]


def test_destination_list_is_capped_with_omitted_count():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i, "203.0.113.5", f"10.0.{i // 250}.{i % 250}", 1 + i % 300)
            for i in range(1000)]
    _, alerts = run_engine(rows, **{"port_scan.threshold": 50, "port_scan.max_listed": 16})
    (alert,) = alerts
    assert len(alert.dst_ips) == 16
    assert alert.dst_ip_count_estimated
    assert alert.dst_ips_omitted == alert.dst_ip_count - 16
    assert abs(alert.dst_ip_count - 1000) < 60   # linear counting over 4,096 bits: ~2% error


def test_table_is_bounded_and_scanner_survives_random_source_flood():
    rng = np.random.default_rng(7)
    ts = 1_700_000_000 * SEC
    rows = []
    for i in range(20000):
        a = rng.integers(1, 2**32 - 1)
        src = f"{a >> 24 & 255}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        rows.append(syn_row(ts + i * 1000, src, "10.0.0.1", 80))
        if i % 100 == 0:
            rows.append(syn_row(ts + i * 1000 + 1, "10.66.0.1", "10.0.0.1", i // 100 + 1))
    engine, alerts = run_engine(rows, **{"port_scan.threshold": 100,
                                         "port_scan.max_keys": 1024})
    det = engine.detectors[0]
    assert det.lc.keys.shape == (1024, 5)
    assert engine.stats()["port_scan_evictions"] > 10000
    assert [a.src_ip for a in alerts] == ["10.66.0.1"]
    assert alerts[0].dst_port_count == 200


def test_pinned_bucket_forces_early_report_not_loss():
    # one-way table: every new source lands on the single bucket, so a pending alert
    # must be reported early to make room; no alert is lost
    ts = 1_700_000_000 * SEC
    rows = []
    for s in range(3):
        rows += [syn_row(ts + s * SEC + i, f"203.0.113.{s}", "10.0.0.1", i + 1) for i in range(20)]
    engine, alerts = run_engine(rows, **{"port_scan.threshold": 10, "port_scan.max_keys": 8,
                                         "port_scan.table_ways": 8, "port_scan.report_delay_s": 100,
                                         "port_scan.window_s": 300,
                                         "port_scan.max_pending_alerts": 2})
    assert sorted(a.src_ip for a in alerts) == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    assert engine.stats()["port_scan_forced_reports"] >= 1


def test_syn_ack_rst_and_plain_ack_are_not_probes():
    ts = 1_700_000_000 * SEC
    rows = [syn_row(ts + i, "10.0.0.5", "10.0.0.6", i + 1, flags=f)
            for i, f in enumerate([TH_SYN | TH_ACK, TH_RST, TH_ACK, TH_RST | TH_ACK] * 30)]
    engine, alerts = run_engine(rows, **{"port_scan.threshold": 2})
    assert alerts == [] and engine.stats()["port_scan_counted"] == 0


def connections(n_ports, n_open, start_port=33000):
    """One client's SYNs to ``n_ports`` ports of one server, one every 10 ms; the
    first ``n_open`` answered by a SYN-ACK, the others by a RST."""
    rows, ts = [], 1_700_000_000 * SEC
    for k in range(n_ports):
        port = start_port + 7 * k
        rows.append(syn_row(ts, "10.0.0.1", "10.0.0.9", port, sport=41000 + k))
        answer = TH_SYN | TH_ACK if k < n_open else TH_RST | TH_ACK
        rows.append(syn_row(ts + 1000, "10.0.0.9", "10.0.0.1", 41000 + k, sport=port,
                            flags=answer))
        ts += SEC // 100
    return rows


def test_successful_connections_to_many_ports_are_withheld():
    # passive FTP: 60 data connections to ephemeral ports, all succeeding
    engine, alerts = run_engine(connections(60, 60))
    assert alerts == []
    assert engine.stats()["port_scan_withheld_open"] == 1
    # the SIEM presets' counting: every port counts
    engine, alerts = run_engine(connections(60, 60), **{"port_scan.count_open": "true"})
    assert len(alerts) == 1 and alerts[0].dst_port_count == 60
    assert "port_scan_withheld_open" not in engine.stats()


def test_withholding_counts_only_the_ports_that_succeeded():
    # 60 ports, 10 open: 50 failed reach the threshold of 50
    engine, alerts = run_engine(connections(60, 10))
    assert len(alerts) == 1 and alerts[0].outcomes["open"] == 10
    assert alerts[0].dst_port_count == 60 and len(expand_ports(alerts[0].open_ports)) == 10
    # 60 ports, 11 open: 49 failed do not
    engine, alerts = run_engine(connections(60, 11))
    assert alerts == [] and engine.stats()["port_scan_withheld_open"] == 1
