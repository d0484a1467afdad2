"""Memory the engine's tables will take, from the configuration, before any is allocated.

Every table is a set of arrays whose size is linear in its slot count (plus a
fixed part: pending lists, counters), so the bytes of a table of N slots are
measured on two tiny instances and extrapolated exactly: the figures are the
``*_table_bytes`` of ``--stats-json`` without building the tables.
``check_memory(cfg)`` refuses (``ConfigError``, exit status 2) a
configuration whose tables do not fit in the memory available now
(``MemAvailable`` of ``/proc/meminfo``), naming the figure and the largest
tables, instead of a numpy allocation error or a swapping machine.
"""
from kernels import alert_slots as ks
from kernels.batch import ROW_BYTES
from kernels.probes import ProbeState
from sensor.config import ConfigError
from sensor.detectors.counter import counter_table
from sensor.rules import RULES

OUTCOME_BATCH_MAX = 16384     # as sensor/engine.py


def _linear(nbytes_of, slots, ways):
    """Bytes of a table of ``slots`` slots, from instances of ``ways`` and 2 * ``ways``."""
    small, double = nbytes_of(ways), nbytes_of(2 * ways)
    per_slot = (double - small) // ways
    return small + per_slot * (slots - ways)


def _slots(keys, ways):
    return -(-keys // ways) * ways


def table_bytes(cfg):
    """{table name: bytes} for the enabled rules, the probe table and the batches."""
    out = {}
    for rule in RULES:
        if not cfg[rule.name + ".enabled"]:
            continue
        s = cfg.section(rule.name)

        def nbytes_of(n, s=s, rule=rule):
            return (ks.Lifecycle(n, s["max_pending_alerts"]).nbytes()
                    + counter_table(rule, s, n).nbytes())
        out[rule.name] = _linear(nbytes_of, _slots(s["max_keys"], s["table_ways"]),
                                 s["table_ways"])
    ways = cfg["probes.table_ways"]
    out["probes"] = _linear(lambda n: ProbeState(n, ways, 1).nbytes(),
                            _slots(cfg["probes.max_probes"], ways), ways)
    rows = cfg["capture.batch_packets"]
    batches = 2 if cfg["sensor.workers"] > 1 else 1
    out["batches"] = (batches * rows * ROW_BYTES + rows * 3
                      + min(rows, OUTCOME_BATCH_MAX) * (ROW_BYTES + 3))
    return out


def available_memory_bytes(meminfo="/proc/meminfo"):
    """MemAvailable in bytes, or None where the kernel does not say."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n):
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def check_memory(cfg, available=None, engines=1):
    """ConfigError if the tables of ``cfg`` need more than the memory available;
    ``engines``: how many engines get them (``run --workers N``: one per capture
    process)."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    sizes = {name: n * engines for name, n in table_bytes(cfg).items()}
    total = sum(sizes.values())
    if total <= available:
        return
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    named = ", ".join(f"{name} {_gib(n)}" for name, n in largest)
    each = f", {engines} capture workers" if engines > 1 else ""
    raise ConfigError(f"the tables need {_gib(total)} ({total:,} bytes{each}; largest: {named}) "
                      f"but {_gib(available)} of memory is available (MemAvailable): lower "
                      "`max_keys`/`max_listed` of those rules, `probes.max_probes` or "
                      "`capture.batch_packets`")
