"""Stateless in-place updates, one per algorithm: ``adam_(param, grad, exp_avg, exp_avg_sq, step=t, lr=...)``.

Each function is its algorithm's single-array step with the state passed in (made from the
same ``fastlr.specs`` entry as the optimizer classes): the state arrays follow torch's state
names in the order the optimizer keeps them (e.g. Adam: exp_avg, exp_avg_sq, then
max_exp_avg_sq when amsgrad=True), ``step`` is the 1-based count including this update,
hyperparameters are keywords with the class's defaults. Everything is validated before any
array changes. Returns the param's scalar state after the update (``{"step": t}``, plus
``mu_product`` for NAdam, which must be passed back in on the next call). The schedule-free
updates take and return their per-group schedule the same way (``k``, ``weight_sum``, ``lr_max``,
``scheduled_lr``: pass back what the previous call returned); Adan's group step is ``step``.
Lamb's ``max_grad_norm`` clips by the norm of ``grad`` alone, or by ``grad_norm=`` when given (the
global norm over every gradient of the step, as the optimizer computes it). ``muon_`` and ``adafactor_``
(whose steps are not one element rule) run one step of their optimizer over the caller's arrays.

``state_precision="bf16"``: each state a bfloat16 tensor (or uint16 bits) of the param's shape;
``"8bit"``/``"4bit"``: each state a pair ``(codes, absmax)`` (uint8 and float32, the layout of
``fastlr.state_precision``, or the ``fastlr.lowbit.Quantized`` that ``fastlr.lowbit.new_states`` and
``fastlr.lowbit.quantize`` make). ``new_states`` makes states that start at zero; where the optimizer starts
a state elsewhere (Rprop's step_size: lr), quantize those starting values instead.
"""
import math
import re

from . import specs as _specs
from ._arrays import Buffer, check_disjoint, same_kind
from ._launch import run
from .engine import NO_CONDITIONING, _overflow_safe_norm, bind, plan_scalars
from .streams import current_stream
from .twopass import TWO_PASS, flat_first_pass

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adadelta_", "adam_", "adamw_", "adamax_", "nadam_", "radam_",
           "lion_", "asgd_", "rprop_", "adopt_", "adan_", "sgdschedulefree_", "adamwschedulefree_",
           "radamschedulefree_", "lamb_", "lars_", "mars_", "muon_", "adafactor_"]


def _advance_group(spec, group, step, given):
    """The group with this call's per-group schedule values (as the optimizer's step advances them)."""
    group = {**group, **spec.group_defaults(group)}
    for n in spec.group_state:
        if n == "step":
            group[n] = step - 1
        elif n in given:
            group[n] = given[n]
    _specs.check_group(spec, group, spec.name.lower() + "_")
    for name, fn in spec.group_updates.items():
        group[name] = bind(fn, spec, group, {})
    return {**group, **{"group_" + n: group[n] for n in spec.group_state}}


def _check_step(name, step):
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= _specs.MAX_STEP:
        raise ValueError(f"{name}: step: expected the 1-based step count (an int in [1, 2**53]), got "
                         f"{_specs._shown(step)}")


def _global_clip(spec, group, grad, grad_norm, name):
    """The conditioning of timm Lamb's clip by the global gradient norm (grad's own unless grad_norm is given)."""
    max_norm = group.get(spec.global_clip) if spec.global_clip else None
    if max_norm is None:
        if grad_norm is not None:
            raise ValueError(f"{name}: grad_norm is only used with {spec.global_clip} set")
        return tuple(map(float, NO_CONDITIONING))
    if grad_norm is None:
        grad_norm = _overflow_safe_norm([(grad, None)])
    else:
        try:   # a number: Python, NumPy or a one-element tensor (not a bool, not a string)
            grad_norm = float(grad_norm) if hasattr(type(grad_norm), "__float__") and \
                not isinstance(grad_norm, bool) else math.nan
        except (TypeError, ValueError, RuntimeError):
            grad_norm = math.nan
        if not grad_norm >= 0:
            raise ValueError(f"{name}: grad_norm: expected a number >= 0 (the global gradient norm)")
    return 1.0 / max(grad_norm / max_norm, 1.0), -math.inf, math.inf


