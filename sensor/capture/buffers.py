"""``read_only(buf)``: the one buffer type the walkers are compiled for.

Numba compiles a kernel once per distinct argument type, and a writable
uint8 array is a different type from a read-only one (a memory-mapped file,
bytes from a stream). Every capture adapter hands the walkers a read-only
view, so each walker, and ``parse_frame`` inlined in it, is compiled once
rather than twice (a cold start several seconds shorter). The view shares
the buffer's memory: no copy, one small object per batch.
"""


def read_only(buf):
    if not buf.flags.writeable:
        return buf
    view = buf.view()
    view.flags.writeable = False
    return view
