"""Every rule's kernel against the plain-Python reference (tests/naive.py), on generated rows."""
import ipaddress
import math

import pytest
from hypothesis import given, settings, strategies as st

import naive
from batch_builder import arp_row, batches_from_rows, icmp_row, nd_row, syn_row, udp_row
from kernels.batch import TH_ACK, TH_FIN, TH_PUSH, TH_RST, TH_SYN, TH_URG
from sensor.addresses import from_text, mac_text, to_text
from sensor.alerts import expand_ports
from sensor.config import DEFAULT_HOME_NET, load_config
from sensor.engine import Engine
from sensor.rules import RULES

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
HOSTS = ["10.0.0.1", "10.0.0.2", "192.168.1.7", "::ffff:10.0.0.3", "198.51.100.4",
         "203.0.113.9", "2001:db8::5", "fd00::9", "127.0.0.1", "10.9.9.9"]
FLAGS = [TH_SYN] * 6 + [TH_SYN | TH_ACK, TH_RST, TH_RST | TH_ACK, TH_ACK, 0, TH_FIN,
                        TH_FIN | TH_PUSH | TH_URG, TH_FIN | TH_ACK]
LINK4 = ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.9.9.9", "127.0.0.1"]
LINK6 = ["fe80::1", "fe80::2", "fd00::9", "fd00::a", "fd00::b", "2001:db8::5"]
ALLOW = ["10.9.9.9/32"]
IGNORE = ["10.0.0.2/32"]
EXPOSED = ["10.0.0.1/32", "fd00::9/128"]
IGNORE_PORTS = [7]


def link_mac(address):
    """A fixed MAC per address (one interface each)."""
    return 0x020000000000 | (from_text(address)[1] & 0xFFFFFFFF)


