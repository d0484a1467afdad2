"""The bounded key table (kernels/addr_table.py) against its reference
(tests/naive.py find_slot_reference): hits, empty and idle ways, eviction by
lowest weight then age, pinned ways, a full bucket; with and without pins."""
import numpy as np
from hypothesis import given, settings, strategies as st

import naive
from kernels.addr_table import EMPTY, find_slot, find_slot_hashed, hash_key
from kernels.jit import kernel

SEED = 0x5EED


@kernel
def _claim(fps, keys, last_seen, pinned, weight, words, now_ns, stale_ns, ways, seed, use_pins):
    if use_pins:
        return find_slot(fps, keys, last_seen, pinned, weight, words[0], words[1], words[2],
                         words[3], words[4], now_ns, stale_ns, ways, seed)
    h = hash_key(words[0], words[1], words[2], words[3], words[4], seed)
    return find_slot_hashed(fps, keys, last_seen, pinned, weight, words[0], words[1],
                            words[2], words[3], words[4], now_ns, stale_ns, ways, h, False)


op = st.tuples(st.integers(0, 40),                  # key (from a small pool: hits happen)
               st.sampled_from([0, 1, 1, 2, 1000]),  # time step (1,000: ways go idle)
               st.integers(0, 3),                   # weight written to the slot after
               st.integers(0, 9))                   # 0: pin the slot, 1: unpin it


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, min_size=1, max_size=300), ways=st.sampled_from([1, 2, 4, 8]),
       buckets=st.sampled_from([1, 2, 4]), use_pins=st.booleans())
def test_find_slot_matches_reference(ops, ways, buckets, use_pins):
    cap = ways * buckets
    fps = np.zeros(cap, np.uint64)
    keys = np.zeros((cap, 5), np.uint64)
    last_seen = np.full(cap, EMPTY, np.int64)
    pinned = np.zeros(cap, np.uint8)
    weight = np.zeros(cap, np.int64)
    ref = {"fps": [0] * cap, "keys": [[0] * 5 for _ in range(cap)], "last_seen": [-1] * cap,
           "pinned": [0] * cap, "weight": [0] * cap}
    now = 0
    for key, step, w, pin in ops:
        now += step
        words = [key, key * 7 % 5, 0, key % 3, 0]
        got = _claim(fps, keys, last_seen, pinned, weight, np.array(words, np.uint64), now,
                     100, ways, np.uint64(SEED), use_pins)
        want = naive.find_slot_reference(ref, words, now, 100, ways, SEED, use_pins)
        assert tuple(int(x) for x in got) == want
        outcome, slot = want
        if outcome != naive.FULL:
            weight[slot] = ref["weight"][slot] = w
            if pin < 2:
                pinned[slot] = ref["pinned"][slot] = 1 - pin
    assert fps.tolist() == ref["fps"] and keys.tolist() == ref["keys"]
    assert last_seen.tolist() == ref["last_seen"] and weight.tolist() == ref["weight"]


@kernel
def _hash(words, seed):
    return hash_key(words[0], words[1], words[2], words[3], words[4], seed)


def test_reference_hash_is_the_kernels():
    words = [1, 2, 3, 4, 0xFFFFFFFFFFFFFFFF]
    assert int(_hash(np.array(words, np.uint64), np.uint64(SEED))) == \
        naive.hash_key(words, SEED)
