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
        raise ValueError(f"{name}: expected a finite number, got nan")
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


def tuple_of(name, value, labels, each):
    """A tuple or list of len(labels) values, each checked by ``each(f"{name}[i]", v)``."""
    if not (isinstance(value, (tuple, list)) and len(value) == len(labels)):
        what = "a pair" if len(labels) == 2 else f"{len(labels)} values"
        raise ValueError(f"{name}: expected {what} ({', '.join(labels)}), got {_shown(value)}")
    for i, v in enumerate(value):
        each(f"{name}[{i}]", v)


def _beta(name, value):
    if not 0.0 <= _number(name, value) < 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1), got {_shown(value)}")


def betas(name, value, labels=("beta1", "beta2")):
    tuple_of(name, value, labels, _beta)


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
    for name, check in ({**CHECKS, **spec.checks} if spec.checks else CHECKS).items():
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
    # (issue 14) what the algorithms beyond torch.optim's classic ten need:
    checks: dict = field(default_factory=dict)          # hyperparameter -> check, overriding CHECKS
    scalar_post_updates: dict = field(default_factory=dict)  # scalar state -> rules fn, run AFTER the host rule
    param_step: bool = True      # fastlr.torch keeps state["step"] per param (torch's SGD, timm's Adan do not)
    group_state: dict = field(default_factory=dict)     # per-group values kept in param_groups -> initial value
    group_updates: dict = field(default_factory=dict)   # group value -> rules fn, run once per step per group
    modes: str = ""              # "schedulefree": train()/eval() lerp p with state "z" (fastlr.schedulefree)
    switches: tuple = ()         # torch-only switches the reference keeps in its groups (foreach), for state dicts
    global_clip: str = ""        # hyperparameter: clip all grads by their global norm, timm Lamb's way (twopass.py)
    half_params: bool = True     # fastlr.torch takes 16-bit params (master weights / stochastic rounding)
    lazy_rows: bool = True       # step_rows (lazy row updates) and capturable steps make sense
    launch: Callable = None      # replaces the engine's per-unit launch (Muon: kernels around matmuls)
    matrix_only: bool = False    # 2-D params only (Muon): the registry-driven tests on vectors leave it out
    int_step: bool = False       # fastlr.torch keeps state["step"] as a Python int (timm's Mars)
    aux_states: Callable = None  # param shape -> ((name, shape), ...): states not shaped like the param (Adafactor)
    prepare_unit: Callable = None  # unit -> None, on every unit before any launch (makes/checks aux states)

    def __repr__(self):   # help(fastlr.Adam) shows the class attribute: the name says which spec it is
        return f"Spec({self.name!r})"

    def group_defaults(self, defaults):
        """The group_state entries a new optimizer adds to its defaults (a callable gets the defaults)."""
        return {k: v(defaults) if callable(v) else v for k, v in self.group_state.items()}

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
    test_base=dict(lr=0.01), param_step=False)

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

# ---------------------------------------------------------------- beyond torch.optim's classic ten (issue 14)
# A state initialised as a copy of its param (schedule-free's z), not as a constant.
COPY_OF_PARAM = "param"


def optional_number(name, value):
    if value is not None:
        finite(name, value)


def whole_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")


def etas(name, value):
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name}: expected a pair (etaminus, etaplus), got {value!r}")
    lo, hi = _number(f"{name}[0]", value[0]), _number(f"{name}[1]", value[1])
    if not 0.0 < lo < 1.0 < hi or math.isinf(hi):
        raise ValueError(f"{name}: expected 0 < etaminus < 1 < etaplus (finite), got {value!r}")


def step_sizes(name, value):
    tuple_of(name, value, ("min", "max"), non_negative)


def betas3(name, value):
    betas(name, value, ("beta1", "beta2", "beta3"))


def _initial_lr(group):
    """timm's max_lr snapshot: the group's lr when it was made (a schedule's value at step 0)."""
    lr = group["lr"]
    return float(lr(0) if callable(lr) else lr)


