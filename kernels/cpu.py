"""CPU kernels: each element rule inlined into a numba loop, over one flat array or over a
segment table of many arrays.

For every element rule:

* ``KERNELS[rule]`` (parallel, prange over the buffer) and ``KERNELS[rule + "_serial"]`` (one
  thread: cheaper for small buffers, where waking the thread pool costs more than the update):
  ``kernel(p, g, *states, h, c)`` over flat, contiguous arrays. ``h`` is the rule's per-step
  scalars and ``c`` the gradient conditioning (scale, lo, hi), both tuples of float64 (Python
  floats: unboxing them is cheaper than converting on the host) that the kernel casts to the
  arrays' dtype once, so float32 is computed in float32 as torch does.
* ``TABLE_KERNELS[rule]`` and ``TABLE_KERNELS[rule + "_serial"]``: the same update over many
  separate arrays in one call, ``kernel(ptrs, work, hidx, htab, c, like)``. ``ptrs[t]`` holds
  the addresses of tensor t's param, grad and states; ``work`` cuts the tensors into chunks
  (rows ``(t, lo, hi)``, see ``make_work``) so one prange balances any mix of sizes; tensor t
  uses the scalars ``htab[hidx[t]]``; ``like`` is an empty array of the tensors' dtype. Each
  chunk runs the serial flat kernel on arrays made over the chunk's memory: a separate,
  non-inlined call, which LLVM vectorizes as it does the flat kernel (the same loop inlined
  into the prange body was not vectorized and ran at 0.21-0.28 of the flat speed).

No fastmath: results stay comparable with torch.optim. Kernels release the GIL.
"""
import numpy as np
from numba import carray, njit, prange

from . import rules
from ._codegen import compile_rules, generate, generate_source, n_states, scalar_names
from ._pointers import at

# error_model="numpy": x / 0 gives inf/nan as IEEE (and torch) do, instead of a
# ZeroDivisionError check whose branch stops LLVM from vectorizing the loops.
R = compile_rules(njit(inline="always", error_model="numpy"), __name__ + ".R")

_JIT = dict(cache=True, nogil=True, error_model="numpy")
PARALLEL, SERIAL = njit(parallel=True, **_JIT), njit(**_JIT)

_TEMPLATE = """
def {name}(p, g, {states}h64, c64):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    for i in prange(p.size):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

def table_template(tail, call):
    """The source template of a segment-table kernel ``{name}(ptrs, work, hidx, htab, c64<tail>)``: a prange
    over the work rows (t, lo, hi), each running ``call`` on its chunk (t: the tensor, lo: the chunk's first
    element, n: its length, r: the tensor's row of htab). Shared by every table kernel (here, the first
    passes in twopass_cpu, the low-precision ones in lowbit_cpu)."""
    return ("\ndef {name}(ptrs, work, hidx, htab, c64" + tail + "):\n"
            "    for w in prange(work.shape[0]):\n"
            "        t = work[w, 0]\n"
            "        lo = work[w, 1]\n"
            "        n = work[w, 2] - lo\n"
            "        r = hidx[t]\n"
            "        " + call + "\n")


_TABLE_TEMPLATE = table_template(", like", "CHUNK({columns}({h_row}), c64)")


def _table_fields(rule):
    return dict(columns="".join(f"carray(at(ptrs[t, {j}], lo, like), n), " for j in range(2 + n_states(rule))),
                h_row="".join(f"htab[r, {j}], " for j in range(len(scalar_names(rule)))))


def table_kernel(chunk, name, decorate, **fields):
    """A segment-table kernel running the serial flat kernel `chunk` on every chunk of work."""
    return generate_source(_TABLE_TEMPLATE, name, dict(globals(), CHUNK=chunk), decorate, **fields)


KERNELS, TABLE_KERNELS = {}, {}
for _rule in rules.ELEMENT_RULES:
    KERNELS[_rule] = generate(_TEMPLATE, _rule, _rule, globals(), PARALLEL)
    KERNELS[_rule + "_serial"] = generate(_TEMPLATE, _rule, _rule + "_serial", globals(), SERIAL)
    for _suffix, _decorate in (("", PARALLEL), ("_serial", SERIAL)):
        TABLE_KERNELS[_rule + _suffix] = table_kernel(KERNELS[_rule + "_serial"], f"{_rule}_table{_suffix}",
                                                      _decorate, **_table_fields(_rule))


@njit(cache=True, nogil=True)
def make_work(sizes, chunk):
    """Work rows (t, lo, hi): tensor t's elements [lo, hi), at most `chunk` per row."""
    m = 0
    for t in range(sizes.size):
        m += (sizes[t] + chunk - 1) // chunk
    work = np.empty((m, 3), np.int64)
    w = 0
    for t in range(sizes.size):
        for lo in range(0, sizes[t], chunk):
            work[w, 0] = t
            work[w, 1] = lo
            work[w, 2] = min(sizes[t], lo + chunk)
            w += 1
    return work


# Sums of squares (global gradient norm, non-finite check) in float64, reassociation allowed: they feed a
# norm, and in order LLVM must add one element at a time (measured at 16M: the sum took as long as an Adam
# step). Reassociation alone keeps NaN and Inf propagating. The float64 partial sums of fixed chunks are
# added in order, so a result does not depend on the number of threads.
SUMSQ_CHUNK = 1 << 16


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _range_sumsq(g, lo, hi):
    s = 0.0
    for i in range(lo, hi):
        x = np.float64(g[i])
        s += x * x
    return s


_SUMSQ = """
def {name}(g):
    m = (g.size + SUMSQ_CHUNK - 1) // SUMSQ_CHUNK
    out = np.empty(m, np.float64)
    for w in {loop}(m):
        out[w] = _range_sumsq(g, w * SUMSQ_CHUNK, min(g.size, (w + 1) * SUMSQ_CHUNK))
    s = 0.0
    for w in range(m):
        s += out[w]
    return s
"""


def _sumsq(name, loop, decorate):
    """float64 sum of squares of a flat array, from one template (the same value serial or parallel)."""
    namespace = dict(globals(), prange=prange)
    exec(compile(_SUMSQ.format(name=name, loop=loop), __file__, "exec"), namespace)
    return decorate(namespace[name])


sumsq = _sumsq("sumsq", "prange", njit(parallel=True, cache=True, nogil=True))
sumsq_serial = _sumsq("sumsq_serial", "range", njit(cache=True, nogil=True))


_TABLE_SUMSQ = """
def {name}(ptrs, work, column, like, out):
    for w in prange(work.shape[0]):
        t = work[w, 0]
        lo = work[w, 1]
        n = work[w, 2] - lo
        out[w] = _range_sumsq(carray(at(ptrs[t, column], lo, like), n), 0, n)
"""

# out[w] = float64 sum of squares of column `column` over work row w (summed later in a fixed order,
# so the result does not depend on the number of threads either).
table_sumsq = generate_source(_TABLE_SUMSQ, "table_sumsq", globals(), njit(parallel=True, cache=True, nogil=True))
table_sumsq_serial = generate_source(_TABLE_SUMSQ, "table_sumsq_serial", globals(), njit(cache=True, nogil=True))
