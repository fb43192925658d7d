"""CPU kernels: each element rule inlined into a numba loop over flat, contiguous arrays.

For every element rule two kernels exist, ``KERNELS[rule]`` (parallel, prange over the
buffer) and ``KERNELS[rule + "_serial"]`` (one thread: cheaper for small buffers, where
waking the thread pool costs more than the update). Signature of each:
``kernel(p, g, *states, h, c)`` with ``h`` the rule's per-step scalars and ``c`` the
gradient conditioning (scale, lo, hi), both tuples already cast to the arrays' dtype,
so float32 is computed in float32 as torch does. No fastmath: results stay comparable
with torch.optim. Kernels release the GIL.
"""
import numpy as np
from numba import njit, prange

from . import rules
from ._codegen import compile_rules, generate

# error_model="numpy": x / 0 gives inf/nan as IEEE (and torch) do, instead of a
# ZeroDivisionError check whose branch stops LLVM from vectorizing the loops.
R = compile_rules(njit(inline="always", error_model="numpy"), __name__ + ".R")

_TEMPLATE = """
def {name}(p, g, {states}h, c):
    for i in prange(p.size):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

KERNELS = {}
for _rule in rules.ELEMENT_RULES:
    KERNELS[_rule] = generate(_TEMPLATE, _rule, _rule, globals(),
                              njit(parallel=True, cache=True, nogil=True, error_model="numpy"))
    KERNELS[_rule + "_serial"] = generate(_TEMPLATE, _rule, _rule + "_serial", globals(),
                                          njit(cache=True, nogil=True, error_model="numpy"))


@njit(parallel=True, cache=True, nogil=True)
def sumsq(g):
    """Sum of squares in float64 (for the global gradient norm and the non-finite check)."""
    s = 0.0
    for i in prange(g.size):
        x = np.float64(g[i])
        s += x * x
    return s


@njit(cache=True, nogil=True)
def sumsq_serial(g):
    s = 0.0
    for i in range(g.size):
        x = np.float64(g[i])
        s += x * x
    return s
