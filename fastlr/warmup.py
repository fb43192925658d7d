"""Compile (or load from numba's cache) every CPU kernel up front, for people who want no
compilation inside their first steps."""
import numpy as np

from ._launch import NO_CONDITIONING, kernel_module, parallel_guard
from .kernels import _codegen, rules

__all__ = ["warmup"]


def warmup(dtypes=("float32", "float64"), progress=False):
    """Run every element rule's CPU kernels once on one-element arrays: the flat kernels (serial and
    parallel), the segment-table kernels (serial and parallel) and the table helpers.

    Kernels are cached by numba (``cache=True``), so after one warm-up in any process later
    processes load them from disk. Returns the number of kernels made ready.
    """
    cpu, pointers = kernel_module("cpu"), kernel_module("_pointers")
    names = [(rule, suffix) for rule in rules.ELEMENT_RULES for suffix in ("", "_serial")]
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(names, desc="fastlr warmup")
    count = 0
    for rule, suffix in names:
        for dtype in map(np.dtype, dtypes):
            arrays = [np.ones(1, dtype) for _ in range(2 + _codegen.n_states(rule))]
            h = tuple(0.5 for _ in _codegen.scalar_names(rule))
            ptrs = np.array([[a.ctypes.data for a in arrays]], np.int64)
            work = cpu.make_work(np.ones(1, np.int64), 1)
            out = np.empty(1)
            with parallel_guard(suffix == "_serial"):
                cpu.KERNELS[rule + suffix](*arrays, h, NO_CONDITIONING)
                cpu.TABLE_KERNELS[rule + suffix](ptrs, work, np.zeros(1, np.int64), np.array([h]), NO_CONDITIONING,
                                                 np.empty(0, dtype))
                (cpu.table_sumsq if suffix == "" else cpu.table_sumsq_serial)(ptrs, work, 1, np.empty(0, dtype), out)
            count += 2
    objs = np.array([[id(a) for a in (np.ones(1), np.ones(1))]], np.int64)
    meta = np.zeros((4, 2), np.int64)
    pointers.gather(objs, meta, np.empty((1, 2), np.int64), np.empty(1, np.int64), np.zeros((1, 2), np.int64),
                    np.zeros((3, 2), np.int64), 0)
    return count
