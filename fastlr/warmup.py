"""Compile (or load from numba's cache) every CPU kernel up front, for people who want no
compilation inside their first steps."""
import numpy as np

from ._launch import NO_CONDITIONING, kernel_module, parallel_guard
from .kernels import _codegen, rules

__all__ = ["warmup"]


def warmup(dtypes=("float32", "float64"), progress=False):
    """Run every element rule's serial and parallel CPU kernel once on a one-element buffer.

    Kernels are cached by numba (``cache=True``), so after one warm-up in any process later
    processes load them from disk. Returns the number of kernels made ready.
    """
    cpu = kernel_module("cpu")
    names = [(rule, suffix) for rule in rules.ELEMENT_RULES for suffix in ("", "_serial")]
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(names, desc="fastlr warmup")
    count = 0
    for rule, suffix in names:
        for dtype in map(np.dtype, dtypes):
            k = _codegen.n_states(rule)
            arrays = [np.ones(1, dtype) for _ in range(2 + k)]
            h = tuple(0.5 for _ in _codegen.scalar_names(rule))
            with parallel_guard(suffix == "_serial"):
                cpu.KERNELS[rule + suffix](*arrays, h, NO_CONDITIONING)
            count += 1
    return count

