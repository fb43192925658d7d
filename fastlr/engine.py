"""One optimizer step over what the caller holds now: the engine under both front ends.

    Engine.step(grads)
      -> each group's hyperparameters for this step (schedules evaluated; checked when changed)
      -> per group: the params that have a gradient, their grads and their states, read from
         param_groups and state NOW, split into units (one array kind, dtype and device each)
      -> each unit compared with what was validated before: unchanged -> reuse the checks;
         changed -> validate again (raising before anything changes) and rebuild its table
      -> missing states created (lazily, as torch does) by the params' own library
      -> gradient conditioning (global norm, clipping, non-finite skip) from one reduction pass
      -> per unit: step counts advanced, per-step scalars from the host rule, ONE kernel call over
         the unit's segment table (CPU) or one launch per array (CUDA)

Nothing is cached that the caller cannot see, except validation results keyed on what they
describe: NumPy arrays' data pointers, dtypes, flags and shapes are read from their object
structs in native code at every step (``kernels._pointers.gather``); torch tensors' through
``data_ptr()``, ``stride()``, ``shape`` and ``dtype``, compared with the values validated. So
``p.data = ...``, replaced or cleared state, ``a.dtype = ...``, ``a.resize(...)``, copies made
by pickle or deepcopy all take effect, or are rejected with a clear error, at the next step.

A front end (``fastlr.optim.Optimizer``, ``fastlr.torch``) supplies a ``Front``: how a
param's state is keyed and created, how its step count is stored, how arrays are named in
messages; and hands the grads to ``Engine.step``.
"""
import functools
import math
import operator
import struct
import threading
from itertools import repeat

import numpy as np

from . import specs as _specs
from ._arrays import Buffer, copy_into, dense, describe_kind, full_like, kind_of, max_abs, same_kind, scaled_sumsq
from ._launch import NO_CONDITIONING, SERIAL_BELOW, exact, kernel_module, parallel_guard
from .kernels import _codegen, rules
from .twopass import TWO_PASS, TwoPass, check_two_pass, global_clip

__all__ = ["Engine", "Front", "Unit", "grad_conditioning", "NO_CONDITIONING", "plan_scalars", "register_route",
           "register_unit"]

# Elements per work row of a segment table: big enough to amortize a call into the element
# loop, small enough to balance the threads over any mix of sizes.
CHUNK = 1 << 16

_IS = operator.is_


def grad_conditioning(options, sum_of_squares, grads=None):
    """(scale, lo, hi) for ``rules.condition``, or None when the step must be skipped.

    options carries max_grad_norm, clip_value, grad_scale and skip_nonfinite; sum_of_squares()
    gives the gradients' total sum of squares (float64) and is called only when the norm is needed
    (clipping by norm, or the non-finite check). grads() lists the gradients as (array, dtype the
    kernels compute in) pairs; it is called only where the sum cannot settle the question: a
    float64 sum that overflowed (finite float64 gradients past 1e154), or a grad_scale so small
    that the unscaled gradients may pass their dtype's largest value.

    A step is skipped exactly when a gradient divided by grad_scale, as the kernels compute it in
    the params' dtype, is NaN or Inf.
    """
    lo, hi = -math.inf, math.inf
    if options.clip_value is not None:
        lo, hi = -options.clip_value, options.clip_value
    unscale = 1.0 / options.grad_scale if options.grad_scale is not None else 1.0
    if options.max_grad_norm is None and not options.skip_nonfinite:
        return unscale, lo, hi
    norm = math.sqrt(sum_of_squares())    # of the gradients as given; NaN or Inf when one of them is
    listed = _Listed(grads)
    if norm == math.inf and grads is not None:   # an Inf, or float64 squares past float64's range
        norm = _overflow_safe_norm(listed())
    if options.skip_nonfinite and not _unscaled_finite(norm, unscale, listed):
        return None
    norm *= unscale
    scale = 1.0
    if options.max_grad_norm is not None:  # as clip_grad_norm_: max_norm / (norm + 1e-6), at most 1
        scale = min(options.max_grad_norm / (norm + 1e-6), 1.0)
    return scale * unscale, lo, hi


# Below this, g * unscale (|g| <= the norm) is finite in float32 and every wider dtype, rounding included.
_F32_SAFE = float(np.finfo(np.float32).max) * 0.999


class _Listed:
    """grads() called once, when first needed."""

    def __init__(self, grads):
        self.grads, self.value = grads, None

    def __call__(self):
        if self.value is None:
            self.value = list(self.grads()) if self.grads is not None else None
        return self.value


def _overflow_safe_norm(pairs):
    """The L2 norm of every gradient, scaled by the largest |element| so no square overflows
    (Inf when an element is Inf, or when the norm itself is past float64's range)."""
    m = max((max_abs(g) for g, _ in pairs), default=0.0)
    if not math.isfinite(m) or m == 0.0:
        return m
    return m * math.sqrt(math.fsum(scaled_sumsq(g, m) for g, _ in pairs))


def _unscaled_finite(norm, unscale, listed):
    """Whether every gradient times unscale, computed in its kernels' dtype, is finite (|g| <= norm)."""
    if math.isnan(norm):
        return False
    if norm * unscale < _F32_SAFE and unscale < _F32_SAFE:
        return True
    pairs = listed()
    if pairs is None:   # no way to look at the elements: decide on the norm
        return math.isfinite(norm * unscale)
    with np.errstate(over="ignore", invalid="ignore"):
        for g, dtype in pairs:
            t = np.dtype(dtype).type
            if _size(g) and not np.isfinite(t(max_abs(g)) * t(unscale)):   # max_abs: an element of g, exact
                return False
    return True


def _size(g):
    numel = getattr(g, "numel", None)
    return numel() if callable(numel) else g.size


def bind(fn_name, spec, group, pstate):
    """rules.<fn_name>(...), each argument taken by name from the param's scalar state, the group,
    or the spec's constants."""
    args = []
    for n in _codegen.arg_names(fn_name):
        args.append(pstate[n] if n in pstate else group[n] if n in group else spec.constants[n])
    return getattr(rules, fn_name)(*args)


