"""Mixed precision: bfloat16 / float16 params and grads, float32 optimizer states.

Two modes (see ``fastlr.torch``): master weights (a float32 copy of the params is updated
and rounded to nearest even into the 16-bit params) and stochastic rounding (bfloat16
params updated in place, rounded up with probability equal to the rounding remainder,
from a counter-based hash of (seed, step, element index): deterministic given a seed, no
RNG state in the kernels). 16-bit arrays reach the kernels as their bit patterns
(uint16 NumPy arrays on the CPU, int16 CUDA views), so numba needs no bfloat16 type.

Bytes moved per parameter by one step (``bytes_per_param``), Adam: float32 28 (p read and
written 8, g 4, m and v 16); bf16 with master weights 28 (bf16 p written 2, bf16 g 2, master
read and written 8, m and v 16); bf16 with stochastic rounding 22 (p 4, g 2, m and v 16).
Memory per param: float32 16 B (p, g, m, v); bf16 + master 16 B; bf16 stochastic 12 B.
"""
import numpy as np

from ._launch import SERIAL_BELOW, cast, kernel_module
from .kernels import rules



def bytes_per_param(n_states, mode="fp32"):
    """Bytes read + written per parameter by one step with n_states float32 state arrays.

    mode: "fp32" (or "fp64": 8-byte everything), "master" (16-bit p and g, float32 master
    copy), "sr" (16-bit p and g updated in place, stochastic rounding)."""
    states = 8 * n_states
    return {"fp32": 12 + states, "fp64": 24 + 2 * states, "master": 2 + 2 + 8 + states,
            "sr": 4 + 2 + states}[mode]


def bench(n=1 << 22, algorithm="Adam", device="cpu", repeat=10, fmt="bf16"):
    """Time one step of fastlr.torch.<algorithm> over n params: float32, 16-bit with master
    weights, and (bf16) stochastic rounding. Rows: mode, seconds (best of repeat), bytes per
    param, GB/s. For ``fastlr bench --dtype bf16``; needs torch."""
    import time

    import torch

    from . import torch as ft
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[fmt]
    cls = getattr(ft, algorithm)
    modes = [("fp32", torch.float32, {}), ("master", dtype, {"master_weights": True})]
    if fmt == "bf16":
        modes.append(("sr", dtype, {"stochastic_rounding": True}))
    rows = []
    for mode, dt, options in modes:
        w = torch.randn(n, device=device).to(dt).requires_grad_()
        w.grad = torch.randn(n, device=device).to(dt)
        opt = cls([w], **options)
        opt.step()
        n_states = sum(1 for k, v in opt.state[w].items()
                       if isinstance(v, torch.Tensor) and v.numel() == n and k != "master_param")
        best = float("inf")
        for _ in range(repeat):
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        b = bytes_per_param(n_states, mode)
        rows.append({"mode": mode if mode == "fp32" else f"{fmt}_{mode}", "seconds": best, "bytes_per_param": b,
                     "GB/s": b * n / best / 1e9})
    return rows

def _module(on_cuda):
    return kernel_module("mixed_cuda" if on_cuda else "mixed_cpu")


def seed_mix(seed, step, base, buffer=0):
    """(key, base) for stochastic rounding: the key mixes the seed, the 1-based step and the
    buffer's number; base is the offset of the first element in its buffer, so each element of
    each buffer draws its own bits at every step."""
    h = rules.hash32
    key = h(h(seed & 0xFFFFFFFF) ^ h((step * 0x85EBCA6B) ^ (seed >> 32)) ^ h(buffer * 0xC2B2AE35 + 0x27D4EB2F))
    return (np.int64(key), np.int64(base))


def run(rule, fmt, p16, g16, master, states, h, c, r, on_cuda, stream=0):
    """One mixed-precision update of flat 16-bit views p16 and g16 (bits), float32 states.

    fmt: "bf16" or "fp16". master: float32 flat view (master-weights mode), or None for
    stochastic rounding (bf16 only), with r = seed_mix(seed, step, offset)."""
    module = _module(on_cuda)
    h, c = cast(h, np.float32), cast(c, np.float32)
    if master is not None:
        table, args = module.MASTER, (p16, g16, master, *states, h, c)
    else:
        if fmt != "bf16":
            raise TypeError("stochastic rounding: bfloat16 only (use master weights for float16)")
        table, args = module.STOCHASTIC, (p16, g16, *states, h, c, r)
    if not on_cuda:
        table[fmt, rule if p16.size >= SERIAL_BELOW else rule + "_serial"](*args)
        return
    blocks, threads = module.launch_config(p16.size)
    table[fmt, rule][blocks, threads, stream](*args)
