import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def run_under_simulator(script):
    """Run tests/<script> with NUMBA_ENABLE_CUDASIM=1 (it must be set before numba is imported)
    and return the JSON object its last output line holds."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, os.path.join(HERE, script)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


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
