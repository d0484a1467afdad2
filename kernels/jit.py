"""The one place where Numba options are set for every kernel.

``cache=True`` keeps compiled machine code on disk, so a warm start loads
instead of compiling. Numba decides whether a cached kernel is current from
its own source file only, so a change in a helper inlined from another
module (``parse_frame`` inside the walkers, say) would leave stale machine
code in use. The cache therefore lives in a directory named after a hash of
every module in ``kernels/``: any change to any kernel source starts a fresh
cache. The directory is ``$NUMBA_CACHE_DIR/scan-sensor-<hash>`` when that
variable is set (the systemd unit sets it), else under the user's cache
directory.

``NUMBA_BOUNDSCHECK=1`` (the fuzz pass, ``tests/test_fuzz_boundscheck.py``)
turns Numba's bounds checking on for every kernel, overriding
``boundscheck=False`` below: an out-of-bounds index raises IndexError instead
of reading past the array. Numba's cache index does not record the setting,
so a checked kernel could be loaded by an unchecked run (slow, raising) or
an unchecked one by a checked run (checking nothing): checked kernels get a
cache directory of their own (``...-boundscheck``).

``nogil=True`` lets a second worker thread run kernels in parallel.

``_nrt=False`` compiles without Numba's reference-counting runtime. Kernels
never allocate (every array comes from the caller), so it is not needed; with
it, every array or tuple of arrays handed to an inlined helper cost an
atomic increment and decrement per row, often more than the work itself (the
probe table went from 317 to 125 ns per packet without it). A kernel that
tried to allocate would fail to compile, which is the point.
"""
import hashlib
import os
import pathlib
import shutil
import tempfile

import numba

OPTIONS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy", _nrt=False)


KEEP_OTHER_VERSIONS = 3
# True when NUMBA_BOUNDSCHECK=1 overrides boundscheck=False for every kernel
BOUNDSCHECK = bool(numba.config.BOUNDSCHECK)
CACHE_SUFFIX = "-boundscheck" if BOUNDSCHECK else ""


def _sources_hash():
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _last_use(path):
    try:
        return path.stat().st_mtime
    except OSError:                         # removed meanwhile by another process
        return 0.0


def _cache_dir():
    base = os.environ.get("NUMBA_CACHE_DIR")
    if base:
        root = pathlib.Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = pathlib.Path(xdg) / "scan-sensor"
    current = root / f"scan-sensor-{_sources_hash()}{CACHE_SUFFIX}"
    try:
        current.mkdir(parents=True, exist_ok=True)
    except OSError:
        current = (pathlib.Path(tempfile.gettempdir())
                   / f"scan-sensor-{_sources_hash()}{CACHE_SUFFIX}")
        current.mkdir(parents=True, exist_ok=True)
        return current
    # caches of other kernel versions: keep the few used last (two checkouts or
    # installs of different versions on one account must not wipe each other's
    # cache on every run), drop the rest
    os.utime(current)                       # mtime = last use
    others = [p for p in root.glob("scan-sensor-*") if p != current]
    others.sort(key=_last_use, reverse=True)
    for old in others[KEEP_OTHER_VERSIONS:]:
        shutil.rmtree(old, ignore_errors=True)
    return current


CACHE_DIR = _cache_dir()
numba.config.CACHE_DIR = str(CACHE_DIR)
# True when no compiled kernel is cached yet: this run compiles them (~15 s)
COLD_CACHE = not any(CACHE_DIR.rglob("*.nbi"))


def kernel(fn):
    """Compile ``fn`` as a batch kernel (called from Python once per batch; no C
    callback wrapper: nothing calls a kernel through a C pointer)."""
    return numba.njit(no_cfunc_wrapper=True, **OPTIONS)(fn)


def inline(fn):
    """Compile ``fn`` as a helper that is inlined into the kernels calling it.

    Helpers are called only from compiled code, so they get neither a Python
    wrapper nor a C callback wrapper: generating those (unboxing every argument)
    was about a fifth of the cold start. A test that checks a helper calls it
    from a small ``@kernel`` of its own."""
    return numba.njit(forceinline=True, no_cpython_wrapper=True, no_cfunc_wrapper=True,
                      **OPTIONS)(fn)
