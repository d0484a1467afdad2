"""Probe table and TRW: kernel vs reference, outcomes, backscatter, one-way captures, floods."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import naive
from batch_builder import batches_from_rows, syn_row
from conftest import ROOT, shipped
from kernels import probes as kp
from kernels.batch import TH_ACK, TH_RST, TH_SYN
from sensor.config import load_config
from sensor.engine import Engine
from sensor.rules import RULES
from test_rules import mixed_rows

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def kernel_outcomes(rows, timeout_s, batch_capacity, outcome_capacity):
    """Run the probe kernel alone; return outcome rows as dicts and the stats."""
    state = kp.ProbeState(1 << 16, 8, timeout_s * SEC)
    ob = kp.OutcomeBatch(outcome_capacity)
    seed = np.uint64(7)
    got = []

    def drain(n):
        for j in range(n):
            got.append({name: int(getattr(ob, name)[j]) for name in naive._ROW_NAMES}
                       | {"outcome": int(ob.outcome[j])})

    for batch in batches_from_rows(rows, batch_capacity):
        i = 0
        while i < batch.n:
            i, n = kp.probe_update(batch.columns, i, batch.n, state.arrays, seed,
                                   ob.columns, ob.outcome, 0, state.hash_ring)
            drain(n)
    while True:
        n = kp.expire_probes(state.arrays, 1 << 62, ob.columns, ob.outcome, 0)
        if n == 0:
            break
        drain(n)
    return got, state


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rows=mixed_rows(), timeout_s=st.sampled_from([1, 5, 30]),
       batch_capacity=st.sampled_from([1, 3, 4096]), outcome_capacity=st.sampled_from([2, 5, 512]))
def test_probe_kernel_matches_reference(rows, timeout_s, batch_capacity, outcome_capacity):
    got, state = kernel_outcomes(rows, timeout_s, batch_capacity, outcome_capacity)
    counters = {}
    want, _ = naive.probe_reference(rows, timeout_s * SEC, counters)
    key = ("ts_ns", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto", "outcome")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in want]
    m = state.meta
    assert counters == dict(time_exceeded=m[kp.PM_TIME_EXCEEDED], traced=m[kp.PM_TRACED],
                            backscatter_icmp=m[kp.PM_BACKSCATTER_ICMP],
                            icmp_misquoted=m[kp.PM_ICMP_MISQUOTED])


def engine(*overrides):
    # per-rule alerts: these tests are about what each rule makes of the outcomes
    return Engine(load_config(None, ["sensor.hash_seed=5", 'alerts.group="rule"', *overrides]))


def run(eng, rows, capacity=4096):
    alerts = []
    for batch in batches_from_rows(rows, capacity):
        alerts += eng.process(batch)
    return alerts + eng.finish()


def only(rule):
    return [f"{r.name}.enabled={'true' if r.name == rule else 'false'}" for r in RULES]


def scan_with_replies(scanner, target, ports, open_ports, t=T0, gap=1000):
    rows = []
    for k, port in enumerate(ports):
        ts = t + k * gap
        rows.append(syn_row(ts, scanner, target, port, sport=40000 + k))
        flags = TH_SYN | TH_ACK if port in open_ports else TH_RST | TH_ACK
        rows.append(syn_row(ts + 10, target, scanner, 40000 + k, sport=port, flags=flags))
    return rows


def test_syn_scan_outcomes_and_open_ports():
    rows = scan_with_replies("10.5.0.1", "10.5.0.2", range(1, 201), {22, 80, 143})
    alerts = run(engine(*only("port_scan")), rows)
    (a,) = alerts
    assert a.outcomes == {"open": 3, "closed": 197, "filtered": 0, "unknown": 0}
    assert a.open_ports == "22,80,143"


def test_unanswered_probes_are_filtered_when_replies_are_seen_elsewhere():
    rows = scan_with_replies("10.5.0.1", "10.5.0.2", [80], {80})
    rows += [syn_row(T0 + SEC + k, "10.5.0.1", "10.5.0.3", k + 1) for k in range(60)]
    alerts = run(engine(*only("port_scan"), "port_scan.scope=\"pair\""), rows)
    (a,) = alerts
    assert a.dst_ips == ["10.5.0.3"]
    assert a.outcomes == {"open": 0, "closed": 0, "filtered": 60, "unknown": 0}


def test_one_directional_capture_gives_unknown_never_filtered():
    rows = [syn_row(T0 + k * 1000, "10.5.0.1", "10.5.0.2", k + 1) for k in range(300)]
    eng = engine()
    alerts = run(eng, rows)
    # vertical_scan counts unknown attempts too (issue 12: small scans on a one-way SPAN)
    assert [a.rule for a in alerts] == ["port_scan", "vertical_scan"]
    assert alerts[0].outcomes == {"open": 0, "closed": 0, "filtered": 0, "unknown": 300}
    stats = eng.stats()
    assert stats["probes_unknown"] == 300 and stats["probes_filtered"] == 0
    assert stats["probe_replies_seen"] == 0


def test_one_directional_real_capture_through_cli(tmp_path):
    """Only the scanner's packets of the real nmap capture: port_scan with unknown outcomes."""
    src = shipped("nmap_syn_scan.pcap")
    one_way = tmp_path / "oneway.pcap"
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(one_way), "src host 10.77.0.1"],
                   check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", str(one_way)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    import json
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0
    assert [a["rule"] for a in alerts] == ["port_scan"]
    assert alerts[0]["dst_port_count"] == 1000
    assert alerts[0]["outcomes"] == {"open": 0, "closed": 0, "filtered": 0, "unknown": 1000}


