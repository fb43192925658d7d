"""train() / eval() for the schedule-free optimizers (Defazio et al. 2024, the ``schedulefree`` package).

A schedule-free optimizer takes gradients at y (what the param holds while training) and keeps
the base sequence z in ``state[p]["z"]``; the average x, what should be evaluated, is never
stored: ``eval()`` moves every param to x = lerp(y, z, 1 - 1/beta) and ``train()`` back to
y = lerp(x, z, 1 - beta) (beta: ``betas[0]``, or ``momentum`` for SGD), one fused kernel pass
over p and z per param (the ``schedulefree_lerp`` rule), exactly as the package's ``p.lerp_``.
Each group records its mode in ``group["train_mode"]``; ``step()`` refuses to run in eval mode.

Checkpoints: take them in eval mode, as the package requires (the params then hold x, which is
what a model should be saved with; ``train()`` after loading gives y back). State dicts cross-load
with the package's: the per-group k, weight_sum, lr_max, scheduled_lr and train_mode are kept in
param_groups as it keeps them, ``z`` (and ``exp_avg_sq``) in the per-param state.
"""
from ._arrays import Buffer, library
from ._launch import NO_CONDITIONING, run

__all__ = ["ScheduleFree"]


class ScheduleFree:
    """Mixin (before the optimizer base) adding train(), eval() and the train-mode check of step()."""

    def train(self):
        """Move params to y (where gradients are taken); a no-op for groups already in train mode."""
        _switch(self, True)

    def eval(self):
        """Move params to the average x (what to evaluate and checkpoint)."""
        _switch(self, False)

    def step(self, *args, **kwargs):
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(f"{type(self).__name__}: step() called in eval mode; call opt.train() before "
                               f"training steps and opt.eval() before evaluating or saving (as schedulefree)")
        return super().step(*args, **kwargs)


def _beta(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


def _switch(opt, to_train):
    front = opt._engine.front
    with opt._engine.lock:
        for k, group in enumerate(opt.param_groups):
            if bool(group["train_mode"]) == to_train:
                continue
            beta = _beta(group)
            weight = 1 - beta if to_train else 1 - 1 / beta
            for j, p in enumerate(group["params"]):
                st = opt.state.get(front.state_key(opt._first_index(k) + j, p))
                if st and "z" in st:
                    lerp_(opt, p, st, weight)
            group["train_mode"] = to_train


def lerp_(opt, p, st, weight):
    """p <- lerp(p, z, weight) in one kernel pass; 16-bit torch params through their master copy (or with
    stochastic rounding), as every other update of fastlr.torch."""
    z = st["z"]
    if library(p) == "torch" and str(p.dtype) in ("torch.bfloat16", "torch.float16"):
        _lerp_half(opt, p, st, z, weight)
        return
    pbuf = Buffer("param", p)
    zbuf = Buffer("state['z']", z)
    view = pbuf.kernel_view()
    stream = 0
    if pbuf.on_cuda:
        from .streams import current_stream
        stream = current_stream(p)
    run("schedulefree_lerp", view, view, [zbuf.kernel_view()], (weight,), NO_CONDITIONING, pbuf.on_cuda, stream)


def _lerp_half(opt, p, st, z, weight):
    from . import mixed
    master = st.get("master_param")
    on_cuda = p.device.type == "cuda"
    stream = 0
    if on_cuda:
        from .streams import current_stream
        stream = current_stream(p)
    fmt = mixed._FORMATS[str(p.dtype).removeprefix("torch.")]
    key = 0 if master is not None else mixed.seed_mix(opt.seed, 0, 0, 0x5F)
    bits = mixed._bits(p, True)
    mixed.run("schedulefree_lerp", fmt, bits, bits, None if master is None else mixed._bits(master, False),
              [mixed._bits(z, False)], (weight,), NO_CONDITIONING, key, on_cuda, stream)
