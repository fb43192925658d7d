"""The engine: many separate arrays in one step (NumPy and torch), and what reading and checking
what the caller holds costs per step."""
import numpy as np

import fastlr


def _arrays(sizes, seed, scale):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(n)).astype(np.float32) for n in sizes]


class SeparateArrays:
    """Adam over the same total split into 1 (flat), 200 or 2000 NumPy arrays: one table call per step."""
    params = ([1 << 22], [1, 200, 2000])
    param_names = ["total", "n_arrays"]

    def setup(self, total, n_arrays):
        sizes = np.diff(np.linspace(0, total, n_arrays + 1).astype(int))
        self.ps, self.gs = _arrays(sizes, 0, 0.1), _arrays(sizes, 1, 1e-3)
        self.opt = fastlr.Adam(self.ps if n_arrays > 1 else self.ps[0])
        self.grads = self.gs if n_arrays > 1 else self.gs[0]
        self.opt.step(self.grads)

    def time_step(self, total, n_arrays):
        self.opt.step(self.grads)

    def track_gbps(self, total, n_arrays):
        import time
        t = time.perf_counter()
        for _ in range(5):
            self.opt.step(self.grads)
        return 28 * total / ((time.perf_counter() - t) / 5) / 1e9

    track_gbps.unit = "GB/s"


class StepOverhead:
    """A step over many tiny arrays: the Python cost of reading params, grads and states."""
    params = [[1, 200, 2000]]
    param_names = ["n_arrays"]

    def setup(self, n_arrays):
        self.ps, self.gs = _arrays([64] * n_arrays, 0, 0.1), _arrays([64] * n_arrays, 1, 1e-3)
        self.opt = fastlr.Adam(self.ps)
        self.opt.step(self.gs)

    def time_step(self, n_arrays):
        self.opt.step(self.gs)


class TorchModel:
    """fastlr.torch.AdamW vs torch.optim.AdamW(fused=True) on a GPT-2-shaped model, fresh grads each step."""
    params = (["gpt2-tiny", "gpt2-24M"], ["fastlr", "torch-fused"])
    param_names = ["model", "impl"]
    timeout = 300

    def setup(self, model, impl):
        try:
            import torch

            import fastlr.torch as ft
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        from fastlr.bench_engine import MODELS, gpt2_shapes
        shapes = gpt2_shapes(**MODELS[model])
        gen = torch.Generator().manual_seed(0)
        self.params_ = [(torch.randn(s, generator=gen) * 0.02).requires_grad_() for s in shapes]
        self.pools = [[torch.randn(s, generator=gen) * 1e-3 for s in shapes] for _ in range(2)]
        self.opt = ft.AdamW(self.params_) if impl == "fastlr" else torch.optim.AdamW(self.params_, fused=True)
        self.turn = 0
        self.time_step(model, impl)

    def time_step(self, model, impl):
        self.turn ^= 1
        for p, g in zip(self.params_, self.pools[self.turn]):
            p.grad = g
        self.opt.step()
