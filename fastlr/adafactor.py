"""Adafactor (torch.optim.Adafactor): factored second moments, row and column means of g^2 per matrix.

Its states are not shaped like the param (``row_var``: the param's shape with the last dim 1,
``col_var``: with the next-to-last dim 1; ``variance`` for vectors), so they are kept beside the
engine's element states (``aux_states``) and made, checked and loaded here. Per tensor and step:

    host, array library   alpha = max(eps2, RMS(p)) min(lr, 1/sqrt(t)); the row/column means of g^2 and
                          their EMAs; V = row_var col_var / mean(row_var) (or the vector's EMA);
                          u = g / sqrt(max(V, eps1^2)); denom = max(1, RMS(u) / d)
    kernel                rules.decay_apply: p <- p (1 - lr wd) - alpha / denom * u   (decay and apply fused)

The reductions and the outer product run as torch ops (torch.optim.Adafactor's own, term for term;
NumPy arrays are wrapped zero-copy with ``torch.from_numpy``, so torch must be installed to use it).
"""
from ._arrays import full_like, library
from ._launch import NO_CONDITIONING, run
from .kernels import rules

__all__ = ["aux_states", "launch"]


def aux_states(shape):
    """((name, shape), ...) of a param's factored states, as torch.optim.Adafactor makes them."""
    shape = tuple(shape)
    if len(shape) > 1:
        return (("row_var", shape[:-1] + (1,)), ("col_var", shape[:-2] + (1,) + shape[-1:]))
    return (("variance", shape),)


def _torch(x):
    import torch
    if library(x) == "torch":
        return x.detach()
    if library(x) == "numpy":
        return torch.from_numpy(x)
    return torch.as_tensor(x, device="cuda")


def _zeros_like(p, shape):
    return p.detach().new_zeros(shape) if library(p) == "torch" else full_like(p, 0.0, shape)


def check_states(unit):
    """Make missing factored states, and check existing ones (shape, dtype, device), before any update."""
    for r, pstate in enumerate(unit.pstates):
        p = unit.given[0][r]
        for name, shape in aux_states(p.shape):
            x = pstate.get(name)
            if x is None:
                pstate[name] = _zeros_like(p, shape)
                continue
            if library(x) != library(p) or tuple(x.shape) != shape or str(x.dtype) != str(p.dtype) or \
                    str(getattr(x, "device", "cpu")) != str(getattr(p, "device", "cpu")):
                raise ValueError(f"{unit.column_name(r, 0)}: state {name!r} must be a {p.dtype} array of shape "
                                 f"{shape} beside its param, got {getattr(x, 'dtype', type(x).__name__)} "
                                 f"{tuple(getattr(x, 'shape', ()))}")


def launch(engine, plan, unit, c):
    """The engine's per-unit launch for Adafactor (see the module docstring)."""
    import torch

    from ._arrays import Buffer
    from .streams import current_stream
    group, front = plan.hp, engine.front   # (check_states ran on every unit before any launch)
    steps = [t + 1 for t in front.steps(unit.pstates, unit.front_cache)]
    front.set_steps(unit.pstates, steps, unit.front_cache)
    lr, wd, d = group["lr"], group["weight_decay"], group["d"]
    beta2_decay, (eps1, eps2) = group["beta2_decay"], group["eps"]
    scale, lo, hi = c
    with torch.no_grad():
        for r, pstate in enumerate(unit.pstates):
            p, g = _torch(unit.given[0][r]), _torch(unit.given[1][r])
            if (scale, lo, hi) != tuple(map(float, NO_CONDITIONING)):
                g = (g * scale).clamp(lo, hi)
            if group["maximize"]:
                g = -g
            e1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
            t = float(steps[r])
            one_minus_beta2_t = t ** beta2_decay
            alpha = max(eps2, p.norm(2).item() / (p.numel() ** 0.5)) * min(lr, 1 / (t ** 0.5))
            if g.dim() > 1:
                row_var, col_var = _torch(pstate["row_var"]), _torch(pstate["col_var"])
                row_var.lerp_(torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1)), one_minus_beta2_t)
                col_var.lerp_(torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2)), one_minus_beta2_t)
                var = row_var @ col_var
                var.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=e1))
            else:
                variance = _torch(pstate["variance"])
                variance.lerp_(g * g, one_minus_beta2_t)
                var = variance.clone()
            update = var.clamp_(min=e1 * e1).rsqrt_().mul_(g)
            denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))
            if not update.is_contiguous() or update.stride() != p.stride():
                update = torch.empty_like(p).copy_(update)   # the kernel walks p and u in p's memory order
            h = rules.DecayApplyScalars(1.0 - lr * wd if wd != 0 else 1.0, alpha / denom)
            bp = Buffer("param", unit.given[0][r])
            stream = current_stream(unit.given[0][r]) if bp.on_cuda else 0
            u = update.numpy() if update.device.type == "cpu" and library(unit.given[0][r]) == "numpy" else update
            run("decay_apply", bp.kernel_view(), Buffer("update", u, writeable=False).kernel_view(), [], h,
                NO_CONDITIONING, bp.on_cuda, stream)