def test_connect_scan_counts_and_busy_client_of_one_service_does_not():
    rows = scan_with_replies("10.5.0.1", "10.5.0.2", range(1, 101), {22})
    # the scanner completes the handshake on the open port (nmap -sT)
    rows.append(syn_row(T0 + 200_000, "10.5.0.1", "10.5.0.2", 22, sport=40021, flags=TH_ACK))
    # a busy client: 500 connections to one open service, all answered
    for k in range(500):
        ts = T0 + k * 10_000
        rows.append(syn_row(ts, "10.5.0.9", "10.5.0.2", 443, sport=20000 + k))
        rows.append(syn_row(ts + 5, "10.5.0.2", "10.5.0.9", 20000 + k, sport=443,
                            flags=TH_SYN | TH_ACK))
    rows.sort(key=lambda r: r["ts_ns"])
    alerts = run(engine(), rows)
    assert {(a.rule, a.src_ip) for a in alerts} == {("port_scan", "10.5.0.1"),
                                                    ("vertical_scan", "10.5.0.1"),
                                                    ("failed_connections", "10.5.0.1")}


def test_backscatter_is_counted_not_alerted():
    """A victim of a spoofed SYN flood answers random addresses: its SYN-ACKs and RSTs
    are backscatter, not scans by anyone."""
    rng = np.random.default_rng(3)
    rows = []
    for k in range(2000):
        dst = f"198.51.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
        flags = TH_SYN | TH_ACK if k % 2 else TH_RST | TH_ACK
        rows.append(syn_row(T0 + k * 1000, "10.5.0.2", dst, int(rng.integers(1024, 65535)),
                            sport=80 + (k % 50), flags=flags))
    eng = engine()
    assert run(eng, rows) == []
    stats = eng.stats()
    assert stats["backscatter_synack"] == 1000 and stats["backscatter_rst"] == 1000


def trw_rows(prober, hosts, outcome_of, t=T0):
    """One SYN per host (first contacts), answered per outcome_of(host): 'open', 'closed',
    or 'silent' (no answer)."""
    rows = []
    for k, host in enumerate(hosts):
        ts = t + k * SEC
        rows.append(syn_row(ts, prober, host, 445, sport=50000 + k))
        o = outcome_of(host)
        if o != "silent":
            flags = TH_SYN | TH_ACK if o == "open" else TH_RST | TH_ACK
            rows.append(syn_row(ts + 1000, host, prober, 50000 + k, sport=445, flags=flags))
    return rows


