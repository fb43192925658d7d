"""CPU kernels for 16-bit params (bfloat16 / float16 as uint16 bits) with float32 states.

Two families per format, generated from the element rules of rules.py with
``_codegen.generate`` and compiled over ``kernels.cpu.R`` (no formula is written here):

* ``MASTER[fmt, rule]``: ``kernel(p16, g16, master, *states, h, c)``: the rule updates the
  float32 master copy, the 16-bit param receives it rounded to nearest even.
* ``STOCHASTIC["bf16", rule]``: ``kernel(p16, g16, *states, h, c, r)``: the rule runs in
  float32 on the decoded bfloat16 param, written back with stochastic rounding; ``r = (key,
  base)`` gives element i the random bits ``random16(key, base + i)`` (deterministic).

bfloat16 converts on the bits (``bf16_to_float`` / ``float_to_bf16``); float16 by arithmetic.
Grads are 16-bit patterns too. ``_serial`` kernels run on one thread (small buffers).
"""
import numpy as np  # noqa: F401  (used by the generated kernels)
from numba import njit, prange  # noqa: F401

from . import rules
from ._codegen import generate
from .cpu import R  # noqa: F401

MASTER_TEMPLATE = """
def {name}(p16, g16, master, {states}h, c):
    for i in prange(p16.size):
        g = np.float32(R.DECODE(g16[i]))
        master[i],{targets} = R.{rule}(master[i], R.condition(g, c){items}, h)
        p16[i] = R.ENCODE(master[i], -1)
"""

STOCHASTIC_TEMPLATE = """
def {name}(p16, g16, {states}h, c, r):
    key, base = r
    for i in prange(p16.size):
        g = np.float32(R.DECODE(g16[i]))
        p = np.float32(R.DECODE(p16[i]))
        p,{targets} = R.{rule}(p, R.condition(g, c){items}, h)
        p16[i] = R.ENCODE(p, R.random16(key, base + i))
"""

CONVERSIONS = {"bf16": ("bf16_to_float", "float_to_bf16"), "fp16": ("fp16_to_float", "float_to_fp16")}


def template(base, fmt, conversions=CONVERSIONS):
    decode, encode = conversions[fmt]
    return base.replace("DECODE", decode).replace("ENCODE", encode)


MASTER, STOCHASTIC = {}, {}
for _rule in rules.ELEMENT_RULES:
    for _fmt in CONVERSIONS:
        for _table, _base, _tag in ((MASTER, MASTER_TEMPLATE, "master"), (STOCHASTIC, STOCHASTIC_TEMPLATE, "sr")):
            if _tag == "sr" and _fmt != "bf16":
                continue
            _t = template(_base, _fmt)
            _table[_fmt, _rule] = generate(_t, _rule, f"{_rule}_{_tag}_{_fmt}", globals(),
                                           njit(parallel=True, cache=True, nogil=True, error_model="numpy"))
            _table[_fmt, _rule + "_serial"] = generate(_t, _rule, f"{_rule}_{_tag}_{_fmt}_serial", globals(),
                                                       njit(cache=True, nogil=True, error_model="numpy"))
