"""``state_precision=``: the options every optimizer takes for holding its states in low precision.

    opt = fastlr.AdamW(params, lr=1e-3, state_precision="8bit")          # NumPy API
    opt = fastlr.torch.AdamW(model.parameters(), state_precision="8bit")  # torch

* ``state_precision``: "fp32" (default: states in the params' dtype, float32 for 16-bit params),
  "bf16" (bfloat16 states, computed in float32, rounded to nearest even), "8bit" or "4bit"
  (block-wise quantized as bitsandbytes/torchao: one float32 absmax per block of 256 or 128
  elements, dynamic maps; see kernels/quant.py).
* ``state_min_size``: params with fewer elements keep fp32 states (default 4096, as
  bitsandbytes' ``min_8bit_size``).
* ``state_stochastic_rounding``: bf16 states rounded stochastically instead of to nearest even
  (deterministic given the optimizer's ``seed``, 0 in the NumPy API).

How such states are held in ``opt.state`` (ordinary arrays or tensors, so ``torch.save`` and
``torch.load(weights_only=True)`` work): bf16 under torch's state names, as bfloat16 tensors (torch)
or their bits as uint16 arrays of the param's shape (NumPy, CuPy, numba); 8-bit and 4-bit as two
arrays per state: ``state["exp_avg"]``, the uint8 codes, flat, in the param's memory order (one per
element at 8 bits; two per byte at 4 bits, the earlier element in the high nibble), and
``state["exp_avg_absmax"]``, float32, one per block. ``opt.state_dict(dequantize=True)`` gives
the states as floats in torch's layout; ``load_state_dict`` takes states of any precision and
converts them to this optimizer's. The update itself is ``fastlr.lowbit_unit``'s.

Which algorithms have low-precision states: those whose states are all per-element moments, updated by
one element rule (``kernels.quant.STATEFUL_RULES``): torch.optim's classic ten, Lion, Adopt, Adan (bf16 and
8-bit) and Rprop (bf16 and 8-bit). ``unavailable`` says why the others keep fp32 states (the README and
docs/PERFORMANCE.md, "Low-precision states of the algorithms of issue 14", give the measurements).

This module only checks and stores the options (importing it compiles and builds nothing);
the low-precision machinery is imported when an optimizer asks for it.
"""
__all__ = ["OPTIONS", "PRECISIONS", "configure", "dequantized", "load_param_state", "restore", "unavailable"]

PRECISIONS = ("fp32", "bf16", "8bit", "4bit")   # kernels/quant.py's (tests check they agree)
OPTIONS = dict(state_precision="fp32", state_min_size=4096, state_stochastic_rounding=False)


def configure(opt, state_precision="fp32", state_min_size=4096, state_stochastic_rounding=False):
    """Check the options and set them on the optimizer (before its params are added)."""
    if state_precision not in PRECISIONS:
        raise ValueError(f"state_precision: expected one of {PRECISIONS}, got {state_precision!r}")
    if isinstance(state_min_size, bool) or not isinstance(state_min_size, int) or state_min_size < 0:
        raise ValueError(f"state_min_size: expected an int >= 0, got {state_min_size!r}")
    if not isinstance(state_stochastic_rounding, bool):
        raise TypeError(f"state_stochastic_rounding: expected True or False, got {state_stochastic_rounding!r}")
    if state_stochastic_rounding and state_precision != "bf16":
        raise ValueError(f"state_stochastic_rounding: for state_precision='bf16' only, got {state_precision!r}")
    if state_precision != "fp32":
        spec = type(opt).spec
        # (with the constructor's hyperparameters where they are set already: caution=True, momentum, ...)
        defaults = getattr(opt, "defaults", None)
        defaults = defaults if isinstance(defaults, dict) else None
        reason = spec is not None and unavailable(spec, state_precision, defaults)
        if reason:
            raise ValueError(f"state_precision={state_precision!r}: not available for {spec.name}: {reason}; use "
                             f"{_offered(spec)}")
        if getattr(opt, "capturable", False):
            raise ValueError("state_precision: capturable=True steps keep fp32 states (the low-precision kernels "
                             "take their per-step scalars from the host)")
        if getattr(opt, "stochastic_rounding", False):
            raise ValueError("state_precision: not with stochastic_rounding=True of 16-bit params; use "
                             "master_weights=True")
        from . import lowbit_unit  # noqa: F401  (registers the unit that updates such params)
    opt.state_precision = state_precision
    opt.state_min_size = state_min_size
    opt.state_stochastic_rounding = state_stochastic_rounding


