"""Every float32 y with |y| <= 1, for every map and both signs: ``quant.encode`` (as compiled for the
CPU kernels) equals the number of rounding boundaries <= y (a binary search over
``Codebook.bounds``, which tests/test_lowbit_kernels.py checks against torchao's rule and brute
force). Not collected by pytest (about a minute on 2 cores): ``python tests/lowbit_exhaustive.py``.
"""
import time

import numpy as np
from numba import njit, prange

from fastlr.kernels import lowbit_cpu, quant

ONE = 0x3F800000  # bits of 1.0: patterns 0 .. ONE are every float32 in [0, 1]


@njit(parallel=True)
def mismatches(bounds, table, lo_bits, hi_bits, shift, half, sign):
    chunks = 256
    per = (ONE + chunks) // chunks
    bad = np.zeros(chunks, np.int64)
    for t in prange(chunks):
        for b in range(t * per, min(ONE + 1, (t + 1) * per)):
            y = np.uint32(b | (sign << 31)).view(np.float32)
            lo, hi = 0, bounds.size
            while lo < hi:
                mid = (lo + hi) // 2
                if bounds[mid] <= y:
                    lo = mid + 1
                else:
                    hi = mid
            bad[t] += lowbit_cpu.Q.encode(y, table, lo_bits, hi_bits, shift, half) != lo
    return bad.sum()


if __name__ == "__main__":
    total = 0
    for key, cb in quant.CODEBOOKS.items():
        for sign in (0, 1):
            t = time.perf_counter()
            bad = mismatches(cb.bounds, cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half, sign)
            total += bad
            print(f"{key} {'-' if sign else '+'}: {ONE + 1} values, {bad} mismatches ({time.perf_counter() - t:.0f} s)")
    raise SystemExit(1 if total else 0)
