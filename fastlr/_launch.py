"""Send one validated update to the right kernel: CPU (serial or parallel by size) or CUDA.

Kernel modules are imported on first use, so `import fastlr` compiles nothing and
never touches numba.cuda unless a GPU array shows up.
"""
import importlib
import math

import numpy as np

# Below this many elements one thread beats waking the pool (measured: docs/PERFORMANCE.md).
SERIAL_BELOW = 1 << 15

_MODULES = {}


def kernel_module(name):
    """fastlr.kernels.<name>, imported (and its kernels defined) on first use."""
    module = _MODULES.get(name)
    if module is None:
        module = _MODULES[name] = importlib.import_module(f"{__package__}.kernels.{name}")
    return module


def _kernels(on_cuda):
    return kernel_module("cuda" if on_cuda else "cpu")


# (scale, lo, hi) for rules.condition when no conditioning is asked for.
NO_CONDITIONING = (1.0, -math.inf, math.inf)


def no_conditioning(dtype):
    return _NO_CONDITIONING[np.dtype(dtype)]


_NO_CONDITIONING = {np.dtype(d): (d(1.0), d(-np.inf), d(np.inf)) for d in (np.float32, np.float64)}


def cast(values, dtype):
    """Host float64 scalars as the arrays' dtype, so kernels compute in that dtype."""
    return tuple(np.asarray(values, dtype))  # one conversion: 2x faster than a scalar at a time


def run(rule, param, grad, states, h, c, on_cuda, stream=0):
    """kernel(param, grad, *states, h, c) on flat kernel views; h and c are float64 scalars.

    They are passed as Python floats whatever number types the hyperparameters had, so each
    kernel has one signature per array dtype (the kernel casts them to that dtype once).
    """
    h = tuple(map(float, h))
    if c is not NO_CONDITIONING:
        c = tuple(map(float, c))
    module = _kernels(on_cuda)
    if not on_cuda:
        name = rule if param.size >= SERIAL_BELOW else rule + "_serial"
        module.KERNELS[name](param, grad, *states, h, c)
        return
    blocks, threads = module.launch_config(param.size)
    module.KERNELS[rule][blocks, threads, stream](param, grad, *states, h, c)


def sum_of_squares(flat, on_cuda, stream=0):
    """float64 sum of squares of one flat buffer (a single reduction pass)."""
    module = _kernels(on_cuda)
    if not on_cuda:
        return float(module.sumsq(flat) if flat.size >= SERIAL_BELOW else module.sumsq_serial(flat))
    from .streams import sum_of_squares_on
    return sum_of_squares_on(flat, stream)
