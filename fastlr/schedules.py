"""Learning-rate schedules: pure callables ``schedule(step) -> lr``, plus ReduceLROnPlateau.

Any of them can be given as an optimizer's ``lr``: step k (0-based, the first step is
0) uses ``schedule(k)``, evaluated on the host once per step.

The optax-style schedules keep optax's names, arguments and values
(``optax.schedules``); the torch-style ones (``step_lr``, ``multistep_lr``,
``cosine_annealing_warm_restarts``) give the lr that the matching
``torch.optim.lr_scheduler`` class sets before optimizer step k when its ``step()``
is called once per optimizer step. Values are Python floats computed in float64.

Arguments are checked when a schedule is built; bad ones raise ValueError naming the
argument. Where optax silently accepts a meaningless value we raise instead:
negative step counts or boundaries, ``decay_rate <= 0``, ``transition_steps <= 0`` in
``exponential_decay``, an empty ``sgdr_schedule`` or ``multistep_lr``. A zero
``transition_steps`` (or ``warmup_steps``) in the polynomial family means "no
transition", as in optax. Calling a schedule with a negative step raises ValueError.

Every schedule is an instance of a module-level class (``Schedule``), so optimizers holding
one as their lr pickle, deepcopy and ``torch.save`` like any other; its repr is the call that
built it, e.g. ``cosine_decay_schedule(init_value=0.1, decay_steps=100)``.
"""
import bisect
import functools
import inspect
import math
import numbers

__all__ = [
    "constant_schedule", "polynomial_schedule", "linear_schedule", "exponential_decay",
    "cosine_decay_schedule", "warmup_constant_schedule", "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule", "piecewise_constant_schedule",
    "piecewise_interpolate_schedule", "linear_onecycle_schedule", "cosine_onecycle_schedule",
    "sgdr_schedule", "join_schedules", "step_lr", "multistep_lr",
    "cosine_annealing_warm_restarts", "ReduceLROnPlateau", "ScaledSchedule",
]


# ---------------------------------------------------------------- argument checks
def _real(name, value, *, low=-math.inf, low_open=False):
    """value as a finite float, at least ``low`` (strictly above it if low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite real number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{name}: expected a value {'>' if low_open else '>='} {low}, got {value!r}")
    return float(value)


def _count(name, value, *, low=0):
    """value as an int >= low (integral floats such as 300.0 are accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or int(value) != value:
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _step(step):
    """The step a schedule is called with: an int (or a real number) >= 0."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        step = int(step)
    elif isinstance(step, numbers.Real) and not isinstance(step, bool) and not math.isnan(step):
        step = float(step)
    else:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    return step


def _scales(name, boundaries_and_scales):
    """Sorted (boundaries, scales) of a ``{step: scale}`` dict; None or {} gives ((), ())."""
    if not boundaries_and_scales:
        return (), ()
    if not hasattr(boundaries_and_scales, "items"):
        raise ValueError(f"{name}: expected a dict {{step: scale}}, got {boundaries_and_scales!r}")
    items = sorted((_count(f"{name} boundary", b), _real(f"{name}[{b!r}]", s, low=0.0))
                   for b, s in boundaries_and_scales.items())
    return tuple(b for b, _ in items), tuple(s for _, s in items)


def _cumulative(init_value, scales):
    """[init, init*s1, init*s1*s2, ...], multiplied in order (as optax's cumprod)."""
    values = [init_value]
    for s in scales:
        values.append(values[-1] * s)
    return values


# ---------------------------------------------------------------- the schedule objects
class Schedule:
    """A schedule: ``schedule(step) -> lr``. Subclasses hold plain values (so they pickle) and are
    made by the builder functions below, which check the arguments; the repr is the builder's call."""

    built_as = None

    def __repr__(self):
        return self.built_as or f"{type(self).__name__}({vars(self)!r})"


def _records_call(build):
    """Decorates a builder so that the schedule it returns reprs as the call that made it."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def builder(*args, **kwargs):
        schedule = build(*args, **kwargs)
        given = signature.bind(*args, **kwargs).arguments
        schedule.built_as = f"{build.__name__}({', '.join(f'{k}={v!r}' for k, v in given.items())})"
        return schedule
    return builder


class Constant(Schedule):
    """lr(t) = value (made by ``constant_schedule``)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, step):
        _step(step)
        return self.value


class Polynomial(Schedule):
    """(init - end) * (1 - c / T)**power + end (made by ``polynomial_schedule``, ``linear_schedule``)."""

    def __init__(self, init_value, end_value, power, transition_steps, transition_begin):
        self.init_value, self.end_value, self.power = init_value, end_value, power
        self.transition_steps, self.transition_begin = transition_steps, transition_begin

    def __call__(self, step):
        count = min(max(_step(step) - self.transition_begin, 0), self.transition_steps)
        frac = 1 - count / self.transition_steps
        return (self.init_value - self.end_value) * frac ** self.power + self.end_value


class ExponentialDecay(Schedule):
    """init * decay_rate**p after transition_begin, clipped to end_value (made by ``exponential_decay``)."""

    def __init__(self, init_value, transition_steps, decay_rate, transition_begin, staircase, end_value):
        self.init_value, self.transition_steps, self.decay_rate = init_value, transition_steps, decay_rate
        self.transition_begin, self.staircase, self.end_value = transition_begin, staircase, end_value

    def __call__(self, step):
        decreased = _step(step) - self.transition_begin
        p = decreased / self.transition_steps
        if self.staircase:
            p = math.floor(p)
        value = self.init_value if decreased <= 0 else self.init_value * self.decay_rate ** p
        if self.end_value is None:
            return value
        return (max if self.decay_rate < 1.0 else min)(value, self.end_value)


class CosineDecay(Schedule):
    """Cosine decay from init to alpha * init over decay_steps (made by ``cosine_decay_schedule``)."""

    def __init__(self, init_value, decay_steps, alpha, exponent):
        self.init_value, self.decay_steps, self.alpha, self.exponent = init_value, decay_steps, alpha, exponent

    def __call__(self, step):
        count = min(_step(step), self.decay_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * count / self.decay_steps))
        return self.init_value * ((1 - self.alpha) * cosine ** self.exponent + self.alpha)


