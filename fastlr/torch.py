"""fastlr.torch: drop-in ``torch.optim.Optimizer`` subclasses running fastlr's kernels.

    import fastlr.torch
    opt = fastlr.torch.AdamW(model.parameters(), lr=1e-3)   # as torch.optim.AdamW
    loss.backward(); opt.step(); opt.zero_grad()

Every algorithm of ``fastlr.specs`` is here with torch.optim's constructor (the torch-only
switches ``foreach`` and ``fused`` are accepted and ignored; ``capturable`` and
``differentiable`` must stay False). A thin layer over fastlr's engine: params keep their
storage, strides and memory format; grads are read wherever autograd put them (any
``zero_grad`` mode, no copies); states are ordinary tensors in ``opt.state`` in torch's layout
and keys (``"step"`` a float32 0-d tensor, ``exp_avg``, ...), created lazily at the first step
and read from ``opt.state`` at every step, so clearing, replacing or editing them, ``p.data =``,
``model.double()`` before the first step, ``add_param_group``, schedulers, hooks, deepcopy,
``torch.save``/``torch.load(weights_only=True)``, ZeroRedundancyOptimizer and DDP bucket views
behave as with torch.optim. On CPU all params of a group that share a dtype are updated by one
kernel call over a table of their addresses. DTensor params (FSDP2): each rank updates its
local shard; ``max_grad_norm`` reduces over the mesh as ``clip_grad_norm_`` does.

Extra options, shared by every algorithm (see ``fastlr.Optimizer``): ``max_grad_norm``,
``clip_value``, ``grad_scale``, ``skip_nonfinite`` (fused gradient conditioning), and for
bfloat16/float16 params ``master_weights=True`` (a float32 master copy in
``state[p]["master_param"]``, rounded values written back) or ``stochastic_rounding=True``
(bfloat16 updated in place with stochastic rounding, deterministic given ``seed``). States of
16-bit params are float32 (or ``state_precision``: bf16, 8-bit or 4-bit states for the
algorithms whose states are moments, see ``fastlr.state_precision``; ``state_dict(dequantize=True)``
exports them as float32).
Inside ``torch.compile``, ``step()`` is one graph break.
"""
import inspect
import math
import operator
from collections import defaultdict
from copy import deepcopy
from itertools import repeat

import numpy as np
import torch

from . import mixed as _mixed  # noqa: F401  (handles 16-bit params: master weights, stochastic rounding)
from . import specs as _specs
from . import state_precision as _precision
from .engine import Engine, Front
from .muon import MuonSteps
from .schedulefree import ScheduleFree

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "ASGD",
           "Rprop", "Adopt", "Adan", "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree",
           "Lamb", "Lars", "Mars", "Muon", "Adafactor"]

_HALF = (torch.bfloat16, torch.float16)
_OPTIONS = dict(max_grad_norm=None, clip_value=None, grad_scale=None, skip_nonfinite=False, master_weights=False,
                stochastic_rounding=False, seed=0, **_precision.OPTIONS)
_SWITCHES = dict(foreach=None, fused=None, capturable=False, differentiable=False)


def _scalar_dtype():
    return torch.get_default_dtype() if torch.get_default_dtype() in (torch.float32, torch.float64) \
        else torch.float32


