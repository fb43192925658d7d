"""Muon (torch.optim.Muon): momentum, Newton-Schulz orthogonalization of each 2-D update, decoupled decay.

Per matrix and step (the engine validates, creates ``momentum_buffer``, conditions the gradients):

    kernel 1  rules.muon_momentum   buf <- lerp(buf, g, 1 - mu);  u <- lerp(g, buf, mu) (nesterov) or buf
    matmuls   newton_schulz(u)      O = ns_steps quintic iterations on u / ||u||, through the array library:
                                    torch (bfloat16 by default, as torch.optim.Muon; ns_dtype="float32" as an
                                    option), NumPy or CuPy in float32 where torch is not installed
    kernel 2  rules.decay_apply     p <- p (1 - lr wd) - lr_adjusted O

The element work is two fused kernels (momentum and update in one pass, decay and apply in another); the
time goes to the matmuls (docs/PERFORMANCE.md, "New algorithms"). NumPy params run their matmuls through
torch when it is importable (zero-copy ``torch.from_numpy``), so the bfloat16 default holds there too.
"""
import inspect
import math

import numpy as np

from ._arrays import full_like, library
from ._launch import NO_CONDITIONING, run
from .kernels import rules

__all__ = ["MuonSteps", "newton_schulz", "adjusted_lr"]

NS_DTYPES = ("bfloat16", "float32")


def adjusted_lr(lr, adjust_lr_fn, shape):
    """torch's _adjust_lr: lr * sqrt(max(1, A / B)) ("original", None), 0.2 sqrt(max(A, B))
    ("match_rms_adamw") or sqrt(A / B) ("spectral_unclamped")."""
    a, b = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, a / b))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(a, b))
    if adjust_lr_fn == "spectral_unclamped":
        return lr * math.sqrt(a / b)
    return lr


def newton_schulz(u, coefficients, steps, eps, ns_dtype="bfloat16"):
    """torch.optim.Muon's _zeropower_via_newtonschulz on a 2-D torch tensor, in ns_dtype."""
    import torch
    a, b, c = coefficients
    x = u.to(getattr(torch, ns_dtype))
    tall = u.size(0) > u.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _newton_schulz_numpy(u, coefficients, steps, eps, xp):
    """The same iteration in float32 through NumPy or CuPy (no bfloat16 there)."""
    a, b, c = coefficients
    x = u.astype(np.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(float(xp.linalg.norm(x)), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


def _orthogonalize(u, group, ns_dtype):
    """O for one matrix, as an array of u's library and dtype."""
    lib = library(u)
    args = (group["ns_coefficients"], group["ns_steps"], group["eps"])
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and lib in ("torch", "numpy"):
        t = u if lib == "torch" else torch.from_numpy(u)
        o = newton_schulz(t, *args, ns_dtype=ns_dtype)
        # O in u's dtype and memory layout (the apply kernel walks p, u and O in memory order)
        return torch.empty_like(t).copy_(o) if lib == "torch" else torch.empty_like(t).copy_(o).numpy()
    if ns_dtype != "float32":
        raise TypeError(f"ns_dtype={ns_dtype!r} needs torch for {lib} arrays; pass ns_dtype='float32'")
    if lib == "numpy":
        return np.ascontiguousarray(_newton_schulz_numpy(u, *args, np), u.dtype)
    import cupy
    return cupy.ascontiguousarray(_newton_schulz_numpy(cupy.asarray(u), *args, cupy).astype(u.dtype))


class MuonSteps:
    """Mixin (before the optimizer base) for Muon: 2-D params only, the ``ns_dtype`` option."""

    def __init_subclass__(cls, **kwargs):
        """A subclass's help() shows the generated signature of the optimizer class after the mixin, every
        default written out, plus ``ns_dtype`` (not ``(params, *args, ns_dtype, **kwargs)``), and its Update
        and Reference lines."""
        super().__init_subclass__(**kwargs)
        base = super()
        signature = inspect.signature(base.__init__)
        ns_dtype = inspect.Parameter("ns_dtype", inspect.Parameter.KEYWORD_ONLY, default="bfloat16")

        def __init__(self, *args, **kwargs):
            MuonSteps.__init__(self, *args, **kwargs)
        __init__.__signature__ = signature.replace(parameters=[*signature.parameters.values(), ns_dtype])
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__
        generated = (base.__doc__ or "").partition("\n\n")[2]   # the base's doc after its summary line
        if generated:
            cls.__doc__ = f"{cls.__doc__ or ''}\n\n{generated}"

    def __init__(self, params, *args, ns_dtype="bfloat16", **kwargs):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype: expected one of {NS_DTYPES}, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype
        super().__init__(params, *args, **kwargs)
        for k, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if len(p.shape) != 2:
                    raise ValueError(f"param_groups[{k}]['params'][{j}]: Muon updates 2-D params only (as "
                                     f"torch.optim.Muon), got shape {tuple(p.shape)}")


def launch(engine, plan, unit, c):
    """The engine's per-unit launch for Muon: per matrix, momentum kernel, Newton-Schulz, apply kernel."""
    from ._arrays import Buffer
    from .streams import current_stream
    opt, group, front = engine.opt, plan.hp, engine.front
    steps = [t + 1 for t in front.steps(unit.pstates, unit.front_cache)]   # (NumPy API: a count per param)
    front.set_steps(unit.pstates, steps, unit.front_cache)
    scratch = opt.__dict__.setdefault("_muon_scratch", {})
    h = rules.muon_scalars(group["lr"], group["weight_decay"], group["momentum"], group["nesterov"])
    for r in range(len(unit.pstates)):
        p, g, buf = unit.given[0][r], unit.given[1][r], unit.given[2][r]
        u = scratch.get(id(p))
        if u is None or tuple(u.shape) != tuple(p.shape) or library(u) != library(p) or u.dtype != p.dtype:
            u = scratch[id(p)] = full_like(p, 0.0)
        bp, bg, bb, bu = (Buffer(n, x, writeable=n != "grad") for n, x in
                          (("param", p), ("grad", g), ("buf", buf), ("u", u)))
        on_cuda = bp.on_cuda
        stream = current_stream(p) if on_cuda else 0
        run("muon_momentum", bp.kernel_view(), bg.kernel_view(), [bb.kernel_view(), bu.kernel_view()], h, c,
            on_cuda, stream)
        o = _orthogonalize(u, group, getattr(opt, "ns_dtype", "bfloat16"))
        ho = rules.DecayApplyScalars(h.decay, adjusted_lr(group["lr"], group["adjust_lr_fn"], tuple(p.shape)))
        run("decay_apply", bp.kernel_view(), Buffer("O", o, writeable=False).kernel_view(), [], ho,
            NO_CONDITIONING, on_cuda, stream)
