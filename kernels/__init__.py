"""Numba kernels: decode raw capture buffers into fixed-width batches, keep
bounded detector state, and flag scans.

Nothing in this package does I/O, reads the clock or allocates per packet.
Every kernel is a private ``@njit`` function called once per batch by a thin
public wrapper that validates inputs and owns the arrays.
"""