class _TorchFront(Front):
    """torch.optim's state conventions: keyed by the param, ``step`` a float 0-d tensor."""

    def __init__(self, opt):
        self.opt = opt
        self.fresh = set()   # ids of states created this step (SGD keeps no step count: first step = fresh)

    def state_key(self, index, param):
        return param

    def init_state(self, pstate, param, spec, created):
        if not spec.param_step:   # torch's SGD keeps no step count: a buffer made now is a first step
            if created:
                self.fresh.add(id(pstate))
        elif "step" not in pstate:
            pstate["step"] = 0 if spec.int_step else torch.tensor(0.0, dtype=_scalar_dtype())
        for name, v in spec.scalar_state.items():
            if name not in pstate:
                pstate[name] = torch.tensor(v, dtype=_scalar_dtype())
        if param.dtype in _HALF and self.opt.master_weights and "master_param" not in pstate:
            pstate["master_param"] = param.detach().to(torch.float32, memory_format=torch.preserve_format)

    def state_required(self, spec, names):
        return spec.param_step or bool(names) or self.opt.master_weights

    def new_array(self, param, name, init):
        dtype = torch.float32 if param.dtype in _HALF else param.dtype
        if isinstance(init, str) and init == _specs.COPY_OF_PARAM:
            return param.detach().to(dtype, memory_format=torch.preserve_format, copy=True)
        return torch.full_like(param.detach(), init, dtype=dtype, memory_format=torch.preserve_format)

    def steps(self, pstates, cache):
        read = cache.pop("read", None)
        if read is not None and read[0] is pstates:   # read by check_counts just before, in this step
            return read[1]
        counts = cache.get("steps")
        tensors = list(map(_step_of, pstates))
        if counts is None or not (_same(tensors, counts.tensors) and
                                  (counts.ptrs is None or list(map(torch.Tensor.data_ptr, tensors)) == counts.ptrs)):
            counts = cache["steps"] = _StepCounts(tensors)
        counts.pstates = pstates
        return counts.values(self.fresh)

    def set_steps(self, pstates, values, cache):
        """Every value is the old count + 1: add 1 in place, as torch's ``step_t += 1``."""
        counts = cache["steps"]
        if counts.python is None:
            counts.advance()
            return
        for st, v in zip(pstates, values):   # counts that are not 0-d CPU tensors, or absent (SGD)
            if st is not None and "step" in st:
                t = st["step"]
                if isinstance(t, torch.Tensor):
                    t.add_(1)
                else:
                    st["step"] = v

    def check_counts(self, spec, units):
        if spec.param_step:   # torch's states hold a step count (SGD's and a few others' do not)
            for unit in units:
                if all(map(operator.contains, unit.pstates, repeat("step"))):
                    continue
                for r, st in enumerate(unit.pstates):
                    if "step" not in st:
                        raise ValueError(f"{unit.labels[r][2].format('step')}: missing (the state of {spec.name} "
                                         f"holds a step count); clear the param's state to start again")
        super().check_counts(spec, units)

    def counted(self, unit, steps):
        unit.front_cache["read"] = (unit.pstates, steps)   # the launch's steps() takes them, once

    def set_scalar(self, pstate, name, value):
        t = pstate.get(name)
        if isinstance(t, torch.Tensor):
            t.fill_(value)
        else:
            pstate[name] = value

    def names(self, k, j, index):
        p = f"param_groups[{k}]['params'][{j}]"
        return p, f"{p}.grad", f"state[{p}][{{!r}}]"


