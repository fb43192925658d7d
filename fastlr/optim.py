"""Stateful optimizers with torch.optim's names, arguments, defaults and state names.

Each class is one line over its entry in ``fastlr.specs`` (hyperparameters and defaults, states,
rule chooser, host scalars); the shared ``Optimizer`` base holds no algorithm logic: param groups,
validation, schedules, gradient conditioning and state dicts, over ``fastlr.engine``.
"""
import numbers
from collections import deque
from itertools import repeat

import numpy as np

from . import capturable as _capturable
from . import specs as _specs
from . import state_precision as _precision
from ._arrays import (
    Buffer,
    copy_into,
    describe_kind,
    full_like,
    kind_of,
    library,
    memory_span,
    same_kind,
    to_numpy,
)
from .engine import Engine, Front, plan_scalars
from .kernels import rules  # noqa: F401  (re-exported for scripts that bind rules by name)
from .muon import MuonSteps
from .schedulefree import ScheduleFree

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax",
           "NAdam", "RAdam", "Lion", "ASGD", "Rprop", "Adopt", "Adan", "SGDScheduleFree", "AdamWScheduleFree",
           "RAdamScheduleFree", "Lamb", "Lars", "Mars", "Muon",
           "Adafactor"]

_ARRAY_TYPES = {np.ndarray, type(None)}
_OPTIONS = dict(max_grad_norm=None, clip_value=None, grad_scale=None, skip_nonfinite=False, capturable=False,
                **_precision.OPTIONS)