CHECKS.update({"lambd": non_negative, "alpha": non_negative, "t0": finite, "etas": etas, "step_sizes": step_sizes,
               "clip_exp": optional_number, "decoupled": flag, "corrected_weight_decay": flag, "no_prox": flag,
               "caution": flag, "warmup_steps": whole_number, "r": finite, "weight_lr_power": finite,
               "silent_sgd_phase": flag, "train_mode": flag, "k": whole_number, "weight_sum": non_negative,
               "lr_max": finite, "scheduled_lr": finite, "max_lr_snapshot": non_negative})

ASGD = Spec(
    "ASGD", dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, maximize=False), ("maximize",),
    rule=lambda g: "asgd", states=lambda g: (("ax", 0.0),), scalars="asgd_scalars",
    scalar_state={"eta": -1.0, "mu": 1.0}, scalar_post_updates={"eta": "asgd_eta", "mu": "asgd_mu"},
    reference="torch.optim.ASGD",
    summary="Averaged SGD: decaying step size eta, running average ax of the iterates after t0 steps.",
    math="p <- p (1 - lambd eta) - eta g;  ax <- ax + mu (p - ax);  eta <- lr / (1 + lambd lr t)^alpha;  "
         "mu <- 1 / max(1, t - t0)",
    test_grid=dict(weight_decay=[0, 0.01], maximize=[False, True], t0=[1e6, 10.0]),
    test_base=dict(lr=0.05, lambd=0.01))

Rprop = Spec(
    "Rprop", dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False),
    ("maximize",), rule=lambda g: "rprop", states=lambda g: (("prev", 0.0), ("step_size", g["lr"])),
    scalars="rprop_scalars", reference="torch.optim.Rprop",
    summary="Rprop: per-element step sizes grown or shrunk by the sign agreement of successive gradients.",
    math="s = sign(g prev): step <- clamp(step * etaplus|etaminus|1, step_sizes);  g <- 0 where s < 0;  "
         "p <- p - sign(g) step;  prev <- g",
    test_grid=dict(maximize=[False, True], step_sizes=[(1e-6, 50), (1e-3, 0.05)]),
    test_extra=(dict(etas=(0.3, 1.5)),))

Adopt = Spec(
    "Adopt", dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_exp=0.333, weight_decay=0.0, decoupled=False,
                  corrected_weight_decay=False, caution=False, maximize=False),
    ("caution", "maximize"), rule=lambda g: "adopt_cautious" if g["caution"] else "adopt", checks={"caution": flag},
    states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    scalars="adopt_scalars", switches=("foreach", "capturable", "differentiable"),
    group_state={"max_lr_snapshot": _initial_lr},
    reference="timm.optim.Adopt (timm 1.0.31)",
    summary="ADOPT: Adam with the second moment of the previous step and clipped normalized gradients.",
    math="first step: v <- g^2;  then m <- lerp(m, clamp(g / max(sqrt(v), eps), +-(t-1)^clip_exp), 1-b1);  "
         "p <- p - lr m;  v <- b2 v + (1-b2) g^2",
    test_grid=dict(weight_decay=[0, 0.01], decoupled=[False, True], maximize=[False, True], clip_exp=[0.333, None]),
    test_extra=(dict(weight_decay=0.01, decoupled=True, corrected_weight_decay=True),
                dict(caution=True, weight_decay=0.01), dict(caution=True, maximize=True, clip_exp=None)),
    test_base=dict(lr=1e-2))

Adan = Spec(
    "Adan", dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, no_prox=False, caution=False),
    (), rule=lambda g: "adan_cautious" if g["caution"] else "adan",
    states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0), ("exp_avg_diff", 0.0), ("neg_pre_grad", 0.0)),
    scalars="adan_scalars", param_step=False, switches=("foreach",), checks={"betas": betas3, "caution": flag},
    group_state={"step": 0}, group_updates={"step": "group_step_next"},
    reference="timm.optim.Adan (timm 1.0.31)",
    summary="Adan: Nesterov momentum from gradient differences, three moments, decoupled (proximal) decay.",
    math="x = g - g_prev;  m <- lerp(m, g, 1-b1);  d <- b2 d + (1-b2) x;  v <- b3 v + (1-b3)(g + b2 x)^2;  "
         "p <- p - lr (m/(1-b1^t) + b2 d/(1-b2^t)) / (sqrt(v / (1-b3^t)) + eps), decay / (1 + lr wd)",
    test_grid=dict(weight_decay=[0, 0.02], no_prox=[False, True]),
    test_extra=(dict(caution=True), dict(caution=True, no_prox=True, weight_decay=0.02)), test_base=dict(lr=1e-2))