class Joined(Schedule):
    """Schedules one after another, each counted from its boundary (made by ``join_schedules``)."""

    def __init__(self, schedules, boundaries):
        self.schedules, self.boundaries = schedules, boundaries

    def __call__(self, step):
        step = _step(step)
        i = bisect.bisect_right(self.boundaries, step)  # schedules[i] runs; it starts at boundaries[i-1]
        return float(self.schedules[i](step - self.boundaries[i - 1] if i else step))


class PiecewiseConstant(Schedule):
    """values[i] between boundaries[i-1] and boundaries[i] (made by ``piecewise_constant_schedule``)."""

    def __init__(self, boundaries, values):
        self.boundaries, self.values = boundaries, values

    def __call__(self, step):
        return self.values[bisect.bisect_right(self.boundaries, _step(step))]


class PiecewiseInterpolate(Schedule):
    """Interpolation between values at bounds (made by ``piecewise_interpolate_schedule`` and the onecycles)."""

    def __init__(self, interpolate, bounds, values):
        self.interpolate, self.bounds, self.values = interpolate, bounds, values

    def __call__(self, step):
        step, bounds, values = _step(step), self.bounds, self.values
        i = bisect.bisect_right(bounds, step) - 1
        if i == len(bounds) - 1:
            return values[-1]
        pct = (step - bounds[i]) / max(bounds[i + 1] - bounds[i], 1)
        return float(self.interpolate(values[i], values[i + 1], pct))


class StepLR(Schedule):
    """lr * gamma ** (t // step_size) (made by ``step_lr``)."""

    def __init__(self, lr, step_size, gamma):
        self.lr, self.step_size, self.gamma = lr, step_size, gamma

    def __call__(self, step):
        return self.lr * self.gamma ** (_step(step) // self.step_size)


class MultiStepLR(Schedule):
    """lr * gamma ** (number of milestones <= t) (made by ``multistep_lr``)."""

    def __init__(self, lr, milestones, gamma):
        self.lr, self.milestones, self.gamma = lr, milestones, gamma

    def __call__(self, step):
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, _step(step))