class Optimizer:
    """Base of every fastlr optimizer (NumPy, CuPy, numba and torch arrays).

    params: one array, a list of arrays, or torch-style groups
    ``[{"params": [a, b], "lr": 1e-2}, c]`` (a group may be empty, as in torch). Arrays are float32/float64 NumPy arrays
    (C-contiguous, aligned, writeable), torch tensors (CPU or CUDA), CuPy arrays or numba
    device arrays; states are allocated by the same library. ``lr`` may be a float or a
    schedule ``schedule(step) -> lr`` (step 0-based: the first step() uses ``schedule(0)``).

    What the caller holds is read at every step: ``param_groups[k]["params"]`` and the arrays
    in ``state`` may be replaced, edited or cleared between steps (cleared states start again
    from their initial values, as torch does); anything invalid is rejected with a clear error
    before any array changes.

    Gradient conditioning, fused into the update kernels:
    max_grad_norm: clip by the global L2 norm over all params, as
        ``torch.nn.utils.clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6), at most 1).
    clip_value: clamp each gradient element to [-clip_value, clip_value] (``clip_grad_value_``).
    grad_scale: the loss-scale factor to divide the gradients by. With it (or with
        ``skip_nonfinite=True``), a step whose gradients hold NaN or Inf is skipped:
        params, states and step counts stay untouched and ``last_step_skipped`` is True.
    capturable: CUDA params only. Steps read lr and the step count from device memory and
        never sync, so they can be captured in a CUDA graph and replayed (``state[i]['step']``
        is then a one-element float64 device array, and lr may be one; see
        ``fastlr.capturable``). Not with max_grad_norm, grad_scale or skip_nonfinite.
    state_precision ("fp32", "bf16", "8bit", "4bit"), state_min_size, state_stochastic_rounding:
        states held in low precision; see ``fastlr.state_precision``.

    ``step()`` may be called from several threads: calls on one optimizer are serialized.
    """

    spec = None

    def __init_subclass__(cls, spec=None, **kwargs):
        """``class Adam(Optimizer, spec=specs.Adam)``: an ``__init__`` with the spec's signature."""
        super().__init_subclass__(**kwargs)
        if spec is None:
            return
        cls.spec = spec
        if "__init__" not in cls.__dict__:
            cls.__init__ = _make_init(spec)
        cls.__doc__ = _doc(spec, cls.__doc__)

    def __init__(self, params, defaults, *, max_grad_norm=None, clip_value=None, grad_scale=None,
                 skip_nonfinite=False, capturable=False, **state_options):
        if self.spec is None:
            raise TypeError("Optimizer is a base class: use one of fastlr's algorithms (fastlr.Adam, ...)")
        self.defaults = {**defaults, **self.spec.group_defaults(defaults)}
        for name in ("max_grad_norm", "clip_value", "grad_scale"):
            value = locals()[name]
            if value is not None:
                _specs.positive(name, value)
        _specs.flag("skip_nonfinite", skip_nonfinite)
        _specs.flag("capturable", capturable)
        self.max_grad_norm, self.clip_value, self.grad_scale = max_grad_norm, clip_value, grad_scale
        self.skip_nonfinite = skip_nonfinite or grad_scale is not None
        self.capturable = capturable
        _precision.configure(self, **state_options)
        self.param_groups = []
        self.state = StateDict()
        self._step_count = 0
        self.skipped_steps = 0
        self.last_step_skipped = False
        self._engine = Engine(self, self.spec, _NumpyFront(self))
        if library(params) is not None:
            params = [params]
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params: expected an array, a list of arrays or a list of param groups, got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError("params: expected at least one array or param group, got an empty list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group if isinstance(group, dict) else {"params": [group]})
        if capturable:
            _capturable.check_options(self)

    # ------------------------------------------------------------ groups
    def add_param_group(self, group):
        """Add a group ``{"params": [...], **hyperparameters}``; missing ones take the defaults."""
        with self._engine.lock:   # not in the middle of another thread's step
            self._add_param_group(group)

    def _add_param_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        arrays = group["params"]
        arrays = [arrays] if library(arrays) is not None else list(arrays)
        unknown = set(group) - set(self.defaults) - {"params"} - set(self.spec.constants)
        if unknown:
            raise TypeError(f"param group: unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}")
        where = f"param_groups[{len(self.param_groups)}]"
        group = {**self.defaults, **group, "params": arrays}
        _specs.check_group(self.spec, {**self.spec.constants, **group}, where)
        start = self._first_index(len(self.param_groups))
        for j, p in enumerate(arrays):
            name = f"params[{start + j}]"
            if kind_of(p) is None:
                raise TypeError(f"{name}: {describe_kind(p)}")
            Buffer(name, p)
        _check_distinct([p for g in self.param_groups for p in g["params"]] + arrays)
        self.param_groups.append(group)
        self._engine.reset()

    def _first_index(self, k):
        """The overall number of the first param of group k."""
        return sum(len(g["params"]) for g in self.param_groups[:k])

    @staticmethod
    def _hyperparameters(hp):
        """Hyperparameters as the host rules take them: NumPy scalars and one-element arrays as Python
        numbers (so float32 values do not make the host arithmetic float32)."""
        return {k: _plain(v) for k, v in hp.items()}

    # ------------------------------------------------------------ stepping
    def step(self, grads=None):
        """Update every param that has a gradient, in place. Returns False if the step was skipped.

        grads mirror the params: one array, or a list in param order (nested lists per
        group are flattened), None to leave a param out. Without grads, torch tensors'
        ``.grad`` is used. Everything is validated before any buffer changes.
        """
        with self._engine.lock:
            per_group, dense = self._split_grads(grads)
            if self.capturable:
                ok = _capturable.step(self, per_group)
            else:
                ok = self._engine.step(per_group, self, dense=dense)
            self.last_step_skipped = not ok
            if ok:
                self._step_count += 1
            else:
                self.skipped_steps += 1
            return ok

    def _grads_per_group(self, grads):
        """The grads as one list per group, aligned with its params (count checked)."""
        return self._split_grads(grads)[0]

    def _split_grads(self, grads):
        """(_grads_per_group(grads), True if no grad is None)."""
        groups = self.param_groups
        if type(grads) is np.ndarray and len(groups) == 1 and type(groups[0]) is dict \
                and len(groups[0].get("params", ())) == 1:
            return [[grads]], True   # one array for one param: nothing to split
        try:
            n = sum(len(g["params"]) for g in self.param_groups)
        except (KeyError, TypeError):
            n = None
        if n is None or not isinstance(self.state, dict):
            _check_layout(self)
        dense = False   # (unknown)
        if grads is None:
            flat = []
            for g in self.param_groups:
                for p in g["params"]:
                    if library(p) != "torch":
                        raise TypeError("grads: required (only torch tensors carry their own .grad)")
                    flat.append(p.grad)
        elif library(grads) is not None:
            flat = [grads]
        elif type(grads) is list and (types := set(map(type, grads))) <= _ARRAY_TYPES:
            flat = grads   # the common case, checked at C speed: a flat list of NumPy arrays (and None)
            dense = type(None) not in types
        else:
            try:
                flat = [g for item in grads
                        for g in ([item] if item is None or library(item) is not None else item)]
            except TypeError:
                raise TypeError(f"grads: expected an array or a list of arrays (None to skip a param), got "
                                f"{_first_bad_grad(grads)}") from None
        if len(flat) != n:
            raise ValueError(f"grads: expected {n} gradient(s), one per param, got {len(flat)}")
        out, start = [], 0
        for g in self.param_groups:
            out.append(flat[start:start + len(g["params"])])   # copies: the arrays stay alive for the step
            start += len(g["params"])
        return out, dense

    def _sum_of_squares(self, plans):
        return sum(u.sumsq() for plan in plans for u in plan.units)

    def step_rows(self, indices, grad_rows, param=None):
        """Update only rows ``indices`` of a 2-D param with ``grad_rows`` (lazy; duplicate ids summed).

        param: the table's index (param-group order) or the array itself; None when the optimizer
        has one param. Safe to call from many threads at once. Returns the param's step count.
        See ``fastlr.sparse``.
        """
        if self.capturable:
            raise NotImplementedError("step_rows: not available with capturable=True")
        if self.state_precision != "fp32":
            raise NotImplementedError(f"step_rows: not available with state_precision={self.state_precision!r}")
        from .sparse import step_rows
        return step_rows(self, param, indices, grad_rows)

    def zero_grad(self):
        """For torch tensors: drop the gradients (set .grad to None), as torch does."""
        for g in self.param_groups:
            for p in g["params"]:
                if library(p) == "torch":
                    p.grad = None

    # ------------------------------------------------------------ hooks used by sparse.py
    @classmethod
    def _check_group(cls, group, where):
        _specs.check_group(cls.spec, {**cls.spec.constants, **group}, where)

    @classmethod
    def _state_names(cls, group):
        return cls.spec.states(group)

    @classmethod
    def _plan(cls, group, pstate):
        """(element rule, float64 scalars) for one param's step; pstate['step'] is this step's (1-based)."""
        return plan_scalars(cls.spec, {**cls.spec.constants, **group}, pstate)

    # ------------------------------------------------------------ state dict
    def state_dict(self, dequantize=False):
        """Hyperparameters, step counts and COPIES of the state arrays (a snapshot). dequantize=True: states
        held in low precision as float arrays of their param's shape and dtype (``fastlr.state_precision``)."""
        with self._engine.lock:
            state = {i: {k: (_snapshot(v) if library(v) is not None else v) for k, v in pstate.items()}
                     for i, pstate in self.state.items()}
            if dequantize:
                state = _precision.dequantized(self, state, [p for g in self.param_groups for p in g["params"]],
                                               self._group_of)
            groups, start = [], 0
            for group in self.param_groups:
                n = len(group["params"])
                groups.append({**{k: v for k, v in group.items() if k != "params"},
                               "params": list(range(start, start + n))})
                start += n
            return {"algorithm": type(self).__name__, "state": state, "param_groups": groups,
                    "step_count": self._step_count}

    def load_state_dict(self, state_dict):
        """Load a state dict of the same algorithm and param layout. Everything is checked first; on any
        error nothing changes."""
        with self._engine.lock:
            groups, state, step_count = self._checked_state_dict(state_dict)
            for group, new in zip(self.param_groups, groups):
                for key in [k for k in group if k not in new]:   # (no moment without 'params' or 'lr')
                    del group[key]
                group.update(new)
            self.state = StateDict.adopt(state)
            self._step_count = step_count
            self._engine.reset()

    def _checked_state_dict(self, sd):
        """(new groups, new state, step count) from a state dict, validated completely."""
        name = type(self).__name__
        if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) \
                or not isinstance(sd.get("param_groups"), (list, tuple)):
            raise ValueError("state_dict: expected a dict with 'state' (a dict) and 'param_groups' (a list)")
        if sd.get("algorithm", name) != name:
            raise ValueError(f"state_dict: it was saved by {sd['algorithm']}, this is {name}")
        saved_groups = sd["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param group(s), got {len(saved_groups)}")
        new_groups, index = [], {}
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"state_dict: param_groups[{k}]"
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"{where}: expected a dict with a 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{where} has {len(saved['params'])} params, expected {len(group['params'])}")
            new = {**group, **{key: v for key, v in saved.items() if key != "params"}, "params": group["params"]}
            self._check_group({k2: v for k2, v in new.items() if k2 != "params"}, where)
            new_groups.append(new)
            start = self._first_index(k)
            for pos, key in enumerate(saved["params"]):
                try:
                    hash(key)
                except TypeError:
                    raise ValueError(f"{where}: params[{pos}]: expected a param id (int), got {key!r}") from None
                if key in index:
                    raise ValueError(f"{where}: param id {key!r} appears twice")
                index[key] = (start + pos, k)
        loaded = {}
        arrays = [p for g in self.param_groups for p in g["params"]]
        for key, saved in sd["state"].items():
            if key not in index:
                raise ValueError(f"state_dict: state for unknown param {key!r}")
            i, k = index[key]
            where = f"state_dict: state[{key!r}]"
            if not isinstance(saved, dict):
                raise ValueError(f"{where}: expected a dict, got {type(saved).__name__}")
            hp = {**self.spec.constants, **new_groups[k]}
            # a state array it lacks (max_exp_avg_sq after amsgrad was switched on) starts from its initial
            # value at the next step, as any missing state does; the counts must be there
            expected = [n for n, _ in self.spec.states(hp) if n in saved]
            missing = [n for n in ["step", *self.spec.scalar_state] if n not in saved]
            if missing:
                raise ValueError(f"{where} lacks {missing} (expected by {name} with these options)")
            loaded[i] = self._checked_param_state(where, saved, expected, arrays[i], hp)
            if self.spec.aux_states is not None:   # states not shaped like the param (Adafactor)
                loaded[i].update(_checked_aux_states(where, saved, self.spec.aux_states, arrays[i]))
        return new_groups, loaded, _step_count(sd.get("step_count", self._step_count))

    def _group_of(self, i):
        """The hyperparameters of param number i's group."""
        for group in self.param_groups:
            if i < len(group["params"]):
                return {**self.spec.constants, **group}
            i -= len(group["params"])
        raise IndexError(i)

    def _checked_param_state(self, where, saved, expected, param, hp):
        """A new state dict for one param from a saved one: validated, arrays copied into new arrays (in this
        optimizer's state precision)."""
        return _precision.load_param_state(self, param, saved, hp,
                                           lambda floats: self._checked_float_state(where, floats, expected, param))

    def _checked_float_state(self, where, saved, expected, param):
        ref = Buffer("param", param)
        pstate = {"step": _step_value(f"{where}['step']", saved["step"])}
        for n in self.spec.scalar_state:
            _specs.finite(f"{where}[{n!r}]", saved[n])
            pstate[n] = _specs._number(f"{where}[{n!r}]", saved[n])
        for n in expected:
            value = saved[n]
            buf = Buffer(f"{where}[{n!r}]", value, writeable=False) if kind_of(value) else None
            if buf is None:
                raise TypeError(f"{where}[{n!r}]: expected an array, got {type(value).__name__}")
            buf.device = ref.device   # saved states may live on the host; they are copied over
            same_kind(buf.name, buf, ref, "its param")
            host = to_numpy(value)
            _check_state_values(buf.name, n, host)
            arr = full_like(param, 0.0)
            copy_into(arr, host)
            pstate[n] = arr
        return pstate

    # ------------------------------------------------------------ copies
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_engine")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.state = StateDict.adopt(self.state)
        self._engine = Engine(self, self.spec, _NumpyFront(self))
        _precision.restore(self)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {v}" for key, v in sorted(group.items()) if key != "params"]
        return "\n".join(lines + [")"])