def _functional(spec):
    """The in-place update function of one spec."""
    name = spec.name.lower() + "_"

    def update_(param, grad, *states, step, state_precision="fp32", **hyperparameters):
        grad_norm = hyperparameters.pop("grad_norm", None) if spec.global_clip else None
        unknown = set(hyperparameters) - set(spec.defaults) - set(spec.scalar_state) - set(spec.group_state)
        if unknown:
            raise TypeError(f"{name}: unexpected keyword argument(s) {sorted(unknown)}")
        group = {**spec.constants, **spec.defaults,
                 **{k: v for k, v in hyperparameters.items() if k in spec.defaults}}
        _specs.check_group(spec, group, name)
        if callable(group["lr"]):
            raise TypeError(f"{name}: lr must be a number here (evaluate the schedule first)")
        _check_step(name, step)
        names = [n for n, _ in spec.states(group)]
        if len(states) != len(names):
            raise TypeError(f"{name}: expected state arrays ({', '.join(names)}) for these options, "
                            f"got {len(states)}")
        pbuf = Buffer("param", param)
        gbuf = Buffer("grad", grad, writeable=False)
        same_kind("grad", gbuf, pbuf, "param")
        scalar_state = {}
        for k, v in spec.scalar_state.items():
            scalar_state[k] = _specs._number(f"{name}: {k}", hyperparameters.get(k, v))
        pstate = {"step": step, **scalar_state}
        if spec.group_state:
            group = _advance_group(spec, group, step, hyperparameters)
        if state_precision != "fp32":   # states held in low precision (fastlr.state_precision)
            from .lowbit_unit import functional_update
            functional_update(spec, group, pstate, pbuf, gbuf, names, states, state_precision)
            return {**pstate, **{n: group[n] for n in spec.group_state if n != "step"}}
        sbufs = [Buffer(n, s) for n, s in zip(names, states)]
        for n, b in zip(names, sbufs):
            same_kind(n, b, pbuf, "param")
        check_disjoint([("param", param), *zip(names, states)], [("grad", grad)])
        c = _global_clip(spec, group, grad, grad_norm, name)
        rule, h = plan_scalars(spec, group, pstate)
        views = [pbuf.kernel_view(), gbuf.kernel_view(), *[b.kernel_view() for b in sbufs]]
        stream = current_stream(pbuf.obj) if pbuf.on_cuda else 0
        if rule in TWO_PASS:   # a per-tensor first pass (trust ratios, Mars' clip, caution's mask mean)
            h = flat_first_pass(rule, views, h, c, pbuf.on_cuda, stream, pbuf.shape)
        run(rule, views[0], views[1], views[2:], h, c, pbuf.on_cuda, stream)
        return {**pstate, **{n: group[n] for n in spec.group_state if n != "step"}}

    states_doc = ", ".join(n for n, _ in spec.states({**spec.constants, **spec.defaults}))
    extra_doc = ", grad_norm=None" if spec.global_clip else ""
    update_.__name__ = update_.__qualname__ = name
    update_.__doc__ = (f"In-place {spec.name} update of one array: {spec.summary}\n\n"
                       f"    {name}(param, grad, {states_doc}{', ' if states_doc else ''}*, step, "
                       f"{spec.signature_text().replace('*, ', '')}{extra_doc})\n\n"
                       f"    Update: {spec.math}\n    Reference: {spec.reference}. See fastlr.{spec.name}.\n")
    return update_


class _Names(dict):
    """The optimizer's names of a call's param and grad -> the functional's; a state's quoted name -> itself."""

    def __missing__(self, key):
        return key.strip("'")


_OPTIMIZER_NAMES = re.compile(r"(param_groups\[0\]\['params'\]\[0\]|params\[0\]|grads\[0\])|state\[0\]\[('\w+')\]")
_FUNCTIONAL_NAMES = _Names({"param_groups[0]['params'][0]": "param", "params[0]": "param", "grads[0]": "grad"})


def _via_optimizer(spec):
    """The in-place update of an algorithm whose step is not one element rule (Muon's Newton-Schulz, Adafactor's
    factored moments): one step of its optimizer over this one param, holding the caller's state arrays, which
    the step reads and updates in place (a rejected call changes nothing, as the optimizer's)."""
    name = spec.name.lower() + "_"

    def update_(param, grad, *states, step, **hyperparameters):
        from . import optim
        _check_step(name, step)
        try:
            opt = getattr(optim, spec.name)([param], **hyperparameters)
            group = opt.param_groups[0]
            names = [n for n, _ in spec.states(group)]
            if spec.aux_states is not None:
                names += [n for n, _ in spec.aux_states(tuple(getattr(param, "shape", ())))]
            if len(states) != len(names):
                raise TypeError(f"{name}: expected state arrays ({', '.join(names)}) for these options and this "
                                f"param's shape, got {len(states)}")
            opt.state[0] = {**dict(zip(names, states)), "step": step - 1}
            opt.step(grad)
        except (ValueError, TypeError) as e:   # named as this function's arguments, not the optimizer's
            raise type(e)(_OPTIMIZER_NAMES.sub(lambda m: _FUNCTIONAL_NAMES[m.group(1) or m.group(2)],
                                               str(e))) from None
        return {"step": step}

    update_.__name__ = update_.__qualname__ = name
    states_doc = ("its factored statistics: row_var and col_var of >= 2-D params, variance of 1-D ones"
                  if spec.aux_states else ", ".join(n for n, _ in spec.states({**spec.constants, **spec.defaults})))
    update_.__doc__ = (f"In-place {spec.name} update of one array: {spec.summary}\n\n"
                       f"    {name}(param, grad, *states, step, {spec.signature_text().replace('*, ', '')})\n\n"
                       f"    states: {states_doc}, shaped as fastlr.{spec.name} makes them; step: the 1-based count "
                       f"including this update.\n"
                       f"    Update: {spec.math}\n    Reference: {spec.reference}. See fastlr.{spec.name}.\n")
    return update_


sgd_ = _functional(_specs.SGD)
adagrad_ = _functional(_specs.Adagrad)
rmsprop_ = _functional(_specs.RMSprop)
adadelta_ = _functional(_specs.Adadelta)
adam_ = _functional(_specs.Adam)
adamw_ = _functional(_specs.AdamW)
adamax_ = _functional(_specs.Adamax)
nadam_ = _functional(_specs.NAdam)
radam_ = _functional(_specs.RAdam)
lion_ = _functional(_specs.Lion)
asgd_ = _functional(_specs.ASGD)
rprop_ = _functional(_specs.Rprop)
adopt_ = _functional(_specs.Adopt)
adan_ = _functional(_specs.Adan)
sgdschedulefree_ = _functional(_specs.SGDScheduleFree)
adamwschedulefree_ = _functional(_specs.AdamWScheduleFree)
radamschedulefree_ = _functional(_specs.RAdamScheduleFree)
lamb_ = _functional(_specs.Lamb)
lars_ = _functional(_specs.Lars)
mars_ = _functional(_specs.Mars)
muon_ = _via_optimizer(_specs.Muon)
adafactor_ = _via_optimizer(_specs.Adafactor)
