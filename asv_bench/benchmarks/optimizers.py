"""Dense optimizer steps: time per step and GB/s, per algorithm, size and dtype.

GB/s uses the bytes an algorithm must move per parameter (fastlr.bench.bytes_per_param:
Adam 28 B in float32). ``setup`` allocates and runs one warm-up step, so compiling (or
loading numba's cache) is never inside the timing. 64M-param cases are skipped in float64
and when the machine has too little free memory.
"""
import os
import time

import numpy as np

import fastlr
from fastlr.bench import ALGOS, bytes_per_param

SIZES = [4096, 1 << 20, 1 << 24, 1 << 26]


def _free_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def make_step(algo, n, dtype):
    """(step function, bytes per step) for fastlr's optimizer with default hyperparameters."""
    cls, kw = getattr(fastlr, ALGOS[algo][0]), ALGOS[algo][1]
    rng = np.random.default_rng(0)
    p = (0.1 * rng.standard_normal(n)).astype(dtype)
    g = (1e-3 * rng.standard_normal(n)).astype(dtype)
    opt = cls(p, **kw)
    if hasattr(opt, "train"):   # schedule-free optimizers step in train mode
        opt.train()
    opt.step(g)   # warm-up: compile or load the kernel, allocate the state
    return (lambda: opt.step(g)), bytes_per_param(algo, np.dtype(dtype).itemsize) * n


class OptimizerStep:
    params = (list(ALGOS), SIZES, ["float32", "float64"])
    param_names = ["algo", "size", "dtype"]
    timeout = 300

    def setup(self, algo, size, dtype):
        itemsize = np.dtype(dtype).itemsize
        if size >= 1 << 26 and dtype == "float64":
            raise NotImplementedError("64M params in float64: skipped (memory and time)")
        need = (ALGOS[algo][3] + 2) * size * itemsize * 2
        if need > _free_bytes():
            raise NotImplementedError(f"needs ~{need >> 20} MiB free memory")
        self.step, self.nbytes = make_step(algo, size, dtype)

    def time_step(self, algo, size, dtype):
        self.step()

    def track_gbps(self, algo, size, dtype):
        number = max(1, min(1000, (1 << 24) // size))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(number):
                self.step()
            best = min(best, (time.perf_counter() - t) / number)
        return self.nbytes / best / 1e9

    track_gbps.unit = "GB/s"
