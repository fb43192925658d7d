"""Every float32 y with |y| <= 1, for every map and both signs: ``quant.encode`` (as compiled for the
CPU kernels) equals the number of rounding boundaries <= y (a binary search over
``Codebook.bounds``, which tests/test_lowbit_kernels.py checks against torchao's rule and brute
force); and where the CPU has AVX-512 VBMI, the kernels' byte-permute encoders (``lowbit_cpu.ENCODE_*``) equal
``quant.encode`` for every float32 bit pattern (NaN, inf and |y| > 1 included). Not collected by
pytest (about two minutes on 2 cores): ``python tests/lowbit_exhaustive.py``.
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


def permute_mismatches(encode):
    """A function counting the bit patterns where intrinsic ``encode`` (lowbit_cpu.ENCODE_*) differs
    from quant.encode."""
    @njit(parallel=True)
    def count(tables, table, lo_bits, hi_bits, shift, half):
        chunks, per = 1 << 16, 1 << 16  # every uint32 bit pattern
        bad = np.zeros(chunks, np.int64)
        one = np.float32(1.0)
        for t in prange(chunks):
            y = (np.arange(per, dtype=np.uint32) + np.uint32(t * per)).view(np.float32)
            got = np.empty(per, np.uint8)
            encode(y, got, one, tables)
            for i in range(per):
                bad[t] += got[i] != lowbit_cpu.Q.encode(y[i] / one, table, lo_bits, hi_bits, shift, half)
        return bad.sum()
    return count


if __name__ == "__main__":
    total = 0
    for key, cb in quant.CODEBOOKS.items():
        for sign in (0, 1):
            t = time.perf_counter()
            bad = mismatches(cb.bounds, cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half, sign)
            total += bad
            print(f"{key} {'-' if sign else '+'}: {ONE + 1} values, {bad} mismatches ({time.perf_counter() - t:.0f} s)")
    if lowbit_cpu.VBMI:
        for key, cb in quant.CODEBOOKS.items():
            t = time.perf_counter()
            tag = f"{key[0]}_{'s' if key[1] else 'u'}"
            count = permute_mismatches(getattr(lowbit_cpu, f"ENCODE_{tag}"))
            bad = count(getattr(lowbit_cpu, f"ENCODER_{tag}"), cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half)
            total += bad
            print(f"{key} ENCODE_{tag}: {1 << 32} bit patterns, {bad} mismatches ({time.perf_counter() - t:.0f} s)")
    raise SystemExit(1 if total else 0)