class _Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class StateDict(dict):
    """``opt.state`` of the NumPy API and each param's entry in it: ordinary dicts that count their
    changes in a counter they share, so a step can tell at once that no state was replaced, added or
    removed since the last one (then the arrays it validated are the ones held; their addresses,
    dtypes and shapes are still read at every step). A dict assigned by the caller is read in full
    at every step instead."""

    __slots__ = ("_counter",)

    def __init__(self, *args, counter=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._counter = counter if counter is not None else _Counter()

    def _changed(self):
        counter = getattr(self, "_counter", None)
        if counter is not None:
            counter.n += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other):
        self.update(other)
        return self

    def clear(self):
        super().clear()
        self._changed()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._changed()

    def __reduce__(self):   # copies are plain dicts until their optimizer adopts them
        return dict, (dict(self),)

    @classmethod
    def adopt(cls, state):
        """The optimizer's state as StateDicts sharing one counter (after unpickling or loading)."""
        out = cls()
        for key, st in state.items():
            dict.__setitem__(out, key, cls(st, counter=out._counter) if isinstance(st, dict) else st)
        return out


def _counter_of(st):
    return getattr(st, "_counter", None)


class _NumpyFront(Front):
    """State of the NumPy API: keyed by param index, step counts as Python ints, StateDicts."""

    def __init__(self, opt):
        self.opt = opt

    def new_dict(self):
        state = self.opt.state
        return StateDict(counter=state._counter) if type(state) is StateDict else {}

    def read_states(self, state, keys, names, cache):
        counter = state._counter if type(state) is StateDict else None
        if counter is not None and cache.get("state") is state and cache.get("n") == counter.n \
                and cache.get("keys") is keys:
            return cache["pstates"], cache["cols"]
        pstates, cols = super().read_states(state, keys, names, cache)
        cache.clear()
        if counter is not None and cols is not None and set(map(_counter_of, pstates)) == {counter}:
            cache.update(state=state, n=counter.n, keys=keys, pstates=pstates, cols=cols)
        return pstates, cols

    def steps(self, pstates, cache):
        if cache.get("of") is pstates:   # nothing was replaced since these were written
            return cache["steps"]
        return super().steps(pstates, cache)

    def check_counts(self, spec, units):
        # counts this front wrote itself, with nothing replaced since (see steps): nothing to check
        if len(units) == 1 and units[0].front_cache.get("of") is units[0].pstates:
            return
        super().check_counts(spec, [u for u in units if u.front_cache.get("of") is not u.pstates])

    def set_steps(self, pstates, values, cache):
        values = list(values)
        # our own write, not a change of what the caller holds: dict's setitem, which counts nothing
        deque(map(dict.__setitem__, pstates, repeat("step"), values), maxlen=0)
        cache["of"], cache["steps"], cache["uniform"] = pstates, values, None

    def set_step(self, pstates, value, cache):
        values = [value] * len(pstates)
        if len(pstates) == 1:
            dict.__setitem__(pstates[0], "step", value)
        else:
            deque(map(dict.__setitem__, pstates, repeat("step"), values), maxlen=0)
        cache["of"], cache["steps"], cache["uniform"] = pstates, values, values

    def set_scalar(self, pstate, name, value):
        dict.__setitem__(pstate, name, value)   # our own write (NAdam's mu_product): counts nothing