class CosineWarmRestarts(Schedule):
    """Cosine cycles of T_0, T_0 T_mult, ... steps (made by ``cosine_annealing_warm_restarts``)."""

    def __init__(self, lr, T_0, T_mult, eta_min):
        self.lr, self.T_0, self.T_mult, self.eta_min = lr, T_0, T_mult, eta_min

    def __call__(self, step):
        step, T_0, T_mult = _step(step), self.T_0, self.T_mult
        if T_mult == 1:
            T_cur, T_i = step % T_0, T_0
        else:
            T_cur, T_i = step, T_0
            while T_cur >= T_i:
                T_cur -= T_i
                T_i *= T_mult
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


# ---------------------------------------------------------------- optax-style schedules
@_records_call
def constant_schedule(value):
    """lr(t) = value."""
    return Constant(_real("value", value))


@_records_call
def polynomial_schedule(init_value, end_value, power, transition_steps, transition_begin=0):
    """Polynomial transition from init_value I to end_value E over T = transition_steps.

    lr(t) = (I - E) * (1 - c / T)**power + E,  c = clip(t - transition_begin, 0, T).
    Before transition_begin the value is I, after transition_begin + T it is E.
    T = 0 disables the transition: lr(t) = I (as optax).
    """
    init_value, end_value = _real("init_value", init_value), _real("end_value", end_value)
    power = _real("power", power)
    transition_steps = _count("transition_steps", transition_steps)
    transition_begin = _count("transition_begin", transition_begin)
    if transition_steps == 0:
        return Constant(init_value)
    return Polynomial(init_value, end_value, power, transition_steps, transition_begin)


@_records_call
def linear_schedule(init_value, end_value, transition_steps, transition_begin=0):
    """Linear transition: ``polynomial_schedule`` with power 1.

    lr(t) = I + (E - I) * c / T,  c = clip(t - transition_begin, 0, T).
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


@_records_call
def exponential_decay(init_value, transition_steps, decay_rate, transition_begin=0, staircase=False,
                      end_value=None):
    """Exponential decay after transition_begin.

    d = t - transition_begin,  p = d / transition_steps (floor(p) if staircase),
    lr(t) = init_value if d <= 0 else init_value * decay_rate**p.
    With end_value, the value is clipped to it: a lower bound when decay_rate < 1,
    an upper bound otherwise (the clip applies at every step, as optax).
    """
    init_value = _real("init_value", init_value)
    transition_steps = _count("transition_steps", transition_steps, low=1)
    decay_rate = _real("decay_rate", decay_rate, low=0.0, low_open=True)
    transition_begin = _count("transition_begin", transition_begin)
    if not isinstance(staircase, bool):
        raise ValueError(f"staircase: expected True or False, got {staircase!r}")
    if end_value is not None:
        end_value = _real("end_value", end_value)
    return ExponentialDecay(init_value, transition_steps, decay_rate, transition_begin, staircase, end_value)


@_records_call
def cosine_decay_schedule(init_value, decay_steps, alpha=0.0, exponent=1.0):
    """Cosine decay from init_value I to alpha * I over T = decay_steps, then constant.

    lr(t) = I * ((1 - alpha) * (0.5 * (1 + cos(pi * min(t, T) / T)))**exponent + alpha).
    """
    init_value = _real("init_value", init_value)
    decay_steps = _count("decay_steps", decay_steps, low=1)
    alpha, exponent = _real("alpha", alpha), _real("exponent", exponent)
    return CosineDecay(init_value, decay_steps, alpha, exponent)


@_records_call
def join_schedules(schedules, boundaries):
    """Schedules one after another: from boundaries[i] on, schedules[i + 1](t - boundaries[i]).

    Each later schedule counts its steps from its own boundary (as optax); boundaries
    are non-decreasing step numbers, one fewer than schedules.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if not schedules:
        raise ValueError("schedules: expected at least one schedule, got none")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise ValueError(f"schedules[{i}]: expected a callable schedule(step), got {s!r}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"boundaries: expected {len(schedules) - 1} (one fewer than schedules), "
                         f"got {len(boundaries)}")
    boundaries = [_count(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    if boundaries != sorted(boundaries):
        raise ValueError(f"boundaries: expected non-decreasing steps, got {boundaries}")
    return Joined(schedules, boundaries)


@_records_call
def warmup_constant_schedule(init_value, peak_value, warmup_steps):
    """Linear warmup from init_value to peak_value over warmup_steps, then peak_value."""
    return linear_schedule(init_value, peak_value, warmup_steps)


@_records_call
def warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps, end_value=0.0,
                                 exponent=1.0):
    """Linear warmup to peak_value, then cosine decay to end_value.

    decay_steps is the total length, warmup included: the cosine part is
    ``cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha=end_value /
    peak_value, exponent)`` (alpha = 0 when peak_value is 0), counted from warmup_steps.
    """
    warmup_steps = _count("warmup_steps", warmup_steps)
    decay_steps = _count("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps: expected more than warmup_steps={warmup_steps} (it includes "
                         f"the warmup), got {decay_steps}")
    peak_value, end_value = _real("peak_value", peak_value), _real("end_value", end_value)
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules([linear_schedule(init_value, peak_value, warmup_steps),
                           cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)],
                          [warmup_steps])