def _momentum_open(name, value):
    if not 0.0 < _number(name, value) < 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1) (eval() divides by it), got {value!r}")


def _schedulefree_betas(name, value):
    betas(name, value)
    _momentum_open(f"{name}[0]", value[0])


def _schedulefree(name, defaults, rule, scalars, lr_update, summary, math, grid, reference_class):
    return Spec(
        name, defaults, (), rule=lambda g: rule, checks={"momentum": _momentum_open, "betas": _schedulefree_betas},
        states=lambda g: (("z", COPY_OF_PARAM),) + ((("exp_avg_sq", 0.0),) if rule == "schedulefree_adam" else
                                                    ()),
        scalars=scalars, param_step=False, modes="schedulefree", switches=("foreach",),
        group_state=dict(k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0),
        group_updates=dict(scheduled_lr=lr_update, lr_max="schedulefree_lr_max",
                           weight_sum="schedulefree_weight_sum", k="group_k_next"),
        reference=f"schedulefree.{reference_class} (schedulefree 1.4.1)", summary=summary, math=math,
        test_grid=grid)


_SF_MATH = "y <- lerp(y, z, c_t) + lr (beta (1 - c_t) - 1) d;  z <- z - lr d;  c_t = w_t / sum w (w_t = t^r lr_max^p)"
SGDScheduleFree = _schedulefree(
    "SGDScheduleFree", dict(lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2),
    "schedulefree_sgd", "schedulefree_sgd_scalars", "schedulefree_warmup_lr",
    "Schedule-free SGD (Defazio et al. 2024): train()/eval() switch p between y and the average x.",
    _SF_MATH + ", d = g + wd y", dict(weight_decay=[0, 0.01], warmup_steps=[0, 5], r=[0.0, 1.0]), "SGDScheduleFree")
AdamWScheduleFree = _schedulefree(
    "AdamWScheduleFree", dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                              weight_lr_power=2.0),
    "schedulefree_adam", "schedulefree_adamw_scalars", "schedulefree_warmup_lr",
    "Schedule-free AdamW (Defazio et al. 2024): train()/eval() switch p between y and the average x.",
    _SF_MATH + ", d = g / (sqrt(v / (1-b2^t)) + eps) + wd y",
    dict(weight_decay=[0, 0.01], warmup_steps=[0, 5], r=[0.0, 1.0]), "AdamWScheduleFree")
RAdamScheduleFree = _schedulefree(
    "RAdamScheduleFree", dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, r=0.0, weight_lr_power=2.0,
                              silent_sgd_phase=True),
    "schedulefree_adam", "schedulefree_radam_scalars", "schedulefree_radam_lr",
    "Schedule-free RAdam (Defazio et al. 2024): no warmup needed; train()/eval() as the others.",
    _SF_MATH + " (lr times RAdam's rectification), d = g / (sqrt(v / (1-b2^t)) + eps) + wd y once rho_t > 4",
    dict(weight_decay=[0, 0.01], silent_sgd_phase=[True, False], r=[0.0, 1.0]), "RAdamScheduleFree")

def _one_of(*values):
    def check(name, value):
        if value not in values:
            raise ValueError(f"{name}: expected one of {values}, got {value!r}")
    return check


def _optional_betas(name, value):
    if value is not None:
        betas(name, value)


def _optional_positive(name, value):
    if value is not None:
        positive(name, value)


CHECKS.update({"bias_correction": flag, "grad_averaging": flag, "trust_clip": flag, "always_adapt": flag,
               "decoupled_decay": flag, "trust_coeff": non_negative, "gamma": finite, "optimize_1d": flag,
               "lr_1d_factor": non_negative, "betas_1d": _optional_betas, "mars_type": _one_of("adamw", "lion")})

