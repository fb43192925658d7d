"""CPU row kernels: element rules applied to the unique rows of a batch of row ids.

A batch (``ids``, ``grad_rows``) is first turned into a coalescing plan by ``plan``: a stable
sort of the ids (``order``), the unique rows in ascending order (``rows``) and where each
one's run of duplicates starts in ``order`` (``starts``, one more entry than ``rows``). The
row kernels then run in parallel over unique rows ``rows[lo:hi]``: each sums its duplicate
gradient rows (in their original order) and applies the element rule to every element of
the row, so each touched row is updated exactly once and no two threads write one row.

All arrays are flat and C-contiguous: the table and its states ``(n_rows * dim,)``, the
gradient rows ``(n_ids * dim,)``; row-wise states ``(n_rows,)``. Signature::

    row_kernel(rule, parallel)(p, g, dim, order, starts, rows, lo, hi, *states, h, c)

with ``h`` and ``c`` the per-step scalars and gradient conditioning, already cast to the table's dtype;
``rule`` is an element rule, or "rowwise_adagrad" (states: the per-row sums). Kernels are
generated on first use per rule (module-level source, so ``cache=True`` reloads them) and
release the GIL. Random rows of a large table cost a DRAM round trip each: the kernels
prefetch the rows AHEAD unique rows on, and index with unsigned integers so the element
loop vectorizes as the dense kernels do.
"""
import threading

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._codegen import generate
from .cpu import R  # noqa: F401 (called by the generated kernels)

_JIT = dict(cache=True, nogil=True, error_model="numpy")

_DIGIT_BITS = 11


@njit(cache=True, nogil=True)
def _radix_order(ids, n_rows):
    """Stable argsort of ids in [0, n_rows): LSD radix sort, 11 bits per pass (2 passes for 4M rows)."""
    n = ids.size
    order = np.arange(n)
    tmp = np.empty(n, np.int64)
    radix = 1 << _DIGIT_BITS
    shift = 0
    while (n_rows - 1) >> shift:
        count = np.zeros(radix + 1, np.int64)
        for k in range(n):
            count[((ids[order[k]] >> shift) & (radix - 1)) + 1] += 1
        for d in range(radix):
            count[d + 1] += count[d]
        for k in range(n):
            d = (ids[order[k]] >> shift) & (radix - 1)
            tmp[count[d]] = order[k]
            count[d] += 1
        order, tmp = tmp, order
        shift += _DIGIT_BITS
    return order


@njit(cache=True, nogil=True)
def plan(ids, n_rows):
    """(bad, order, starts, rows) for int64 ids; bad is the position of the first id outside
    [0, n_rows) (then the arrays are empty), else -1."""
    n = ids.size
    for k in range(n):
        if ids[k] < 0 or ids[k] >= n_rows:
            empty = np.empty(0, np.int64)
            return k, empty, empty, empty
    order = _radix_order(ids, n_rows)
    m = 0
    for k in range(n):
        if k == 0 or ids[order[k]] != ids[order[k - 1]]:
            m += 1
    starts = np.empty(m + 1, np.int64)
    rows = np.empty(m, np.int64)
    u = 0
    for k in range(n):
        if k == 0 or ids[order[k]] != ids[order[k - 1]]:
            starts[u] = k
            rows[u] = ids[order[k]]
            u += 1
    starts[m] = n
    return -1, order, starts, rows


# Prefetch the rows this many unique rows ahead: random rows of a large table are
# latency-bound (one DRAM round trip per row otherwise); measured best at 8 (4..16 close).
AHEAD = 8
_PREFETCH = "llvm.prefetch.p0" if llvm_version_info >= (17,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch the cache line of arr[idx] for writing; never faults, never waits."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH)
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, types.uint64), codegen