@_records_call
def warmup_exponential_decay_schedule(init_value, peak_value, warmup_steps, transition_steps, decay_rate,
                                      transition_begin=0, staircase=False, end_value=None):
    """Linear warmup to peak_value, then ``exponential_decay(peak_value, ...)`` counted from warmup_steps."""
    warmup_steps = _count("warmup_steps", warmup_steps)
    return join_schedules([linear_schedule(init_value, peak_value, warmup_steps),
                           exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
                                             staircase, end_value)],
                          [warmup_steps])


@_records_call
def piecewise_constant_schedule(init_value, boundaries_and_scales=None):
    """Constant pieces: lr(t) = init_value * product of the scales s_b with b <= t.

    boundaries_and_scales: ``{step b: scale s_b}``, scales >= 0, multiplied cumulatively.
    """
    init_value = _real("init_value", init_value)
    boundaries, scales = _scales("boundaries_and_scales", boundaries_and_scales)
    return PiecewiseConstant(boundaries, _cumulative(init_value, scales))


def _interpolate_linear(start, end, pct):
    return (end - start) * pct + start


def _interpolate_cosine(start, end, pct):
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


_INTERPOLATIONS = {"linear": _interpolate_linear, "cosine": _interpolate_cosine}


@_records_call
def piecewise_interpolate_schedule(interpolate_type, init_value, boundaries_and_scales=None):
    """Interpolation between cumulatively scaled values at boundaries.

    With boundaries 0 = b_0 < b_1 < ... < b_n and values v_0 = init_value,
    v_i = v_{i-1} * s_i, lr(t) for b_i <= t < b_{i+1} interpolates ('linear' or
    'cosine') from v_i to v_{i+1} at pct = (t - b_i) / max(b_{i+1} - b_i, 1);
    lr(t) = v_n for t >= b_n.
    """
    interpolate = _INTERPOLATIONS.get(interpolate_type)
    if interpolate is None:
        raise ValueError(f"interpolate_type: expected 'linear' or 'cosine', got {interpolate_type!r}")
    init_value = _real("init_value", init_value)
    boundaries, scales = _scales("boundaries_and_scales", boundaries_and_scales)
    return PiecewiseInterpolate(interpolate, (0, *boundaries), _cumulative(init_value, scales))


def _onecycle_args(transition_steps, peak_value, div_factor, final_div_factor, **pcts):
    transition_steps = _count("transition_steps", transition_steps, low=1)
    peak_value = _real("peak_value", peak_value)
    div_factor = _real("div_factor", div_factor, low=0.0, low_open=True)
    final_div_factor = _real("final_div_factor", final_div_factor, low=0.0, low_open=True)
    previous = 0.0
    for name, pct in pcts.items():
        pct = _real(name, pct, low=0.0)
        if not previous <= pct <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [{previous}, 1], got {pct!r}")
        previous = pct
    return transition_steps, peak_value, div_factor, final_div_factor


