"""Lion and SGD-momentum kernels vs the stream kernel with the same traffic, on the SAME fresh
16M arrays, kept alive across trials (docs/PERFORMANCE.md, "Lion")."""
import time
from functools import partial

import numpy as np

from fastlr import bench
from fastlr._launch import NO_CONDITIONING
from fastlr.kernels import cpu
from fastlr.kernels.stream import STREAM


def median_ms(f):
    f()
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    return np.median(ts)


n, keep = 1 << 24, []
lion, sgd_m = cpu.KERNELS["lion"], cpu.KERNELS["sgd_momentum"]
h_lion, h_sgd = (1.0, 1.0, 1e-4, 0.9, 0.1, 0.99, 0.01), (1.0, 0.0, 1e-4, 0.9, 1.0, 0.0)
for trial in range(3):
    p, g = bench._data(n, "float32", 0)
    m = np.zeros(n, np.float32)
    a = median_ms(partial(lion, p, g, m, h_lion, NO_CONDITIONING))
    b = median_ms(partial(sgd_m, p, g, m, h_sgd, NO_CONDITIONING))
    c = median_ms(partial(STREAM[1], p, g, m, np.float32(1e-3), np.float32(0.5)))
    print(f"trial {trial}: lion {a:.1f} ms, sgd_momentum {b:.1f} ms, stream {c:.1f} ms")
    keep.append((p, g, m))
