"""step_rows through the CUDA row kernels (sort + segmented reduction) on numba device arrays,
against the same calls on the CPU kernels."""
import math

import numpy as np
import pytest
from numba import cuda

import fastlr
from cases import CASES, whole_step_only
from fastlr.sparse import RowWiseAdagrad
from sim_helpers import host

N_ROWS, DIM = 6, 3
# every algorithm with every option of its grid on, and the row-wise-only optimizer
SPARSE = [(name, [hp for hp in cases if not whole_step_only(name, hp)][-1]) for name, cases in CASES.items()
          if not whole_step_only(name, {})] + \
    [("RowWiseAdagrad", dict(weight_decay=0.01))]


def _make(name, p, **hp):
    cls = RowWiseAdagrad if name == "RowWiseAdagrad" else getattr(fastlr, name)
    return cls(p, **{"lr": 0.1, **hp})


def _calls(seed=0):
    """Initial table and 3 batches of ids in [0, N_ROWS - 1) (the last row is never named), duplicates included."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal((N_ROWS, DIM)).astype(np.float32)
    return p0, [(rng.integers(0, N_ROWS - 1, 7), rng.standard_normal((7, DIM)).astype(np.float32)) for _ in range(3)]


@pytest.mark.parametrize("name,hp", SPARSE, ids=[name for name, _ in SPARSE])
def test_row_kernels_match_cpu(name, hp):
    p0, calls = _calls()
    p, dp = p0.copy(), cuda.to_device(p0)
    cpu, gpu = _make(name, p, **hp), _make(name, dp, **hp)
    for k, (ids, rows) in enumerate(calls):
        cpu.step_rows(ids, rows)
        gpu.step_rows(cuda.to_device(ids) if k == 1 else ids, cuda.to_device(rows))  # ids on either side
    out = dp.copy_to_host()
    np.testing.assert_allclose(out, p, rtol=1e-6, atol=1e-6)
    assert out[-1].tobytes() == p0[-1].tobytes(), "a row no id names keeps its bits"
    assert set(gpu.state[0]) == set(cpu.state[0])
    for key, value in cpu.state[0].items():
        if np.ndim(value):
            assert hasattr(gpu.state[0][key], "copy_to_host"), f"{key} is not on the device"
        np.testing.assert_allclose(host(gpu.state[0][key]), value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_clip_uses_the_coalesced_norm():
    dp = cuda.to_device(np.zeros((4, 3), np.float32))
    rows = np.full((2, 3), 2.0, np.float32)
    fastlr.SGD(dp, lr=1.0, max_grad_norm=1.0).step_rows(np.array([1, 1]), cuda.to_device(rows))
    coalesced = rows.sum(0, dtype=np.float64)  # both rows name id 1: summed before the norm
    expected = -coalesced / (np.linalg.norm(coalesced) + 1e-6)
    np.testing.assert_allclose(dp.copy_to_host()[1], expected, rtol=1e-6)
    assert math.isclose(expected[0], -4.0 / (4 * math.sqrt(3) + 1e-6))


def test_bad_ids_change_nothing():
    p0, _ = _calls()
    dp = cuda.to_device(p0)
    opt = fastlr.Adam(dp)
    opt.step_rows(np.array([0]), cuda.to_device(np.ones((1, DIM), np.float32)))
    before = dp.copy_to_host().tobytes(), opt.state[0]["exp_avg"].copy_to_host().tobytes()
    with pytest.raises(IndexError, match=rf"indices\[1\]: row id {N_ROWS} is out of range"):
        opt.step_rows(np.array([1, N_ROWS]), cuda.to_device(np.ones((2, DIM), np.float32)))
    assert (dp.copy_to_host().tobytes(), opt.state[0]["exp_avg"].copy_to_host().tobytes()) == before
    assert opt.state[0]["step"] == 1
