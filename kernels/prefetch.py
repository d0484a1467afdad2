"""``prefetch(array, index)``: a hint to the CPU to start loading the cache line
of ``array[index]`` (for writing), as LLVM's ``llvm.prefetch``.

Table kernels call it for the bucket of the row a few rows ahead, so the
cache misses of that row's lookup overlap the work on the current one. It
never faults and changes no result; only the time a row waits for memory.
"""
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

_I32 = ir.IntType(32)
_I8P = ir.IntType(8).as_pointer()


@intrinsic
def prefetch(typingctx, array, index):
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        ary = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [args[1]],
                                       wraparound=False)
        fnty = ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # (address, rw = write, locality = keep in all cache levels, data cache)
        builder.call(fn, [builder.bitcast(ptr, _I8P), ir.Constant(_I32, 1),
                          ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return sig, codegen
