"""Time epochs: what the engine does when packet time jumps backwards.

Policy (README, "Time going backwards"): a packet more than
``capture.max_time_regression_s`` behind the latest packet time of the
stream starts a new *time epoch*. Smaller disorder (multi-queue capture,
merged interfaces) is normal and processed as it comes. At the start of an
epoch the engine reports every alert still pending, exactly as at the end of
input (unanswered attempts decided, waiting alerts sent), then empties its
tables (probe table, every rule's keys, the rate cap's minute) and goes on
from the new time. So a capture of 2023 followed by one of 2013 gives the
alerts of each alone, in either order; cumulative counters (evictions, rows
counted, ...) are kept, and ``time_regressions`` counts the epochs started.

``RowsView`` lets the engine run rows ``start:stop`` of a batch through the
same code as a whole batch (column views, no copy). ``clear_tables`` empties
the tables in place, in time proportional to the table sizes (marking every
slot free: the kernels initialise a slot when they claim it).
"""
from kernels.addr_table import EMPTY
from kernels import alert_slots as ks
from kernels import probes as kp
from kernels.batch import COLUMN_NAMES

MAX_JUMPS_KEPT = 100      # time jumps kept for the caller to report (all are counted)


class RowsView:
    """Rows ``start:stop`` of a batch, shaped like a PacketBatch (views, no copy)."""

    def __init__(self, batch, start, stop):
        for name in COLUMN_NAMES:
            setattr(self, name, getattr(batch, name)[start:stop])
        self.n = stop - start
        self.capacity = self.n

    @property
    def columns(self):
        return tuple(getattr(self, name) for name in COLUMN_NAMES)


def clear_tables(probes, detectors):
    """Empty the probe table and every rule's keys, keeping their counters.
    Call only once nothing is pending (all probes decided, all alerts reported)."""
    probes.last_seen_ns.fill(EMPTY)
    probes.pinned.fill(0)
    probes.meta[kp.PM_HEAD] = probes.meta[kp.PM_TAIL]
    for det in detectors:
        lc = getattr(det, "lc", None)
        if lc is None:                       # a rule exported to another engine
            continue
        lc.last_seen_ns.fill(EMPTY)
        lc.pinned.fill(0)
        lc.meta[ks.M_NPENDING] = 0


def reset_gate(gate):
    """The rate cap starts its minutes afresh (what it held was summarised)."""
    gate.minute = None
    gate.passed = 0