def test_trw_flags_scanner_on_fourth_failed_first_contact():
    hosts = [f"10.6.0.{k}" for k in range(1, 11)]
    rows = trw_rows("203.0.113.50", hosts, lambda h: "closed")
    alerts = run(engine(*only("trw_scanner"), "trw_scanner.report_delay_s=0"), rows)
    (a,) = alerts
    assert a.src_ip == "203.0.113.50"
    # flagged at the 4th failure (4^4 = 256 >= 99); reported at the next packet's time
    assert a.count == 4 and len(a.dst_ips) == 4
    assert a.direction == "inbound" and "T1595.001" in a.mitre


def test_trw_flags_scanner_of_unused_addresses_via_timeouts():
    hosts = [f"10.6.1.{k}" for k in range(1, 11)]
    rows = trw_rows("203.0.113.51", hosts, lambda h: "silent")
    # the sensor sees both directions elsewhere on the link
    rows = scan_with_replies("10.9.0.1", "10.9.0.2", [80], {80}, t=T0 - SEC) + rows
    alerts = run(engine(*only("trw_scanner"), "trw_scanner.report_delay_s=0"), rows)
    (a,) = alerts
    assert a.src_ip == "203.0.113.51" and 4 <= a.count <= 6
    assert a.outcomes["filtered"] >= 4


def test_trw_never_flags_clients_that_mostly_succeed():
    rng = np.random.default_rng(11)
    rows = []
    for c in range(30):
        client = f"198.51.100.{c + 1}"
        hosts = [f"10.7.{c}.{k}" for k in range(1, 41)]
        fail = set(rng.choice(40, size=6, replace=False).tolist())   # 15 % failures
        rows += trw_rows(client, hosts, lambda h, fail=fail, hosts=hosts:
                         "closed" if hosts.index(h) in fail else "open", t=T0 + c * 7)
    rows.sort(key=lambda r: r["ts_ns"])
    assert run(engine(*only("trw_scanner")), rows) == []