def plan_scalars(spec, group, pstate):
    """(rule, float64 scalars) for one param's step; pstate["step"] is already this step's (1-based).

    Sets the spec's scalar states in pstate for this step first (e.g. NAdam's mu_product)."""
    for name, fn in spec.scalar_updates.items():
        pstate[name] = bind(fn, spec, group, pstate)
    h = tuple(map(float, bind(spec.scalars, spec, group, pstate)))
    for name, fn in spec.scalar_post_updates.items():   # values for the next step (ASGD's eta and mu)
        pstate[name] = bind(fn, spec, group, pstate)
    return spec.rule(group), h


def before_launch(engine, plans, c):
    """What algorithms beyond torch.optim's ten do once per step, after every check passed: advance the
    per-group state, and (timm's Lamb) clip by the global norm. Returns the conditioning."""
    check_two_pass(plans)
    if engine.spec.prepare_unit is not None:   # e.g. Adafactor's factored states, made or checked
        for plan in plans:
            for unit in plan.units:
                engine.spec.prepare_unit(unit)
    if engine.spec.group_updates:
        advance_groups(engine, plans)
    if engine.spec.global_clip:
        c = global_clip(engine, plans, c)
    return c


def advance_groups(engine, plans):
    """Per-group state (``Spec.group_state``, kept in param_groups as its reference keeps it: schedule-free's
    k and weight_sum, timm's group step): this step's values from ``Spec.group_updates``, once per step per
    group, after every check passed. Host rules read them as ``group_<name>``."""
    spec = engine.spec
    for plan in plans:
        group = engine.opt.param_groups[plan.k]
        hp, new = dict(plan.hp), {}
        for name, fn in spec.group_updates.items():
            hp[name] = new[name] = bind(fn, spec, hp, {})
        group.update(new)
        engine.wrote(plan.k, new, hp)
        plan.use(spec, hp)


class Front:
    """How a front end keys, creates and counts a param's state, and names arrays in messages."""

    def state_key(self, index, param):
        """The param's key in ``opt.state``: its index (NumPy API) or the param itself (torch)."""
        return index

    def init_state(self, pstate, param, spec, created):
        """Complete a param's state after its arrays (names in `created` just made) were added: the step
        count and the spec's scalar states, where missing."""
        pstate.setdefault("step", 0)
        for name, v in spec.scalar_state.items():
            pstate.setdefault(name, v)

    def read_states(self, state, keys, names, cache):
        """(the params' state dicts, one list per state name of the arrays they hold), read from ``state``
        now; cols is None when a state dict or array is missing (it will be created)."""
        pstates = list(map(state.get, keys))
        if any(map(_IS, pstates, repeat(None))):
            return pstates, None
        try:
            return pstates, [list(map(operator.itemgetter(n), pstates)) for n in names]
        except (KeyError, TypeError):
            return pstates, None

    def new_dict(self):
        """An empty state dict for one param."""
        return {}

    def state_required(self, spec, names):
        """Whether a param needs a state entry at all (torch's SGD without momentum keeps none)."""
        return True

    def new_array(self, param, name, init):
        if isinstance(init, str) and init == _specs.COPY_OF_PARAM:
            out = full_like(param, 0.0)
            copy_into(out, param)
            return out
        return full_like(param, init)

    def steps(self, pstates, cache):
        """The step counts of these states, as numbers (cache: a dict kept per unit, for the front's use)."""
        return list(map(operator.itemgetter("step"), pstates))

    def set_steps(self, pstates, values, cache):
        """Set the counts to values (each the count read by steps() + 1)."""
        for st, v in zip(pstates, values):
            st["step"] = v

    def set_step(self, pstates, value, cache):
        """Set every count to value (the count all of them had + 1). A front may then return the list
        it keeps as ``cache["uniform"]`` from steps(), to say that the counts are all equal."""
        self.set_steps(pstates, repeat(value, len(pstates)), cache)

    def check_counts(self, spec, units):
        """Before anything is launched: every step count, as ``steps()`` reads it from opt.state now (it
        may have been edited), is a whole number in [0, 2**53], and every scalar state (NAdam's
        mu_product) a finite number; raise naming the entry otherwise. One cheap pass when all agree."""
        for unit in units:
            sts = unit.pstates
            try:
                steps = self.steps(sts, unit.front_cache)
                first = steps[0]
                if type(first) in _COUNT_TYPES and 0 <= first <= _specs.MAX_STEP and first % 1 == 0 \
                        and all(map(operator.eq, steps, repeat(first))) \
                        and all(all(map(math.isfinite, map(operator.itemgetter(n), sts))) for n in spec.scalar_state):
                    self.counted(unit, steps)
                    continue
            except (KeyError, TypeError, ValueError, RuntimeError):
                pass
            for r, st in enumerate(sts):   # find the entry at fault, and say what is wrong with it
                where = unit.labels[r][2]
                try:
                    value = self.steps([st], {})[0]
                except KeyError:
                    raise ValueError(f"{where.format('step')}: missing (expected the param's step count); clear the "
                                     f"param's state to start again") from None
                except (TypeError, ValueError, RuntimeError):
                    value = st.get("step")
                _specs.step_count(where.format("step"), value)
                for n in spec.scalar_state:
                    _specs.finite(where.format(n), st.get(n))

    def counted(self, unit, steps):
        """The unit's counts, as check_counts read and accepted them for this step (a front may keep them
        for the launch)."""

    def set_scalar(self, pstate, name, value):
        pstate[name] = value

    def names(self, k, j, index):
        """(param, grad, state-format) names of param j of group k (param number `index` overall)."""
        return f"params[{index}]", f"grads[{index}]", f"state[{index}][{{!r}}]"


_COUNT_TYPES = (int, float)


