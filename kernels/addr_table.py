"""Bounded, set-associative key table shared by the detectors.

A table of ``capacity`` slots is split into buckets of ``ways`` slots; a key
of five uint64 words (a source address; a source and a destination address; a
source and a port; a port alone; a probe's initiator, responder and port:
unused words are 0) hashes to one bucket, so
a lookup or insert touches at most ``ways`` slots. A key's slot is reused when

* the key is found (hit),
* an empty slot is in the bucket, else a stale one (its owner idle for
  ``stale_ns`` of packet time), or
* as a last resort an unpinned slot with the lowest ``weight`` (the caller's
  measure of what the slot holds, e.g. its count), the least recently seen
  among equals. Under a flood of spoofed one-packet sources, a real scanner
  (weight > 1) is never the one evicted while one-packet entries remain.

The hash is keyed with a per-run seed, so an attacker cannot aim spoofed
addresses at one bucket without knowing it. Time is packet time only.

Layout, for a flood of new keys (the expensive case: every lookup misses
the cache): each slot's 64-bit hash is kept in ``fps``, so scanning a bucket
reads one cache line of hashes (plus one of last-seen times, one of weights
and the pin bytes) and the 40-byte keys only where the hash matches. The
per-slot scalars a detector touches after the lookup live in one row of a
matrix (``slot_columns``), one or two cache lines instead of one per array.

Memory: ``capacity * 56`` bytes for keys, hashes and last-seen times; the
detector's own per-slot arrays are sized by the same capacity.
"""
import numpy as np

from kernels.jit import inline
from kernels.prefetch import prefetch

EMPTY = np.int64(-1)   # last_seen value of a never-used slot
NEVER = np.int64(0x7FFFFFFFFFFFFFFF)
U0 = np.uint64(0)

M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
GOLDEN2 = np.uint64(0x3C6EF372FE94F82A)   # 2, 3, 4 times GOLDEN (mod 2**64)
GOLDEN3 = np.uint64(0xDAA66D2C7DDF743F)
GOLDEN4 = np.uint64(0x78DDE6E5FD29F054)


def slot_columns(capacity, names, dtype=np.int64):
    """Per-slot scalars stored row-wise: one ``(capacity, len(names))`` matrix,
    returned as a dict of column views. Kernels index the (strided) views
    exactly like separate arrays, but one slot's fields share cache lines."""
    matrix = np.zeros((capacity, len(names)), dtype)
    return {name: matrix[:, k] for k, name in enumerate(names)}


@inline
def mix64(x):
    """splitmix64 finaliser."""
    x = (x ^ (x >> np.uint64(30))) * M1
    x = (x ^ (x >> np.uint64(27))) * M2
    return x ^ (x >> np.uint64(31))


@inline
def hash_key(k0, k1, k2, k3, k4, seed):
    """Keyed hash of a five-word key: each word mixed with its own offset of the
    seed (independent, so the CPU computes them in parallel), then combined and
    mixed once more."""
    h = (mix64(k0 ^ seed) ^ mix64(k1 ^ (seed + GOLDEN)) ^ mix64(k2 ^ (seed + GOLDEN2))
         ^ mix64(k3 ^ (seed + GOLDEN3)) ^ mix64(k4 ^ (seed + GOLDEN4)))
    return mix64(h)


LOOKUP_HIT = 0
LOOKUP_NEW = 1        # slot was empty or stale
LOOKUP_EVICTED = 2    # slot held a live key that is now replaced
LOOKUP_FULL = 3       # every slot in the bucket is pinned; slot = the oldest pinned one


@inline
def bucket_of(h, nbuckets):
    """Bucket index of hash ``h`` (multiply-shift, no division)."""
    return np.int64(((h >> np.uint64(32)) * np.uint64(nbuckets)) >> np.uint64(32))


