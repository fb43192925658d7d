"""Run under NUMBA_ENABLE_CUDASIM=1 (by test_lowbit_kernels.py): the low-precision CUDA kernels
on tiny arrays (a short last block included) against the CPU kernels. Prints one JSON line."""
import json
import os
import sys

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
from fastlr.kernels import quant
from numba import cuda
from test_lowbit_kernels import H, random_states

from fastlr import lowbit


def host(states):
    return [s._replace(codes=s.codes.copy_to_host(), absmax=s.absmax.copy_to_host())
            if isinstance(s, lowbit.Quantized) else s.copy_to_host() for s in states]


def check(rule, precision, size):
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal((2, size)).astype(np.float32)
    floats = random_states(rule, size, rng)
    if precision == "bf16":
        cpu_states = [lowbit.to_bf16(x) for x in floats]
    else:
        cpu_states = [lowbit.quantize(x, precision, s) for x, s in zip(floats, quant.state_signs(rule))]
    gpu_states = [s._replace(codes=cuda.to_device(s.codes), absmax=cuda.to_device(s.absmax))
                  if isinstance(s, lowbit.Quantized) else cuda.to_device(s) for s in cpu_states]
    dp = cuda.to_device(p)
    lowbit.step(rule, dp, cuda.to_device(g), gpu_states, H[rule], (0.5, -3.0, 3.0))
    lowbit.step(rule, p, g, cpu_states, H[rule], (0.5, -3.0, 3.0))
    p_err = float(np.max(np.abs(dp.copy_to_host() - p)))
    absmax_err, codes_off = 0.0, 0.0
    for a, b in zip(host(gpu_states), cpu_states):
        if precision == "bf16":
            codes_off = max(codes_off, float(np.mean(a != b)))
            continue
        absmax_err = max(absmax_err, float(np.max(np.abs(a.absmax - b.absmax) / b.absmax)))
        codes_off = max(codes_off, float(np.mean(a.codes != b.codes)))
    return {"rule": rule, "precision": precision, "p_err": p_err, "absmax_err": absmax_err, "codes_off": codes_off}


results = [check(rule, precision, 2 * quant.BLOCK_SIZE.get(precision, 128) + 45)
           for rule in ("lion", "adam", "adam_amsgrad") for precision in ("8bit", "4bit", "bf16")]
print(json.dumps({"results": results}))
