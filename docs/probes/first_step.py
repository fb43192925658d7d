"""Start-up of a fresh process, by phase (docs/PERFORMANCE.md). `--no-scipy` hides scipy, as on a
machine without it (numba imports scipy.linalg when its CPU target first initialises)."""
import sys
import time

if "--no-scipy" in sys.argv:
    sys.modules["scipy"] = None
t0 = time.perf_counter()
import numpy as np  # noqa: E402

import fastlr  # noqa: E402

t1 = time.perf_counter()
import numba  # noqa: E402, F401

t2 = time.perf_counter()
from fastlr.kernels import cpu  # noqa: E402, F401

t3 = time.perf_counter()
p, g = np.ones(1 << 20, np.float32), np.ones(1 << 20, np.float32)
o = fastlr.Adam(p)
o.step(g)
t4 = time.perf_counter()
print(f"import fastlr {t1 - t0:.3f} s, import numba {t2 - t1:.3f} s, kernels.cpu {t3 - t2:.3f} s, "
      f"first step {t4 - t3:.3f} s")
