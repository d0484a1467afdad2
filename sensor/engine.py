"""Engine: batches in, alert records out. No I/O and no clock.

Per batch: classify addresses once; run the probe table, which decides
connection attempts and writes outcome rows (drained into the outcome rules
whenever its batch fills); run the packet rules; then report every alert
that fell due by the batch's packet time. ``finish()`` (end of input)
decides the attempts still waiting for an answer and reports what is left.
Live capture calls ``process`` the same way, so replay and live give the
same alerts for the same packets.

With ``sensor.workers = 2`` the probe table and the outcome rules run on a
second thread (the kernels release the GIL) while this one classifies the
batch; the packet rules, and the decode of the next batch, are shared out
between the two so that neither waits long for the other
(``sensor/stage_balance.py``). The rules share nothing but the probe table,
which packet-rule alerts read for their outcomes: those come from the table
as it is after the batch's probe stage (filled in after the join for rules
that ran meanwhile), i.e. from the same table state as with one thread, so
the alerts are the same, in the same order.
"""
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kernels import alert_slots as ks
from kernels.batch import COLUMN_NAMES, PacketBatch, new_stats, stats_dict
from kernels.classify import C_DST_HOME, C_SRC_HOME, classify_rows
from kernels.rules import DIR_EXTERNAL, DIR_INBOUND, DIR_INTERNAL, DIR_OUTBOUND
from kernels import probes as kp
from kernels.time_order import NO_TIME_NS, first_regression
from sensor.alert_gate import AlertGate
from sensor.detectors.counter import CounterDetector, port_bitmap
from sensor.episodes import Episodes
from sensor.netlists import compile_lists
from sensor.rules import RULES
from sensor import stage_balance, time_epochs

END_OF_TIME_NS = np.iinfo(np.int64).max // 2