class Engine:
    """The step machinery of one optimizer (see the module docstring)."""

    def __init__(self, opt, spec, front):
        self.opt, self.spec, self.front = opt, spec, front
        # what some algorithms beyond torch.optim's ten do once per step (see before_launch)
        self.extras = bool(spec.group_updates or spec.global_clip or spec.prepare_unit)
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        """Forget every validation result (after load_state_dict, a copy, or unpickling)."""
        self._plans = {}      # group index -> _GroupPlan
        self._resolved = {}   # group index -> (the group as last seen, its resolved hyperparameters)
        self.written = None   # every unit's written byte ranges, as _span_table (while none moved)

    # ------------------------------------------------------------ hyperparameters
    def resolve(self, step_count):
        """Each group's hyperparameters for this step: schedules evaluated, everything checked."""
        out = []
        for k, group in enumerate(self.opt.param_groups):
            seen, hp = self._resolved.get(k, (None, None))
            if seen is not None and _same_group(seen, group):
                out.append(hp)
                continue
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"param_groups[{k}]: expected a dict with a 'params' entry")
            hp = {**self.spec.constants, **{key: v for key, v in group.items() if key != "params"}}
            scheduled = callable(hp.get("lr"))
            if scheduled:
                hp["lr"] = hp["lr"](step_count)
                if callable(hp["lr"]):
                    raise TypeError(f"param_groups[{k}]: lr schedule returned a callable")
            _specs.check_group(self.spec, hp, f"param_groups[{k}]")
            hp = self.opt._hyperparameters(hp)
            static = not scheduled and not any(hasattr(v, "shape") for v in group.values())
            self._resolved[k] = (_snapshot(group), hp) if static else (None, None)
            out.append(hp)
        return out

    def wrote(self, k, new, hp):
        """This engine wrote ``new`` (values it computed: per-group state) into group k, whose
        hyperparameters are now hp: the group as resolved stays resolved, unless the caller changed it."""
        seen, _ = self._resolved.get(k, (None, None))
        if seen is not None:
            seen.update(new)   # the very objects written into the group
            self._resolved[k] = (seen, hp)

    # ------------------------------------------------------------ the step
    def step(self, grads, options, launch=None, dense=False):
        """Validate, condition and update. grads: per group, a list aligned with its params (None:
        no update for that param; dense=True: the caller checked that none is None). Returns False
        if the step was skipped (non-finite gradients). launch(engine, plan, unit, c) replaces the
        host-side launch (capturable steps)."""
        hps = self.resolve(self.opt._step_count)
        plans = self._plans_for(hps, grads, dense)
        undo = None
        if plans[0].missing if len(plans) == 1 else any(p.missing for p in plans):
            undo = _allocate(self, plans)   # every check passed: now states may be created
        try:
            if undo is not None:
                plans = self._plans_for(hps, grads, dense)
            units = plans[0].units if len(plans) == 1 else [u for plan in plans for u in plan.units]
            _check_disjoint(self, units)
            if launch is None:   # (capturable steps keep their counts in device memory)
                self.front.check_counts(self.spec, units)
            if options.max_grad_norm is None and options.clip_value is None and options.grad_scale is None \
                    and not options.skip_nonfinite:
                c = NO_CONDITIONING
            else:
                c = grad_conditioning(options, lambda: self.opt._sum_of_squares(plans), lambda: _grad_pairs(plans))
                c = c if c is None else tuple(map(float, c))
        except BaseException:
            if undo is not None:   # a rejected step leaves no states behind
                undo()
            raise
        if c is None:
            if undo is not None:   # nor does a skipped one
                undo()
            return False
        if self.extras or (plans[0].rule in TWO_PASS if len(plans) == 1 else any(p.rule in TWO_PASS for p in plans)):
            c = before_launch(self, plans, c)   # issue 14: per-tensor passes, per-group schedules, Lamb's clip
        launch = launch or self.spec.launch or Engine._launch
        for plan in plans:
            for unit in plan.units:
                launch(self, plan, TwoPass(unit) if plan.rule in TWO_PASS else unit, c)   # (per-tensor sums first)
        return True

    def _plans_for(self, hps, grads, dense=False):
        groups = self.opt.param_groups
        if len(grads) != len(groups):
            raise ValueError(f"grads: expected gradients for {len(groups)} param group(s), got {len(grads)}")
        return [self._plan(k, group, hp, gs, dense) for k, (group, hp, gs) in enumerate(zip(groups, hps, grads))]

    def _plan(self, k, group, hp, gs, dense=False):
        """The group's units for this step, validated (cached while what they describe is unchanged)."""
        params = group["params"]
        if len(gs) != len(params):
            raise ValueError(f"grads: param_groups[{k}] has {len(params)} params, got {len(gs)} grads")
        plan = self._plans.get(k)
        if plan is None or plan.given_hp is not hp:
            names = tuple(n for n, _ in self.spec.states(hp))
            if plan is None or plan.names != names or not _same_list(params, plan.params):
                plan = self._plans[k] = _GroupPlan(self, k, params, names)
            plan.use(self.spec, hp)
        elif not _same_list(params, plan.params):
            plan = self._plans[k] = _GroupPlan(self, k, params, plan.names)
            plan.use(self.spec, hp)
        plan.refresh(self, gs, dense)
        return plan

    def create_states(self, pstate, param, inits):
        """Add the param's missing states ((name, initial value) pairs), made as the unit that will update
        it makes them, then complete its state dict (front.init_state)."""
        created = [name for name, _ in inits if name not in pstate]
        unit_class(self, tuple(name for name, _ in inits), param, kind_of(param)).create_states(self, pstate, param,
                                                                                              inits)
        self.front.init_state(pstate, param, self.spec, created)

    def _launch(self, plan, unit, c):
        """Advance the unit's step counts, compute its scalars (once when all counts agree), run it."""
        spec, front, sts, cache = self.spec, self.front, unit.pstates, unit.front_cache
        steps = front.steps(sts, cache)
        first = steps[0]
        if plan.uniform is not None and (cache.get("uniform") is steps or all(map(operator.eq, steps, repeat(first)))):
            h = plan.uniform(first + 1)
            if unit.htab.shape[1] != len(h):
                unit.htab = np.zeros((1, len(h)), np.float64)
                unit.hwrite = functools.partial(struct.Struct(f"{len(h)}d").pack_into, memoryview(unit.htab), 0)
            unit.hwrite(*h)   # unit.htab[0] = h, in a third of the time
            front.set_step(sts, first + 1, cache)
            unit.launch(plan.rule, unit.htab, None, c)
            return
        # different step counts, or scalar state (NAdam's mu_product): one row of scalars per distinct
        # (step, scalar state), which every param with that key uses
        rows, index, hidx, news = [], {}, [], []
        for st, t in zip(sts, steps):
            key = (t, *(_number(st[n]) for n in spec.scalar_state))
            row = index.get(key)
            if row is None:
                trial = {"step": t + 1, **dict(zip(spec.scalar_state, key[1:]))}
                row = index[key] = (len(rows), trial)
                rows.append(plan_scalars(spec, plan.hp, trial)[1])
            hidx.append(row[0])
            news.append(row[1])
        front.set_steps(sts, [trial["step"] for trial in news], unit.front_cache)
        for st, trial in zip(sts, news):
            for n in spec.scalar_state:
                front.set_scalar(st, n, trial[n])
        unit.launch(plan.rule, np.array(rows, np.float64), np.array(hidx, np.int64), c)


