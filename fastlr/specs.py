"""One entry per algorithm: everything fastlr knows about it besides its formulas.

A ``Spec`` names the algorithm's hyperparameters and defaults (torch.optim's, in torch's
order), the per-param states it keeps, which element rule of ``kernels/rules.py`` runs for a
group's options, which host rule computes its per-step scalars, and how a group is checked.
The NumPy classes (``fastlr.optim``), the torch classes (``fastlr.torch``), the functional
updates (``fastlr.functional``) and the test case lists are all derived from these entries.

Adding an algorithm: its element rule(s), scalars contract and host rule in rules.py, a
``Spec`` here (added to ``SPECS``), a float64 reference in tests/reference.py, and a
two-line class in fastlr/optim.py and fastlr/torch.py. See docs/DESIGN.md.
"""
import itertools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

from ._arrays import library

__all__ = ["Spec", "SPECS", "check_group", "step_count"]


# ---------------------------------------------------------------- hyperparameter checks
def _shown(value):
    """repr(value) for a message, cut short (a 400-digit int names the problem in its first digits)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _number(name, value):
    """A real number as float; rejects bools, NaN, arrays of several values and numbers too large for a float."""
    if library(value) is not None or hasattr(value, "__array__"):
        numel = getattr(value, "numel", None)   # torch: size() is the shape, numel() the count
        size = numel() if callable(numel) else getattr(value, "size", None)
        if size != 1:
            raise ValueError(f"{name}: expected a real number, got an array of shape {tuple(value.shape)}")
        try:
            value = value.item() if hasattr(value, "item") else value
        except (RuntimeError, TypeError, ValueError):   # e.g. a torch tensor on the meta device
            raise ValueError(f"{name}: expected a real number, got {_shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a real number, got {_shown(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected a real number representable as a float, got {_shown(value)}") from None
    if math.isnan(value):
        raise ValueError(f"{name}: expected a real number, got nan")
    return value


# Step counts are used in float64 host arithmetic: whole numbers are exact up to 2**53.
MAX_STEP = 2**53


def step_count(name, value):
    """A step count as an int: a whole number in [0, 2**53] (int, integral float, one-element array)."""
    try:
        f = _number(name, value)
    except ValueError:
        f = math.nan
    if not 0 <= f <= MAX_STEP or f != int(f):
        raise ValueError(f"{name}: expected a step count (a whole number in [0, 2**53]), got {_shown(value)}")
    return int(f)


def non_negative(name, value):
    x = _number(name, value)
    if x < 0 or math.isinf(x):
        raise ValueError(f"{name}: expected a finite value >= 0, got {_shown(value)}")


def positive(name, value):
    x = _number(name, value)
    if x <= 0 or math.isinf(x):
        raise ValueError(f"{name}: expected a finite value > 0, got {_shown(value)}")


def unit_interval(name, value):
    if not 0.0 <= _number(name, value) <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {_shown(value)}")


def finite(name, value):
    if math.isinf(_number(name, value)):
        raise ValueError(f"{name}: expected a finite value, got {_shown(value)}")


def betas(name, value):
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name}: expected a pair (beta1, beta2), got {_shown(value)}")
    for i, b in enumerate(value):
        if not 0.0 <= _number(f"{name}[{i}]", b) < 1.0:
            raise ValueError(f"{name}[{i}]: expected a value in [0, 1), got {_shown(b)}")


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {_shown(value)}")


def learning_rate(name, value):
    """A float >= 0, a schedule ``lr(step)``, or a one-element device array (capturable steps)."""
    if callable(value):
        return
    if library(value) in ("torch", "cupy", "numba", "cuda") and _on_device(value):
        return  # checked where it is used (fastlr.capturable)
    non_negative(name, value)


def _on_device(x):
    """A CUDA array (a torch tensor on another device, e.g. "meta", is not one)."""
    lib = library(x)
    if lib == "torch":
        return x.device.type == "cuda"
    return lib in ("cupy", "numba", "cuda")


# One check per hyperparameter name, shared by every algorithm that has it.
CHECKS = {
    "lr": learning_rate, "eps": positive, "betas": betas, "weight_decay": non_negative,
    "momentum": non_negative, "dampening": finite, "alpha": non_negative, "rho": unit_interval,
    "lr_decay": non_negative, "initial_accumulator_value": non_negative,
    "momentum_decay": non_negative, "nesterov": flag, "maximize": flag, "amsgrad": flag,
    "centered": flag, "decoupled_weight_decay": flag,
}


def check_group(spec, group, where):
    """Check every hyperparameter of a group (a dict) and the spec's cross-checks; raise naming it."""
    for name in spec.defaults:
        if name not in group:
            raise ValueError(f"{where}: missing hyperparameter {name!r}")
    for name, check in CHECKS.items():
        if name in group:
            check(f"{where}: {name}", group[name])
    if spec.check is not None:
        spec.check(group, where)


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True, eq=False)
class Spec:
    """What fastlr knows about one algorithm besides its formulas (those live in rules.py)."""

    name: str                    # the class name, e.g. "Adam"
    defaults: dict               # hyperparameter -> default, in the reference's argument order
    keyword_only: tuple          # hyperparameters after the reference's ``*``
    rule: Callable               # group -> the element rule (a key of rules.ELEMENT_RULES)
    states: Callable             # group -> ((state name, initial value), ...), torch's names and order
    scalars: str                 # the rules.<...>_scalars host rule; its arguments are bound by name
    reference: str               # what the numbers are checked against, e.g. "torch.optim.Adam"
    summary: str                 # one line for docstrings
    math: str = ""               # the update, for docstrings
    scalar_state: dict = field(default_factory=dict)    # per-param scalar state -> initial value
    scalar_updates: dict = field(default_factory=dict)  # scalar state -> rules fn giving this step's value
    check: Callable = None       # cross-hyperparameter checks: check(group, where)
    constants: dict = field(default_factory=dict)       # fixed rules arguments, e.g. decoupled_weight_decay
    eager_state: bool = False    # torch creates the states at construction (Adagrad), not at the first step
    test_grid: dict = field(default_factory=dict)       # option axes the tests sweep (every combination)
    test_extra: tuple = ()                              # further option sets, e.g. nesterov=True
    test_base: dict = field(default_factory=dict)       # hyperparameters every test case sets

    def test_cases(self):
        """The option sets the tests run: every combination of test_grid, then test_extra, each with test_base."""
        keys = list(self.test_grid)
        grid = [dict(zip(keys, values)) for values in itertools.product(*self.test_grid.values())]
        return [{**case, **self.test_base} for case in grid + [dict(c) for c in self.test_extra]]

    def signature_text(self):
        """The hyperparameters as a Python parameter list (for docstrings and generated signatures)."""
        plain = [f"{k}={self.defaults[k]!r}" for k in self.defaults if k not in self.keyword_only]
        kw = [f"{k}={self.defaults[k]!r}" for k in self.keyword_only]
        return ", ".join(plain + (["*"] + kw if kw else []))


