"""Prober episodes (sensor/episodes.py): one alert per prober episode, evidence that
never shrinks, few updates; per-rule mode unchanged; checkpoints keep id and seq."""
import collections
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sensor.alerts import Alert, compress_ports, expand_ports, rfc3339
from sensor.episodes import PRIORITY, Episodes, bits_text, port_bits

ROOT = pathlib.Path(__file__).resolve().parent.parent
SLOW = ROOT / "pcaps" / "slow_scan_60ports.pcap"
S = 1_000_000_000
T0 = 1_700_000_000 * S
RULES = {r: (300.0, 3600.0) for r in PRIORITY}
RULES["port_sweep"] = (300.0, 3600.0)


def rule_alert(rule, src, ports, ips, count, first_ns, last_ns, seq=1, **extra):
    return Alert(rule=rule, src_ip=src, dst_ips=list(ips), dst_ip_count=len(ips),
                 dst_ips_omitted=0, dst_ip_count_estimated=False,
                 dst_ports=compress_ports(ports), dst_port_count=len(set(ports)),
                 first_seen=rfc3339(first_ns), last_seen=rfc3339(last_ns), packets=count,
                 severity="medium", mitre=["T1046"], sensor="t", id=f"{rule}-{src}",
                 threshold=5, window_s=300.0, count=count, count_kind="distinct_ports",
                 seq=seq, update=seq > 1, emitted_ns=last_ns, **extra)


@given(st.sets(st.integers(0, 65535), max_size=200))
def test_port_bits_round_trip(ports):
    assert bits_text(port_bits(compress_ports(ports))) == compress_ports(ports)


# ---------------------------------------------------------------- properties

@st.composite
def report_streams(draw):
    """Rule reports about 3 probers over ~2 hours, in packet-time order, cut into
    random engine calls (batches) with ticks between some of them."""
    n = draw(st.integers(1, 40))
    t = T0
    reports = []
    for _ in range(n):
        t += draw(st.integers(0, 900)) * S // 2
        src = draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1"]))
        rule = draw(st.sampled_from(PRIORITY + ("port_sweep",)))
        ports = draw(st.sets(st.integers(1, 2000), min_size=1, max_size=30))
        ips = draw(st.lists(st.sampled_from([f"192.0.2.{i}" for i in range(1, 12)]),
                            min_size=1, max_size=4, unique=True))
        span = draw(st.integers(0, 300)) * S
        reports.append(rule_alert(rule, src, ports, ips, draw(st.integers(1, 3000)),
                                  t - span, t,
                                  outcomes={"open": draw(st.integers(0, 9)), "closed": 1,
                                            "filtered": 0, "unknown": 0}))
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=8)))
    return reports, cuts


def run(episodes, reports, cuts, tick_gap_ns=0):
    """Feed ``reports`` in the chunks ``cuts`` makes; with ``tick_gap_ns``, an idle
    tick after each chunk (never past the next report: packet time only grows)."""
    out, start = [], 0
    for end in cuts + [len(reports)]:
        chunk = reports[start:end]
        if chunk:
            out += episodes.admit(chunk, chunk[-1].emitted_ns)
            if tick_gap_ns and end < len(reports):
                out += episodes.tick(min(chunk[-1].emitted_ns + tick_gap_ns,
                                         reports[end].emitted_ns))
        start = end
    return out + episodes.finish()


def new_episodes(**kw):
    kw = dict(dict(update_interval_s=300.0, growth=2.0, first_delay_s=5.0, max_listed=8), **kw)
    return Episodes("t", RULES, **kw)


def ports_of(a):
    return set(expand_ports(a.dst_ports))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report_streams())
