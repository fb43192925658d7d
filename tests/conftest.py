import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests: on CI (CI=true) the same examples every run, so a red CI is the commit's doing;
# elsewhere new random examples each run (hypothesis prints how to replay a failure).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# tests/cudasim runs the CUDA kernels on numba's simulator, which must be switched on before numba
# is imported: only a session started with NUMBA_ENABLE_CUDASIM=1 collects it
# (tests/test_cuda_simulator.py starts one).
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where a real CUDA device is present."""
    try:
        from numba import config, cuda
        have_gpu = not config.ENABLE_CUDASIM and cuda.is_available()
    except Exception:
        have_gpu = False
    if have_gpu:
        return
    skip = pytest.mark.skip(reason="needs a real NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_data(n_steps, size, dtype, seed=0):
    """Initial params and a sequence of gradients, random but reproducible."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(n_steps)]
    return p, grads


@pytest.fixture
def data():
    return make_data
