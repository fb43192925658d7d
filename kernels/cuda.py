"""CUDA kernels: the same element rules, compiled as device functions inside grid-stride kernels.

``KERNELS[rule]`` has the signature of the CPU kernels, ``kernel(p, g, *states, h, c)``,
launched as ``kernel[blocks, threads, stream](...)`` (see ``launch_config``). Works under
the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) for tests without a GPU.
"""
import functools
import math

import numpy as np
from numba import config, cuda

from . import rules
from ._codegen import compile_rules, generate

R = compile_rules(cuda.jit(device=True), __name__ + ".R")

_TEMPLATE = """
def {name}(p, g, {states}h, c):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

# The simulator interprets Python: nothing to cache there.
_SIMULATOR = bool(config.ENABLE_CUDASIM)

KERNELS = {name: generate(_TEMPLATE, name, name, globals(), cuda.jit(cache=not _SIMULATOR))
           for name in rules.ELEMENT_RULES}

THREADS = 256


def launch_config(n, threads=THREADS):
    """(blocks, threads): enough blocks to cover n once, capped at 32 per SM (grid-stride beyond)."""
    blocks = max(1, math.ceil(n / threads))
    return min(blocks, _max_blocks()), threads


@functools.cache
def _max_blocks():
    try:
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    except Exception:  # the simulator reports no SM count
        sms = 1
    return 32 * sms


@cuda.jit(device=True)
def block_sum_into(s, out):
    """Add every thread's value s, summed over the block (256 threads at most), to out[0]."""
    partial = cuda.shared.array(256, np.float64)
    tid = cuda.threadIdx.x
    partial[tid] = s
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        cuda.atomic.add(out, 0, partial[0])


@cuda.jit(cache=not _SIMULATOR)
def sumsq(g, out):
    """out[0] += sum of squares of g, in float64 (one atomic add per block)."""
    s = 0.0
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        x = np.float64(g[i])
        s += x * x
    block_sum_into(s, out)
