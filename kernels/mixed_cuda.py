"""CUDA kernels for 16-bit params with float32 states: the two families of mixed_cpu.py,
grid-stride, over int16 views of the 16-bit tensors (bit patterns stored as signed int16),
compiled over ``kernels.cuda.R``. Launch ``kernel[blocks, threads, stream](...)``.

Conversions are the arithmetic ones of rules.py (frexp/ldexp), which every target compiles;
the bit-view versions used on the CPU rely on NumPy scalar ``.view``, untested on CUDA.
"""
import numpy as np  # noqa: F401  (used by the generated kernels)
from numba import cuda

from . import rules
from ._codegen import generate
from .cuda import _SIMULATOR, R, launch_config  # noqa: F401

MASTER_TEMPLATE = """
def {name}(p16, g16, master, {states}h, c):
    for i in range(cuda.grid(1), p16.size, cuda.gridsize(1)):
        g = np.float32(R.DECODE(g16[i]))
        master[i],{targets} = R.{rule}(master[i], R.condition(g, c){items}, h)
        p16[i] = R.bits_as_int16(R.ENCODE(master[i], -1))
"""

STOCHASTIC_TEMPLATE = """
def {name}(p16, g16, {states}h, c, r):
    key, base = r
    for i in range(cuda.grid(1), p16.size, cuda.gridsize(1)):
        g = np.float32(R.DECODE(g16[i]))
        p = np.float32(R.DECODE(p16[i]))
        p,{targets} = R.{rule}(p, R.condition(g, c){items}, h)
        p16[i] = R.bits_as_int16(R.ENCODE(p, R.random16(key, base + i)))
"""

CONVERSIONS = {"bf16": ("bf16_to_float_arith", "float_to_bf16_arith"), "fp16": ("fp16_to_float", "float_to_fp16")}


def _template(base, fmt):
    decode, encode = CONVERSIONS[fmt]
    return base.replace("DECODE", decode).replace("ENCODE", encode)


MASTER, STOCHASTIC = {}, {}
for _rule in rules.ELEMENT_RULES:
    for _fmt in CONVERSIONS:
        MASTER[_fmt, _rule] = generate(_template(MASTER_TEMPLATE, _fmt), _rule, f"{_rule}_master_{_fmt}",
                                       globals(), cuda.jit(cache=not _SIMULATOR))
    STOCHASTIC["bf16", _rule] = generate(_template(STOCHASTIC_TEMPLATE, "bf16"), _rule, f"{_rule}_sr_bf16",
                                         globals(), cuda.jit(cache=not _SIMULATOR))


def ptx_cases():
    """(label, kernel, example args) of each kernel here, typed as launched (fastlr.kernels.ptx):
    int16 views of the 16-bit arrays, float32 states, h and c as float32 (fastlr.mixed.run)."""
    from ._codegen import n_states, scalar_names
    bits, f32, one = np.zeros(1, np.int16), np.zeros(1, np.float32), np.float32(1.0)
    c = (one, np.float32(-np.inf), np.float32(np.inf))
    for (fmt, rule), kernel in MASTER.items():
        h = (one,) * len(scalar_names(rule))
        yield f"MASTER[{fmt}, {rule}]", kernel, (bits, bits, f32, *(f32,) * n_states(rule), h, c)
    for (fmt, rule), kernel in STOCHASTIC.items():
        h = (one,) * len(scalar_names(rule))
        yield f"STOCHASTIC[{fmt}, {rule}]", kernel, (bits, bits, *(f32,) * n_states(rule), h, c,
                                                     (np.int64(1), np.int64(0)))
