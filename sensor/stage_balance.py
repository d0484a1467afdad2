"""Which thread runs what, with ``sensor.workers = 2`` (``Engine._two_threads``).

The worker thread always runs the probe stage (probe table, then the rules fed
by its outcome rows). Everything else is independent of the thread it runs on
and may go either way: the batch's address classes (which the packet rules
wait for, so they come first on their thread), each packet rule (if it runs on
the worker, after the probe stage), and the decode of the next batch. So that
neither thread waits long for the other, each of those tasks goes to the side
with less work so far, biggest task first, by the time each took over the last
batches (an exponential average of ``perf_counter`` spans, per batch, never per
packet).

Where a task runs changes no result: each rule sees the same rows in the same
order, a packet rule's alerts get their outcomes from the probe table as it is
after the probe stage either way, and the engine puts the alerts together in
the order of one worker.
"""
import time

SMOOTHING = 0.25          # weight of the newest batch in the running average
PROBE_STAGE = "probe stage"
CLASSIFY = "classify"
DECODE = "decode"


class StageBalance:
    def __init__(self):
        self.seconds = {}             # task -> running average of its seconds per batch

    def record(self, task, seconds):
        old = self.seconds.get(task)
        self.seconds[task] = seconds if old is None else old + SMOOTHING * (seconds - old)

    def timed(self, task, fn, *args):
        """``fn(*args)``, its time recorded under ``task``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.record(task, time.perf_counter() - t0)

    def split(self, movable):
        """``movable``: task names. Returns the set of them the worker thread runs."""
        worker = self.seconds.get(PROBE_STAGE, 0.0)
        main = 0.0
        on_worker = set()
        # unknown tasks count as zero: the first batch measures them
        for task in sorted(movable, key=lambda t: (-self.seconds.get(t, 0.0), t)):
            cost = self.seconds.get(task, 0.0)
            if worker < main:
                worker += cost
                on_worker.add(task)
            else:
                main += cost
        return on_worker
