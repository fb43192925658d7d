"""CPU kernels: each element rule inlined into a numba loop over flat, contiguous arrays.

For every element rule two kernels exist, ``KERNELS[rule]`` (parallel, prange over the
buffer) and ``KERNELS[rule + "_serial"]`` (one thread: cheaper for small buffers, where
waking the thread pool costs more than the update). Signature of each:
``kernel(p, g, *states, h, c)`` with ``h`` the rule's per-step scalars and ``c`` the
gradient conditioning (scale, lo, hi), both tuples of float64 (Python floats: unboxing them
is cheaper than converting on the host) that the kernel casts to the arrays' dtype once,
so float32 is computed in float32 as torch does. No fastmath: results stay comparable
with torch.optim. Kernels release the GIL.
"""
import numpy as np  # noqa: F401 - used by the generated sumsq kernels (np.float64)
from numba import njit, prange

from . import rules
from ._codegen import compile_rules, generate

# error_model="numpy": x / 0 gives inf/nan as IEEE (and torch) do, instead of a
# ZeroDivisionError check whose branch stops LLVM from vectorizing the loops.
R = compile_rules(njit(inline="always", error_model="numpy"), __name__ + ".R")

_TEMPLATE = """
def {name}(p, g, {states}h64, c64):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    for i in prange(p.size):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

KERNELS = {}
for _rule in rules.ELEMENT_RULES:
    KERNELS[_rule] = generate(_TEMPLATE, _rule, _rule, globals(),
                              njit(parallel=True, cache=True, nogil=True, error_model="numpy"))
    KERNELS[_rule + "_serial"] = generate(_TEMPLATE, _rule, _rule + "_serial", globals(),
                                          njit(cache=True, nogil=True, error_model="numpy"))


_SUMSQ = """
def {name}(g):
    s = 0.0
    for i in {loop}(g.size):
        x = np.float64(g[i])
        s += x * x
    return s
"""


def _sumsq(name, loop, decorate):
    """Sum of squares in float64 (global gradient norm, non-finite check), from one template."""
    namespace = dict(globals(), prange=prange)
    exec(compile(_SUMSQ.format(name=name, loop=loop), __file__, "exec"), namespace)
    return decorate(namespace[name])


sumsq = _sumsq("sumsq", "prange", njit(parallel=True, cache=True, nogil=True))
sumsq_serial = _sumsq("sumsq_serial", "range", njit(cache=True, nogil=True))