def make_init(spec, base, extra):
    """``__init__(self, params, <spec's hyperparameters>, *, <extra>)`` with a real signature (for help() and
    IDEs that ask the running code), calling ``base(self, params, hyperparameters, extra values)``."""
    names = list(spec.defaults)
    kw = ", ".join(f"{k}={v!r}" for k, v in extra.items())
    src = (f"def __init__(self, params, {spec.signature_text()}{', ' if spec.keyword_only else ', *, '}{kw}):\n"
           f"    base(self, params, dict({', '.join(f'{n}={n}' for n in names)}), "
           f"dict({', '.join(f'{n}={n}' for n in extra)}))\n")
    namespace = {"base": base}
    exec(compile(src, f"<fastlr {spec.name}.__init__>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{spec.name}.__init__"
    return init


def _sgd_check(group, where):
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(f"{where}: nesterov requires momentum > 0 and dampening == 0 "
                         f"(got momentum={group['momentum']}, dampening={group['dampening']})")


def _rmsprop_states(g):
    return (("square_avg", 0.0),) + ((("grad_avg", 0.0),) if g["centered"] else ()) + \
        ((("momentum_buffer", 0.0),) if g["momentum"] > 0 else ())


def _adam_states(g):
    return (("exp_avg", 0.0), ("exp_avg_sq", 0.0)) + ((("max_exp_avg_sq", 0.0),) if g["amsgrad"] else ())


_ADAM_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False)
_ADAM_GRID = dict(amsgrad=[False, True], weight_decay=[0, 0.01], maximize=[False, True])

SGD = Spec(
    "SGD", dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False), ("maximize",),
    rule=lambda g: "sgd_momentum" if g["momentum"] != 0 else "sgd",
    states=lambda g: (("momentum_buffer", 0.0),) if g["momentum"] != 0 else (),
    scalars="sgd_scalars", reference="torch.optim.SGD", check=_sgd_check,
    summary="Stochastic gradient descent, with momentum, dampening and Nesterov momentum.",
    math="b <- momentum b + (1 - dampening) g  (b = g at the first step);  p <- p - lr (g + momentum b if "
         "nesterov else b)",
    test_grid=dict(momentum=[0, 0.9], dampening=[0, 0.1], weight_decay=[0, 0.01], maximize=[False, True]),
    test_extra=tuple(dict(momentum=0.9, nesterov=True, weight_decay=wd, maximize=mx)
                     for wd in (0, 0.01) for mx in (False, True)),
    test_base=dict(lr=0.01))

Adagrad = Spec(
    "Adagrad", dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, maximize=False),
    ("maximize",), rule=lambda g: "adagrad", eager_state=True,
    states=lambda g: (("sum", g["initial_accumulator_value"]),),
    scalars="adagrad_scalars", reference="torch.optim.Adagrad",
    summary="Adagrad: per-element learning rates from the sum of squared gradients.",
    math="s <- s + g^2;  p <- p - lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)",
    test_grid=dict(lr_decay=[0, 0.01], weight_decay=[0, 0.01], initial_accumulator_value=[0, 0.1],
                   maximize=[False, True]))