@inline
def prefetch_bucket(fps, last_seen_ns, weight, h, ways):
    """Start loading what ``find_slot`` reads first for hash ``h``."""
    base = bucket_of(h, fps.shape[0] // ways) * ways
    prefetch(fps, base)
    prefetch(last_seen_ns, base)
    prefetch(weight, base)


@inline
def find_slot(fps, keys, last_seen_ns, pinned, weight, k0, k1, k2, k3, k4, now_ns, stale_ns,
              ways, seed):
    """Find or claim a slot for key (k0, k1, k2, k3, k4).

    Returns (outcome, slot). For LOOKUP_NEW / LOOKUP_EVICTED the key is
    written and the caller must initialise the rest of the slot. For
    LOOKUP_FULL nothing is written: the caller must release the returned
    pinned slot first.
    """
    return find_slot_hashed(fps, keys, last_seen_ns, pinned, weight, k0, k1, k2, k3, k4,
                            now_ns, stale_ns, ways, hash_key(k0, k1, k2, k3, k4, seed), True)


@inline
def find_slot_hashed(fps, keys, last_seen_ns, pinned, weight, k0, k1, k2, k3, k4, now_ns,
                     stale_ns, ways, h, use_pins):
    """``find_slot`` with the key's hash ``h`` already computed; ``use_pins`` False
    for a table that never pins a slot (the probe table): ``pinned`` is not read.

    Two passes over the bucket. The first compares fingerprints only, into a bit
    mask, and checks the keys of the ways whose fingerprint matches. The second,
    for a new key, picks its place with no branch that depends on the data (each
    running choice is a conditional move): under a flood of new keys the victim is
    a different way every time, and branches on it were mispredicted (-18 % per
    new key)."""
    nbuckets = keys.shape[0] // ways
    base = bucket_of(h, nbuckets) * ways
    match = U0
    for w in range(ways):
        match |= np.uint64(fps[base + w] == h) << np.uint64(w)
    if match != U0:
        for w in range(ways):
            if (match >> np.uint64(w)) & np.uint64(1):
                s = base + w
                if (last_seen_ns[s] != EMPTY and keys[s, 0] == k0 and keys[s, 1] == k1
                        and keys[s, 2] == k2 and keys[s, 3] == k3 and keys[s, 4] == k4):
                    return LOOKUP_HIT, s
    free = -1                  # the first empty way
    stale = -1                 # the first way idle for stale_ns
    oldest = -1                # the lowest weight, least recently seen among equals
    oldest_ts = NEVER
    oldest_w = NEVER
    oldest_pinned = -1
    oldest_pinned_ts = NEVER
    for w in range(ways):
        s = base + w
        seen = last_seen_ns[s]
        empty = seen == EMPTY
        pin = use_pins and pinned[s] != 0
        free = s if (empty and free < 0) else free
        idle = (not empty) and (not pin) and now_ns - seen >= stale_ns
        stale = s if (idle and stale < 0) else stale
        older_pin = (not empty) and pin and seen < oldest_pinned_ts
        oldest_pinned = s if older_pin else oldest_pinned
        oldest_pinned_ts = seen if older_pin else oldest_pinned_ts
        w_ = weight[s]
        lower = ((not empty) and (not pin) and (not idle)
                 and (w_ < oldest_w or (w_ == oldest_w and seen < oldest_ts)))
        oldest = s if lower else oldest
        oldest_w = w_ if lower else oldest_w
        oldest_ts = seen if lower else oldest_ts
    if free < 0:
        free = stale
    if free >= 0:
        outcome = LOOKUP_NEW
        slot = free
    elif oldest >= 0:
        outcome = LOOKUP_EVICTED
        slot = oldest
    else:
        return LOOKUP_FULL, oldest_pinned
    fps[slot] = h
    keys[slot, 0] = k0
    keys[slot, 1] = k1
    keys[slot, 2] = k2
    keys[slot, 3] = k3
    keys[slot, 4] = k4
    last_seen_ns[slot] = now_ns
    return outcome, slot


@inline
def lookup_slot(fps, keys, last_seen_ns, k0, k1, k2, k3, k4, ways, seed):
    """Slot holding key (k0..k4), or -1. Never writes."""
    return lookup_slot_hashed(fps, keys, last_seen_ns, k0, k1, k2, k3, k4, ways,
                              hash_key(k0, k1, k2, k3, k4, seed))


@inline
def lookup_slot_hashed(fps, keys, last_seen_ns, k0, k1, k2, k3, k4, ways, h):
    """``lookup_slot`` with the key's hash ``h`` already computed."""
    nbuckets = keys.shape[0] // ways
    base = bucket_of(h, nbuckets) * ways
    for w in range(ways):
        s = base + w
        if (fps[s] == h and last_seen_ns[s] != EMPTY and keys[s, 0] == k0 and keys[s, 1] == k1
                and keys[s, 2] == k2 and keys[s, 3] == k3 and keys[s, 4] == k4):
            return s
    return -1