def _no_scalars():
    pass


def _number(x):
    return x if isinstance(x, (int, float)) else float(x)


def _same_list(a, b):
    return a is b or (len(a) == len(b) and all(map(_IS, a, b)))


_ABSENT = object()
_BYTES = np.ones(2, np.int64)   # item sizes of (param, grad) given in bytes


def _snapshot(group):
    """The group's values as resolved: lists, dicts and sets copied (a caller may edit one in place, e.g.
    ``group["betas"][0] = 0.0``), so that an edit in place shows as a change; the params list as is."""
    return {k: (type(v)(v) if type(v) in (list, dict, set) and k != "params" else v) for k, v in group.items()}


def _same_group(seen, group):
    """The group holds the same values as when it was resolved (params compared by identity)."""
    if type(group) is not dict or len(seen) != len(group):
        return False
    if all(map(_IS, seen.values(), group.values())) and all(map(_IS, seen, group)):
        return True   # the usual step: nothing was assigned
    for key, v in seen.items():   # (every key seen is there and the sizes agree: the same keys)
        w = group.get(key, _ABSENT)
        if v is w:
            continue
        if key == "params" or type(v) is not type(w):   # (an absent key: _ABSENT's type)
            return False
        try:
            if bool(v != w):
                return False
        except Exception:  # values that do not compare plainly (arrays, tensors): treat as changed
            return False
    return True


def _grad_pairs(plans):
    """(grad, the dtype the kernels compute in) of every unit: 16-bit grads are computed in float32."""
    return [(g, u.kind.dtype if isinstance(u.kind.dtype, np.dtype) else np.dtype(np.float32))
            for plan in plans for u in plan.units for g in u.grads()]


def _allocate(engine, plans):
    """Create the missing states; returns undo(), which puts opt.state back as it was (for a step that is
    then rejected or skipped)."""
    _check_state_entries(engine, plans)
    state, before = engine.opt.state, {}
    for plan in plans:
        if plan.missing:
            for key in plan.pending[1]:
                st = state.get(key)
                before[key] = (key in state, st, set(st) if isinstance(st, dict) else None)

    def undo():
        for key, (present, st, names) in before.items():
            if not present:
                state.pop(key, None)
                continue
            state[key] = st
            if names is not None:
                for n in [n for n in st if n not in names]:
                    del st[n]
    try:
        for plan in plans:
            plan.allocate(engine)
    except BaseException:   # e.g. a unit that refuses these states: nothing stays half-made
        undo()
        raise
    return undo


def _check_state_entries(engine, plans):
    """The existing state entries of params whose states are about to be completed are dicts."""
    state = engine.opt.state
    for plan in plans:
        if plan.missing:
            labels = dict(zip(plan.keys, plan.labels))
            for key in plan.pending[1]:
                st, label = state.get(key), labels[key]
                if st is not None and not isinstance(st, dict):
                    raise TypeError(f"{label[2].split('[{')[0]}: expected a dict of state entries (or no entry), "
                                    f"got {type(st).__name__}")


def _check_disjoint(engine, units):
    """No two written arrays of different units (groups, dtypes) share memory (checked when one moved), and
    no grad shares memory with a written array of another unit, or of its own where the unit does not check
    that itself (every step: grads are new arrays)."""
    if len(units) <= 1 and (not units or units[0].checks_own_grads or
                            type(units[0]).grad_addresses is Unit.grad_addresses):
        return  # within a table unit its own checks cover both (and device memory is not checked)
    if engine.written is None or any(u.moved or not u.tracks_moves for u in units):
        spans = sorted(s for u in units for s in u.spans())
        pair = first_overlap(spans)
        if pair:
            raise ValueError(f"{pair[1]}: shares memory with {pair[0]}; every param and state must have memory "
                             f"of its own (a view of another param would be updated twice per step)")
        engine.written = _span_table(spans)
        for u in units:
            u.moved = False
    for u in units:
        u.check_grads_against(engine.written)


def _span_table(spans):
    """(start, end, name) spans, sorted, as kernels._pointers.written_spans lays them out: row 0 holds their
    count, rows 1.. the (start, end) byte ranges by start."""
    table = np.zeros((len(spans) + 1, 2), np.int64)
    table[0, 0] = len(spans)
    if spans:
        table[1:] = [(a, b) for a, b, _ in spans]
    return table


def first_overlap(spans):
    """(name, name) of two (start, end, name) byte ranges that overlap, or None."""
    spans = sorted(spans)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            return first, second
    return None