RMSprop = Spec(
    "RMSprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False),
    ("maximize",),
    rule=lambda g: "rmsprop" + ("_centered" if g["centered"] else "") + ("_momentum" if g["momentum"] > 0 else ""),
    states=_rmsprop_states, scalars="rmsprop_scalars", reference="torch.optim.RMSprop",
    summary="RMSprop, eps added outside the square root, optional centering and momentum.",
    math="v <- alpha v + (1 - alpha) g^2;  p <- p - lr g / (sqrt(v - gbar^2 if centered else v) + eps)",
    test_grid=dict(centered=[False, True], momentum=[0, 0.9], weight_decay=[0, 0.01], maximize=[False, True]))

Adadelta = Spec(
    "Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False), ("maximize",),
    rule=lambda g: "adadelta", states=lambda g: (("square_avg", 0.0), ("acc_delta", 0.0)),
    scalars="adadelta_scalars", reference="torch.optim.Adadelta", summary="Adadelta.",
    math="v <- rho v + (1-rho) g^2;  d <- sqrt(u + eps) / sqrt(v + eps) g;  u <- rho u + (1-rho) d^2;  p <- p - lr d",
    test_grid=dict(rho=[0.9, 0.5], weight_decay=[0, 0.01], maximize=[False, True]))

Adam = Spec(
    "Adam", dict(_ADAM_DEFAULTS, decoupled_weight_decay=False), ("maximize", "decoupled_weight_decay"),
    rule=lambda g: "adam_amsgrad" if g["amsgrad"] else "adam", states=_adam_states,
    scalars="adam_scalars", reference="torch.optim.Adam",
    summary="Adam with bias correction and optional AMSGrad; eps added after the bias-corrected sqrt(v).",
    math="m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  p <- p - lr / (1-b1^t) m / (sqrt(v) / sqrt(1-b2^t) + eps)",
    test_grid=dict(_ADAM_GRID, decoupled_weight_decay=[False, True]), test_base=dict(lr=1e-2))

AdamW = Spec(
    "AdamW", dict(_ADAM_DEFAULTS, weight_decay=1e-2), ("maximize",),
    rule=Adam.rule, states=_adam_states, scalars="adam_scalars", reference="torch.optim.AdamW",
    constants=dict(decoupled_weight_decay=True),
    summary="AdamW: Adam with decoupled weight decay.",
    math="p <- p (1 - lr weight_decay), then the Adam update",
    test_grid=dict(_ADAM_GRID, weight_decay=[0, 0.1]), test_base=dict(lr=1e-2))

Adamax = Spec(
    "Adamax", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False), ("maximize",),
    rule=lambda g: "adamax", states=lambda g: (("exp_avg", 0.0), ("exp_inf", 0.0)),
    scalars="adamax_scalars", reference="torch.optim.Adamax", summary="Adamax: Adam with the infinity norm.",
    math="m <- b1 m + (1-b1) g;  u <- max(b2 u, |g| + eps);  p <- p - lr / (1-b1^t) m / u",
    test_grid=dict(weight_decay=[0, 0.01], maximize=[False, True], betas=[(0.9, 0.999), (0.5, 0.9)]))

NAdam = Spec(
    "NAdam", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, maximize=False), ("maximize",),
    rule=lambda g: "nadam", states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    scalars="nadam_scalars", reference="torch.optim.NAdam",
    scalar_state={"mu_product": 1.0}, scalar_updates={"mu_product": "nadam_mu_product"},
    summary="NAdam: Adam with Nesterov momentum and momentum decay.",
    math="Adam's moments;  p <- p - lr (1-mu_t)/(1-prod mu) g/d - lr mu_{t+1}/(1-prod mu_{t+1}) m/d",
    test_grid=dict(weight_decay=[0, 0.01], decoupled_weight_decay=[False, True], maximize=[False, True]))

RAdam = Spec(
    "RAdam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                  maximize=False), ("maximize",),
    rule=lambda g: "radam", states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    scalars="radam_scalars", reference="torch.optim.RAdam",
    summary="RAdam: Adam with the variance rectification term.",
    math="Adam's moments; rectified step when rho_t > 5, else p <- p - lr m / (1-b1^t)",
    test_grid=dict(weight_decay=[0, 0.01], decoupled_weight_decay=[False, True], maximize=[False, True],
                   betas=[(0.9, 0.999), (0.9, 0.9)]))

Lion = Spec(
    "Lion", dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0, maximize=False), ("maximize",),
    rule=lambda g: "lion", states=lambda g: (("exp_avg", 0.0),),
    scalars="lion_scalars", reference="Chen et al. 2023 (Symbolic Discovery of Optimization Algorithms)",
    summary="Lion: the sign of an interpolated momentum, decoupled weight decay.",
    math="p <- p (1 - lr wd) - lr sign(b1 m + (1-b1) g);  m <- b2 m + (1-b2) g",
    test_grid=dict(weight_decay=[0, 0.1], maximize=[False, True]), test_base=dict(lr=1e-3))

SPECS = {s.name: s for s in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Lion)}