Lamb = Spec(
    "Lamb", dict(lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, grad_averaging=True,
                 max_grad_norm=1.0, trust_clip=False, always_adapt=False, caution=False, decoupled_decay=False,
                 corrected_weight_decay=False), (),
    rule=lambda g: "lamb_cautious" if g["caution"] else "lamb",
    states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)), scalars="lamb_scalars", param_step=False,
    switches=("foreach",), global_clip="max_grad_norm", lazy_rows=False,
    checks={"max_grad_norm": _optional_positive, "caution": flag},
    group_state={"max_lr_snapshot": _initial_lr, "step": 0}, group_updates={"step": "group_step_next"},
    reference="timm.optim.Lamb (timm 1.0.31)",
    summary="LAMB (You et al. 2019, NVIDIA's FusedLAMB variant): Adam's update scaled per tensor by ||p|| / ||u||.",
    math="u = m_hat / (sqrt(v_hat) + eps) + wd p;  p <- p - lr (||p|| / ||u||) u  (grads first clipped by their "
         "global norm / max_grad_norm; as timm, max_grad_norm is the constructor's: per-group values have no "
         "effect)",
    test_grid=dict(weight_decay=[0.01, 0.0], decoupled_decay=[False, True], trust_clip=[False, True],
                   max_grad_norm=[1.0, None]),
    test_extra=(dict(always_adapt=True, weight_decay=0.0, grad_averaging=False, bias_correction=False),
                dict(decoupled_decay=True, corrected_weight_decay=True), dict(caution=True),
                dict(caution=True, weight_decay=0.0), dict(caution=True, decoupled_decay=True, trust_clip=True),
                dict(caution=True, always_adapt=True, weight_decay=0.0, max_grad_norm=None)),
    test_base=dict(lr=1e-2))

Lars = Spec(
    "Lars", dict(lr=1.0, momentum=0, dampening=0, weight_decay=0, nesterov=False, trust_coeff=0.001, eps=1e-8,
                 trust_clip=False, always_adapt=False), (),
    rule=lambda g: "lars_momentum" if g["momentum"] != 0 else "lars",
    states=lambda g: (("momentum_buffer", 0.0),) if g["momentum"] != 0 else (), scalars="lars_scalars",
    param_step=False, switches=("foreach",), check=_sgd_check, lazy_rows=False,
    reference="timm.optim.Lars (timm 1.0.31)",
    summary="LARS (You et al. 2017): SGD whose update is scaled per tensor by trust_coeff ||p|| / ||g + wd p||.",
    math="d = (g + wd p) trust, trust = trust_coeff ||p|| / (||g|| + wd ||p|| + eps);  SGD momentum on d",
    test_grid=dict(momentum=[0, 0.9], weight_decay=[0, 1e-4], trust_clip=[False, True]),
    test_extra=(dict(momentum=0.9, nesterov=True, weight_decay=1e-4), dict(always_adapt=True, dampening=0.1,
                                                                          momentum=0.5)),
    test_base=dict(lr=0.1))

Mars = Spec(
    "Mars", dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0., gamma=0.025, mars_type="adamw",
                 optimize_1d=False, lr_1d_factor=1.0, betas_1d=None, caution=False), (),
    rule=lambda g: "mars_cautious" if g["caution"] else "mars",
    states=lambda g: (("exp_avg", 0.0), ("exp_avg_sq", 0.0), ("last_grad", 0.0)),
    scalars="mars_scalars", group_state={"betas_1d": lambda d: d["betas_1d"] or d["betas"]},
    int_step=True, lazy_rows=False,
    reference="timm.optim.Mars (timm 1.0.31)",
    summary="MARS (Yuan et al. 2024): variance-reduced gradients c_t, clipped per tensor to norm 1, in AdamW or "
            "Lion; 1-D params take AdamW on g.",
    math="c = g + gamma b1/(1-b1) (g - g_prev), c <- c / max(||c||, 1);  m, v from c;  p <- p - lr (m_hat / "
         "(sqrt(v_hat) + eps) + wd p)",
    test_grid=dict(mars_type=["adamw", "lion"], weight_decay=[0.0, 0.01], optimize_1d=[False, True]),
    test_extra=(dict(betas_1d=(0.8, 0.95), lr_1d_factor=0.5), dict(caution=True),
                dict(caution=True, mars_type="lion", weight_decay=0.01), dict(caution=True, optimize_1d=True),
                dict(caution=True, betas_1d=(0.8, 0.95), lr_1d_factor=0.5)))

