"""Stateless in-place updates, one per algorithm: ``adam_(param, grad, exp_avg, exp_avg_sq, step=t, lr=...)``.

Each function is the matching optimizer class's single-array step with the state
passed in: the state arrays follow torch's state names in the order the class keeps
them (e.g. Adam: exp_avg, exp_avg_sq, then max_exp_avg_sq when amsgrad=True), ``step``
is the 1-based count including this update, hyperparameters are keywords with the
class's defaults. Everything is validated before any array changes. Returns the
param's scalar state after the update (``{"step": t}``, plus ``mu_product`` for NAdam,
which must be passed back in on the next call).
"""
import inspect

from . import optim
from ._arrays import Buffer, same_kind
from ._launch import NO_CONDITIONING, run
from .streams import current_stream

__all__ = []


def _make(cls):
    def update_(param, grad, *states, step, **hyperparameters):
        unknown = set(hyperparameters) - set(defaults) - set(cls.scalar_state)
        if unknown:
            raise TypeError(f"{name}: unexpected keyword argument(s) {sorted(unknown)}")
        group = {**defaults, **{k: v for k, v in hyperparameters.items() if k in defaults}}
        cls._check_group(group, name)
        if callable(group["lr"]):
            raise TypeError(f"{name}: lr must be a number here (evaluate the schedule first)")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"{name}: step: expected the 1-based step count (an int >= 1), got {step!r}")
        names = [n for n, _ in cls._state_names(group)]
        if len(states) != len(names):
            raise TypeError(f"{name}: expected state arrays ({', '.join(names)}) for these options, "
                            f"got {len(states)}")
        pbuf = Buffer("param", param)
        gbuf = Buffer("grad", grad, writeable=False)
        same_kind("grad", gbuf, pbuf, "param")
        sbufs = [Buffer(n, s) for n, s in zip(names, states)]
        for n, b in zip(names, sbufs):
            same_kind(n, b, pbuf, "param")
        pstate = {"step": step, **{k: hyperparameters.get(k, v) for k, v in cls.scalar_state.items()}}
        rule, h = cls._plan(group, pstate)
        run(rule, pbuf.kernel_view(), gbuf.kernel_view(), [b.kernel_view() for b in sbufs],
            h, NO_CONDITIONING, pbuf.on_cuda,
            current_stream(pbuf.obj) if pbuf.on_cuda else 0)
        return pstate

    name = cls.__name__.lower() + "_"
    defaults = dict(inspect.signature(cls.__init__).parameters)
    defaults = {k: p.default for k, p in defaults.items()
                if k not in ("self", "params") and p.kind is not p.VAR_KEYWORD}
    update_.__name__ = update_.__qualname__ = name
    update_.__doc__ = (f"In-place {cls.__name__} update of one array (see fastlr.{cls.__name__}).\n\n"
                       f"Defaults: {defaults}.\n\n{cls.__doc__}")
    return update_


for _cls in (optim.SGD, optim.Adagrad, optim.RMSprop, optim.Adadelta, optim.Adam, optim.AdamW,
             optim.Adamax, optim.NAdam, optim.RAdam, optim.Lion):
    _fn = _make(_cls)
    globals()[_fn.__name__] = _fn
    __all__.append(_fn.__name__)