class _GroupPlan:
    """A param group as last validated: its params and their units."""

    def __init__(self, engine, k, params, names):
        self.k, self.params, self.names = k, list(params), names
        self.hp = self.rule = self.uniform = None
        self.given_hp = None   # the hyperparameters use() was given (hp: with the group_<name> aliases)
        start = engine.opt._first_index(k)
        self.indices = list(range(start, start + len(params)))
        self.keys = [engine.front.state_key(i, p) for i, p in zip(self.indices, params)]
        self.labels = [(*engine.front.names(k, j, i), i) for j, i in enumerate(self.indices)]
        self.units = []
        self.pattern = ()     # positions of the params that had grads when the units were made
        self.missing = False
        self.state_cache = {}  # the front's, for reading states

    def use(self, spec, hp):
        """Take this step's hyperparameters: the rule, and the host rule bound to them (all but the step)."""
        self.given_hp = hp
        if spec.group_state:   # per-group state, read by host rules as group_<name>
            hp = {**hp, **{"group_" + n: hp[n] for n in spec.group_state}}
        self.hp, self.rule = hp, spec.rule(hp)
        self.uniform = None
        if not spec.scalar_state:
            names = _codegen.arg_names(spec.scalars)
            fixed = functools.partial(getattr(rules, spec.scalars),
                                      **{n: hp[n] if n in hp else spec.constants[n] for n in names if n != "step"})
            if "step" not in names:
                self.uniform = lambda step: fixed()
            elif names[0] == "step":
                self.uniform = fixed   # step passed positionally: no wrapper frame, no keyword merge
            else:
                self.uniform = lambda step: fixed(step=step)

    def refresh(self, engine, gs, dense=False):
        """Read the grads and states as they are now; revalidate what changed."""
        if not dense and type(None) in set(map(type, gs)):
            pos = [j for j, g in enumerate(gs) if g is not None]
            grads = [gs[j] for j in pos]
        else:
            pos, grads = None, gs
        params = self.params if pos is None else [self.params[j] for j in pos]
        keys = self.keys if pos is None else [self.keys[j] for j in pos]
        labels = self.labels if pos is None else [self.labels[j] for j in pos]
        pstates, cols = engine.front.read_states(engine.opt.state, keys, self.names, self.state_cache)
        self.missing = cols is None and engine.front.state_required(engine.spec, self.names)
        if self.missing:  # check what exists now; states are created once every group has passed
            self.pending = (params, keys)
            _check_params(engine, params, grads, labels)
            self.units = []
            return
        if cols is None:   # no states at all (torch's SGD without momentum)
            cols = [[None] * len(params) for _ in self.names]
        pattern = pos if pos is not None else len(params)
        if pattern != self.pattern or not self.units:
            self.units = _make_units(engine, self, params, labels)
            self.pattern = pattern
        for unit in self.units:
            unit.refresh(params, grads, cols, pstates)

    def allocate(self, engine):
        """Create the missing states of this group's params (after every check passed)."""
        if not self.missing:
            return
        params, keys = self.pending
        state, front, spec = engine.opt.state, engine.front, engine.spec
        inits = spec.states(self.hp)
        for p, key in zip(params, keys):
            st = state.get(key)
            if st is None:
                st = state[key] = front.new_dict()
            engine.create_states(st, p, inits)
        self.units = []


def _check_params(engine, params, grads, labels):
    """Validate params and grads alone (their states do not exist yet)."""
    for p, g, (pname, gname, *_) in zip(params, grads, labels):
        kind = kind_of(p)
        if kind is not None and kind.family in _UNITS and kind.family not in ("numpy", "torch-cpu", "cuda"):
            if kind_of(g) != kind or tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"{gname}: expected a {kind.dtype} array of shape {tuple(p.shape)} on the "
                                 f"param's device, got {getattr(g, 'dtype', type(g).__name__)} "
                                 f"{tuple(getattr(g, 'shape', ()))}")
            continue
        pbuf = Buffer(pname, p)
        same_kind(gname, Buffer(gname, g, writeable=False), pbuf, pname)
        if kind_of(g).family != kind.family:
            raise TypeError(f"{gname}: expected an array of the same kind as {pname} ({kind.family}), got "
                            f"{kind_of(g).family} ({type(g).__module__}.{type(g).__name__})")


def _make_units(engine, plan, params, labels):
    """The group's params partitioned into units by (kind, dtype, device), each in param order."""
    by = {}
    for r, (p, label) in enumerate(zip(params, labels)):
        kind = kind_of(p)
        if kind is None:
            raise TypeError(f"{label[0]}: {describe_kind(p)}")
        family = _family(engine, plan.names, p, kind)
        by.setdefault((family, kind.key), (family, kind, []))[2].append(r)
    whole = len(by) == 1
    units = []
    for family, kind, rows in by.values():
        cls = _UNITS.get(family)
        if cls is None:
            raise TypeError(f"{labels[rows[0]][0]}: {kind.dtype} params are updated by fastlr.torch with "
                            f"master_weights=True or stochastic_rounding=True only")
        units.append(cls(engine, plan, kind, rows, [labels[r] for r in rows], whole))
    return units


# ---------------------------------------------------------------- units
class Unit:
    """Arrays of one group sharing an array kind, dtype and device: one kernel call per step."""

    tracks_moves = False   # whether ``moved`` is kept up to date (else the check across units runs each step)
    checks_own_grads = False   # whether the unit checks its grads against its own written arrays itself

    def grad_addresses(self):
        """((grad start, bytes, param start, param bytes), ...) of this step's grads in host memory; () where
        they are not (device memory: not checked across units)."""
        return ()

    def check_grads_against(self, table):
        """No grad overlaps a written array of the table (kernels._pointers.written_spans' layout) other than,
        exactly, its own param."""
        grads = np.array(self.grad_addresses(), np.int64).reshape(-1, 4)
        if not grads.size:
            return
        # the table units' native check, over (param, grad) addresses with sizes in bytes
        bad = kernel_module("_pointers").grad_alias(np.ascontiguousarray(grads[:, [2, 0]]), grads[:, 1].copy(),
                                                    _BYTES, table)
        if bad >= 0:
            self.overlap_error(bad * self.ncols + 1)

    def __init__(self, engine, plan, kind, rows, labels, whole):
        self.engine, self.kind, self.rows, self.labels = engine, kind, rows, labels
        self.whole = whole      # every active param of the group is in this unit, in order
        self.names = plan.names
        self.ncols = 2 + len(plan.names)
        self.pstates = None
        self.checked = None
        self.moved = True   # a written array moved since the check across units last ran (if tracks_moves)
        self.htab = np.zeros((1, 0), np.float64)   # this step's scalars, when every param shares them
        self.hwrite = _no_scalars                   # writes them into htab (see Engine._launch)
        self.front_cache = {}

    @classmethod
    def create_states(cls, engine, pstate, param, inits):
        """Add the missing states of a param this kind of unit updates (arrays like the param)."""
        for name, init in inits:
            if name not in pstate:
                pstate[name] = engine.front.new_array(param, name, init)

    def _select(self, seq):
        return seq if self.whole else [seq[r] for r in self.rows]

    def refresh(self, params, grads, cols, pstates):
        if self.whole:
            self.pstates, self.given = pstates, [params, grads, *cols]
        else:
            self.pstates = self._select(pstates)
            self.given = [self._select(params), self._select(grads), *[self._select(c) for c in cols]]
        self.read(local_tensors(self.given) if self.kind.family != "numpy" else self.given)

    def grads(self):
        """The grads of this step as the caller gave them (DTensors stay DTensors)."""
        return self.given[1]

    def column_name(self, r, c):
        pname, gname, sname, _ = self.labels[r]
        return pname if c == 0 else gname if c == 1 else sname.format(self.names[c - 2])

    def validate(self, allcols):
        """Full Python checks, with messages naming each array; raises on the first bad one."""
        family = self.kind.family
        for r, row in enumerate(zip(*allcols)):
            pbuf = Buffer(self.column_name(r, 0), row[0])
            for c in range(1, self.ncols):
                buf = Buffer(self.column_name(r, c), row[c], writeable=c != 1)
                same_kind(buf.name, buf, pbuf, pbuf.name)
                kind = kind_of(row[c])
                if kind.family != family:
                    raise TypeError(f"{buf.name}: expected an array of the same kind as {pbuf.name} ({family}), "
                                    f"got {kind.family} ({type(row[c]).__module__}.{type(row[c]).__name__})")
            self.check_kind(r, row[0])

    def check_kind(self, r, p):
        """Param r is still of the unit's kind: ``p.dtype = ...`` or ``p.data = p.data.double()`` in place
        can change it, and the unit's kernels are typed for its kind."""
        kind = kind_of(p)
        if kind is not None and kind.key != self.kind.key:
            was, now = (" ".join(map(str, k.key[1:])) for k in (self.kind, kind))
            raise TypeError(f"{self.column_name(r, 0)}: changed from {was} to {now} after its states were made; "
                            f"clear its state (del opt.state[...]) to start again as {now}")

    def overlap_error(self, idx):
        r, c = divmod(idx, self.ncols)
        raise ValueError(f"{self.column_name(r, c)}: shares memory with another param or state of this step; "
                         f"every param and state must have memory of its own")