def _first_bad_grad(grads):
    """What a grads argument that is not an array or a list of arrays holds, for the message."""
    if not isinstance(grads, (list, tuple)):
        return f"{type(grads).__module__}.{type(grads).__name__}"
    for i, item in enumerate(grads):
        if item is not None and library(item) is None and not isinstance(item, (list, tuple)):
            return f"grads[{i}] = {type(item).__module__}.{type(item).__name__}"
        if isinstance(item, (list, tuple)):
            for j, g in enumerate(item):
                if g is not None and library(g) is None:
                    return f"grads[{i}][{j}] = {type(g).__module__}.{type(g).__name__}"
    return type(grads).__name__


def _check_layout(opt):
    """param_groups a list of dicts with 'params', state a dict (both may be edited between steps)."""
    if not isinstance(opt.state, dict):
        raise TypeError(f"state: expected a dict (param index -> state entries), got {type(opt.state).__name__}")
    for k, group in enumerate(opt.param_groups):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param_groups[{k}]: expected a dict with a 'params' entry")
        try:
            len(group["params"])
        except TypeError:
            raise TypeError(f"param_groups[{k}]['params']: expected a list of arrays, got "
                            f"{type(group['params']).__name__}") from None


def _plain(v):
    """NumPy scalars and one-element arrays (not device arrays) as Python numbers; pairs as tuples."""
    if isinstance(v, (bool, int, float, str)) or v is None or callable(v):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, numbers.Number) and hasattr(v, "item"):
        return v.item()
    if library(v) == "numpy" and v.size == 1:
        return v.item()
    if library(v) == "torch" and v.numel() == 1 and v.device.type == "cpu":
        return v.item()
    return v


