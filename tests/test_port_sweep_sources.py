"""port_sweep names every source of a distributed sweep (issue 11 finding 1).

On the shipped scapy capture pcaps/distributed_sweep_445.pcap (40 outside sources,
each probing port 445 on 3 of 60 home hosts; made by
pcaps/make_distributed_sweep_445.py) through the real CLI: one alert naming all 40
sources with their hosts and an exact count; with a cap below 40, an estimate that
says so and a table whose size the cap alone fixes. On generated rows: the kernel's
sources equal tests/naive.py's, including hosts past the 64-host mask and sources
past the cap, and an episode's updates never drop or shrink a source.
"""
import json
import subprocess
import sys

from hypothesis import given, settings, strategies as st

import naive
from batch_builder import batches_from_rows, syn_row
from conftest import ROOT, shipped
from sensor.config import load_config
from sensor.engine import Engine
from sensor.memory_budget import table_bytes
from sensor.rules import RULES

from test_rules import network, ref_sources, sources_of

SEC = 1_000_000_000
CAPTURE = "distributed_sweep_445.pcap"
SOURCES = [f"203.0.113.{k}" for k in range(1, 41)]


def hosts_of(k):
    return [f"10.77.1.{(3 * k + j) % 60 + 1}" for j in range(3)]


def replay(*args, stats=None):
    cmd = [sys.executable, "-m", "sensor", "replay", "--no-summary", "--set",
           'sensor.name="t"', *args, str(shipped(CAPTURE))]
    if stats is not None:
        cmd[4:4] = ["--stats-json", str(stats)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_every_source_of_the_sweep_is_named_with_its_hosts():
    for args in (["--preset", "sentinel-port-sweep"], []):
        alerts = replay(*args)
        assert [a["rule"] for a in alerts] == ["port_sweep"], args
        a = alerts[0]
        assert a["dst_port"] == 445 and a["dst_ip_count"] == 60 and a["direction"] == "inbound"
        assert a["source_count"] == 40 and a["source_count_estimated"] is False
        assert a["sources_omitted"] == 0 and a["sources_complete"] is True
        assert a["packets"] == 120 == sum(s["probes"] for s in a["sources"])
        by_ip = {s["ip"]: s for s in a["sources"]}
        assert sorted(by_ip) == sorted(SOURCES)
        for k, ip in enumerate(SOURCES):
            s = by_ip[ip]
            assert s["probes"] == 3 and s["host_count"] == 3 and s["hosts_omitted"] == 0
            assert sorted(s["hosts"]) == sorted(hosts_of(k)), ip
        # most probes first, then by address: all equal here, so address order
        assert [s["ip"] for s in a["sources"]] == SOURCES and a["src_ip"] == SOURCES[0]


def test_past_the_cap_the_count_is_an_estimate_and_memory_stays_fixed(tmp_path):
    sets = ["--preset", "sentinel-port-sweep", "--set", "port_sweep.max_sources=8"]
    alerts = replay(*sets, stats=tmp_path / "small.json")
    assert [a["rule"] for a in alerts] == ["port_sweep"]
    a = alerts[0]
    assert len(a["sources"]) == 8 and a["sources_complete"] is False
    assert a["source_count_estimated"] is True
    assert 36 <= a["source_count"] <= 44          # linear counting, 40 in 4,096 bits
    assert a["sources_omitted"] == a["source_count"] - 8
    # the first 8 sources to probe are listed, exactly
    assert [s["ip"] for s in a["sources"]] == SOURCES[:8]
    assert all(s["probes"] == 3 and s["host_count"] == 3 for s in a["sources"])
    replay("--preset", "sentinel-port-sweep", stats=tmp_path / "big.json")
    small = json.loads((tmp_path / "small.json").read_text())
    big = json.loads((tmp_path / "big.json").read_text())
    key = "port_sweep_table_bytes"
    cfg = lambda n: load_config(None, [f"port_sweep.max_sources={n}"])  # noqa: E731
    assert small[key] == table_bytes(cfg(8))["port_sweep"]
    assert big[key] == table_bytes(cfg(256))["port_sweep"]
    # what the cap costs: about 44 bytes per source per key (1,024 keys), nothing else
    per_source = (big[key] - small[key]) / (1024 * (256 - 8))
    assert 40 <= per_source <= 48, per_source


# --- kernel against the reference -------------------------------------------------
def sweep_engine(max_sources, threshold, **extra):
    over = [f"{r.name}.enabled={'true' if r.name == 'port_sweep' else 'false'}" for r in RULES]
    over += ["sensor.hash_seed=7", "alerts.max_per_minute=0", "port_sweep.count_open=true",
             f"port_sweep.max_sources={max_sources}", f"port_sweep.threshold={threshold}",
             "port_sweep.report_delay_s=0"]
    over += [f"port_sweep.{k}={v}" for k, v in extra.items()]
    return Engine(load_config(None, over))


def run(engine, rows):
    out = []
    for batch in batches_from_rows(rows, 128):
        out += engine.process(batch)
    return out + engine.finish()


@st.composite
def sweeps(draw):
    """SYNs to one port from many outside sources to many home hosts (up to 100: past
    the 64-host mask), some sources much busier than others."""
    n_src = draw(st.integers(1, 40))
    n_host = draw(st.sampled_from([3, 30, 100]))
    rows, ts = [], 1_700_000_100 * SEC
    for _ in range(draw(st.integers(1, 400))):
        ts += draw(st.sampled_from([1, 1000, SEC // 10]))
        s = draw(st.integers(0, n_src - 1)) if draw(st.booleans()) else 0
        h = draw(st.integers(0, n_host - 1))
        rows.append(syn_row(ts, f"198.51.100.{s + 1}", f"10.1.0.{h + 1}", 445, sport=40000 + s))
    return rows


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=sweeps(), max_sources=st.sampled_from([8, 16, 256]), threshold=st.integers(1, 40))
def test_sources_match_the_reference(rows, max_sources, threshold):
    # an update at every new target: each report's sources are compared (max_listed
    # above the hosts drawn: the window's targets, and so the updates, are exact)
    alerts = run(sweep_engine(max_sources, threshold, update_interval_s=0, max_listed=512),
                 rows)
    net = network("source")
    ref = naive.counter_reference("port_sweep", rows, net, threshold, 300 * SEC, 0,
                                  {"inbound"}, growth=10, update_ns=0,
                                  suppress_ns=3600 * SEC, new_target_updates=True,
                                  max_sources=max_sources)
    got = [(a.seq, a.packets, sources_of(a)) for a in alerts]
    want = [(r["seq"], r["probes"], ref_sources(r)) for r in ref]
    assert got == want


def test_updates_never_shrink_the_sources():
    """Every report of one episode lists every source of the one before, with at
    least its probes and hosts, also after the window moved past the first ones."""
    rows, ts = [], 1_700_000_100 * SEC
    for k in range(60):                      # one new source a minute, 2 hosts each
        for j in range(2):
            rows.append(syn_row(ts, f"203.0.113.{k + 1}", f"10.77.1.{(2 * k + j) % 90 + 1}", 445))
            ts += SEC
        ts += 58 * SEC
    alerts = run(sweep_engine(256, 5, growth_factor=2, update_interval_s=0,
                              window_s=120.0, suppress_s=86400.0), rows)
    assert len({a.id for a in alerts}) == 1 and len(alerts) >= 3
    for before, after in zip(alerts, alerts[1:]):
        was = {s["ip"]: s for s in before.sources}
        now = {s["ip"]: s for s in after.sources}
        assert set(was) <= set(now)
        for ip, s in was.items():
            assert now[ip]["probes"] >= s["probes"] and set(s["hosts"]) <= set(now[ip]["hosts"])
        assert after.source_count >= before.source_count
    last = alerts[-1]
    assert last.source_count == 60 and len(last.sources) == 60
    assert last.dst_ip_count < 60 * 2        # the window's targets: fewer than the episode's


def test_a_late_source_of_known_hosts_is_still_reported():
    """A sweep spread over 20 minutes whose later sources only probe hosts already
    probed: no new target, no growth, yet each new source is worth an update (the
    default update interval, 60 s), so the last message names all 30 sources."""
    rows, ts = [], 1_700_000_100 * SEC
    for k in range(30):
        for j in range(3):
            rows.append(syn_row(ts, f"203.0.113.{k + 1}", f"10.77.1.{(3 * k + j) % 30 + 1}", 445))
            ts += SEC
        ts += 37 * SEC
    alerts = run(sweep_engine(256, 20), rows)
    assert len({a.id for a in alerts}) == 1
    last = alerts[-1]
    assert last.source_count == 30 and len(last.sources) == 30 and last.sources_complete