def _adafactor_launch(engine, plan, unit, c):
    from . import adafactor
    adafactor.launch(engine, plan, unit, c)


def _adafactor_prepare(unit):
    from . import adafactor
    adafactor.check_states(unit)


def _adafactor_aux(shape):
    from . import adafactor
    return adafactor.aux_states(shape)


def _optional_non_negative(name, value):
    if value is not None:
        non_negative(name, value)


def _adafactor_eps(name, value):
    tuple_of(name, value, ("eps1 or None", "eps2"), _optional_non_negative)


def _at_most_zero(name, value):
    if not _number(name, value) <= 0:
        raise ValueError(f"{name}: expected a value <= 0, got {value!r}")


def _at_least_one(name, value):
    if not 1.0 <= _number(name, value) < math.inf:
        raise ValueError(f"{name}: expected a finite value >= 1, got {value!r}")


Adafactor = Spec(
    "Adafactor", dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False),
    ("maximize",), rule=lambda g: "decay_apply", states=lambda g: (), scalars="adafactor_scalars",
    half_params=False, lazy_rows=False, launch=_adafactor_launch, aux_states=_adafactor_aux,
    prepare_unit=_adafactor_prepare,
    checks={"eps": _adafactor_eps, "beta2_decay": _at_most_zero, "d": _at_least_one},
    reference="torch.optim.Adafactor",
    summary="Adafactor (Shazeer and Stern 2018, as torch): factored second moments of matrices, relative step size.",
    math="R, C <- EMAs of the row and column means of g^2;  u = g / sqrt(max(R C / mean(R), eps1^2));  "
         "p <- p (1 - lr wd) - max(eps2, RMS(p)) min(lr, 1/sqrt(t)) u / max(1, RMS(u) / d)",
    test_grid=dict(weight_decay=[0.0, 0.1], maximize=[False, True]),
    test_extra=(dict(beta2_decay=-0.5, eps=(1e-30, 1e-3), d=1.5, lr=0.05),))


def _muon_launch(engine, plan, unit, c):
    from . import muon
    muon.launch(engine, plan, unit, c)


def _ns_coefficients(name, value):
    tuple_of(name, value, ("a", "b", "c"), finite)


def _ns_steps(name, value):
    whole_number(name, value)
    if value >= 100:
        raise ValueError(f"{name}: expected fewer than 100 steps (as torch), got {value!r}")


Muon = Spec(
    "Muon", dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None), (),
    rule=lambda g: "muon_momentum", states=lambda g: (("momentum_buffer", 0.0),), scalars="muon_scalars",
    param_step=False, half_params=False, lazy_rows=False, launch=_muon_launch, matrix_only=True,
    checks={"ns_coefficients": _ns_coefficients, "ns_steps": _ns_steps,
            "adjust_lr_fn": _one_of(None, "original", "match_rms_adamw", "spectral_unclamped")},
    reference="torch.optim.Muon",
    summary="Muon (Jordan et al. 2024): SGD-Nesterov momentum orthogonalized per 2-D param by Newton-Schulz.",
    math="b <- lerp(b, g, 1-mu);  O = NS(lerp(g, b, mu));  p <- p (1 - lr wd) - lr sqrt(max(1, A/B)) O",
    test_grid=dict(nesterov=[True, False], weight_decay=[0.1, 0.0]), test_base=dict(lr=0.02))


SPECS = {s.name: s for s in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, Lion,
                             ASGD, Rprop, Adopt, Adan, SGDScheduleFree, AdamWScheduleFree, RAdamScheduleFree,
                             Lamb, Lars, Mars, Muon, Adafactor)}
