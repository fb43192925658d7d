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
16-bit params are float32. Inside ``torch.compile``, ``step()`` is one graph break.
"""
import inspect
import math
from collections import defaultdict
from copy import deepcopy
from itertools import chain

import torch

from . import mixed as _mixed  # noqa: F401  (handles 16-bit params: master weights, stochastic rounding)
from . import specs as _specs
from .engine import Engine, Front
from .muon import MuonSteps
from .schedulefree import ScheduleFree

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "ASGD",
           "Rprop", "Adopt", "Adan", "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree",
           "Lamb", "Lars", "Mars", "Muon", "Adafactor"]

_HALF = (torch.bfloat16, torch.float16)
_OPTIONS = dict(max_grad_norm=None, clip_value=None, grad_scale=None, skip_nonfinite=False, master_weights=False,
                stochastic_rounding=False, seed=0)
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

    def steps(self, pstates):
        values = []
        for st in pstates:
            t = st.get("step") if st is not None else None
            if t is None:   # SGD: only whether this is the first step matters
                values.append(0 if id(st) in self.fresh else 1)
            else:
                values.append(t.item() if isinstance(t, torch.Tensor) else t)
        return values

    def set_steps(self, pstates, values):
        tensors = []
        for st, v in zip(pstates, values):
            t = st.get("step") if st is not None else None
            if isinstance(t, torch.Tensor):
                tensors.append(t)
            elif t is not None:
                st["step"] = v
        if tensors:   # every value is the old count + 1, as torch's step_t += 1
            torch._foreach_add_(tensors, 1.0)

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
        for k in ("capturable", "differentiable"):
            if switches.get(k):
                raise ValueError(f"{k}=True is not supported by fastlr.torch (use fastlr's own optimizers on "
                                 f"CUDA arrays for capturable steps)")
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
                     master_weights=False, stochastic_rounding=False, seed=0):
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

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        """As torch's, plus fastlr's checks (dtypes, devices, hyperparameters); nothing is added if one fails."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("param group: expected a dict with a 'params' entry")
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
        front = self._engine.front
        for p in group["params"]:
            st = self.state[p]
            fresh = not st or (_step_zero(st) and any(
                isinstance(v, torch.Tensor) and v.shape == p.shape and (v.dtype != _state_dtype(p) or
                                                                        v.device != p.device)
                for v in st.values()))
            if fresh:
                st.clear()
                created = []
                for name, init in self.spec.states(hp):
                    st[name] = front.new_array(p, name, init)
                    created.append(name)
                front.init_state(st, p, self.spec, created)

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
                                f"per-tensor norms are not implemented for 16-bit params yet)")
            for i, q in enumerate(params[:j]):
                if q is p:
                    raise ValueError(f"{name} is the same tensor as {where}['params'][{i}]; torch.optim warns and "
                                     f"updates it twice per step, fastlr refuses: list each param once")
        _specs.check_group(self.spec, self._hyperparameters(
            {key: v for key, v in group.items() if key != "params"}), where)

    @staticmethod
    def _hyperparameters(hp):
        """Tensors (torch allows lr as a tensor) as Python numbers."""
        return {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else
                    tuple(x.item() if isinstance(x, torch.Tensor) else x for x in v) if isinstance(v, tuple) else v)
                for k, v in hp.items()}

    def _first_index(self, k):
        return sum(len(g["params"]) for g in self.param_groups[:k])

    # ------------------------------------------------------------ stepping
    def step(self, closure=None):
        """One update of every param that has a grad. Returns the closure's loss (torch semantics).

        ``last_step_skipped`` says whether non-finite gradients made this step a no-op."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update()
        return loss

    @torch.compiler.disable
    def _update(self):
        with self._engine.lock, torch.no_grad():
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
            else:
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
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("last_step_skipped", False)
        self._engine.reset()


def _grad(p):
    return p.grad


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
    id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                      chain.from_iterable(g["params"] for g in groups)))
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
    expected = names + (["step"] if opt.spec.param_step else []) + list(opt.spec.scalar_state)
    missing = [n for n in expected if n not in saved]
    if missing:
        raise ValueError(f"{where} lacks {missing} (expected by {type(opt).__name__} with these options)")
    out = {}
    state_dtype = torch.float32 if p.dtype in _HALF else p.dtype
    for name, v in saved.items():
        if name == "step":
            out[name] = _checked_step(f"{where}['step']", v)
        elif name in opt.spec.scalar_state:
            x = v.item() if isinstance(v, torch.Tensor) else v
            _specs._number(f"{where}[{name!r}]", x)
            out[name] = v
        elif isinstance(v, torch.Tensor) and (name in names or name == "master_param"):
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{where}[{name!r}]: has shape {tuple(v.shape)}, its param {tuple(p.shape)}")
            if not v.is_floating_point():
                raise TypeError(f"{where}[{name!r}]: expected a floating-point tensor, got {v.dtype}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{where}[{name!r}]: holds non-finite values (NaN or Inf)")
            if name in _NON_NEGATIVE and bool((v < 0).any()):
                raise ValueError(f"{where}[{name!r}]: holds negative values; it is a sum or average of squares")
            out[name] = v.to(dtype=state_dtype, device=p.device)
        else:
            out[name] = v
    return out


_NON_NEGATIVE = {"sum", "square_avg", "acc_delta", "exp_avg_sq", "max_exp_avg_sq", "exp_inf"}


def _checked_step(where, v):
    x = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0 or x != int(x):
        raise ValueError(f"{where}: expected a step count (a whole number >= 0), got {v!r}")
    return v


def _make_init(spec):
    """__init__(self, params, <spec hyperparameters>, *, <torch switches>, <fastlr options>) with a real signature."""
    names = list(spec.defaults)
    options = [k for k in _OPTIONS if k not in spec.defaults]   # timm Lamb's max_grad_norm is its own
    kw = ", ".join(f"{k}={v!r}" for k, v in {**_SWITCHES, **_OPTIONS}.items() if k not in spec.defaults)
    src = (f"def __init__(self, params, {spec.signature_text()}{', ' if spec.keyword_only else ', *, '}{kw}):\n"
           f"    _TorchOptimizer.__init__(self, params, dict({', '.join(f'{n}={n}' for n in names)}),\n"
           f"        dict({', '.join(f'{n}={n}' for n in _SWITCHES)}),\n"
           f"        dict({', '.join(f'{n}={n}' for n in options)}))\n")
    namespace = {"_TorchOptimizer": _TorchOptimizer}
    exec(compile(src, f"<fastlr.torch {spec.name}.__init__>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{spec.name}.__init__"
    return init


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
