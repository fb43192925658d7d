"""CUDA first passes of the two-pass rules (``rules.TWO_PASS``): ``SUMS[rule](p, g, *states, h, c, out)``
adds the float64 sums of each value ``rules.<rule>_sums`` returns, over every element of one array, to
``out[0..k)`` (a block reduction and one atomic add per block and value). The second pass is the rule's
ordinary kernel in ``kernels.cuda``."""
import numpy as np  # noqa: F401  (used by the generated kernels)
from numba import cuda

from . import rules
from ._codegen import generate
from .cuda import _SIMULATOR, R, block_sum_into  # noqa: F401

_KERNEL = """
def {name}(p, g, {states}h64, out, c64):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
ZERO    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        OUTS = R.{rule}(p[i], R.condition(g[i], c){items}, h)
ADDSSTORE"""


def kernel_template(k):
    return (_KERNEL.replace("ZERO", "".join(f"    sum{j} = 0.0\n" for j in range(k)))
            .replace("OUTS", ", ".join(f"x{j}" for j in range(k)) + ("," if k == 1 else ""))
            .replace("ADDS", "".join(f"        sum{j} += np.float64(x{j})\n" for j in range(k)))
            .replace("STORE", "".join(f"    block_sum_into(sum{j}, out[{j}:])\n" for j in range(k))))


_BY_SUMS = {sums: generate(kernel_template(k), sums, f"{sums}_cuda", globals(), cuda.jit(cache=not _SIMULATOR))
            for stages in rules.PASSES.values() for sums, k, _ in stages}
SUMS = {rules.stage_key(rule, i): _BY_SUMS[sums] for rule, stages in rules.PASSES.items()
        for i, (sums, _, _) in enumerate(stages)}


def ptx_cases():
    """(label, kernel, example args) for fastlr.kernels.ptx."""
    import math

    from ._codegen import n_states, scalar_names
    c = (1.0, -math.inf, math.inf)
    for dtype in (np.float32, np.float64):
        a = np.zeros(1, dtype)
        for sums, kernel in _BY_SUMS.items():
            k = next(k for stages in rules.PASSES.values() for s, k, _ in stages if s == sums)
            yield (f"twopass {sums} {dtype.__name__}", kernel,
                   (*(a,) * (2 + n_states(sums)), (1.0,) * len(scalar_names(sums)), np.zeros(k), c))