class _TableUnit(Unit):
    """CPU arrays updated by one segment-table kernel call per step."""

    tracks_moves = True

    def __init__(self, engine, plan, kind, rows, labels, whole):
        super().__init__(engine, plan, kind, rows, labels, whole)
        self.dtype = kind.dtype
        self.like = np.empty(0, self.dtype)
        self.writable = np.array([1, 0] + [1] * len(self.names), np.int64)
        self.itemsize = np.full(self.ncols, self.dtype.itemsize, np.int64)
        self.ptrs = self.sizes = self.work = self.hzero = None
        self.total = 0
        self.kernels = {}   # (rule, serial) -> the table kernel

    def _new_sizes(self):
        """The work list and totals for the current sizes (and the CPU kernels, imported on first use)."""
        global _CPU
        _CPU = kernel_module("cpu")
        self.work = kernel_module("cpu").make_work(self.sizes, CHUNK)
        self.total = int(self.sizes.sum())
        self.hzero = np.zeros(self.sizes.size, np.int64)

    def launch(self, rule, htab, hidx, c):
        # (every argument is built by the engine with fixed types: float64 htab, int64 tables, floats in c)
        args = (self.ptrs, self.work, self.hzero if hidx is None else hidx, htab, c, self.like)
        serial = self.total < SERIAL_BELOW   # one thread: no pool to wake, no guard needed
        kernel = self.kernels.get((rule, serial))
        if kernel is None:
            dispatcher = _CPU.TABLE_KERNELS[rule + "_serial" if serial else rule]
            with parallel_guard(serial):
                dispatcher(*args)
            self.kernels[rule, serial] = exact(dispatcher, args)
            return
        if serial:
            kernel(*args)
            return
        with parallel_guard():
            kernel(*args)

    def sumsq(self):
        cpu = kernel_module("cpu")
        out = np.empty(self.work.shape[0], np.float64)
        serial = self.total < SERIAL_BELOW
        with parallel_guard(serial):
            (cpu.table_sumsq_serial if serial else cpu.table_sumsq)(self.ptrs, self.work, 1, self.like, out)
        return float(out.sum())

    def spans(self):
        """(start, end, name) of every written array, for the check across units."""
        out = []
        nbytes = self.sizes * self.dtype.itemsize
        for r in range(self.ptrs.shape[0]):
            if nbytes[r]:
                for c in range(self.ncols):
                    if self.writable[c]:
                        s = int(self.ptrs[r, c])
                        out.append((s, s + int(nbytes[r]), self.column_name(r, c)))
        return out

    def check_overlap(self):
        """Written arrays must not overlap (and their sorted spans are kept for check_grads)."""
        self.moved = True
        pointers = kernel_module("_pointers")
        bad = pointers.overlap(self.ptrs, self.sizes, self.itemsize, self.writable)
        if bad >= 0:
            self.overlap_error(bad)
        if self.wspans is None or self.wspans.shape[0] != self.ptrs.size + 1:
            self.wspans = np.zeros((self.ptrs.size + 1, 2), np.int64)
        pointers.written_spans(self.ptrs, self.sizes, self.itemsize, self.writable, self.wspans)

    def check_grads(self):
        """No gradient may overlap a param or state other than (exactly) its own param."""
        self.check_grads_against(self.wspans)

    checks_own_grads = True

    def check_grads_against(self, table):
        bad = kernel_module("_pointers").grad_alias(self.ptrs, self.sizes, self.itemsize, table)
        if bad >= 0:
            self.overlap_error(bad * self.ncols + 1)

    wspans = None   # the written arrays' sorted byte ranges (kernels._pointers.written_spans)


