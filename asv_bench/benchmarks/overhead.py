"""Fixed costs: a step on a tiny buffer, many small arrays vs one flat buffer, import time."""
import subprocess
import sys

import numpy as np

import fastlr


def _adam(arrays):
    rng = np.random.default_rng(0)
    ps = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in arrays]
    gs = [(1e-3 * rng.standard_normal(n)).astype(np.float32) for n in arrays]
    opt = fastlr.Adam(ps if len(ps) > 1 else ps[0])
    grads = gs if len(gs) > 1 else gs[0]
    opt.step(grads)   # warm-up outside the timing
    return lambda: opt.step(grads)


class SmallStep:
    """Per-step overhead: Adam on 4096 float32 params (torch fused: ~65 us here)."""
    params = [[4096]]
    param_names = ["size"]

    def setup(self, size):
        self.step = _adam([size])

    def time_step(self, size):
        self.step()


class ManyBuffers:
    """The same total size as one flat buffer or split into many arrays."""
    params = ([1 << 22], [1, 200])
    param_names = ["total", "n_arrays"]

    def setup(self, total, n_arrays):
        cuts = np.linspace(0, total, n_arrays + 1).astype(int)
        self.step = _adam(list(np.diff(cuts)))

    def time_step(self, total, n_arrays):
        self.step()


class Import:
    """`import fastlr` and the first Adam step, each in a fresh interpreter."""
    timeout = 120
    number = 1
    repeat = 3

    def timeraw_import(self):
        return "import fastlr"

    def timeraw_first_step(self):
        return """
        import numpy as np, fastlr
        w = np.zeros(1 << 20, np.float32)
        fastlr.Adam(w).step(np.ones_like(w))
        """

    def track_import_s(self):
        code = "import time; t = time.perf_counter(); import fastlr; print(time.perf_counter() - t)"
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout)

    track_import_s.unit = "s"