def test_evidence_never_shrinks_and_seq_counts_up(stream):
    reports, cuts = stream
    out = run(new_episodes(), reports, cuts)
    assert [a.emitted_ns for a in out] == sorted(a.emitted_ns for a in out)
    assert all(a.rule == "port_sweep" for a in out if a.rules is None)
    by_id = collections.defaultdict(list)
    for a in out:
        if a.rules is not None:
            by_id[a.id].append(a)
    for msgs in by_id.values():
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
        assert [m.update for m in msgs] == [False] + [True] * (len(msgs) - 1)
        assert len({m.src_ip for m in msgs}) == 1
        for prev, cur in zip(msgs, msgs[1:]):
            assert ports_of(prev) <= ports_of(cur)
            assert cur.dst_port_count >= prev.dst_port_count
            assert cur.dst_ips[:len(prev.dst_ips)] == prev.dst_ips
            assert cur.dst_ip_count >= prev.dst_ip_count
            assert set(prev.rules) <= set(cur.rules)
            assert cur.first_seen <= prev.first_seen and cur.last_seen >= prev.last_seen
            assert cur.packets >= prev.packets
            for k, v in prev.outcomes.items():
                assert cur.outcomes[k] >= v
            for rule, ev in prev.rule_evidence.items():
                assert cur.rule_evidence[rule]["count"] >= ev["count"]
        for m in msgs:
            assert m.rules == [r for r in PRIORITY if r in m.rules] and m.rule == m.rules[0]
            assert list(m.rule_evidence) == m.rules
            assert m.count == m.rule_evidence[m.rule]["count"]
            assert m.dst_ips_omitted == m.dst_ip_count - len(m.dst_ips) >= 0
            assert len(m.dst_ips) <= 8
        # updates are spaced by the interval, but for the final one
        for prev, cur in zip(msgs, msgs[1:-1]):
            assert cur.emitted_ns - prev.emitted_ns >= 300 * S
    # every prober report is in exactly one episode, whose last message has all of it
    for r in reports:
        if r.rule == "port_sweep":
            continue
        final = [msgs[-1] for msgs in by_id.values() if msgs[0].src_ip == r.src_ip
                 and msgs[-1].first_seen <= r.first_seen and r.last_seen <= msgs[-1].last_seen
                 and r.rule in msgs[-1].rules and ports_of(r) <= ports_of(msgs[-1])]
        assert final, f"{r.rule} report of {r.src_ip} at {r.last_seen} is in no final message"
    # port_sweep passes through untouched
    assert [a for a in out if a.rule == "port_sweep" and a.rules is None] == \
        [r for r in reports if r.rule == "port_sweep"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report_streams(), st.sampled_from([0, S, 100 * S, 1000 * S]))
def test_output_does_not_depend_on_batch_boundaries(stream, tick_gap_ns):
    """Same reports cut into other batches, with or without idle ticks between them:
    the same messages, same content, same packet times."""
    reports, cuts = stream
    whole = run(new_episodes(), reports, [])
    cut = run(new_episodes(), reports, cuts, tick_gap_ns)
    assert [(a.to_dict(), a.emitted_ns) for a in cut] == [(a.to_dict(), a.emitted_ns) for a in whole]


@settings(max_examples=100, deadline=None)
@given(report_streams())
def test_rule_mode_and_single_rule_pass_alerts_through(stream):
    reports, cuts = stream
    assert run(new_episodes(group="rule"), reports, cuts) == reports
    single = Episodes("t", {"port_scan": (300.0, 3600.0), "port_sweep": (300.0, 3600.0)})
    assert not single.active
    only = [r for r in reports if r.rule in ("port_scan", "port_sweep")]
    assert run(single, only, cuts) == only


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report_streams(), st.integers(0, 40))
def test_capture_restore_continues_the_same_episodes(stream, at):
    """A checkpoint (through msgpack, as the daemon writes it) taken between two
    batches: the restored layer goes on with the same ids and seq."""
    import msgpack
    reports, _ = stream
    at = min(at, len(reports))
    whole = run(new_episodes(), reports, [at])
    first = new_episodes()
    out = first.admit(reports[:at], reports[at - 1].emitted_ns) if at else []
    saved = msgpack.unpackb(msgpack.packb(first.capture(), use_bin_type=True), raw=False,
                            strict_map_key=False)
    second = new_episodes()
    assert second.restore(saved) == []
    out += run(second, reports[at:], [])
    assert [(a.to_dict(), a.emitted_ns) for a in out] == [(a.to_dict(), a.emitted_ns) for a in whole]