class _NumpyUnit(_TableUnit):
    """NumPy arrays: addresses, dtypes, flags and shapes read from the array structs every step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.cols = None
        # read through Python where struct access is unavailable, or for an unusual dtype object
        global _POINTERS
        _POINTERS = kernel_module("_pointers")
        self.python = not _POINTERS.STRUCT_OK
        self.gather = None   # _POINTERS.gather's entry point for this unit's tables (set at the first read)

    def read(self, allcols):
        cols = self.cols
        grads = allcols[1]
        glist = 0
        if cols is None or not _same_list(allcols[0], cols[0]) or not all(map(_same_list, allcols[2:], cols[2:])):
            self._adopt(allcols)
        else:   # same params and states, this step's grads: the usual step
            if type(grads) is list:
                glist = id(grads)   # gather() reads the grads' addresses from the list itself
            else:
                self.objs[:, 1] = np.fromiter(map(id, grads), np.int64, len(grads))
            if grads is not cols[1]:
                self.cols = [cols[0], grads, *cols[2:]]   # held: the addresses stay theirs
        if self.python:
            self.validate(allcols)
            for c, col in enumerate(allcols):
                self.ptrs[:, c] = [a.__array_interface__["data"][0] for a in col]
            self.sizes[:] = [a.size for a in allcols[0]]
            self.check_overlap()
            self.check_grads()
            self._new_sizes()
            return
        args = (self.objs, self.meta, self.ptrs, self.sizes, self.last, self.wspans, glist)
        if self.gather is None:
            status = _POINTERS.gather(*args)
            self.gather = exact(_POINTERS.gather, args)
        else:
            status = self.gather(*args)
        if status > 0:
            self._explain(status, allcols)
        elif status < 0:
            if -status & 1:
                self._new_sizes()
            if -status & 2:
                self.moved = True

    def _adopt(self, allcols):
        """New array objects: check what the struct reader relies on, then record their addresses."""
        if any(set(map(type, col)) - {np.ndarray, np.memmap} for col in allcols):
            self.validate(allcols)   # raises for kinds this unit cannot read
        n = len(allcols[0])
        self.objs = np.array([list(map(id, col)) for col in allcols], np.int64).T.copy()
        self.cols = allcols   # holds the objects, so their addresses stay theirs while cached
        self.meta = np.zeros((4, max(2, self.ncols)), np.int64)
        self.meta[0, :2] = id(np.ndarray), id(np.memmap)
        self.meta[1, :self.ncols] = id(self.dtype)
        self.meta[2, :self.ncols] = self.itemsize
        self.meta[3, :self.ncols] = self.writable
        self.ptrs = np.empty((n, self.ncols), np.int64)
        self.last = np.zeros((n, self.ncols), np.int64)
        self.sizes = np.full(n, -1, np.int64)
        self.wspans = np.zeros((n * self.ncols + 1, 2), np.int64)

    def _explain(self, status, allcols):
        """Turn a gather() status into the error the Python checks give (or accept an equal dtype
        under another dtype object, read through Python from then on)."""
        reason, idx = kernel_module("_pointers").describe(status)
        self.validate(allcols)   # raises, naming the array, when one is bad
        if reason == "overlap":
            self.overlap_error(idx)
        self.python = True
        self.read(allcols)


class _TorchCPUUnit(_TableUnit):
    """CPU torch tensors (any dense layout, equal for a param, its grad and states), read through torch
    at every step. Params and states: the same objects at the same addresses as when validated
    (``p.data = ...``, a replaced state or a moved tensor changes one of them); grads, new objects
    every step after ``zero_grad()``: their shapes, strides and dtypes equal to the validated params'
    (autograd gives a grad its param's layout, so a param whose layout changed in place shows here
    too). Anything else is validated again in full."""

    held = held_ptrs = pmeta = None
    copied = None   # this step's grads copied into their params' layouts: held until the kernel has run

    def read(self, allcols):
        import torch
        self.copied = None
        try:
            ptrs = [list(map(torch.Tensor.data_ptr, col)) for col in allcols]
        except RuntimeError:   # no storage (a sparse grad, a meta tensor): the checks say which and why
            self.validate(allcols)
            raise
        grads = allcols[1]
        # (raw strides: equal ones need no check; ones that differ only in size-1 dimensions go through _check)
        gmeta = (list(map(_shape, grads)), list(map(torch.Tensor.stride, grads)), list(map(_dtype, grads)))
        written, wptrs = [allcols[0], *allcols[2:]], [ptrs[0], *ptrs[2:]]
        if not (gmeta == self.pmeta and wptrs == self.held_ptrs and all(map(_same_list, written, self.held))):
            allcols = self._check(allcols, gmeta)
            if allcols[1] is not grads:
                self.copied = allcols[1]   # (their addresses are in the table: they must outlive the launch)
            ptrs[1] = list(map(torch.Tensor.data_ptr, allcols[1]))
        self.ptrs = np.array(ptrs, np.int64).T.copy()
        self.check_grads()

    def launch(self, rule, htab, hidx, c):
        try:
            super().launch(rule, htab, hidx, c)
        finally:
            self.copied = None

    def _check(self, allcols, gmeta):
        """Validate everything; returns the columns to use (a dense grad whose layout differs from its
        param's is copied into the param's layout for this step)."""
        import torch
        params = allcols[0]
        grads = allcols[1]
        if any(_strides(g) != _strides(p) and dense(g) for p, g in zip(params, grads)):
            grads = [g if _strides(g) == _strides(p) or not dense(g) else _in_layout_of(p, g)
                     for p, g in zip(params, grads)]
        allcols = [params, grads, *allcols[2:]]
        self.validate(allcols)
        _check_dense(self, allcols)
        pmeta = (list(map(_shape, params)), list(map(torch.Tensor.stride, params)), list(map(_dtype, params)))
        if self.pmeta is None or pmeta[0] != self.pmeta[0]:
            self.sizes = np.array(list(map(torch.Tensor.numel, params)), np.int64)
            self._new_sizes()
        self.ptrs = np.array([list(map(torch.Tensor.data_ptr, col)) for col in allcols], np.int64).T.copy()
        self.check_overlap()
        # what the fast path compares with next time (a copied grad never matches: checked again)
        self.pmeta = pmeta if grads is allcols[1] and gmeta == pmeta else None
        self.held = [params, *allcols[2:]]
        self.held_ptrs = [list(map(torch.Tensor.data_ptr, col)) for col in self.held]
        return allcols


def _in_layout_of(p, g):
    """g copied into a new tensor with p's strides (e.g. a contiguous grad of a channels_last param)."""
    import torch
    out = torch.empty_like(p.detach(), memory_format=torch.preserve_format)
    out.copy_(g)
    return out


def _shape(t):
    return t.shape


def _strides(t):
    """t's strides, with 0 for dimensions of size 1 (whose stride does not change where any element is):
    two tensors of one shape with equal _strides lay their elements out in the same order."""
    return tuple(s if n != 1 else 0 for n, s in zip(t.shape, t.stride()))


def _dtype(t):
    return t.dtype


def _check_dense(unit, allcols):
    """Each param is dense (non-overlapping, no gaps) and its grad and states have its strides,
    so all of them are updated as one flat range of memory."""
    for r, row in enumerate(zip(*allcols)):
        p = row[0]
        if not dense(p):
            raise ValueError(f"{unit.column_name(r, 0)}: expected a dense tensor (its elements one flat block of "
                             f"memory, in any dimension order), got strides {p.stride()} for shape "
                             f"{tuple(p.shape)}")
        for c in range(1, unit.ncols):
            if _strides(row[c]) != _strides(p):
                raise ValueError(f"{unit.column_name(r, c)}: strides {row[c].stride()} differ from its param's "
                                 f"{p.stride()} (same memory layout expected)")