@st.composite
def mixed_rows(draw):
    rows = []
    sent = []       # (src, dst, proto, sport, dport) of TCP/UDP rows, for ICMP errors to quote
    ts = T0
    for _ in range(draw(st.integers(1, 250))):
        ts += draw(st.sampled_from([0, 1, 1000, SEC // 10, SEC, 7 * SEC, 40 * SEC]))
        src = draw(st.sampled_from(HOSTS + ["203.0.113.9"] * 4))
        dst = draw(st.sampled_from(HOSTS))
        port = draw(st.one_of(st.sampled_from([22, 80, 443]), st.integers(1, 30)))
        port = port * draw(st.sampled_from([1, 1, 1, 997])) % 65536
        kind = draw(st.sampled_from(["tcp"] * 6 + ["echo", "unreach", "udp", "udp", "error",
                                                   "trace", "arp", "ndp"]))
        if kind in ("arp", "ndp"):
            # neighbour resolution: a burst of requests for link targets, some answered;
            # now and then gratuitous ARP, a DAD probe, or an unsolicited reply
            v6 = kind == "ndp"
            asker = draw(st.sampled_from(LINK6 if v6 else LINK4))
            mac = link_mac(asker)
            for k in range(draw(st.integers(1, 12))):
                target = draw(st.sampled_from(LINK6 if v6 else LINK4))
                odd = draw(st.integers(0, 11))
                who = ("::" if v6 else "0.0.0.0") if odd == 0 else (target if odd == 1 else asker)
                if v6:
                    rows.append(nd_row(ts, who, "ff02::1:ff00:1", target, mac=mac))
                else:
                    rows.append(arp_row(ts, who, target, 1, mac))
                if draw(st.integers(0, 2)) == 0 or odd == 2:
                    at = ts + draw(st.sampled_from([5, 1000, 2 * SEC]))
                    rows.append(nd_row(at, target, who, target, solicit=False) if v6 else
                                arp_row(at, target, who, 2, link_mac(target), mac))
                    ts = at          # rows stay in packet-time order
                ts += draw(st.sampled_from([0, 1, 1000, SEC // 10]))
            continue
        if kind == "trace":
            # a traceroute burst: probes to consecutive ports, time exceeded for the
            # first ones, port unreachable (or nothing) for the rest
            proto = draw(st.sampled_from([17, 17, 6]))
            base = draw(st.sampled_from([33434, 33000, 80]))
            hops = draw(st.integers(0, 3))
            v6 = ":" in dst and not dst.startswith("::ffff:")
            for k in range(draw(st.integers(1, 8))):
                dport = base + (k if proto == 17 else 0)
                sport = 41000 + k
                probe = (udp_row(ts, src, dst, dport, sport=sport) if proto == 17 else
                         syn_row(ts, src, dst, dport, sport=sport))
                rows.append(probe)
                sent.append((src, dst, proto, sport, dport))
                inner = (src, dst, proto, sport, dport)
                if k < hops:
                    rows.append(icmp_row(ts + 10, "10.0.0.254" if not v6 else "2001:db8::1",
                                         src, 3 if v6 else 11, 0, inner=inner, v6=v6))
                elif proto == 17 and draw(st.booleans()):
                    rows.append(icmp_row(ts + 20, dst, src, 1 if v6 else 3, 4 if v6 else 3,
                                         inner=inner, v6=v6))
                elif proto == 6 and draw(st.booleans()):
                    rows.append(syn_row(ts + 20, dst, src, sport, sport=dport,
                                        flags=TH_RST | TH_ACK))
                ts += draw(st.sampled_from([1, 1000, SEC]))
            continue
        if kind == "tcp":
            sport = draw(st.sampled_from([80, 443, 22, 40000]))
            row = syn_row(ts, src, dst, port, sport=sport, flags=draw(st.sampled_from(FLAGS)))
            sent.append((src, dst, 6, sport, port))
        elif kind == "echo":
            row = icmp_row(ts, src, dst, 8)
        elif kind == "udp":
            sport = draw(st.sampled_from([53, 5353, 40000, 40001]))
            row = udp_row(ts, src, dst, port, sport=sport)
            sent.append((src, dst, 17, sport, port))
        elif kind == "error" and sent:
            # an ICMP error quoting a datagram or segment sent earlier: from its target
            # or from a router on the way; sometimes of the other IP version (malformed)
            isrc, idst, iproto, isport, idport = draw(st.sampled_from(sent[-8:]))
            v6 = ":" in idst and not idst.startswith("::ffff:")
            if draw(st.integers(0, 9)) == 0:
                v6 = not v6
            icmp_type, code = draw(st.sampled_from(
                [(3, 1), (3, 13), (1, 3), (1, 4), (3, 3), (11, 0), (11, 1), (3, 0)]
                if v6 else [(11, 0), (11, 0), (3, 3), (3, 1), (3, 13), (3, 4), (11, 1)]))
            router = draw(st.sampled_from([idst, "10.0.0.254", "2001:db8::1"]))
            row = icmp_row(ts, router, isrc, icmp_type, code,
                           inner=(isrc, idst, iproto, isport, idport), v6=v6)
        else:
            row = icmp_row(ts, src, dst, 3, 3, inner=(dst, src, 17, 5353, port))
        rows.append(row)
    return rows


def network(scope):
    return dict(home=[ipaddress.ip_network(n) for n in DEFAULT_HOME_NET],
                allow=[ipaddress.ip_network(n) for n in ALLOW],
                ignore=[ipaddress.ip_network(n) for n in IGNORE],
                exposed=[ipaddress.ip_network(n) for n in EXPOSED],
                ignore_ports=set(IGNORE_PORTS), scope=scope)


def engine_with_timeout(rule, timeout_s, **settings_):
    return engine_for(rule, _extra=[f"probes.timeout_s={timeout_s}"], **settings_)


def engine_for(rule, _extra=(), **settings_):
    over = list(_extra) + [f"{r.name}.enabled={'true' if r.name == rule else 'false'}" for r in RULES]
    over += ["sensor.hash_seed=99", "alerts.max_per_minute=0",
             f"net.allow_sources={ALLOW!r}".replace("'", '"'),
             f"net.ignore_destinations={IGNORE!r}".replace("'", '"'),
             f"net.exposed_hosts={EXPOSED!r}".replace("'", '"'),
             f"net.ignore_ports={IGNORE_PORTS!r}"]
    over += [f"{rule}.{k}={v}" for k, v in settings_.items()]
    return Engine(load_config(None, over))


def run(engine, rows, capacity):
    alerts = []
    for batch in batches_from_rows(rows, capacity):
        alerts.extend(engine.process(batch))
    return alerts + engine.finish()


@pytest.mark.parametrize("rule", [r.name for r in RULES])
@settings(max_examples=50, deadline=None, derandomize=True)
@given(rows=mixed_rows(), threshold=st.integers(1, 6), window_s=st.sampled_from([1, 10, 60]),
       delay_s=st.sampled_from([0, 1, 5]), growth=st.sampled_from([0, 2]),
       new_target=st.booleans(), update_s=st.sampled_from([0, 30]),
       suppress_s=st.sampled_from([30, 3600]), capacity=st.sampled_from([1, 5, 4096]),
       scope=st.sampled_from(["source", "pair"]),
       directions=st.sampled_from([["inbound", "outbound", "internal", "external"],
                                   ["inbound"], ["internal", "outbound"]]),
       exclude=st.sampled_from([[], [3, "20-25"]]), attempts=st.booleans(),
       timeout_s=st.sampled_from([1, 5]), thetas=st.sampled_from([(0.8, 0.2), (0.6, 0.3)]))
def test_rule_matches_reference(rule, rows, threshold, window_s, delay_s, growth, new_target,
                                update_s, suppress_s, capacity, scope, directions, exclude,
                                attempts, timeout_s, thetas):
    delay_s = min(delay_s, window_s)
    settings_ = {"threshold": threshold, "window_s": window_s, "report_delay_s": delay_s,
                 "growth_factor": growth, "new_target_updates": str(new_target).lower(),
                 "update_interval_s": update_s, "suppress_s": suppress_s,
                 "directions": str(directions).replace("'", '"'),
                 "exclude_ports": str(exclude).replace("'", '"'), "max_listed": 512,
                 "max_keys": 256}
    sensitive_threshold = 0
    if rule in ("port_scan", "udp_scan"):
        settings_["scope"] = scope
    if rule == "port_scan":
        sensitive_threshold = growth + (1 if new_target else 0)      # 0..3, reusing draws
        settings_["sensitive_ports"] = "[22, 80, 443]"
        settings_["sensitive_threshold"] = sensitive_threshold
        # the kernel against its reference: every port counts (the withholding of
        # alerts whose ports succeeded is tested in tests/test_port_scan.py)
        settings_["count_open"] = "true"
    net = network(scope if rule in ("port_scan", "udp_scan") else "source")
    if rule in ("host_sweep", "port_sweep"):
        settings_["count_open"] = str(attempts).lower()
        net["from_outcomes"] = not attempts
    max_sources = 8 if thetas[0] == 0.6 else 256        # 8: fewer than HOSTS can send
    if rule == "port_sweep":
        settings_["max_sources"] = max_sources
    if rule == "failed_connections":
        settings_["count"] = "attempts" if attempts else "distinct"
        settings_["count_filtered"] = str(thetas[0] == 0.8).lower()
        net["count_filtered"] = thetas[0] == 0.8
    trw = None
    if rule == "trw_scanner":
        settings_["theta0"], settings_["theta1"] = thetas
        micro = lambda x: int(round(x * 1e6))
        trw = dict(fail=micro(math.log((1 - thetas[1]) / (1 - thetas[0]))),
                   success=micro(math.log(thetas[1] / thetas[0])),
                   upper=micro(math.log(0.99 / 0.01)), lower=micro(math.log(0.01 / 0.99)))
    min_span_s = 0 if growth == 0 else min(5, window_s)     # reusing draws
    tier = rule in ("slow_scan", "vertical_scan")
    doorkeeper = rule == "slow_scan" or thetas[0] == 0.8        # reusing draws
    if tier:
        settings_["min_span_s"] = min_span_s
        settings_["max_listed"] = 8 if attempts else 128      # the list filling up, too
        settings_["doorkeeper_entries"] = 1 << 20 if doorkeeper else 0
    alerts = run(engine_with_timeout(rule, timeout_s, **settings_), rows, capacity)
    if tier:
        fed = naive.probe_reference(rows, timeout_s * SEC)[0]
        ref = naive.slow_tier_reference(
            fed, network("source"), threshold, window_s * SEC, min_span_s * SEC, delay_s * SEC,
            set(directions), list_len=int(settings_["max_listed"]),
            exclude_ports=set([3] + list(range(20, 26))) if exclude else set(), growth=growth,
            update_ns=update_s * SEC, suppress_ns=suppress_s * SEC, new_target_updates=new_target,
            vertical_only=rule == "vertical_scan", doorkeeper=doorkeeper)
        vertical_only = rule == "vertical_scan"
        assert sorted(summarise_slow(a) for a in alerts) == \
            sorted(summarise_slow_ref(r, vertical_only) for r in ref)
        return
    fed = rows
    if rule in ("failed_connections", "trw_scanner", "exposed_host_probe", "stealth_scan",
                "udp_scan", "arp_sweep", "ndp_sweep") or net.get("from_outcomes"):
        fed = naive.probe_reference(rows, timeout_s * SEC)[0]
    ref = naive.counter_reference(
        rule, fed, net, threshold,
        window_s * SEC, delay_s * SEC, set(directions),
        exclude_ports=set([3] + list(range(20, 26))) if exclude else set(),
        growth=growth, update_ns=update_s * SEC, suppress_ns=suppress_s * SEC,
        new_target_updates=new_target,
        count_attempts=(rule == "failed_connections" and attempts), trw=trw,
        sensitive=(22, 80, 443), sensitive_threshold=sensitive_threshold,
        max_sources=max_sources)
    got = sorted(summarise_alert(a) for a in alerts)
    want = sorted(summarise_ref(rule, r) for r in ref)
    if rule == "udp_scan":
        # an alert lists every port of the key's probes in the probe table (the
        # open and excluded ones too): at least the counted ports
        got = sorted((g[:6] + g[7:], g[6]) for g in got)
        want = sorted((w[:6] + w[7:], w[6]) for w in want)
        assert [g for g, _ in got] == [w for w, _ in want]
        for (_, g_ports), (_, w_ports) in zip(got, want):
            assert set(expand_ports(w_ports)) <= set(expand_ports(g_ports))
        return
    assert got == want


def summarise_slow(a):
    return (a.src_ip, a.seq, a.count, a.packets, a.first_seen, a.last_seen, a.dst_ports,
            tuple(sorted(a.dst_ips)), a.direction, a.slow_shape, a.slow_target, a.dst_port,
            a.pairs_omitted, a.span_s)


def summarise_slow_ref(r, vertical_only=False):
    from sensor.alerts import compress_ports, rfc3339
    direction = next(n for n in ("inbound", "outbound", "external", "internal")
                     if n in r["directions"])
    ports = {p for _, p in r["pairs"]}
    shape = (r["shape"], to_text(*r["target"]) if r["target"] is not None else None, r["port"],
             round((r["last_seen_ns"] - r["first_seen_ns"]) / 1e9, 3))
    if vertical_only:    # vertical_scan: none of the slow fields
        shape = (None, None, None, None)
    return (to_text(*r["key"]), r["seq"], r["count"], r["probes"], rfc3339(r["first_seen_ns"]),
            rfc3339(r["last_seen_ns"]), compress_ports(ports),
            tuple(sorted({to_text(*h) for h, _ in r["pairs"]})), direction, *shape[:3],
            r["dropped"], shape[3])


def summarise_alert(a):
    return (a.src_ip, a.seq, a.count, a.packets, a.first_seen, a.last_seen,
            a.dst_ports if a.rule in ("port_scan", "stealth_scan", "udp_scan",
                                      "exposed_host_probe", "failed_connections") else "",
            tuple(sorted(a.dst_ips)), a.direction, tuple(a.probe_types or ()),
            sources_of(a), a.src_mac)


def sources_of(a):
    """port_sweep's sources as compared with the reference: every listed source in
    order, with its hosts; the exact count only while complete."""
    if a.sources is None:
        return None
    listed = tuple((s["ip"], s["probes"], tuple(s["hosts"]), s["host_count"])
                   for s in a.sources)
    assert a.sources_omitted == a.source_count - len(a.sources)
    assert a.source_count_estimated == (not a.sources_complete)
    return listed, a.source_count if a.sources_complete else None, a.sources_complete


def ref_sources(r):
    listed, count, complete = r["sources"], r["source_count"], r["sources_complete"]
    return (tuple((to_text(*p), n, tuple(to_text(*h) for h in hosts), host_count)
                  for p, n, hosts, host_count in listed),
            count if complete else None, complete)


def summarise_ref(rule, r):
    from sensor.alerts import compress_ports, rfc3339
    port_set = r["ports"] is not None
    if rule == "port_sweep":
        src = to_text(*r["sources"][0][0]) if r["sources"] else ""
    else:
        src = to_text(*r["key"][:2])
    if port_set:
        ports = compress_ports(r["ports"])
        dsts = tuple(sorted(to_text(*t) for t in r["targets"]))
    else:
        ports = compress_ports({p for (_, p) in r["items"]}) if rule == "failed_connections" else ""
        dsts = tuple(sorted({to_text(*h) for (h, _) in r["items"]}))
    for name in ("inbound", "outbound", "external", "internal"):
        if name in r["directions"]:
            direction = name
            break
    kinds = tuple(k for k in ("null", "fin", "xmas", "other", "ack", "maimon") if k in r["evidence"])
    mac = None
    if rule in ("arp_sweep", "ndp_sweep") and r["contributors"]:
        # one MAC per sender in mixed_rows: the top is exact
        mac = mac_text(max(r["contributors"].items(), key=lambda kv: kv[1])[0])
    sources = ref_sources(r) if rule == "port_sweep" else None
    return (src, r["seq"], r["count"], r["probes"], rfc3339(r["first_seen_ns"]),
            rfc3339(r["last_seen_ns"]), ports, dsts, direction, kinds, sources, mac)


def test_udp_scan_lists_every_probed_port_open_and_excluded_too():
    """Evidence is the whole probed set (issue 11, e2e table nmap -sU): the count
    is the unanswered, not excluded ports; dst_ports also has the port answered by
    UDP (7, open) and the excluded one (53, filtered)."""
    rows, ts = [], 1_700_000_000 * SEC
    for k, port in enumerate([*range(1, 7), *range(8, 21), 7, 53]):
        rows.append(udp_row(ts, "10.0.0.1", "10.0.0.9", port, sport=40000 + k))
        if port == 7:
            rows.append(udp_row(ts + 1000, "10.0.0.9", "10.0.0.1", 40000 + k, sport=7))
        ts += SEC // 100
    engine = engine_for("udp_scan", _extra=["probes.timeout_s=1"], threshold=10)
    alerts = run(engine, rows, 4096)
    assert len(alerts) == 1
    a = alerts[0]
    assert a.count == 19
    assert expand_ports(a.dst_ports) == list(range(1, 21)) + [53]
    assert a.dst_port_count == 21 and a.open_ports == "7"
    # a reply was seen (both directions are): unanswered probes are filtered
    assert a.outcomes["open"] == 1 and a.outcomes["filtered"] == 20
