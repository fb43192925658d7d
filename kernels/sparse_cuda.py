"""CUDA row kernels: the element rules applied to the unique rows of a batch, no atomics.

The batch is coalesced by the plan of sparse_cpu.plan (a stable sort of the ids, the
unique rows and the start of each one's run of duplicates), copied to the device. One
thread per element of the unique rows then sums that element over the row's duplicates
(a segmented reduction, in the ids' original order) and applies the rule: each element is
written by exactly one thread. Row-wise Adagrad takes two launches on the stream: one
thread per row for the row's accumulator, then one per element. Launches go on the caller's
stream (fastlr.streams). Works under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1).
"""
import numpy as np
from numba import cuda

from ._codegen import generate
from .cuda import _SIMULATOR, R, block_sum_into, launch_config  # noqa: F401 (R: called by the generated kernels)


@cuda.jit(device=True)
def _coalesced(g, dim, order, a, b, j):
    """Element j of the sum of gradient rows order[a:b] (added in their original order)."""
    x = g[order[a] * dim + j]
    for k in range(a + 1, b):
        x += g[order[k] * dim + j]
    return x


_TEMPLATE = """
def {name}(p, g, dim, order, starts, rows, n, {states}h, c):
    for t in range(cuda.grid(1), n * dim, cuda.gridsize(1)):
        u = t // dim
        j = t - u * dim
        i = rows[u] * dim + j
        x = R.condition(_coalesced(g, dim, order, starts[u], starts[u + 1], j), c)
        p[i],{targets} = R.{rule}(p[i], x{items}, h)
"""

_JIT = cuda.jit(cache=not _SIMULATOR)

# Row-wise Adagrad, two launches: sum[r] += mean of g^2 over row r (float64 accumulation, one
# thread per unique row), then every element against the row's new accumulator.
_ROWWISE_SUMS = """
def {name}(p, g, dim, order, starts, rows, n, row_sum, h, c):
    for u in range(cuda.grid(1), n, cuda.gridsize(1)):
        base = rows[u] * dim
        acc = 0.0
        for j in range(dim):
            x = R.condition(_coalesced(g, dim, order, starts[u], starts[u + 1], j), c)
            x = R.rowwise_adagrad_grad(p[base + j], x, h)
            acc += np.float64(x) * np.float64(x)
        row_sum[rows[u]] = R.rowwise_adagrad_row(np.float64(row_sum[rows[u]]), acc / dim)
"""

_ROWWISE_UPDATE = """
def {name}(p, g, dim, order, starts, rows, n, row_sum, h, c):
    for t in range(cuda.grid(1), n * dim, cuda.gridsize(1)):
        u = t // dim
        j = t - u * dim
        i = rows[u] * dim + j
        x = R.condition(_coalesced(g, dim, order, starts[u], starts[u + 1], j), c)
        p[i] = R.rowwise_adagrad_update(p[i], R.rowwise_adagrad_grad(p[i], x, h), row_sum[rows[u]], h)
"""


@_JIT
def _sumsq(g, dim, order, starts, n, out):
    """out[0] += sum of squares of the coalesced gradient, in float64 (one atomic add per block)."""
    s = 0.0
    for t in range(cuda.grid(1), n * dim, cuda.gridsize(1)):
        u = t // dim
        x = np.float64(_coalesced(g, dim, order, starts[u], starts[u + 1], t - u * dim))
        s += x * x
    block_sum_into(s, out)


_KERNELS = {}


def row_kernel(rule):
    """The row kernel of element rule `rule` (or the two of "rowwise_adagrad"), generated on first use."""
    if rule not in _KERNELS:
        if rule == "rowwise_adagrad":
            _KERNELS[rule] = tuple(generate(template, "rowwise_adagrad_update", name, globals(), _JIT)
                                   for template, name in ((_ROWWISE_SUMS, "rowwise_sums"),
                                                          (_ROWWISE_UPDATE, "rowwise_update")))
        else:
            _KERNELS[rule] = generate(_TEMPLATE, rule, "rows_" + rule, globals(), _JIT)
    return _KERNELS[rule]


def _to_device(arrays, stream):
    return [cuda.to_device(a, stream=stream) if stream else cuda.to_device(a) for a in arrays]


def launch(rule, p, g, dim, order, starts, rows, states, h, c, stream=0):
    """Update the unique rows of a host plan (order, starts, rows) on the device, on `stream`; asynchronous."""
    n = rows.size
    if n == 0:
        return
    plan = _to_device((order, starts, rows), stream)
    blocks, threads = launch_config(n * dim)
    if rule == "rowwise_adagrad":
        sums, update = row_kernel(rule)
        sums[launch_config(n)[0], threads, stream](p, g, dim, *plan, n, *states, h, c)
        update[blocks, threads, stream](p, g, dim, *plan, n, *states, h, c)
    else:
        row_kernel(rule)[blocks, threads, stream](p, g, dim, *plan, n, *states, h, c)


def coalesced_sumsq(g, dim, order, starts, stream=0):
    """float64 sum of squares of the coalesced gradient rows; waits for `stream`."""
    n = starts.size - 1
    if n == 0:
        return 0.0
    out, order, starts = _to_device((np.zeros(1), order, starts), stream)
    blocks, threads = launch_config(n * dim)
    _sumsq[blocks, threads, stream](g, dim, order, starts, n, out)
    host = out.copy_to_host(stream=stream) if stream else out.copy_to_host()
    if stream:
        stream.synchronize()
    return float(host[0])


def ptx_cases():
    """(label, kernel, example args) of each kernel here, typed as launched (fastlr.kernels.ptx):
    the int64 plan arrays of sparse_cpu.plan, h and c in the table's dtype (fastlr.sparse)."""
    from . import rules
    from ._codegen import n_states, scalar_names
    plan = (np.zeros(1, np.int64),) * 3
    for dtype in (np.float32, np.float64):
        a, d = np.zeros(1, dtype), dtype.__name__
        c = (dtype(1.0), dtype(-np.inf), dtype(np.inf))
        for rule in rules.ELEMENT_RULES:
            h = (dtype(1.0),) * len(scalar_names(rule))
            yield f"rows_{rule} {d}", row_kernel(rule), (a, a, 1, *plan, 1, *(a,) * n_states(rule), h, c)
        h = (dtype(1.0),) * len(scalar_names("rowwise_adagrad_update"))
        for j, kernel in enumerate(row_kernel("rowwise_adagrad")):
            yield f"rowwise_adagrad[{j}] {d}", kernel, (a, a, 1, *plan, 1, a, h, c)
        yield f"_sumsq {d}", _sumsq, (a, 1, *plan[:2], 1, np.zeros(1))
