"""The one place where Numba options are set for every kernel.

``cache=True`` keeps compiled machine code on disk (``__pycache__`` beside the
module, or ``NUMBA_CACHE_DIR``), so a warm start loads instead of compiling.
``nogil=True`` lets a second worker thread run kernels in parallel later.
"""
import numba

OPTIONS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


def kernel(fn):
    """Compile ``fn`` as a batch kernel (called from Python once per batch)."""
    return numba.njit(**OPTIONS)(fn)


def inline(fn):
    """Compile ``fn`` as a helper that is inlined into the kernels calling it."""
    return numba.njit(inline="always", **OPTIONS)(fn)