def test_material_changes_only():
    """Growth below the factor and known targets are folded, not sent; a new rule,
    a doubling or a new target is sent once the interval has passed."""
    ep = new_episodes(first_delay_s=0)
    src, ip = "10.0.0.9", ["192.0.2.1"]
    out = ep.admit([rule_alert("port_scan", src, range(1, 51), ip, 50, T0, T0)], T0)
    assert [a.seq for a in out] == [1]
    t = T0 + 60 * S
    assert ep.admit([rule_alert("port_scan", src, range(1, 80), ip, 79, T0, t, 2)], t) == []
    t = T0 + 120 * S
    assert ep.admit([rule_alert("failed_connections", src, range(1, 80), ip, 70, T0, t)], t) == []
    t = T0 + 301 * S                  # the interval passed: the new rule is sent
    [upd] = ep.tick(t)
    assert upd.seq == 2 and upd.rules == ["port_scan", "failed_connections"]
    assert upd.emitted_ns == T0 + 300 * S and upd.dst_ports == "1-79"
    t = T0 + 400 * S                  # one more port: folded, not sent ...
    assert ep.admit([rule_alert("port_scan", src, range(1, 81), ip, 80, T0, t, 3)], t) == []
    assert ep.tick(t + 2 * 300 * S - 1) == []
    [last] = ep.tick(t + 2 * 300 * S)  # ... until the episode ends (quiet 2 windows)
    assert last.seq == 3 and last.dst_ports == "1-80" and last.emitted_ns == t + 600 * S
    assert ep.finish() == [] and not ep.episodes
    # the next report starts a new episode: a new id
    t += 700 * S
    [again] = ep.admit([rule_alert("port_scan", src, range(1, 51), ip, 50, t, t)], t)
    assert again.seq == 1 and again.id != last.id


# ---------------------------------------------------------------- the engine

NO_SLOW = "slow_scan.enabled=false"


def replay(path, *settings_):
    from sensor.capture.files import CaptureFile
    from sensor.config import load_config
    from sensor.engine import Engine
    engine = Engine(load_config(None, ['sensor.name="t"', "sensor.hash_seed=1", *settings_]))
    alerts = []
    with CaptureFile(str(path), 1 << 20) as cap:
        for batch in cap.batches(engine.batches, engine.decode_stats):
            alerts += engine.process(batch)
    return engine, alerts


@pytest.mark.skipif(not SLOW.exists(), reason="pcaps/slow_scan_60ports.pcap not present")
def test_slow_scan_one_alert_few_updates_whole_evidence():
    """One SYN a minute for an hour to 60 ports (issue 11 finding 3): per rule, 26
    messages whose ports fall back to what the window holds; merged, one alert of
    4 messages whose last says 60 ports, 1-60. (slow_scan, which also matches it, is
    off: this is about failed_connections' windows; tests/test_slow_scan.py has it.)"""
    engine, before = replay(SLOW, 'alerts.group="rule"', NO_SLOW)
    before += engine.finish()
    assert len({a.id for a in before}) == 1 and len(before) == 26
    assert min(a.dst_port_count for a in before[1:]) < before[0].dst_port_count   # shrinks
    engine, after = replay(SLOW, NO_SLOW)
    after += engine.finish()
    assert len({a.id for a in after}) == 1 and [a.seq for a in after] == [1, 2, 3, 4]
    assert [a.dst_ports for a in after] == ["1-10", "1-20", "1-40", "1-60"]
    assert after[-1].dst_port_count == 60 and after[-1].rules == ["failed_connections"]
    assert after[-1].rule_evidence["failed_connections"]["packets"] == 60


@pytest.mark.skipif(not SLOW.exists(), reason="pcaps/slow_scan_60ports.pcap not present")
def test_tick_ends_a_quiet_episode_and_checkpoint_keeps_id_and_seq():
    """The daemon's idle tick delivers the final state once the prober is quiet; a
    checkpoint taken before that, restored into a new engine, gives the same."""
    from sensor.config import load_config
    from sensor.engine import Engine
    from sensor.state import capture_state, decode_checkpoint, encode_checkpoint, restore_state
    engine, alerts = replay(SLOW, NO_SLOW)
    assert [a.seq for a in alerts] == [1, 2, 3]
    saved = decode_checkpoint(encode_checkpoint(capture_state(engine)))[1]
    last_probe_ns = (1_700_000_100 + 59 * 60) * S
    soon, quiet = last_probe_ns + 60 * S, last_probe_ns + (2 * 300 + 60) * S
    ticked = engine.tick(soon)
    assert ticked == [], "still within the quiet time: the held update waits"
    ticked += engine.tick(quiet)
    assert [a.seq for a in ticked] == [4] and ticked[0].dst_ports == "1-60"
    assert ticked[0].id == alerts[0].id and engine.finish() == []
    fresh = Engine(load_config(None, ['sensor.name="t"', "sensor.hash_seed=1", NO_SLOW]))
    restore_state(fresh, saved)
    again = fresh.tick(soon) + fresh.tick(quiet)
    assert [a.to_dict() for a in again] == [a.to_dict() for a in ticked]
    assert fresh.finish() == []
