"""The CUDA kernels on numba's CUDA simulator (no GPU needed): the tests in tests/cudasim, run as a
pytest session of their own, since NUMBA_ENABLE_CUDASIM must be set before numba is imported.
A failure shows that session's report (the failing test and its assertion diff)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                    reason="this session runs under the simulator and collects tests/cudasim itself")
def test_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    command = [sys.executable, "-m", "pytest", "tests/cudasim", "-q", "--tb=short", "-p", "no:cacheprovider"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # 1: failures, 5: nothing collected, others: errors
        pytest.fail(f"NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim: exit code {proc.returncode}\n"
                    f"{proc.stdout[-20000:]}\n{proc.stderr[-5000:]}", pytrace=False)
