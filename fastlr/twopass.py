"""Per-tensor reductions: the first pass of a two-pass rule (Lamb and Lars' trust ratios, Mars' clip of its
corrected gradient), as DESIGN.md plans it: a first pass over the unit's segment table writing one row of
float64 sums per tensor, then the element pass with one row of scalars per tensor.

    unit.launch(rule, htab, hidx, c)          (a rule listed in rules.TWO_PASS)
      -> first_pass(unit, rule, htab, hidx, c)
           rules.<rule>_sums over every element, summed per tensor in float64 (CPU: one table kernel call,
           kernels.twopass_cpu; CUDA: one launch per array, kernels.twopass_cuda, one copy back)
           rules.<host fn>(h, sums, shape) per tensor -> that tensor's row of scalars
      -> the rule's ordinary kernel with those rows (the engine's per-tensor htab/hidx path)

Nothing here changes an array: a first pass only reads, so a step that fails before its second pass
leaves params and states as they were. A contract field ``adapt`` of 0 for every tensor skips the
first pass. Also here: ``global_clip``, timm Lamb's clip of all gradients by their global norm.
"""
import math

import numpy as np

from ._launch import SERIAL_BELOW, kernel_module
from .kernels import rules

__all__ = ["TWO_PASS", "TwoPass", "check_two_pass", "first_pass", "global_clip"]

_FAMILIES = ("numpy", "torch-cpu", "cuda", "torch-half")   # the arrays first passes have kernels for


def check_two_pass(plans):
    """Raise, before anything changes, when a two-pass rule meets arrays its first pass cannot read."""
    for plan in plans:
        if plan.rule in TWO_PASS:
            for unit in plan.units:
                if type(unit).__name__ == "LowbitUnit":
                    raise ValueError(f"{unit.column_name(0, 0)}: state_precision={unit.engine.opt.state_precision!r} "
                                     f"is not available with these options (a per-tensor first pass reads fp32 "
                                     f"states); use state_precision='fp32'")
                if unit.kind.family not in _FAMILIES:
                    raise TypeError(f"{unit.column_name(0, 0)}: {unit.kind.dtype} params are not supported with "
                                    f"these options (a per-tensor first pass, float32/float64 arrays only)")

TWO_PASS = rules.TWO_PASS


class TwoPass:
    """A unit whose launch runs the first pass before the unit's own launch (everything else is the unit's)."""

    __slots__ = ("unit",)

    def __init__(self, unit):
        object.__setattr__(self, "unit", unit)

    def __getattr__(self, name):
        return getattr(self.unit, name)

    def __setattr__(self, name, value):
        setattr(self.unit, name, value)

    def launch(self, rule, htab, hidx, c):
        htab, hidx = first_pass(self.unit, rule, htab, hidx, c)
        self.unit.launch(rule, htab, hidx, c)


def first_pass(unit, rule, htab, hidx, c):
    """(per-tensor htab, hidx) for the last pass of `rule` over `unit`'s tensors: every first-pass stage of
    ``rules.PASSES[rule]`` in order, each summing with the scalars the stage before set."""
    contract = rules.RULE_SCALARS[rule]
    n = len(unit.given[0])
    hidx = np.zeros(n, np.int64) if hidx is None else hidx
    if "adapt" in contract._fields and not htab[:, contract._fields.index("adapt")].any():
        return htab, hidx
    if unit.kind.family == "torch-half":   # 16-bit params (fastlr.mixed): per param, over float32 views
        return unit.first_pass(rule, htab, hidx, c)
    for stage, (_, k, host) in enumerate(rules.PASSES[rule]):
        key = rules.stage_key(rule, stage)
        if unit.kind.family == "cuda":
            sums = _cuda_sums(unit, key, htab, hidx, c, k)
        else:   # numpy, torch-cpu (check_two_pass refused the others before anything changed)
            sums = _cpu_sums(unit, key, htab, hidx, c, k)
        fn = getattr(rules, host)
        rows = [tuple(fn(contract(*htab[hidx[t]]), tuple(sums[t]), tuple(unit.given[0][t].shape)))
                for t in range(n)]
        htab, hidx = np.array(rows, np.float64), np.arange(n, dtype=np.int64)
    return htab, hidx


