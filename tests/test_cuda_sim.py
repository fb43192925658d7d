"""The CUDA kernels, run by the CUDA simulator (no GPU needed) on tiny arrays, in a subprocess
because NUMBA_ENABLE_CUDASIM must be set before numba is imported."""
import math

import pytest

from conftest import run_under_simulator


@pytest.fixture(scope="module")
def sim():
    return run_under_simulator("sim_check.py")


def test_every_algorithm_matches_reference_on_cuda_path(sim):
    assert len(sim["results"]) == 40
    for r in sim["results"]:
        tol = 1e-5 if r["dtype"] == "float32" else 1e-12
        assert r["err"] <= tol, r
        assert r["state_kind"] in ("FakeCUDAArray", "none"), r  # states live on the device too


def test_clip_grad_norm_on_cuda_path(sim):
    # grads of norm 2*sqrt(20) clipped to norm 1: each element 2 * coef
    coef = 1.0 / (2 * math.sqrt(20) + 1e-6)
    assert sim["clip_value"] == pytest.approx(1.0 - 2 * coef, rel=1e-6)


def test_nonfinite_step_skipped_on_cuda_path(sim):
    assert sim["skip_ok"]