@_records_call
def linear_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, pct_final=0.85, div_factor=25.0,
                             final_div_factor=1e4):
    """One cycle in three linear phases (Smith 2017), with T = transition_steps, P = peak_value:

    P / div_factor -> P over [0, pct_start T], back to P / div_factor by pct_final T,
    then down to P / (div_factor * final_div_factor) at T.
    """
    T, peak, div, final_div = _onecycle_args(transition_steps, peak_value, div_factor, final_div_factor,
                                             pct_start=pct_start, pct_final=pct_final)
    return piecewise_interpolate_schedule("linear", peak / div, {int(pct_start * T): div,
                                                                 int(pct_final * T): 1.0 / div,
                                                                 T: 1.0 / final_div})


@_records_call
def cosine_onecycle_schedule(transition_steps, peak_value, pct_start=0.3, div_factor=25.0,
                             final_div_factor=1e4):
    """One cycle with cosine phases: P / div_factor -> P at pct_start T -> P / (div_factor *
    final_div_factor) at T = transition_steps (P = peak_value)."""
    T, peak, div, final_div = _onecycle_args(transition_steps, peak_value, div_factor, final_div_factor,
                                             pct_start=pct_start)
    return piecewise_interpolate_schedule("cosine", peak / div, {int(pct_start * T): div,
                                                                 T: 1.0 / (div * final_div)})


@_records_call
def sgdr_schedule(cosine_kwargs):
    """SGD with warm restarts (Loshchilov & Hutter 2017): warmup-cosine cycles one after another.

    cosine_kwargs: dicts of ``warmup_cosine_decay_schedule`` arguments, one per cycle;
    each cycle lasts its decay_steps.
    """
    schedules, boundaries, start = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, dict) or "decay_steps" not in kwargs:
            raise ValueError(f"cosine_kwargs[{i}]: expected a dict of warmup_cosine_decay_schedule "
                             f"arguments with decay_steps, got {kwargs!r}")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        start += _count(f"cosine_kwargs[{i}]['decay_steps']", kwargs["decay_steps"])
        boundaries.append(start)
    if not schedules:
        raise ValueError("cosine_kwargs: expected at least one cycle, got none")
    return join_schedules(schedules, boundaries[:-1])


# ---------------------------------------------------------------- torch-style schedules
@_records_call
def step_lr(lr, step_size, gamma=0.1):
    """torch's StepLR: lr(t) = lr * gamma ** (t // step_size)."""
    lr = _real("lr", lr)
    step_size = _count("step_size", step_size, low=1)
    gamma = _real("gamma", gamma, low=0.0)
    return StepLR(lr, step_size, gamma)


@_records_call
def multistep_lr(lr, milestones, gamma=0.1):
    """torch's MultiStepLR: lr(t) = lr * gamma ** (number of milestones <= t).

    A milestone given twice counts twice, as in torch.
    """
    lr = _real("lr", lr)
    milestones = sorted(_count(f"milestones[{i}]", m) for i, m in enumerate(milestones))
    if not milestones:
        raise ValueError("milestones: expected at least one step, got none")
    gamma = _real("gamma", gamma, low=0.0)
    return MultiStepLR(lr, milestones, gamma)


@_records_call
def cosine_annealing_warm_restarts(lr, T_0, T_mult=1, eta_min=0.0):
    """torch's CosineAnnealingWarmRestarts: cosine cycles of T_0, T_0 T_mult, T_0 T_mult^2, ... steps.

    lr(t) = eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2, where T_i is
    the length of the cycle holding t and T_cur the steps since it began.
    """
    lr, eta_min = _real("lr", lr), _real("eta_min", eta_min)
    T_0 = _count("T_0", T_0, low=1)
    T_mult = _count("T_mult", T_mult, low=1)
    return CosineWarmRestarts(lr, T_0, T_mult, eta_min)


# ---------------------------------------------------------------- ReduceLROnPlateau
class ScaledSchedule:
    """A schedule whose values ReduceLROnPlateau has scaled down.

    value(t) = max(schedule(t) * scale, min(schedule(t), min_lr)): the reduction never
    takes the lr below min_lr, nor lifts a schedule that is already below it.
    ``last_step`` is the step it was last called with (None before the first call).
    """

    def __init__(self, schedule, scale=1.0, min_lr=0.0):
        self.schedule, self.scale, self.min_lr = schedule, scale, min_lr
        self.last_step = None

    def value(self, step, scale=None):
        """The lr at step with this scale (the current one by default), without recording the step."""
        base = float(self.schedule(step))
        return max(base * (self.scale if scale is None else scale), min(base, self.min_lr))

    def __call__(self, step):
        self.last_step = step
        return self.value(step)

    def __repr__(self):
        return f"ScaledSchedule({self.schedule!r}, scale={self.scale!r}, min_lr={self.min_lr!r})"


