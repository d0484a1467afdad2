"""Time order of a batch: where packet time jumps backwards.

``first_regression(ts_ns, start, n, latest_ns, tolerance_ns)`` scans rows
``start .. n-1`` of a batch's packet times, keeping the latest time seen
(``latest_ns`` on entry: the stream's packet time before this batch). It
returns ``(row, latest)``: ``row`` is the first row whose time is more than
``tolerance_ns`` behind the latest time before it (``n`` when there is none),
``latest`` the latest time among the rows before ``row``. Disorder within the
tolerance (multi-queue capture, merged interfaces) is not a regression.

The engine processes the rows before ``row``, starts a new time epoch and
goes on from ``row`` (``sensor/engine.py``). One pass over the column, no
allocation; memory: none beyond the batch.
"""
import numpy as np

from kernels.jit import kernel


NO_TIME_NS = np.iinfo(np.int64).min      # latest time of a stream with no packet yet


@kernel
def first_regression(ts_ns, start, n, latest_ns, tolerance_ns):
    latest = np.int64(latest_ns)
    lowest = np.int64(NO_TIME_NS)
    tol = np.int64(tolerance_ns)
    if latest >= lowest + tol:
        floor = latest - tol
    else:
        floor = lowest
    for i in range(start, n):
        t = ts_ns[i]
        if t > latest:
            latest = t
            if latest >= lowest + tol:
                floor = latest - tol
        elif t < floor:
            return i, latest
    return n, latest