class Engine:
    """``rules``: names of the rules to run (default: every enabled rule).
    ``export``: rules this engine does not count but whose rows it hands out
    (``take_exports``) for an engine elsewhere to count (``count_exported``):
    live capture with several workers counts port_sweep, whose probers spread
    over all workers, in the supervisor (``sensor/supervisor.py``).
    ``rate_cap``: False for an engine whose alerts are capped elsewhere (the
    supervisor caps what all its workers send, ``alerts.max_per_minute`` being
    a cap for the whole daemon)."""

    def __init__(self, cfg, rules=None, export=(), rate_cap=True):
        self.cfg = cfg
        self.seed = np.uint64(cfg["sensor.hash_seed"] or (secrets.randbits(63) | 1))
        self.sensor_name = cfg.sensor_name
        self.batch = PacketBatch(cfg["capture.batch_packets"])
        # batches to decode into: two when a worker decodes the next one meanwhile
        self.batches = [self.batch]
        if cfg["sensor.workers"] > 1:
            self.batches.append(PacketBatch(cfg["capture.batch_packets"]))
        self.classes = np.zeros(self.batch.capacity, np.uint16)
        self.no_outcome = np.zeros(self.batch.capacity, np.uint8)
        self.decode_stats = new_stats()
        self.nets = compile_lists(cfg)
        self.ignored_ports = port_bitmap(cfg["net.ignore_ports"])
        ways = cfg["probes.table_ways"]
        self.probes = kp.ProbeState(-(-cfg["probes.max_probes"] // ways) * ways, ways,
                                    int(round(cfg["probes.timeout_s"] * 1e9)))
        self.outcomes = kp.OutcomeBatch(min(self.batch.capacity, 16384))
        self.outcome_classes = np.zeros(self.outcomes.capacity, np.uint16)
        wanted = [rule for rule in RULES if cfg[rule.name + ".enabled"]
                  and (rules is None or rule.name in rules)]
        self.detectors = [CounterDetector(rule, cfg, self.seed, self.sensor_name)
                          for rule in wanted]
        self.exports = []
        for i, det in enumerate(self.detectors):
            if det.name in export:
                self.detectors[i] = RowExport(det, self.exports)
        for det in self.detectors:
            det.probes = self.probes
        self.packet_rules = [d for d in self.detectors if not d.reads_outcomes]
        self.outcome_rules = [d for d in self.detectors if d.reads_outcomes]
        self.episodes = Episodes.from_config(cfg, [d.name for d in self.counters])
        self.gate = AlertGate(cfg["alerts.max_per_minute"] if rate_cap else 0, self.sensor_name)
        # time epochs (sensor/time_epochs.py): the latest packet time of this epoch
        self.latest_ns = NO_TIME_NS
        self.max_regression_ns = int(round(cfg["capture.max_time_regression_s"] * 1e9))
        self.time_regressions = 0
        self.time_jumps = []           # (from_ns, to_ns) per new epoch, for the caller to report
        self.pool = None
        self.balance = stage_balance.StageBalance()
        if cfg["sensor.workers"] > 1:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="scan-sensor-probes")

    def process(self, batch):
        """Run the probe table and every rule over one batch; return alerts to deliver."""
        return self._process(batch, None)[0]

    def process_then(self, batch, decode_next):
        """``process(batch)``, and ``decode_next()`` (which decodes the next batch
        into another of ``self.batches``); returns (alerts, what decode_next
        returned). With 2 workers, decode_next runs on whichever thread has less
        to do (sensor/stage_balance.py) while the other still works on this
        batch; it should report input errors in what it returns rather than
        raise, or the alerts of this batch are lost with the exception."""
        if self.pool is None or batch.n == 0:
            return self.process(batch), decode_next()
        return self._process(batch, decode_next)

    def _process(self, batch, then):
        """Rows up to the first time regression (kernels/time_order.py); then a new
        time epoch and the rest of the batch the same way. In order, no row twice."""
        if batch.n == 0:
            return [], None
        cut, latest = first_regression(batch.ts_ns, 0, batch.n, self.latest_ns,
                                       self.max_regression_ns)
        if cut == batch.n:
            self.latest_ns = latest
            return self._process_rows(batch, then)
        alerts, start = [], 0
        while True:                    # rare: a capture or clock that went backwards
            if cut > start:
                alerts += self._process_rows(time_epochs.RowsView(batch, start, cut), None)[0]
            self.latest_ns = latest
            if cut == batch.n:
                return alerts, (then() if then is not None else None)
            alerts += self._new_epoch(int(batch.ts_ns[cut]))
            start = cut
            cut, latest = first_regression(batch.ts_ns, start, batch.n, self.latest_ns,
                                           self.max_regression_ns)

    def _new_epoch(self, to_ns):
        """Packet time went back to ``to_ns``: report what is pending as at the end of
        input, empty the tables, go on from ``to_ns`` (sensor/time_epochs.py)."""
        self.time_regressions += 1
        if len(self.time_jumps) < time_epochs.MAX_JUMPS_KEPT:
            self.time_jumps.append((self.latest_ns, to_ns))
        alerts = self._report_pending()
        self.episodes.now_ns = 0           # episodes ended above; the new epoch's time starts again
        time_epochs.clear_tables(self.probes, self.detectors)
        time_epochs.reset_gate(self.gate)
        self.latest_ns = NO_TIME_NS
        return alerts

    def take_time_jumps(self):
        """[(from_ns, to_ns)] of the epochs started since the last call (at most
        time_epochs.MAX_JUMPS_KEPT between calls; ``time_regressions`` counts all)."""
        out, self.time_jumps = self.time_jumps, []
        return out

    def _process_rows(self, batch, then):
        if batch.n > self.classes.shape[0]:      # a batch from elsewhere, larger than ours
            self.classes = np.zeros(batch.n, np.uint16)
            self.no_outcome = np.zeros(batch.n, np.uint8)
        classes, no_outcome = self.classes, self.no_outcome
        following = None
        if self.pool is None:
            classify_rows(batch.columns, batch.n, self.nets, self.ignored_ports, classes)
            alerts = self._probe_stage(batch)
            for det in self.packet_rules:
                alerts += det.process(batch, classes, no_outcome)
        else:
            alerts, following = self._two_threads(batch, then, classes, no_outcome)
        now = int(batch.ts_ns[batch.n - 1])
        for det in self.detectors:
            alerts += det.advance(now)
        return self._deliver(alerts, now), following

    def _two_threads(self, batch, then, classes, no_outcome):
        """One batch on two threads (sensor/stage_balance.py): the worker runs the
        probe stage; the address classes, each packet rule and the next decode go to
        either thread. The classes come first on their thread (the packet rules wait
        for them); the main thread decodes before its rules, so that it has work
        while the worker classifies. Alerts come out in the order of one worker:
        the probe stage's, then each packet rule's in turn."""
        balance = self.balance
        decode = then is not None
        on_worker = balance.split([stage_balance.CLASSIFY]
                                  + [det.name for det in self.packet_rules]
                                  + ([stage_balance.DECODE] if decode else []))
        mine = [det for det in self.packet_rules if det.name not in on_worker]
        theirs = [det for det in self.packet_rules if det.name in on_worker]
        classified = threading.Event()
        out = {}

        def classify():
            try:
                balance.timed(stage_balance.CLASSIFY, classify_rows, batch.columns, batch.n,
                              self.nets, self.ignored_ports, classes)
            finally:
                classified.set()

        def worker_half():
            if stage_balance.CLASSIFY in on_worker:
                classify()
            stage_alerts = balance.timed(stage_balance.PROBE_STAGE, self._probe_stage, batch)
            classified.wait()
            for det in theirs:
                out[det.name] = balance.timed(det.name, det.process, batch, classes, no_outcome)
            following = None
            if decode and stage_balance.DECODE in on_worker:
                following = balance.timed(stage_balance.DECODE, then)
            return stage_alerts, following

        for det in mine:
            det.defer_outcomes = True     # the probe table is busy until the join
        worker = self.pool.submit(worker_half)
        try:
            if stage_balance.CLASSIFY not in on_worker:
                classify()
            if decode and stage_balance.DECODE not in on_worker:
                out[stage_balance.DECODE] = balance.timed(stage_balance.DECODE, then)
            classified.wait()
            for det in mine:
                out[det.name] = balance.timed(det.name, det.process, batch, classes, no_outcome)
        finally:
            classified.set()        # never leave the worker waiting (this thread raised)
            alerts, following = worker.result()     # (re-raises the worker's exception)
            for det in mine:
                det.defer_outcomes = False
        for det in mine:
            det.complete_outcomes()
        following = out.get(stage_balance.DECODE, following)
        for det in self.packet_rules:
            alerts += out[det.name]
        return alerts, following

    def warm_up(self, probes=True, rules=True, classes=True):
        """Load the batch kernels now, with empty batches (no state changes): the
        first kernel loaded from the cache costs about 0.3 s of LLVM start-up, which
        then counts as start-up rather than as packet processing. ``probes`` /
        ``rules`` / ``classes``: the probe stage's kernels, the rules' kernels, the
        address classes and clock check (``scan-sensor compile`` compiles them in
        separate processes at once, each kernel in one of them)."""
        empty = self.batch
        saved = empty.n
        empty.n = 0
        if classes:
            classify_rows(empty.columns, 0, self.nets, self.ignored_ports, self.classes)
            first_regression(empty.ts_ns, 0, 0, self.latest_ns, self.max_regression_ns)
        if probes:
            kp.probe_update(empty.columns, 0, 0, self.probes.arrays, self.seed,
                            self.outcomes.columns, self.outcomes.outcome, 0,
                            self.probes.hash_ring)
            kp.expire_probes(self.probes.arrays, -END_OF_TIME_NS, self.outcomes.columns,
                             self.outcomes.outcome, 0)
        self.outcomes.n = 0
        if not rules:
            empty.n = saved
            return
        for det in self.packet_rules:
            det.process(empty, self.classes, self.no_outcome)
        for det in self.outcome_rules:
            det.process(self.outcomes, self.outcome_classes, self.outcomes.outcome)
        for det in self.detectors:
            det.advance(-END_OF_TIME_NS)
            if isinstance(det, CounterDetector):
                det.warm_up()
        empty.n = saved

    def _probe_stage(self, batch):
        """Probe table over the batch; outcome rules over the attempts it decides."""
        alerts = []
        i = 0
        while i < batch.n:
            i, rows = kp.probe_update(batch.columns, i, batch.n, self.probes.arrays, self.seed,
                                      self.outcomes.columns, self.outcomes.outcome, 0,
                                      self.probes.hash_ring)
            alerts += self._outcome_rows(rows)
        return alerts

    def tick(self, now_ns):
        """Packet time reached ``now_ns`` without a packet (live capture on a quiet
        link: the daemon hands in its idle clock): decide the attempts whose
        timeout passed and report the alerts due by then. A later packet would
        have done the same, so a replay of the capture gives the same alerts."""
        delivered = []
        if now_ns < self.latest_ns - self.max_regression_ns:
            delivered = self._new_epoch(now_ns)    # the clock was stepped back
        alerts = []
        self.latest_ns = max(self.latest_ns, now_ns)
        while True:
            rows = kp.expire_probes(self.probes.arrays, now_ns, self.outcomes.columns,
                                    self.outcomes.outcome, 0)
            if rows == 0:
                break
            alerts += self._outcome_rows(rows)
        for det in self.detectors:
            alerts += det.advance(now_ns)
        return delivered + self._deliver(alerts, now_ns)

    def close(self):
        """Stop the worker thread (if any)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def finish(self):
        """End of input: attempts still unanswered are decided, waiting alerts reported."""
        self.close()
        return self._report_pending()

    def _report_pending(self):
        """Everything still pending, as at the end of input: attempts decided, waiting
        alerts reported, every prober episode's last state sent, the gate's summary."""
        alerts = self._expire_all()
        for det in self.detectors:
            alerts += det.flush()
        alerts = self._sendable(alerts)
        alerts.sort(key=lambda a: a.emitted_ns)
        alerts = self.episodes.admit(alerts, max((a.emitted_ns for a in alerts), default=0))
        return self.gate.admit(alerts + self.episodes.finish()) + self.gate.finish()

    def _expire_all(self):
        """Decide every attempt still waiting for an answer; the outcome rules' alerts."""
        alerts = []
        while True:
            rows = kp.expire_probes(self.probes.arrays, END_OF_TIME_NS, self.outcomes.columns,
                                    self.outcomes.outcome, 0)
            if rows == 0:
                return alerts
            alerts += self._outcome_rows(rows)

    def _outcome_rows(self, rows):
        if rows == 0 or not self.outcome_rules:
            return []
        ob = self.outcomes
        ob.n = rows
        classify_rows(ob.columns, rows, self.nets, self.ignored_ports, self.outcome_classes)
        alerts = []
        for det in self.outcome_rules:
            alerts += det.process(ob, self.outcome_classes, ob.outcome)
        return alerts

    @property
    def counters(self):
        """The rules this engine counts itself (not those it exports)."""
        return [d for d in self.detectors if not isinstance(d, RowExport)]

    def take_exports(self):
        """Rows collected for exported rules since the last call:
        [(rule name, reads_outcomes, {column: array}, outcome codes)]."""
        out, self.exports[:] = list(self.exports), []
        return out

    def count_exported(self, name, reads_outcomes, columns, outcome):
        """Count rows another engine exported (``take_exports``) with this
        engine's rule ``name``; returns the alerts due. Packet time going back
        more than ``capture.max_time_regression_s`` starts a new time epoch, as
        in ``process`` (sensor/time_epochs.py)."""
        det = next(d for d in self.detectors if d.name == name)
        n = len(outcome)
        ob = self.outcomes if reads_outcomes else self.batch
        classes = self.outcome_classes if reads_outcomes else self.classes
        delivered = []
        for start in range(0, n, ob.capacity):
            end = min(n, start + ob.capacity)
            for col, values in columns.items():
                getattr(ob, col)[:end - start] = values[start:end]
            ob.n = end - start
            if reads_outcomes:
                ob.outcome[:ob.n] = outcome[start:end]
            codes = ob.outcome if reads_outcomes else self.no_outcome
            first = 0
            while True:
                cut, latest = first_regression(ob.ts_ns, first, ob.n, self.latest_ns,
                                               self.max_regression_ns)
                if cut > first:
                    rows = time_epochs.RowsView(ob, first, cut)
                    classify_rows(rows.columns, rows.n, self.nets, self.ignored_ports, classes)
                    alerts = det.process(rows, classes, codes[first:cut])
                    alerts += det.advance(int(ob.ts_ns[cut - 1]))
                    delivered += self._deliver(alerts, max((a.emitted_ns for a in alerts),
                                                           default=0))
                self.latest_ns = latest
                if cut == ob.n:
                    break
                delivered += self._new_epoch(int(ob.ts_ns[cut]))
                first = cut
        return delivered

    def _deliver(self, alerts, now_ns):
        """Detector alerts due by packet time ``now_ns`` -> prober episodes
        (``sensor/episodes.py``) -> rate gate."""
        alerts = self._sendable(alerts)
        alerts.sort(key=lambda a: a.emitted_ns)
        return self.gate.admit(self.episodes.admit(alerts, now_ns))

    def _sendable(self, alerts):
        """The detectors' alerts but those a rule withholds now that their outcomes
        are known (port_scan with ``count_open = false``: ``CounterDetector.withholds``)."""
        judges = [d for d in self.counters if getattr(d, "discount_open", False)]
        if not judges or not alerts:
            return alerts
        return [a for a in alerts if not any(d.withholds(a) for d in judges)]

    def stats(self):
        out = stats_dict(self.decode_stats)
        m = self.probes.meta
        out.update({
            "probes_tracked": int(m[kp.PM_PROBES]),
            "probes_open": int(m[kp.PM_OPEN]),
            "probes_closed": int(m[kp.PM_CLOSED]),
            "probes_filtered": int(m[kp.PM_FILTERED]),
            "probes_unknown": int(m[kp.PM_UNKNOWN]),
            "probe_replies_seen": int(m[kp.PM_REPLIES]),
            "probes_evictions": int(m[kp.PM_EVICTIONS]),
            "backscatter_synack": int(m[kp.PM_BACKSCATTER_SYNACK]),
            "backscatter_rst": int(m[kp.PM_BACKSCATTER_RST]),
            "backscatter_icmp": int(m[kp.PM_BACKSCATTER_ICMP]),
            "icmp_misquoted": int(m[kp.PM_ICMP_MISQUOTED]),
            "time_exceeded_seen": int(m[kp.PM_TIME_EXCEEDED]),
            "traceroute_probes": int(m[kp.PM_TRACED]),
            "trace_evictions": int(m[kp.PM_TRACE_EVICTIONS]),
            "probe_queue_drops": int(m[kp.PM_QUEUE_DROPS]),
            "probe_table_bytes": int(self.probes.nbytes()),
        })
        for det in self.detectors:
            out.update(det.stats())
        out["alerts_rate_limited"] = self.gate.total_held
        out["time_regressions"] = self.time_regressions
        return out


class RowExport:
    """Stands in for a rule in an engine that exports it: keeps the rows the
    rule would count (those of its directions) instead of counting them."""

    def __init__(self, det, sink):
        self.name = det.name
        self.reads_outcomes = det.reads_outcomes
        self.mask = int(det.params[ks.P_DIR_MASK])
        self.sink = sink
        self.probes = None
        self.defer_outcomes = False

    def process(self, batch, cls, outcome):
        n = batch.n
        c = cls[:n]
        src_home = (c & C_SRC_HOME) != 0
        dst_home = (c & C_DST_HOME) != 0
        direction = np.where(src_home, np.where(dst_home, DIR_INTERNAL, DIR_OUTBOUND),
                             np.where(dst_home, DIR_INBOUND, DIR_EXTERNAL))
        keep = np.flatnonzero(direction & self.mask)
        if keep.size:
            columns = {name: getattr(batch, name)[keep] for name in COLUMN_NAMES}
            self.sink.append((self.name, self.reads_outcomes, columns, outcome[keep].copy()))
        return []

    def advance(self, now_ns):
        return []

    def flush(self):
        return []

    def complete_outcomes(self):
        pass

    def stats(self):
        return {}
