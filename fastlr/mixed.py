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

from . import engine as _engine
from ._arrays import dense
from ._launch import SERIAL_BELOW, cast, kernel_module, parallel_guard
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
        serial = p16.size < SERIAL_BELOW
        with parallel_guard(serial):
            table[fmt, rule + "_serial" if serial else rule](*args)
        return
    blocks, threads = module.launch_config(p16.size)
    table[fmt, rule][blocks, threads, stream](*args)


_FORMATS = {"bfloat16": "bf16", "float16": "fp16"}


class HalfUnit(_engine.Unit):
    """16-bit torch params (fastlr.torch with master_weights or stochastic_rounding): float32 states,
    the master copy in ``state[p]["master_param"]``; one launch of the mixed kernels per param."""

    def read(self, allcols):
        import torch
        opt = self.engine.opt
        self.fmt = _FORMATS[self.kind.dtype]
        self.master = bool(getattr(opt, "master_weights", False))
        if not (self.master or getattr(opt, "stochastic_rounding", False)):
            raise TypeError(f"{self.column_name(0, 0)} is {self.kind.dtype}: pass master_weights=True or "
                            f"stochastic_rounding=True")
        masters = [st.get("master_param") for st in self.pstates] if self.master else []
        meta = [[(t.shape, t.stride(), t.dtype, t.data_ptr()) for t in col] for col in allcols + [masters]]
        if meta != self.checked:
            self._validate(allcols, masters, torch)
            self.checked = meta
        self.objs = allcols
        self.masters = masters

    def _validate(self, allcols, masters, torch):
        for r, row in enumerate(zip(*allcols)):
            p, g = row[0], row[1]
            if not dense(p):
                raise ValueError(f"{self.column_name(r, 0)}: expected a dense tensor")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device or g.stride() != p.stride():
                raise ValueError(f"{self.column_name(r, 1)}: expected shape {tuple(p.shape)}, {p.dtype} on "
                                 f"{p.device} with the param's strides, got {tuple(g.shape)}, {g.dtype} on {g.device}")
            states = list(row[2:]) + ([masters[r]] if self.master else [])
            for c, t in enumerate(states):
                name = self.column_name(r, c + 2) if c + 2 < self.ncols else f"{self.column_name(r, 0)}: master_param"
                if not isinstance(t, torch.Tensor) or t.shape != p.shape or t.dtype != torch.float32 \
                        or t.device != p.device or t.stride() != p.stride():
                    raise ValueError(f"{name}: expected a float32 tensor of shape {tuple(p.shape)} on {p.device} "
                                     f"with the param's strides")
            self.check_kind(r, p)

    def launch(self, rule, htab, hidx, c):
        from .streams import current_stream
        rows = htab.tolist()
        steps = self.engine.front.steps(self.pstates, self.front_cache)
        for r, p in enumerate(self.objs[0]):
            on_cuda = p.device.type == "cuda"
            h = rows[0 if hidx is None else int(hidx[r])]
            states = [_bits(col[r], False) for col in self.objs[2:]]
            master = _bits(self.masters[r], False) if self.master else None
            key = seed_mix(self.engine.opt.seed, int(steps[r]), 0, self.labels[r][3]) if not self.master else 0
            run(rule, self.fmt, _bits(p, True), _bits(self.objs[1][r], True), master, states, h, c, key, on_cuda,
                current_stream(p) if on_cuda else 0)

    def sumsq(self):
        import torch
        return sum(float(torch.linalg.vector_norm(g, dtype=torch.float64) ** 2) for g in self.objs[1])

    def first_pass(self, rule, htab, hidx, c):
        """(per-param htab, hidx) of a multi-pass rule (Lamb, Lars, Mars): each param's first-pass stages
        over float32 views of what its update reads (the master copy or the params widened, the grads
        widened: one temporary float32 copy each, for this pass only) and its float32 states."""
        import torch

        from .streams import current_stream
        from .twopass import flat_first_pass
        rows = htab.tolist()
        out = []
        for r, p in enumerate(self.objs[0]):
            on_cuda = p.device.type == "cuda"
            p32 = self.masters[r] if self.master else p.detach().to(torch.float32, memory_format=torch.preserve_format)
            g32 = self.objs[1][r].detach().to(torch.float32, memory_format=torch.preserve_format)
            views = [_bits(p32, False), _bits(g32, False), *[_bits(col[r], False) for col in self.objs[2:]]]
            h = rows[0 if hidx is None else int(hidx[r])]
            out.append(flat_first_pass(rule, views, tuple(h), c, on_cuda, current_stream(p) if on_cuda else 0,
                                       tuple(p.shape)))
        return np.array(out, np.float64), np.arange(len(out), dtype=np.int64)

    def spans(self):
        out = []
        for r, p in enumerate(self.objs[0]):
            n = p.numel() * p.element_size()
            if n:
                out.append((p.data_ptr(), p.data_ptr() + n, self.column_name(r, 0)))
        return out


def _bits(t, half):
    """A flat kernel view of a dense tensor: 16-bit floats as their bit patterns (uint16 on the CPU,
    int16 on CUDA), float32 as is."""
    import torch
    t = t.detach()
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    t = t.reshape(-1)
    if half:
        t = t.view(torch.int16)
    if t.device.type == "cpu":
        a = t.numpy()
        return a.view(np.uint16) if half else a
    from numba import cuda
    return cuda.as_cuda_array(t, sync=False)


_engine.register_unit("torch-half", HalfUnit)
