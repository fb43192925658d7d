"""The mixed-precision (bfloat16 params and grads, float32 states) CUDA kernels on numba device
arrays against the CPU kernels. Uses fastlr.mixed directly: torch CUDA tensors, the public way
in, do not exist on the simulator."""
import numpy as np
import pytest
from numba import cuda

from fastlr import mixed
from fastlr.kernels import rules

N = 40
BF16 = (7, 8)  # mantissa and exponent bits


def _bf16(values):
    return np.array([rules.float_to_half(float(v), -1.0, *BF16) for v in values], np.uint16)


# the simulator runs the random-bits hash on NumPy uint32 scalars, which warn where the GPU's
# 32-bit multiply silently wraps (the hash relies on the wrap)
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning")
@pytest.mark.parametrize("mode", ["master", "sr"])  # master weights; stochastic rounding
def test_cuda_equals_cpu(mode):
    """The CPU converts bf16 on the bits, CUDA by arithmetic: the results must still be equal."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N).astype(np.float32)
    p16, g16 = _bf16(x), _bf16(rng.standard_normal(N))
    h = rules.adam_scalars(1, 1e-2, (0.9, 0.999), 1e-8, 0.0, False, False)
    conditioning = (1.0, -np.inf, np.inf)
    seed = mixed.seed_mix(3, 1, 0)
    master = x.copy() if mode == "master" else None

    p, g, m, v = p16.copy(), g16.copy(), np.zeros(N, np.float32), np.zeros(N, np.float32)
    mixed.run("adam", "bf16", p, g, master, [m, v], h, conditioning, seed, False)

    # int16 views, as torch bf16 CUDA tensors give
    dp, dg = cuda.to_device(p16.view(np.int16)), cuda.to_device(g16.view(np.int16))
    dm, dv = cuda.to_device(np.zeros(N, np.float32)), cuda.to_device(np.zeros(N, np.float32))
    dmaster = cuda.to_device(x) if master is not None else None
    mixed.run("adam", "bf16", dp, dg, dmaster, [dm, dv], h, conditioning, seed, True)

    np.testing.assert_array_equal(dp.copy_to_host().view(np.uint16), p)
    np.testing.assert_allclose(dm.copy_to_host(), m, rtol=1e-6)
    np.testing.assert_allclose(dv.copy_to_host(), v, rtol=1e-6)
    if master is not None:
        np.testing.assert_allclose(dmaster.copy_to_host(), master, rtol=1e-6)