def restore(opt):
    """After unpickling (a new process may not have imported the low-precision unit yet)."""
    configure(opt, **{name: getattr(opt, name, default) for name, default in OPTIONS.items()})


def load_param_state(opt, param, saved, hp, check):
    """One param's state for load_state_dict: ``check(saved)`` (the front's checks of float states, returning
    the new state) run on the saved states as floats (low-bit codes and bf16 states converted), the result
    held in this optimizer's state precision (hp: the param's group's hyperparameters)."""
    names = [n for n, _ in opt.spec.states(hp)]
    if getattr(opt, "state_precision", "fp32") == "fp32" and not any(f"{n}_absmax" in saved for n in names) \
            and not any(str(getattr(saved.get(n), "dtype", "")) in _BITS for n in names):
        return check(saved)
    from . import lowbit_states
    checked = check(lowbit_states.as_float(param, saved, opt.spec, hp, precision=opt.state_precision))
    return lowbit_states.to_precision(opt, param, checked, opt.spec, hp, saved)


def dequantized(opt, state, params, hp_of, on_device=False):
    """state_dict(dequantize=True): ``state`` (index -> param state) with float states in torch's layout;
    params[i] is the param of index i, hp_of(i) its group's hyperparameters. on_device: on the param's device
    (else on the host)."""
    from . import lowbit_states
    return {i: lowbit_states.as_float(params[i], st, opt.spec, hp_of(i), on_device=on_device)
            if isinstance(st, dict) else st for i, st in state.items()}


_BITS = ("uint16", "torch.bfloat16")

# ---------------------------------------------------------------- where low-precision states are refused
# States that are not moments but copies or averages of the params (by torch's state name): block-wise codes
# would hold them at a fraction of the params' own precision.
PARAM_LIKE = {"ax": "the running average of the params", "z": "schedule-free's z sequence, a copy of the params"}

# Precisions refused for one algorithm although its states are moments: measured not to train (tests/
# test_lowbit_algorithms.py shows the mechanism; docs/PERFORMANCE.md the numbers).
PRECISION_LIMITS = {
    ("Rprop", "4bit"): "the 4-bit map of unsigned states is linear without zero, so a step size cannot fall below 1/16 "
                       "of its block's largest, and x0.5 or x1.2 on a small code rounds back to it, while Rprop's "
                       "step sizes span decades (step_sizes=(1e-6, 50)); a 4-bit prev also loses the sign of small "
                       "gradients (measured: least squares converges, then diverges)",
    ("Adan", "4bit"): "with its betas[0]=0.98 the first moment moves by 2% of the gradient per step, below half a gap "
                      "of the 4-bit signed map over most of its range, so it stops following the gradient (measured: "
                      "27x fp32's loss on a noisy quadratic, 4 points less test accuracy on the digits MLP; AdamW "
                      "with betas[0]=0.98 at 4 bits fails the same way)",
}


def unavailable(spec, precision, group=None):
    """Why ``spec`` (with the hyperparameters ``group``, else its defaults) cannot hold its states in
    ``precision`` ("bf16", "8bit" or "4bit"), or "" when it can."""
    from .kernels import quant, rules
    from .specs import COPY_OF_PARAM
    if spec.aux_states is not None:
        return "its second moments are factored (row and column means of a matrix), not per element"
    if spec.launch is not None:
        return "its step is not one element rule (a matrix step: Newton-Schulz over the momentum)"
    group = {**spec.constants, **spec.defaults, **spec.group_defaults(spec.defaults), **(group or {})}
    rule = spec.rule(group)
    if spec.global_clip or rule in rules.TWO_PASS:
        what = "caution=True's mask mean" if rule.endswith("_cautious") else \
            "a per-tensor trust ratio or clip"
        return (f"its step needs a first pass over every tensor ({what}) that reads the states in fp32 (per-tensor "
                f"first passes have no low-precision kernels)")
    for name, init in spec.states(group):
        if name in PARAM_LIKE or init == COPY_OF_PARAM:
            return (f"its state {name!r} is {PARAM_LIKE.get(name, 'a copy of the params')}, not a moment: it keeps "
                    f"the params' precision")
    if spec.states(group) and rule not in quant.STATEFUL_RULES:
        return f"rules.{rule} has no low-precision kernels"
    return PRECISION_LIMITS.get((spec.name, precision), "")


def _offered(spec):
    """The precisions one may use instead, as text."""
    ok = [p for p in PRECISIONS if p == "fp32" or not unavailable(spec, p)]
    return " or ".join(f"state_precision={p!r}" for p in ok)