def test_trw_on_real_host_sweep_capture():
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", "--set",
                           'trw_scanner.directions=["internal"]', "--set", 'alerts.group="rule"',
                           str(shipped("nmap_host_sweep.pcap"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    import json
    trw = [a for a in map(json.loads, proc.stdout.splitlines()) if a["rule"] == "trw_scanner"]
    assert len(trw) == 1 and trw[0]["src_ip"] == "10.77.0.1"
    assert 4 <= trw[0]["count"] <= 6 or trw[0]["count"] <= 37


def test_probe_table_memory_flat_under_spoofed_flood_and_scanner_still_found():
    rng = np.random.default_rng(5)
    eng = engine("probes.max_probes=4096", "port_scan.max_keys=512")
    before = eng.probes.nbytes()
    alerts = []
    for chunk in range(10):
        rows = []
        for k in range(5000):
            i = chunk * 5000 + k
            a = int(rng.integers(1, 2**32 - 1))
            src = f"{a >> 24 & 255}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
            rows.append(syn_row(T0 + i * 1000, src, "10.0.0.1", 80, sport=int(a & 0xFFFF)))
            if i % 200 == 0:
                rows.append(syn_row(T0 + i * 1000 + 1, "10.66.0.1", "10.0.0.1", i // 200 + 1))
        for batch in batches_from_rows(rows, 4096):
            alerts += eng.process(batch)
    alerts += eng.finish()
    assert eng.probes.nbytes() == before
    stats = eng.stats()
    assert stats["probes_evictions"] > 40000
    scans = [a for a in alerts if a.rule == "port_scan"]
    assert [a.src_ip for a in scans] == ["10.66.0.1"] and scans[0].dst_port_count == 250


@pytest.mark.parametrize("workers", [1, 2])
def test_alert_reported_on_idle_tick_carries_outcomes(workers):
    """An alert that falls due after the last packet (reported by a later tick of
    packet time, as the live daemon's idle timer does) has its outcomes with 2
    workers too: outcomes are only deferred while a batch's probe stage runs."""
    from sensor.capture.files import CaptureFile
    from sensor.engine import Engine
    cfg = load_config(None, [f"sensor.workers={workers}", "sensor.hash_seed=7",
                             "port_scan.report_delay_s=60", "failed_connections.enabled=false",
                             "vertical_scan.enabled=false"])
    eng = Engine(cfg)
    alerts = []
    with CaptureFile(shipped("nmap_syn_scan.pcap")) as cf:
        for batch in cf.batches(eng.batches, eng.decode_stats):
            alerts += eng.process(batch)
            last = int(batch.ts_ns[batch.n - 1])
    assert alerts == []                      # not due yet: the report delay is 60 s
    later = [a for det in eng.detectors for a in det.advance(last + 120 * 10**9)]
    eng.close()
    (alert,) = later
    assert alert.rule == "port_scan"
    assert alert.outcomes == {"open": 3, "closed": 997, "filtered": 0, "unknown": 0}
    assert alert.open_ports == "22,80,443"


# --- ARP and neighbour discovery (arp_sweep, ndp_sweep) ---------------------------

SCANNER_MAC = 0x02_42_AC_11_00_01


def arp_rows(sender, targets, answered, t=T0, gap=SEC // 100, mac=SCANNER_MAC):
    """ARP requests from ``sender`` for ``targets``; those in ``answered`` reply."""
    from batch_builder import arp_row
    rows = []
    for k, target in enumerate(targets):
        ts = t + k * gap
        rows.append(arp_row(ts, sender, target, 1, mac))
        if target in answered:
            rows.append(arp_row(ts + 1000, target, sender, 2, 0x02_00_00_00_00_00 | k, mac))
    return rows


def test_arp_requests_are_probes_answered_by_replies():
    from batch_builder import arp_row
    rows = arp_rows("10.5.0.1", ["10.5.0.2", "10.5.0.3"], {"10.5.0.2"})
    rows += [arp_row(T0 + SEC, "10.5.0.9", "10.5.0.9", 1, 9),          # announcement
             arp_row(T0 + SEC, "10.5.0.9", "10.5.0.9", 2, 9),          # gratuitous reply
             arp_row(T0 + SEC, "0.0.0.0", "10.5.0.7", 1, 9),           # conflict probe
             arp_row(T0 + SEC, "10.5.0.8", "10.5.0.1", 2, 8, SCANNER_MAC)]   # unsolicited
    got, state = kernel_outcomes(rows, 5, 4096, 64)
    assert [(r["dst_lo"] & 0xFFFFFFFF, r["outcome"], r["inner_src_lo"]) for r in got] == [
        (0x0A050002, kp.OUT_OPEN, SCANNER_MAC), (0x0A050003, kp.OUT_FILTERED, SCANNER_MAC)]
    assert state.meta[kp.PM_PROBES] == 2 and state.meta[kp.PM_REPLIES] == 1
    want = naive.probe_reference(rows, 5 * SEC)[0]
    assert [{k: r[k] for k in want[0]} for r in got] == want


def neighbour_rows(sender, targets, answered, t=T0, gap=SEC // 100, mac=SCANNER_MAC):
    from batch_builder import nd_row
    rows = []
    for k, target in enumerate(targets):
        ts = t + k * gap
        rows.append(nd_row(ts, sender, "ff02::1:ff00:1", target, mac=mac))
        if target in answered:
            rows.append(nd_row(ts + 1000, target, sender, target, solicit=False))
    return rows


@pytest.mark.parametrize("family", ["arp", "ndp"])
def test_l2_sweep_threshold_and_quiet_neighbours(family):
    """20 unanswered targets from one sender is a sweep (hosts found in outcomes.open,
    the MAC named); 19 is not; a router asking for 60 neighbours that all answer,
    duplicate address detection and a DHCP server's few checks are not."""
    rule = f"{family}_sweep"
    if family == "arp":
        make, net = arp_rows, lambda k: f"10.5.{k // 250}.{k % 250 + 2}"
        dad = arp_rows("0.0.0.0", [net(k) for k in range(300, 340)], set(), t=T0 + 100 * SEC)
    else:
        make, net = neighbour_rows, lambda k: f"fd05::{k + 2:x}"
        dad = neighbour_rows("::", [net(k) for k in range(300, 340)], set(), t=T0 + 100 * SEC)
    targets = [net(k) for k in range(23)]
    found = set(targets[:3])
    sweep = make(net(200), targets, found)
    short = make(net(201), targets[:22], found, t=T0 + 20 * SEC)            # 19 unanswered
    router = make(net(202), [net(k) for k in range(60)], {net(k) for k in range(60)},
                  t=T0 + 40 * SEC, mac=7)
    dhcp = make(net(203), [net(k) for k in range(100, 105)], set(), t=T0 + 60 * SEC, gap=SEC)
    rows = sorted(sweep + short + router + dhcp + dad, key=lambda r: r["ts_ns"])
    alerts = run(engine(*only(rule)), rows)
    assert [(a.rule, a.src_ip, a.src_mac, a.count, a.outcomes["open"]) for a in alerts] == [
        (rule, net(200), "02:42:ac:11:00:01", 20, 3)]
    assert not {a for a in alerts[0].dst_ips} & found


def test_scanner_hidden_in_a_flood_that_overflows_the_table_keeps_its_timeouts():
    """50,000 spoofed one-packet sources against a 4,096-slot probe table (about 50
    times what it holds in one timeout), a scanner's 250 probes among them, no answer
    to anything. The flood's probes are the ones evicted and the ones whose timers
    the full main queue drops. Once the scanner has opened HOT_WEIGHT probes its
    initiator counts as busy (kernels/probes.py count_initiator): its probes keep
    their slots and wait in the busy initiators' queue, so each is decided at its
    timeout, and failed_connections, which reads those decisions, counts them. The
    first HOT_WEIGHT - 1 went to the main queue with the flood and lost their
    timers. (Before the busy initiators' queue, a probe kept its timer only while it
    was among the last 4,096 opened: about 20 of the 250, those still queued at the end.)"""
    rng = np.random.default_rng(5)
    eng = engine("probes.max_probes=4096", "failed_connections.threshold=100",
                 'alerts.group="rule"', "failed_connections.count_filtered=true")
    rows = []
    for i in range(50_000):
        a = int(rng.integers(1, 2**32 - 1))
        src = f"{a >> 24 & 255}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        rows.append(syn_row(T0 + i * 1000, src, "10.0.0.1", 80, sport=int(a & 0xFFFF)))
        if i % 200 == 0:
            rows.append(syn_row(T0 + i * 1000 + 1, "10.66.0.1", "10.0.0.1", i // 200 + 1))
    # one answered connection elsewhere: replies are seen, so timeouts are "filtered"
    rows.append(syn_row(T0 + 50_000_000, "10.9.9.9", "10.0.0.2", 443))
    rows.append(syn_row(T0 + 50_000_001, "10.0.0.2", "10.9.9.9", 40000, sport=443,
                        flags=0x12))
    alerts = []
    for batch in batches_from_rows(sorted(rows, key=lambda r: r["ts_ns"]), 4096):
        alerts += eng.process(batch)
    alerts += eng.finish()
    stats = eng.stats()
    assert stats["probes_evictions"] > 40_000 and stats["probe_queue_drops"] > 30_000
    failed = [a for a in alerts if a.rule == "failed_connections" and a.src_ip == "10.66.0.1"]
    assert failed and max(a.count for a in failed) == 250 - (kp.HOT_WEIGHT - 1)
    assert max(a.outcomes["filtered"] for a in failed) == 250 - (kp.HOT_WEIGHT - 1)
    assert not any(a.src_ip != "10.66.0.1" and a.rule == "failed_connections" for a in alerts)
