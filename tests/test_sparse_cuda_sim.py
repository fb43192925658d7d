"""step_rows on the CUDA path (sort + segmented reduction kernels), run by the CUDA simulator on tiny
tables in a subprocess, since NUMBA_ENABLE_CUDASIM must be set before numba is imported."""
import math

import pytest

from conftest import run_under_simulator


@pytest.fixture(scope="module")
def sim():
    return run_under_simulator("sparse_sim_check.py")


def test_cuda_row_kernels_match_cpu(sim):
    assert [r["name"] for r in sim["results"]] == ["Adam", "AdamW", "SGD", "Adagrad", "RowWiseAdagrad"]
    for r in sim["results"]:
        assert r["err"] <= 1e-6 and r["state_err"] <= 1e-6, r
        assert r["untouched"], r                       # a row no id names keeps its bits
        assert r["state_kind"] == "FakeCUDAArray", r    # states live on the device


def test_cuda_clip_uses_coalesced_norm(sim):
    assert sim["clipped"] == pytest.approx(-4.0 / (4 * math.sqrt(3) + 1e-6), rel=1e-6)


def test_cuda_bad_input_changes_nothing(sim):
    assert "indices[1]: row id 6 is out of range" in sim["bad"]
    assert sim["unchanged"] and sim["step"] == 1