def _check_distinct(arrays):
    """No array twice and no two arrays sharing memory (each would be updated twice per step)."""
    seen = {}
    spans = []
    for i, p in enumerate(arrays):
        if id(p) in seen:
            raise ValueError(f"params[{i}]: this array appears in more than one place (also params[{seen[id(p)]}])")
        seen[id(p)] = i
        span = memory_span(p)
        if span is not None:
            spans.append((*span, i))
    spans.sort()
    for (_, e0, i0), (s1, _, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            i0, i1 = sorted((i0, i1))
            raise ValueError(f"params[{i1}]: shares memory with params[{i0}] (views of one array); every param "
                             f"must have memory of its own, or it would be updated twice per step")


def _checked_aux_states(where, saved, aux_states, param):
    """Copies of the saved states that are not shaped like their param, checked against the shapes expected."""
    out = {}
    for n, shape in aux_states(tuple(param.shape)):
        if n not in saved:
            continue
        host = to_numpy(saved[n]) if library(saved[n]) is not None else None
        if host is None or host.shape != tuple(shape):
            raise ValueError(f"{where}[{n!r}]: expected an array of shape {tuple(shape)}, got "
                             f"{getattr(saved[n], 'shape', type(saved[n]).__name__)}")
        _check_state_values(f"{where}[{n!r}]", n, host)
        arr = full_like(param, 0.0, tuple(shape))
        copy_into(arr, host.astype(arr.dtype if library(param) == "numpy" else host.dtype))
        out[n] = arr
    return out


def _step_value(where, value):
    """A saved step count: a whole number >= 0 (int, integral float, or a one-element array of any library)."""
    if library(value) is not None:
        host = to_numpy(value)
        value = host.reshape(-1)[0].item() if host.size == 1 else host
    return _specs.step_count(where, value)


def _step_count(value):
    return _step_value("state_dict: step_count", value)


# States whose values must be >= 0 (sums of squares, second moments, infinity norms).
_NON_NEGATIVE = {"sum", "square_avg", "acc_delta", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "row_var", "col_var",
                 "variance"}


def _check_state_values(where, name, host):
    import numpy as np
    if not np.isfinite(host).all():
        raise ValueError(f"{where}: holds non-finite values (NaN or Inf); a saved state must be finite")
    if name in _NON_NEGATIVE and (host < 0).any():
        raise ValueError(f"{where}: holds negative values; {name!r} is a sum or average of squares (>= 0)")


def _snapshot(x):
    lib = library(x)
    if lib == "torch":
        return x.detach().clone()
    if lib == "cupy":
        return x.copy()
    return to_numpy(x)


def _make_init(spec):
    """``__init__(self, params, <the spec's hyperparameters>, *, <options>)`` with a real signature. An option
    the algorithm has as a hyperparameter of its own (timm Lamb's max_grad_norm) is that hyperparameter."""
    options = {k: v for k, v in _OPTIONS.items() if k not in spec.defaults}
    return _specs.make_init(spec, lambda self, params, hp, extra: Optimizer.__init__(self, params, hp, **extra),
                            options)


def _doc(spec, doc):
    return (f"{doc or spec.summary}\n\n    {spec.name}(params, {spec.signature_text()}, **options)\n\n"
            f"    Update: {spec.math}\n    Reference: {spec.reference}. Options: see fastlr.Optimizer.\n")


# ---------------------------------------------------------------- the algorithms
class SGD(Optimizer, spec=_specs.SGD):
    """Stochastic gradient descent, with momentum, dampening and Nesterov momentum (torch.optim.SGD)."""


class Adagrad(Optimizer, spec=_specs.Adagrad):
    """Adagrad (torch.optim.Adagrad): per-element lr from the sum of squared gradients."""


class RMSprop(Optimizer, spec=_specs.RMSprop):
    """RMSprop (torch.optim.RMSprop): eps added outside the square root, optional centering and momentum."""


class Adadelta(Optimizer, spec=_specs.Adadelta):
    """Adadelta (torch.optim.Adadelta)."""


class Adam(Optimizer, spec=_specs.Adam):
    """Adam (torch.optim.Adam) with bias correction; AMSGrad; eps added after the bias-corrected sqrt(v)."""


class AdamW(Optimizer, spec=_specs.AdamW):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay p <- p (1 - lr wd)."""


class Adamax(Optimizer, spec=_specs.Adamax):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm."""


class NAdam(Optimizer, spec=_specs.NAdam):
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum and momentum decay."""


class RAdam(Optimizer, spec=_specs.RAdam):
    """RAdam (torch.optim.RAdam): Adam with the variance rectification term."""


class Lion(Optimizer, spec=_specs.Lion):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), decoupled weight decay."""


# ---------------------------------------------------------------- beyond torch.optim's classic ten (issue 14)
class ASGD(Optimizer, spec=_specs.ASGD):
    """Averaged SGD (torch.optim.ASGD): the running average of the iterates in state['ax']."""


class Rprop(Optimizer, spec=_specs.Rprop):
    """Rprop (torch.optim.Rprop): resilient backpropagation, per-element step sizes."""


class Adopt(Optimizer, spec=_specs.Adopt):
    """ADOPT (timm.optim.Adopt, Taniguchi et al. 2024)."""


class Adan(Optimizer, spec=_specs.Adan):
    """Adan (timm.optim.Adan, Xie et al. 2022): adaptive Nesterov momentum."""


class SGDScheduleFree(ScheduleFree, Optimizer, spec=_specs.SGDScheduleFree):
    """Schedule-free SGD (schedulefree.SGDScheduleFree): call train() before steps, eval() before evaluating."""


class AdamWScheduleFree(ScheduleFree, Optimizer, spec=_specs.AdamWScheduleFree):
    """Schedule-free AdamW (schedulefree.AdamWScheduleFree): call train() before steps, eval() before evaluating."""


class RAdamScheduleFree(ScheduleFree, Optimizer, spec=_specs.RAdamScheduleFree):
    """Schedule-free RAdam (schedulefree.RAdamScheduleFree): call train() before steps, eval() before evaluating."""


class Lamb(Optimizer, spec=_specs.Lamb):
    """LAMB (timm.optim.Lamb): Adam's update scaled per tensor by a trust ratio."""


class Lars(Optimizer, spec=_specs.Lars):
    """LARS (timm.optim.Lars): SGD scaled per tensor by a trust ratio."""


class Mars(Optimizer, spec=_specs.Mars):
    """MARS (timm.optim.Mars): variance-reduced, per-tensor clipped gradients in AdamW or Lion."""


class _Muon(Optimizer, spec=_specs.Muon):
    pass


class Muon(MuonSteps, _Muon):
    """Muon (torch.optim.Muon): 2-D params; Newton-Schulz in bfloat16 through torch (ns_dtype="float32": float32)."""


class Adafactor(Optimizer, spec=_specs.Adafactor):
    """Adafactor (torch.optim.Adafactor): factored second moments; its row/column reductions run as torch ops."""
