"""Real-GPU tests (marked gpu: skipped where no NVIDIA GPU is present): CuPy arrays and torch CUDA
tensors through the CUDA kernels, against the CPU kernels on the same data."""
import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer
from conftest import make_data

pytestmark = pytest.mark.gpu


def _cpu_result(name, hp, p, grads):
    q = p.copy()
    opt = optimizer(fastlr, name)(q, **hp)
    for g in grads:
        opt.step(g)
    return q


@pytest.mark.parametrize("name", list(CASES))
def test_cupy_matches_cpu(name):
    cp = pytest.importorskip("cupy")
    hp = CASES[name][-1]
    p, grads = make_data(20, 100_003, np.float32)
    dp = cp.asarray(p)
    opt = optimizer(fastlr, name)(dp, **hp)
    for g in grads:
        opt.step(cp.asarray(g))
    assert isinstance(opt.state[0]["step"], int)
    np.testing.assert_allclose(cp.asnumpy(dp), _cpu_result(name, hp, p, grads), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_cuda_matches_cpu(name):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    hp = CASES[name][-1]
    p, grads = make_data(20, 100_003, np.float32)
    tp = torch.from_numpy(p.copy()).cuda()
    opt = optimizer(fastlr, name)([tp], **hp)
    for g in grads:
        opt.step([torch.from_numpy(g).cuda()])
    np.testing.assert_allclose(tp.cpu().numpy(), _cpu_result(name, hp, p, grads), rtol=1e-5, atol=1e-6)


def test_grads_on_other_device_rejected():
    cp = pytest.importorskip("cupy")
    dp = cp.zeros(10, cp.float32)
    opt = fastlr.Adam(dp)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected an array on"):
        opt.step(np.zeros(10, np.float32))
    assert float(cp.abs(dp).sum()) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_device_segment_table_equals_per_array_launches(name, monkeypatch):
    """FASTLR_CUDA_TABLES=1: one launch over a device-side table of many arrays of mixed sizes gives
    the per-array kernels' numbers (the path is opt-in until this has run on a real GPU)."""
    from numba import cuda
    rng = np.random.default_rng(0)
    sizes = [1, 7, 300, 70_000, 5, 40_000]
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(3)]
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("FASTLR_CUDA_TABLES", flag)
        params = [cuda.to_device(h) for h in host]
        opt = getattr(fastlr, name)(params, **CASES[name][-1])
        for gs in grads:
            opt.step([cuda.to_device(g) for g in gs])
        cuda.synchronize()
        out[flag] = [p.copy_to_host() for p in params]
    for a, b in zip(out["0"], out["1"]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