def flat_first_pass(rule, views, h, c, on_cuda, stream, shape):
    """This step's scalars of one array (the functional API): the first-pass stages over flat kernel views."""
    contract = rules.RULE_SCALARS[rule]
    for stage, (_, k, host) in enumerate(rules.PASSES[rule]):
        key = rules.stage_key(rule, stage)
        if on_cuda:
            from numba import cuda as nbcuda
            out = nbcuda.to_device(np.zeros(k, np.float64), stream=stream)
            blocks, threads = kernel_module("cuda").launch_config(views[0].size)
            kernel_module("twopass_cuda").SUMS[key][blocks, threads, stream](*views, tuple(h), out, c)
            sums = out.copy_to_host(stream=stream)
        else:
            from .engine import CHUNK, parallel_guard
            ptrs = np.array([[v.ctypes.data for v in views]], np.int64)
            work = kernel_module("cpu").make_work(np.array([views[0].size], np.int64), CHUNK)
            out = np.zeros((work.shape[0], k), np.float64)
            serial = views[0].size < SERIAL_BELOW
            with parallel_guard(serial):
                kernel_module("twopass_cpu").SUMS[key + ("_serial" if serial else "")](
                    ptrs, work, np.zeros(1, np.int64), np.array([h], np.float64), c, views[0][:0], out)
            sums = out.sum(axis=0)
        h = tuple(getattr(rules, host)(contract(*h), tuple(sums), tuple(shape)))
    return h


def _cpu_sums(unit, rule, htab, hidx, c, k):
    from .engine import parallel_guard
    work = unit.work
    out = np.zeros((work.shape[0], k), np.float64)
    serial = unit.total < SERIAL_BELOW
    kernel = kernel_module("twopass_cpu").SUMS[rule + "_serial" if serial else rule]
    with parallel_guard(serial):
        kernel(unit.ptrs, work, hidx, htab, c, unit.like, out)
    sums = np.zeros((unit.sizes.size, k), np.float64)
    np.add.at(sums, work[:, 0], out)   # in work-row order: the same sums for any number of threads
    return sums


def _cuda_sums(unit, rule, htab, hidx, c, k):
    from numba import cuda as nbcuda

    from .streams import current_stream
    cuda = kernel_module("cuda")
    kernel = kernel_module("twopass_cuda").SUMS[rule]
    stream = current_stream(unit.objs[0][0])
    out = nbcuda.to_device(np.zeros((len(unit.arrays[0]), k), np.float64), stream=stream)
    rows = htab.tolist()
    for r, p in enumerate(unit.arrays[0]):
        blocks, threads = cuda.launch_config(p.size)
        kernel[blocks, threads, stream](p, unit.arrays[1][r], *[col[r] for col in unit.arrays[2:]],
                                        tuple(rows[int(hidx[r])]), out[r], c)
    return out.copy_to_host(stream=stream)


def global_clip(engine, plans, c):
    """timm Lamb's ``max_grad_norm``: every gradient divided by max(global norm / max_grad_norm, 1), the norm
    over all params of all groups (None: off), folded into the conditioning scale."""
    max_norm = engine.opt.defaults.get(engine.spec.global_clip)
    if max_norm is None:
        return c
    if math.isinf(c[1]) and math.isinf(c[2]):   # scaled only: the norm of the grads times the scale
        norm = math.sqrt(sum(u.sumsq() for plan in plans for u in plan.units)) * c[0]   # (the sum max_grad_norm uses)
    else:   # clip_value too: the norm of the grads as clamped (torch's clip_grad_value_ comes before the step)
        norm = math.sqrt(math.fsum(_clamped_sumsq(g, c) for plan in plans for u in plan.units for g in u.grads()))
    clip = max(norm / max_norm, 1.0)
    return (c[0] / clip, c[1] / clip, c[2] / clip)   # clamp(g s, lo, hi) / clip = clamp(g s / clip, lo / clip, ...)


def _clamped_sumsq(g, c):
    """sum(clamp(g * scale, lo, hi) ** 2) in float64 (the conditioned gradient, as the kernels make it)."""
    from ._arrays import library, to_numpy
    if library(g) == "torch":
        import torch
        x = (g.detach().double() * c[0]).clamp_(c[1], c[2])
        v = torch.dot(x.reshape(-1), x.reshape(-1))
        return float(v.full_tensor() if type(v).__name__ == "DTensor" else v)
    x = np.clip(np.asarray(g if library(g) == "numpy" else to_numpy(g), np.float64) * c[0], c[1], c[2]).reshape(-1)
    return float(x @ x)