class _CudaUnit(Unit):
    """CUDA arrays (torch, CuPy, numba): one grid-stride launch per array, on the caller's stream."""

    def __init__(self, *args):
        super().__init__(*args)
        self.views = {}

    def read(self, allcols):
        meta = [list(map(_cuda_fingerprint, col)) for col in allcols]
        if meta != self.checked:
            self.validate(allcols)
            self.checked = meta
        self.arrays = [[self._view(x, m) for x, m in zip(col, mcol)] for col, mcol in zip(allcols, meta)]
        self.objs = allcols
        if len(self.views) > 4 * self.ncols * (len(allcols[0]) + 1):
            self.views.clear()   # grads allocated anew each step leave stale views behind

    def _view(self, x, key):
        """The kernel view of x, cached by (address, size, dtype): exactly what a view is made of."""
        if key[0] is None:   # the simulator's arrays have no address: a view of the object itself
            return Buffer("array", x, writeable=False).kernel_view()
        v = self.views.get(key)
        if v is None:
            v = self.views[key] = Buffer("array", x, writeable=False).kernel_view()
        return v

    def launch(self, rule, htab, hidx, c):
        from .streams import current_stream
        cuda = kernel_module("cuda")
        stream = current_stream(self.objs[0][0])
        if rule in cuda.TABLE_KERNELS and _cuda_tables():
            self._launch_table(cuda, rule, htab, hidx, c, stream)
            return
        kernel = cuda.KERNELS[rule]
        rows = htab.tolist()
        for r, p in enumerate(self.arrays[0]):
            h = tuple(rows[0 if hidx is None else int(hidx[r])])
            blocks, threads = cuda.launch_config(p.size)
            kernel[blocks, threads, stream](p, self.arrays[1][r], *[col[r] for col in self.arrays[2:]], h, c)

    def sumsq(self):
        from ._launch import sum_of_squares
        from .streams import current_stream
        return sum(sum_of_squares(g, True, current_stream(obj)) for g, obj in zip(self.arrays[1], self.objs[1]))

    def _launch_table(self, cuda, rule, htab, hidx, c, stream):
        """One launch over a device-side segment table (addresses, work rows, scalars uploaded on the
        caller's stream into buffers kept by this unit)."""
        ptrs = np.array([[fp[0] for fp in col] for col in self.checked], np.int64).T.copy()
        sizes = np.array([fp[1] for fp in self.checked[0]], np.int64)
        if getattr(self, "table_sizes", None) is None or not np.array_equal(sizes, self.table_sizes):
            self.table_sizes = sizes
            self.table_work = kernel_module("cpu").make_work(sizes, cuda.TABLE_CHUNK)
            self.device = {}
        hidx = np.zeros(len(sizes), np.int64) if hidx is None else hidx
        dev = self.device
        for name, host in (("ptrs", ptrs), ("work", self.table_work), ("hidx", hidx), ("htab", htab)):
            buf = dev.get(name)
            if buf is None or buf.shape != host.shape:
                buf = dev[name] = _device_empty(host.shape, host.dtype, stream)
            buf.copy_to_device(host, stream=stream)
        like = dev.get("like")
        if like is None:
            like = dev["like"] = _device_empty((1,), self.arrays[0][0].dtype, stream)
        blocks = max(1, min(len(self.table_work), cuda._max_blocks()))
        cuda.TABLE_KERNELS[rule][blocks, cuda.THREADS, stream](dev["ptrs"], dev["work"], dev["hidx"], dev["htab"], c,
                                                               like)

    def spans(self):
        out = []
        for r, col in enumerate(zip(*self.checked)):
            for c, fp in enumerate(col):
                if c != 1 and fp[0] is not None and fp[1]:
                    out.append((fp[0], fp[0] + fp[1] * fp[2], self.column_name(r, c)))
        return out


def _cuda_tables():
    """Whether CUDA units launch the segment-table kernels (FASTLR_CUDA_TABLES=1) rather than one kernel
    per array: opt-in until the table path has been checked on a real GPU (docs/GPU.md)."""
    import os
    return os.environ.get("FASTLR_CUDA_TABLES") == "1"


def _device_empty(shape, dtype, stream):
    from numba import cuda
    return cuda.device_array(shape, dtype, stream=stream)


def _cuda_fingerprint(x):
    """(address, elements, item size, typestr, shape, strides) of a CUDA array; (None, id) where it
    has no ``__cuda_array_interface__`` (numba's simulator)."""
    iface = getattr(x, "__cuda_array_interface__", None)
    if iface is None:
        return (None, id(x))
    size = 1
    for d in iface["shape"]:
        size *= d
    typestr = iface["typestr"]
    return (iface["data"][0], size, int(typestr[2:]), typestr, tuple(iface["shape"]), iface.get("strides"))


_POINTERS = None   # fastlr.kernels._pointers once a NumPy unit exists
_CPU = None   # fastlr.kernels.cpu once a CPU unit exists (importing it compiles or loads kernels)

_UNITS = {"numpy": _NumpyUnit, "torch-cpu": _TorchCPUUnit, "cuda": _CudaUnit}


_ROUTES = []


def register_unit(family, cls):
    """Let a feature module (e.g. fastlr.mixed) handle the arrays of one kind family."""
    _UNITS[family] = cls


def register_route(route):
    """Let a feature module claim params for a unit family of its own: ``route(engine, names, param, kind)``
    returns a family registered with register_unit, or None (names: the group's state names)."""
    if route not in _ROUTES:
        _ROUTES.append(route)


def _family(engine, names, param, kind):
    """The unit family that updates a param: a route's choice, else its kind's."""
    for route in _ROUTES:
        family = route(engine, names, param, kind)
        if family is not None:
            return family
    return kind.family


def unit_class(engine, names, param, kind):
    """The unit class that updates a param (the Unit base for a kind no unit handles)."""
    return _UNITS.get(_family(engine, names, param, kind), Unit) if kind is not None else Unit


def local_tensors(allcols):
    """DTensors (FSDP2) replaced by their local shards: each rank updates its own, in place."""
    return [[x.to_local() for x in col] if col and type(col[0]).__name__ == "DTensor" else col for col in allcols]