class ReduceLROnPlateau:
    """Scale an optimizer's lr by ``factor`` when a metric stops improving (torch's decisions).

    Call ``step(metric)`` once per epoch. A metric is better than the best so far when
    (mode, threshold_mode) = ('min', 'rel'): metric < best * (1 - threshold);
    ('min', 'abs'): metric < best - threshold; ('max', 'rel'): metric > best * (1 +
    threshold); ('max', 'abs'): metric > best + threshold. After more than
    ``patience`` epochs without improvement, each group's lr becomes
    max(lr * factor, min_lr) (skipped if that changes it by eps or less), followed by
    ``cooldown`` epochs in which bad epochs are not counted.

    ``optimizer.param_groups`` is a list of dicts with an "lr" key. A float lr is
    multiplied in place, as torch does. A callable lr (a schedule) is wrapped in a
    ``ScaledSchedule`` at construction, and a reduction multiplies its per-group
    ``scale`` instead, so the schedule keeps its shape: the lr used at step t is
    max(schedule(t) * scale, min(schedule(t), min_lr)). The eps test for a schedule
    compares its values at the last step the optimizer evaluated it.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
            raise TypeError(f"optimizer: expected an object whose param_groups is a list of dicts with "
                            f"an 'lr' key, got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = _real("factor", factor, low=0.0)
        if self.factor >= 1.0:
            raise ValueError(f"factor: expected a value < 1, got {factor!r}")
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"min_lr: expected {len(groups)} values (one per param group), "
                                 f"got {len(min_lr)}")
            self.min_lrs = [_real(f"min_lr[{i}]", m, low=0.0) for i, m in enumerate(min_lr)]
        else:
            self.min_lrs = [_real("min_lr", min_lr, low=0.0)] * len(groups)
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.threshold = _real("threshold", threshold, low=0.0)
        self.patience = _count("patience", patience)
        self.cooldown = _count("cooldown", cooldown)
        self.eps = _real("eps", eps, low=0.0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        for group, m in zip(groups, self.min_lrs):
            self._wrap(group, m)

    @staticmethod
    def _wrap(group, min_lr):
        lr = group["lr"]
        if callable(lr) and not isinstance(lr, ScaledSchedule):
            group["lr"] = ScaledSchedule(lr, 1.0, min_lr)
        return group["lr"]

    def is_better(self, metric, best):
        """Whether metric improves on best by more than the threshold."""
        if self.mode == "min":
            return metric < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                             else best - self.threshold)
        return metric > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                         else best + self.threshold)

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def step(self, metric):
        """Record one epoch's metric; reduce the lrs when it has plateaued. Returns True if reduced."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            return True
        return False

    def _reduce(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise RuntimeError(f"the optimizer has {len(groups)} param groups, it had {len(self.min_lrs)} "
                               f"when ReduceLROnPlateau was built")
        for group, min_lr in zip(groups, self.min_lrs):
            lr = self._wrap(group, min_lr)
            if isinstance(lr, ScaledSchedule):
                lr.min_lr = min_lr
                new_scale = lr.scale * self.factor
                step = lr.last_step
                if step is None or lr.value(step) - lr.value(step, new_scale) > self.eps:
                    lr.scale = new_scale
            else:
                old = float(lr)
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new

    def get_last_lr(self):
        """Each group's current lr (a schedule's value at the last step it was evaluated, or step 0)."""
        return [float(g["lr"](g["lr"].last_step or 0) if isinstance(g["lr"], ScaledSchedule)
                      else g["lr"](0) if callable(g["lr"]) else g["lr"])
                for g in self.optimizer.param_groups]

    def state_dict(self):
        """The scheduler's counters (the scales live in the optimizer's ScaledSchedule lrs)."""
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)
