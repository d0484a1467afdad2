"""The host-set item index and lazy sketches (kernels/host_set.py): exact lookups
past generation wrap-around, whole lists without a linear scan, and sketches that
start only once a list is full."""
import numpy as np

from batch_builder import batches_from_rows, icmp_row
from kernels.host_set import INDEX_GEN_MASK, item_index_len
from sensor.config import load_config
from sensor.engine import Engine

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
PROBER = "203.0.113.9"


def sweep_engine(*extra):
    cfg = load_config(None, ['sensor.name="idx"', "sensor.hash_seed=7", 'alerts.group="rule"',
                             "icmp_sweep.window_s=10", "icmp_sweep.report_delay_s=1",
                             "icmp_sweep.growth_factor=0", "icmp_sweep.new_target_updates=false",
                             *extra])
    return Engine(cfg, rules={"icmp_sweep"})


def run(engine, rows):
    out = []
    for batch in batches_from_rows(rows, 4096):
        out += engine.process(batch)
    return [a for a in out + engine.finish() if a.rule == "icmp_sweep"]


def echo(ts, target):
    return icmp_row(ts, PROBER, target, 8)


def test_counts_stay_exact_across_generation_wrap():
    """Episodes of one prober, each a new generation of its slot's index, across the
    point where generations wrap: every episode counts its own targets exactly
    (entries of a wrapped generation are only ever non-matching)."""
    engine = sweep_engine("icmp_sweep.threshold=5", "icmp_sweep.max_listed=8")
    det = engine.detectors[0]
    det.table.item_gen[:] = INDEX_GEN_MASK - 3
    rows = []
    for episode in range(8):
        start = T0 + episode * 100 * SEC          # idle 2 windows between: a new episode
        targets = [f"10.{episode}.0.{k}" for k in range(1, 6 + episode % 3)]
        for rep in range(3):                      # each target again: no new item
            rows += [echo(start + (rep * 10 + j) * 1000, t) for j, t in enumerate(targets)]
    alerts = run(engine, rows)
    assert [a.count for a in alerts] == [5 + e % 3 for e in range(8)]
    assert all(not a.count_estimated for a in alerts)
    assert int(det.table.item_gen.max()) > INDEX_GEN_MASK      # it did wrap


def test_a_full_list_of_1024_items_is_exact_in_any_order():
    """1,000 distinct targets, each seen three times in random order: exactly 1,000,
    listed, not estimated; then the list full (1,024) and past it: estimated."""
    engine = sweep_engine("icmp_sweep.threshold=1000", "icmp_sweep.max_listed=1024")
    order = np.random.default_rng(3).permutation(np.repeat(np.arange(1000), 3))
    rows = [echo(T0 + i * 1000, f"10.1.{t >> 8}.{t & 255}") for i, t in enumerate(order)]
    (alert,) = run(engine, rows)
    assert alert.count == 1000 and alert.dst_ip_count == 1000
    assert not alert.dst_ip_count_estimated and len(alert.dst_ips) == 1000

    engine = sweep_engine("icmp_sweep.threshold=1500", "icmp_sweep.max_listed=1024")
    rows = [echo(T0 + i * 1000, f"10.2.{t >> 8}.{t & 255}") for i, t in enumerate(range(2000))]
    (alert,) = run(engine, rows)            # reported 1 s later: all 2,000 counted
    assert alert.dst_ip_count_estimated and len(alert.dst_ips) == 1024
    assert 1900 <= alert.count <= 2100                  # linear counting, 4,096 bits


def test_sketches_start_only_when_the_list_is_full():
    """A key whose list never fills writes no sketch word; one that fills has every
    listed item in its sketches."""
    engine = sweep_engine("icmp_sweep.threshold=100", "icmp_sweep.max_listed=8")
    det = engine.detectors[0]
    rows = [echo(T0 + i * 1000, f"10.3.0.{k}") for i, k in enumerate(range(1, 8))]
    for batch in batches_from_rows(rows, 4096):
        engine.process(batch)
    slot = int(np.flatnonzero(det.table.item_n == 7)[0])
    assert det.table.sketch_live[slot] == 0 and not det.table.sketch[slot].any()
    for batch in batches_from_rows([echo(T0 + 10_000, "10.3.0.8")], 4096):
        engine.process(batch)
    assert det.table.item_n[slot] == 8 and det.table.sketch_live[slot] == 1
    bits = np.unpackbits((det.table.sketch[slot, 0] | det.table.sketch[slot, 1]).view(np.uint8))
    assert 1 <= bits.sum() <= 8


def test_index_memory():
    assert item_index_len(64) == 128 and item_index_len(1024) == 2048
    assert item_index_len(100) == 256