@njit(inline="always")
def _prefetch_row(arrays, row, udim):
    """Prefetch row `row` (width udim) of each flat array of the tuple."""
    base = np.uint64(row) * udim
    for a in arrays:
        for j in range(np.uint64(0), udim, np.uint64(max(1, 64 // a.itemsize))):
            _prefetch(a, base + j)


@njit(inline="always", error_model="numpy")
def _gradient_row(g, udim, order, a, b):
    """(array, offset) of the coalesced gradient row of duplicates order[a:b]: a view into g for a
    single id, else their sum (added in the ids' original order) in a new row."""
    if b - a == 1:
        return g, np.uint64(order[a]) * udim
    row = np.empty(udim, g.dtype)
    first = np.uint64(order[a]) * udim
    for j in range(udim):
        row[j] = g[first + j]
    for k in range(a + 1, b):
        start = np.uint64(order[k]) * udim
        for j in range(udim):
            row[j] += g[start + j]
    return row, np.uint64(0)


# Unsigned indices: numba then emits no negative-index wraparound, so LLVM vectorizes the loop.
_TEMPLATE = """
def {name}(p, g, dim, order, starts, rows, lo, hi, {states}h, c):
    udim = np.uint64(dim)
    for u in prange(lo, hi):
        if u + AHEAD < hi:
            _prefetch_row((p, {states}), rows[u + AHEAD], udim)
        src, offset = _gradient_row(g, udim, order, starts[u], starts[u + 1])
        base = np.uint64(rows[u]) * udim
        for j in range(udim):
            i = base + j
            p[i],{targets} = R.{rule}(p[i], R.condition(src[offset + j], c){items}, h)
"""

# Row-wise Adagrad: the row's mean squared gradient (accumulated in float64), its one
# accumulator updated and read back in the table's dtype, then every element.
_ROWWISE_TEMPLATE = """
def {name}(p, g, dim, order, starts, rows, lo, hi, row_sum, h, c):
    udim = np.uint64(dim)
    for u in prange(lo, hi):
        if u + AHEAD < hi:
            _prefetch_row((p,), rows[u + AHEAD], udim)
        src, offset = _gradient_row(g, udim, order, starts[u], starts[u + 1])
        r = rows[u]
        base = np.uint64(r) * udim
        acc = 0.0
        for j in range(udim):
            x = R.rowwise_adagrad_grad(p[base + j], R.condition(src[offset + j], c), h)
            acc += np.float64(x) * np.float64(x)
        row_sum[r] = R.rowwise_adagrad_row(np.float64(row_sum[r]), acc / dim)
        s = row_sum[r]
        for j in range(udim):
            i = base + j
            p[i] = R.rowwise_adagrad_update(p[i], R.rowwise_adagrad_grad(p[i], R.condition(src[offset + j], c), h),
                                            s, h)
"""


@njit(parallel=True, **_JIT)
def coalesced_sumsq(g, dim, order, starts):
    """Sum of squares (float64) of the coalesced gradient: for max_grad_norm and the non-finite check."""
    udim = np.uint64(dim)
    total = 0.0
    for u in prange(starts.size - 1):
        src, offset = _gradient_row(g, udim, order, starts[u], starts[u + 1])
        s = 0.0
        for j in range(udim):
            x = np.float64(src[offset + j])
            s += x * x
        total += s
    return total


_KERNELS = {}
_LOCK = threading.Lock()


def row_kernel(rule, parallel):
    """The row kernel of element rule `rule` (or "rowwise_adagrad"), generated on first use."""
    key = (rule, parallel)
    kernel = _KERNELS.get(key)
    if kernel is None:
        with _LOCK:
            kernel = _KERNELS.get(key)
            if kernel is None:
                name = "rows_" + rule + ("" if parallel else "_serial")
                if rule == "rowwise_adagrad":
                    template, rule_name = _ROWWISE_TEMPLATE, "rowwise_adagrad_update"
                else:
                    template, rule_name = _TEMPLATE, rule
                kernel = _KERNELS[key] = generate(template, rule_name, name, globals(),
                                                  njit(parallel=parallel, **_JIT))
    return kernel
