"""Send one validated update to the right kernel: CPU (serial or parallel by size) or CUDA.

Kernel modules are imported on first use, so `import fastlr` compiles nothing and
never touches numba.cuda unless a GPU array shows up.
"""
import importlib
import math
import threading

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


def exact(dispatcher, args):
    """The compiled entry point of a numba CPU dispatcher for exactly the types of ``args`` (call the
    dispatcher with them first, so that it is compiled), or the dispatcher where there is none.

    The entry point is numba's own wrapper without the dispatcher's type resolution (~0.2 us less a
    call). It trusts its arguments' types, so it is only for arguments the engine builds itself,
    whose types never change for the caller that keeps it (C-contiguous int64/float64 tables, a
    tuple of Python floats, a unit's ``like`` array)."""
    try:
        return dispatcher.overloads[tuple(map(dispatcher.typeof_pyval, args))].entry_point
    except Exception:   # another numba, or not compiled for these types: the dispatcher checks them
        return dispatcher


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
        serial = param.size < SERIAL_BELOW
        with parallel_guard(serial):
            module.KERNELS[rule + "_serial" if serial else rule](param, grad, *states, h, c)
        return
    blocks, threads = module.launch_config(param.size)
    module.KERNELS[rule][blocks, threads, stream](param, grad, *states, h, c)


def sum_of_squares(flat, on_cuda, stream=0):
    """float64 sum of squares of one flat buffer (a single reduction pass)."""
    module = _kernels(on_cuda)
    if not on_cuda:
        serial = flat.size < SERIAL_BELOW
        with parallel_guard(serial):
            return float(module.sumsq_serial(flat) if serial else module.sumsq(flat))
    from .streams import sum_of_squares_on
    return sum_of_squares_on(flat, stream)


# ---------------------------------------------------------------- numba's threading layers
_SERIALIZE = threading.Lock()
_LAYER = []


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def parallel_guard(serial=False):
    """The context every parallel CPU kernel of fastlr is launched in. numba's workqueue threading
    layer (the one left when neither TBB nor OpenMP can be loaded, or when NUMBA_THREADING_LAYER
    asks for it) aborts the process when two threads run parallel kernels at once; under it,
    parallel launches are serialized by one process-wide lock. Serial kernels and the omp/tbb
    layers need no guard."""
    if serial:
        return _NULL
    if not _LAYER:
        import numba
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet: serialize until the layer is known
            return _SERIALIZE
        _LAYER.append(_SERIALIZE if layer == "workqueue" else _NULL)
    return _LAYER[0]