class _TorchOptimizer(torch.optim.Optimizer):
    """Shared machinery: a torch.optim.Optimizer whose step runs fastlr's engine."""

    spec = None

    def __init_subclass__(cls, spec=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if spec is not None:
            cls.spec = spec
            cls.__init__ = _make_init(spec)
            cls.__doc__ = (f"{spec.summary} ({spec.reference})\n\n    fastlr.torch.{spec.name}(params, "
                           f"{spec.signature_text()}, **options)\n\n    Update: {spec.math}\n    "
                           f"See fastlr.torch for the options.\n")

    def __init__(self, params, defaults, switches, options):
        if switches.get("capturable"):
            raise ValueError("capturable=True is not supported by fastlr.torch (use fastlr's own optimizers on "
                             "CUDA arrays for capturable steps)")
        if switches.get("differentiable"):
            raise ValueError("differentiable=True is not supported by fastlr.torch (its steps update params in "
                             "place outside autograd; use torch.optim with differentiable=True to differentiate "
                             "through a step)")
        self.defaults = defaults   # (torch's __init__ sets it again; the options' checks read it first)
        self._set_options(**options)
        torch_cls = getattr(torch.optim, type(self).__name__, None)
        if torch_cls is not None:   # torch's own group keys too, so state dicts look the same
            known = inspect.signature(torch_cls.__init__).parameters
            defaults.update({k: v for k, v in switches.items() if k in known})
        defaults.update({k: v for k, v in switches.items() if k in self.spec.switches})
        defaults.update(self.spec.constants)
        defaults.update(self.spec.group_defaults(defaults))
        self._engine = Engine(self, self.spec, _TorchFront(self))
        super().__init__(params, defaults)
        self.last_step_skipped = False
        self.skipped_steps = 0

    def _set_options(self, max_grad_norm=None, clip_value=None, grad_scale=None, skip_nonfinite=False,
                     master_weights=False, stochastic_rounding=False, seed=0, **state_options):
        for name, v in (("max_grad_norm", max_grad_norm), ("clip_value", clip_value), ("grad_scale", grad_scale)):
            if v is not None:
                _specs.positive(name, v)
        for name, v in (("skip_nonfinite", skip_nonfinite), ("master_weights", master_weights),
                        ("stochastic_rounding", stochastic_rounding)):
            _specs.flag(name, v)
        if master_weights and stochastic_rounding:
            raise ValueError("master_weights and stochastic_rounding: choose one")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        self.max_grad_norm, self.clip_value, self.grad_scale = max_grad_norm, clip_value, grad_scale
        self.skip_nonfinite = skip_nonfinite or grad_scale is not None
        self.master_weights, self.stochastic_rounding, self.seed = master_weights, stochastic_rounding, seed
        _precision.configure(self, **state_options)

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        """As torch's, plus fastlr's checks (dtypes, devices, hyperparameters); nothing is added if one fails."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        with self._engine.lock:   # not in the middle of another thread's step
            super().add_param_group(param_group)
            try:
                self._check_new_group(len(self.param_groups) - 1)
            except BaseException:
                self.param_groups.pop()
                raise
            self._engine.reset()
            if self.spec.eager_state:   # as torch's Adagrad: states exist from construction on
                self._make_states(self.param_groups[-1])

    def _make_states(self, group):
        """Create (or, while never used, remake in the params' dtype and device) the group's states."""
        hp = self._hyperparameters({**self.spec.constants, **{k: v for k, v in group.items() if k != "params"}})
        for p in group["params"]:
            st = self.state[p]
            fresh = not st or (_step_zero(st) and any(
                isinstance(v, torch.Tensor) and v.shape == p.shape and (v.dtype != _state_dtype(p) or
                                                                        v.device != p.device)
                for v in st.values()))
            if fresh:
                st.clear()
                self._engine.create_states(st, p, self.spec.states(hp))

    def _check_new_group(self, k):
        group = self.param_groups[k]
        where = f"param_groups[{k}]"
        params = group["params"]
        devices = {str(p.device) for p in params}
        if len(devices) > 1:
            raise ValueError(f"{where}: params on several devices ({sorted(devices)}); put each device's params "
                             f"in a group of its own")
        for j, p in enumerate(params):
            name = f"{where}['params'][{j}]"
            if p.is_sparse or p.layout != torch.strided:
                raise TypeError(f"{name}: sparse/non-strided params are not supported")
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{name}: tensors on device {p.device.type!r} are not supported (CPU or CUDA)")
            _check_dtype(self, name, p.dtype)
            if p.dtype in _HALF and not self.spec.half_params:
                raise TypeError(f"{name} is {p.dtype}: {self.spec.name} takes float32/float64 params only (its "
                                f"matrix or factored steps run through torch ops on the params' own dtype; "
                                f"not implemented for 16-bit params with master weights yet)")
            for i, q in enumerate(params[:j]):
                if q is p:
                    raise ValueError(f"{name} is the same tensor as {where}['params'][{i}]; torch.optim warns and "
                                     f"updates it twice per step, fastlr refuses: list each param once")
        _specs.check_group(self.spec, self._hyperparameters(
            {key: v for key, v in group.items() if key != "params"}), where)

    @staticmethod
    def _hyperparameters(hp):
        """One-element tensors (torch allows lr as a tensor) as Python numbers; others are left for the checks."""
        return {k: tuple(map(_item, v)) if isinstance(v, tuple) else _item(v) for k, v in hp.items()}

    def _first_index(self, k):
        return sum(len(g["params"]) for g in self.param_groups[:k])

    # ------------------------------------------------------------ stepping
    @torch.compiler.disable   # inside torch.compile: one graph break here, nothing traced below
    def step(self, closure=None):
        """One update of every param that has a grad. Returns the closure's loss (torch semantics).

        ``last_step_skipped`` says whether non-finite gradients made this step a no-op."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    def _update(self):
        with self._engine.lock, torch.no_grad():
            if not isinstance(self.state, dict):
                raise TypeError(f"state: expected a dict (param -> state entries), got {type(self.state).__name__}")
            if self.spec.eager_state and not self._states_used:
                for group in self.param_groups:   # params moved (dtype, device) before the first step
                    self._make_states(group)
            grads = [list(map(_grad, g["params"])) for g in self.param_groups]
            try:
                ok = self._engine.step(grads, self)
            finally:
                self._engine.front.fresh.clear()
            self.last_step_skipped = not ok
            if not ok:
                self.skipped_steps += 1
            elif self.spec.eager_state and not self._states_used:
                self._states_used = all(not _step_zero(st) for st in self.state.values())

    _step_count = 0   # schedules as callables are a NumPy-API feature; torch uses lr_scheduler
    _states_used = False

    def _sum_of_squares(self, plans):
        local = [g for plan in plans for u in plan.units for g in u.grads()]
        dist = [g for g in local if _is_dtensor(g)]
        if dist:   # as clip_grad_norm_: the norm over every rank's shard
            return float(torch.nn.utils.get_total_norm(local, norm_type=2.0).full_tensor()) ** 2 \
                if hasattr(torch.nn.utils, "get_total_norm") else math.fsum(float(g.pow(2).sum()) for g in local)
        return sum(u.sumsq() for plan in plans for u in plan.units)

    # ------------------------------------------------------------ state dicts and copies
    def state_dict(self, dequantize=False):
        """torch's state dict; dequantize=True: states held in low precision as float32 tensors in torch's
        layout (loadable by torch.optim)."""
        sd = super().state_dict()
        if dequantize:
            params = [p for g in self.param_groups for p in g["params"]]
            groups = [g for g in self.param_groups for _ in g["params"]]
            sd["state"] = _precision.dequantized(self, sd["state"], params, lambda i: self._hyperparameters(
                {**self.spec.constants, **{k: v for k, v in groups[i].items() if k != "params"}}), on_device=True)
        return sd

    def load_state_dict(self, state_dict):
        """Load a state dict in torch.optim's layout (from torch.optim.X or fastlr.torch.X). Everything is
        checked before anything changes; states of 16-bit params stay float32."""
        with self._engine.lock:
            state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
            for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
                result = pre_hook(self, state_dict)
                if result is not None:
                    state_dict = result
            state, groups = _checked_load(self, state_dict)
            self.__setstate__({"state": state, "param_groups": groups})
            for post_hook in self._optimizer_load_state_dict_post_hooks.values():
                post_hook(self)

    def __getstate__(self):
        state = super().__getstate__()
        for name in _OPTIONS:
            state[name] = getattr(self, name)
        state["skipped_steps"], state["last_step_skipped"] = self.skipped_steps, self.last_step_skipped
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_engine" not in self.__dict__:
            self._engine = Engine(self, self.spec, _TorchFront(self))
        for name, default in _OPTIONS.items():
            self.__dict__.setdefault(name, default)
        _precision.restore(self)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("last_step_skipped", False)
        self._engine.reset()


def _grad(p):
    return p.grad


def _item(v):
    """A one-element CPU/CUDA tensor as a Python number; anything else as it is."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type in ("cpu", "cuda"):
        return v.item()
    return v


def _step_of(st):
    return st.get("step") if st is not None else None


def _same(a, b):
    return len(a) == len(b) and all(map(operator.is_, a, b))


class _StepCounts:
    """The step counts of a unit's params: torch's 0-d float tensors are read and advanced through
    their addresses in one native call (no per-tensor ``.item()`` or ``+= 1`` dispatch); anything
    else (a Python number, a tensor elsewhere, SGD's absent count) through Python."""

    def __init__(self, tensors):
        from .kernels import _pointers
        self.ops = _pointers
        self.tensors = tensors
        plain = all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel() == 1
                    and t.dtype in (torch.float32, torch.float64) and t.is_contiguous() for t in tensors)
        self.ptrs = list(map(torch.Tensor.data_ptr, tensors)) if plain else None
        if plain:
            self.addrs = np.array(self.ptrs, np.int64)
            self.is64 = np.array([t.dtype == torch.float64 for t in tensors], np.int64)
            self.out = np.empty(len(tensors), np.float64)
            self.python = None
        else:
            self.python = True

    def values(self, fresh):
        if self.python is None:
            self.ops.read_scalars(self.addrs, self.is64, self.out)
            return self.out.tolist()
        values = []
        for st, t in zip(self.pstates, self.tensors):
            if t is None:   # SGD: only whether this is the first step matters
                values.append(0 if st is not None and id(st) in fresh else 1)
            else:
                values.append(t.item() if isinstance(t, torch.Tensor) else t)
        return values

    def advance(self):
        self.ops.add_scalars(self.addrs, self.is64, 1.0)


def _step_zero(st):
    t = st.get("step")
    return t is not None and float(t) == 0


def _state_dtype(p):
    return torch.float32 if p.dtype in _HALF else p.dtype


def _is_dtensor(t):
    return type(t).__name__ == "DTensor"


def _check_dtype(opt, name, dtype):
    if dtype in (torch.float32, torch.float64):
        return
    if dtype not in _HALF:
        raise TypeError(f"{name}: expected a float32, float64, bfloat16 or float16 tensor, got {dtype}")
    if not (opt.master_weights or opt.stochastic_rounding):
        raise TypeError(f"{name} is {dtype}: pass master_weights=True (float32 master copy) or "
                        f"stochastic_rounding=True (bfloat16 only)")
    if dtype == torch.float16 and opt.stochastic_rounding:
        raise TypeError(f"{name}: stochastic_rounding supports bfloat16 only; use master_weights=True for float16")


def _checked_load(opt, sd):
    """(state, param groups) as torch's load_state_dict would make them, after checking everything."""
    if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) \
            or not isinstance(sd.get("param_groups"), (list, tuple)):
        raise ValueError("state_dict: expected a dict with 'state' (a dict) and 'param_groups' (a list)")
    groups, saved_groups = opt.param_groups, deepcopy(list(sd["param_groups"]))
    if len(groups) != len(saved_groups):
        raise ValueError(f"state_dict: expected {len(groups)} param group(s), got {len(saved_groups)}")
    for k, (g, sg) in enumerate(zip(groups, saved_groups)):
        if not isinstance(sg, dict) or not isinstance(sg.get("params"), (list, tuple)):
            raise ValueError(f"state_dict: param_groups[{k}]: expected a dict with a 'params' list")
        if len(sg["params"]) != len(g["params"]):
            raise ValueError(f"state_dict: param_groups[{k}] has {len(sg['params'])} params, expected "
                             f"{len(g['params'])}")
    id_map = {}
    for k, (g, sg) in enumerate(zip(groups, saved_groups)):
        for key, p in zip(sg["params"], g["params"]):
            try:
                seen = key in id_map
            except TypeError:
                raise ValueError(f"state_dict: param_groups[{k}]: expected param ids (ints), got {key!r}") from None
            if seen:
                raise ValueError(f"state_dict: param_groups[{k}]: param id {key!r} appears twice")
            id_map[key] = p
    where_of = {id(p): (k, j) for k, g in enumerate(groups) for j, p in enumerate(g["params"])}
    new_groups = []
    for k, (g, sg) in enumerate(zip(groups, saved_groups)):
        sg["params"] = g["params"]
        if "param_names" in g and "param_names" not in sg:
            sg["param_names"] = g["param_names"]
        hp = opt._hyperparameters({key: v for key, v in {**opt.spec.constants, **sg}.items()
                                   if key not in ("params", "param_names")})
        _specs.check_group(opt.spec, hp, f"state_dict: param_groups[{k}]")
        new_groups.append(sg)
    state = defaultdict(dict)
    for key, saved in sd["state"].items():
        if key not in id_map:
            state[key] = saved   # as torch: state of unknown params is kept as it is
            continue
        p = id_map[key]
        k, j = where_of[id(p)]
        where = f"state_dict: state[{key!r}]"
        if not isinstance(saved, dict):
            raise ValueError(f"{where}: expected a dict, got {type(saved).__name__}")
        hp = opt._hyperparameters({**opt.spec.constants, **new_groups[k]})
        state[p] = _checked_param_state(opt, where, p, saved, hp)
    return state, new_groups


def _checked_param_state(opt, where, p, saved, hp):
    """One param's loaded state: tensors cast to the param's device (and dtype; float32 for 16-bit params)."""
    names = [n for n, _ in opt.spec.states(hp)]
    return _precision.load_param_state(opt, p, saved, hp,
                                       lambda floats: _checked_float_state(opt, where, p, floats, names))


def _checked_float_state(opt, where, p, saved, names):
    # a state tensor it lacks (max_exp_avg_sq after amsgrad was switched on) starts from its initial value at
    # the next step, as any missing state does; the counts must be there
    expected = (["step"] if opt.spec.param_step else []) + list(opt.spec.scalar_state)
    missing = [n for n in expected if n not in saved]
    if missing:
        raise ValueError(f"{where} lacks {missing} (expected by {type(opt).__name__} with these options)")
    out = {}
    state_dtype = torch.float32 if p.dtype in _HALF else p.dtype
    for name, v in saved.items():
        if name == "step":
            out[name] = _checked_step(f"{where}['step']", v)
        elif name in opt.spec.scalar_state:
            _specs.finite(f"{where}[{name!r}]", v)
            out[name] = v
        elif name in names or name == "master_param":
            out[name] = _checked_state_tensor(f"{where}[{name!r}]", name, v, p, state_dtype)
        else:
            out[name] = v
    return out


_NON_NEGATIVE = {"sum", "square_avg", "acc_delta", "exp_avg_sq", "max_exp_avg_sq", "exp_inf"}


def _checked_state_tensor(where, name, v, p, state_dtype):
    """A saved state tensor as the param's state: dense, real floating point, of the param's shape, finite
    (and >= 0 for sums of squares) once cast to the state dtype; cast and moved to the param's device."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor, got {type(v).__name__}")
    if v.layout != torch.strided or v.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{where}: expected a dense CPU or CUDA tensor, got {v.layout} on {v.device.type!r}")
    if not v.is_floating_point():
        raise TypeError(f"{where}: expected a floating-point tensor, got {v.dtype}")
    if tuple(v.shape) != tuple(p.shape):
        raise ValueError(f"{where}: has shape {tuple(v.shape)}, its param {tuple(p.shape)}")
    out = v.to(dtype=state_dtype, device=p.device)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{where}: holds non-finite values (NaN or Inf) as {state_dtype}")
    if name in _NON_NEGATIVE and bool((out < 0).any()):
        raise ValueError(f"{where}: holds negative values; it is a sum or average of squares")
    return out


def _checked_step(where, v):
    """A saved step count, checked; integer tensors become torch's float step tensor (fastlr adds 1.0 to them)."""
    n = _specs.step_count(where, v)
    if isinstance(v, torch.Tensor) and not v.is_floating_point():
        return torch.tensor(float(n), dtype=_scalar_dtype())
    return v


def _make_init(spec):
    """``__init__(self, params, <spec hyperparameters>, *, <torch switches>, <fastlr options>)`` (an option the
    algorithm has as a hyperparameter of its own, timm Lamb's max_grad_norm, is that hyperparameter)."""
    options = {k: v for k, v in _OPTIONS.items() if k not in spec.defaults}

    def base(self, params, hp, extra):
        _TorchOptimizer.__init__(self, params, hp, {k: extra[k] for k in _SWITCHES}, {k: extra[k] for k in options})
    return _specs.make_init(spec, base, {**_SWITCHES, **options})


class SGD(_TorchOptimizer, spec=_specs.SGD):
    pass


class Adagrad(_TorchOptimizer, spec=_specs.Adagrad):
    pass


class RMSprop(_TorchOptimizer, spec=_specs.RMSprop):
    pass


class Adadelta(_TorchOptimizer, spec=_specs.Adadelta):
    pass


class Adam(_TorchOptimizer, spec=_specs.Adam):
    pass


class AdamW(_TorchOptimizer, spec=_specs.AdamW):
    pass


class Adamax(_TorchOptimizer, spec=_specs.Adamax):
    pass


class NAdam(_TorchOptimizer, spec=_specs.NAdam):
    pass


class RAdam(_TorchOptimizer, spec=_specs.RAdam):
    pass


class Lion(_TorchOptimizer, spec=_specs.Lion):
    pass



# ---------------------------------------------------------------- beyond torch.optim's classic ten (issue 14)
class ASGD(_TorchOptimizer, spec=_specs.ASGD):
    pass


class Rprop(_TorchOptimizer, spec=_specs.Rprop):
    pass


class Adopt(_TorchOptimizer, spec=_specs.Adopt):
    pass


class Adan(_TorchOptimizer, spec=_specs.Adan):
    pass


class SGDScheduleFree(ScheduleFree, _TorchOptimizer, spec=_specs.SGDScheduleFree):
    pass


class AdamWScheduleFree(ScheduleFree, _TorchOptimizer, spec=_specs.AdamWScheduleFree):
    pass


class RAdamScheduleFree(ScheduleFree, _TorchOptimizer, spec=_specs.RAdamScheduleFree):
    pass


class Lamb(_TorchOptimizer, spec=_specs.Lamb):
    pass


class Lars(_TorchOptimizer, spec=_specs.Lars):
    pass


class Mars(_TorchOptimizer, spec=_specs.Mars):
    pass


class _Muon(_TorchOptimizer, spec=_specs.Muon):
    pass


class Muon(MuonSteps, _Muon):
    """Muon (torch.optim.Muon): 2-D params; Newton-Schulz in bfloat16 (ns_dtype="float32": float32)."""


class Adafactor(_TorchOptimizer, spec=_specs.Adafactor):
    pass
