"""Optimizer steps with states held in low precision (``state_precision=``): time per step and the
state bytes held per param, per algorithm, precision and size. ``setup`` allocates and runs one
warm-up step, so compiling (or loading numba's cache) is never inside the timing."""
import numpy as np

import fastlr

ALGORITHMS = ["AdamW", "Lion", "Adagrad"]
PRECISIONS = ["fp32", "bf16", "8bit", "4bit"]
SIZES = [1 << 16, 1 << 20, 1 << 24]


def make_optimizer(algorithm, precision, n):
    """(optimizer over one float32 buffer of n params, its grad), after one warm-up step."""
    rng = np.random.default_rng(0)
    p = (0.1 * rng.standard_normal(n)).astype(np.float32)
    g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    opt = getattr(fastlr, algorithm)(p, state_precision=precision)
    opt.step(g)
    return opt, g


class LowPrecisionStep:
    params = (ALGORITHMS, PRECISIONS, SIZES)
    param_names = ["algorithm", "precision", "size"]
    timeout = 300

    def setup(self, algorithm, precision, size):
        self.opt, self.g = make_optimizer(algorithm, precision, size)

    def time_step(self, algorithm, precision, size):
        self.opt.step(self.g)

    def track_state_bytes_per_param(self, algorithm, precision, size):
        arrays = [v for v in self.opt.state[0].values() if isinstance(v, np.ndarray)]
        return sum(a.nbytes for a in arrays) / size

    track_state_bytes_per_param.unit = "bytes"


class LowPrecisionStateDict:
    """Exporting 8-bit states as float32 and loading float32 states into an 8-bit optimizer."""
    params = ([1 << 20, 1 << 24],)
    param_names = ["size"]
    timeout = 300

    def setup(self, size):
        self.opt, _ = make_optimizer("AdamW", "8bit", size)
        self.fp32 = self.opt.state_dict(dequantize=True)

    def time_state_dict_dequantize(self, size):
        self.opt.state_dict(dequantize=True)

    def time_load_fp32_into_8bit(self, size):
        self.opt.load_state_dict(self.fp32)
