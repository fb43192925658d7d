"""Stateful optimizers with torch.optim's names, arguments, defaults and state names.

Each class only says which rule of ``fastlr.kernels.rules`` it runs, which state arrays
that rule needs, and how its per-step scalars come from the group's hyperparameters.
Everything else (param groups, validation, schedules, gradient conditioning, state
dicts, dispatch to CPU or CUDA kernels) is the shared ``Optimizer`` base.
"""
import math
import numbers

from . import capturable as _capturable
from ._arrays import Buffer, copy_into, full_like, host_scalar, library, same_kind, to_numpy
from ._launch import NO_CONDITIONING, run, sum_of_squares
from .kernels import rules
from .kernels._codegen import arg_names
from .streams import current_stream

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax",
           "NAdam", "RAdam", "Lion"]


# ---------------------------------------------------------------- hyperparameter checks
def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def _non_negative(name, value):
    if _number(name, value) < 0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")


def _positive(name, value):
    if _number(name, value) <= 0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")


def _unit_interval(name, value):
    if not 0.0 <= _number(name, value) <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value!r}")


def _finite(name, value):
    if math.isinf(_number(name, value)):
        raise ValueError(f"{name}: expected a finite value, got {value!r}")


def _betas(name, value):
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name}: expected a pair (beta1, beta2), got {value!r}")
    for i, b in enumerate(value):
        if not 0.0 <= _number(f"{name}[{i}]", b) < 1.0:
            raise ValueError(f"{name}[{i}]: expected a value in [0, 1), got {b!r}")


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def _lr(name, value):
    if callable(value):
        return
    if library(value) is not None:  # a one-element device array (capturable=True), checked on use
        Buffer(name, value, writeable=False)
        return
    _non_negative(name, value)


# One check per hyperparameter name, shared by every algorithm that has it.
CHECKS = {
    "lr": _lr, "eps": _positive, "betas": _betas, "weight_decay": _non_negative,
    "momentum": _non_negative, "dampening": _finite, "alpha": _non_negative, "rho": _unit_interval,
    "lr_decay": _non_negative, "initial_accumulator_value": _non_negative,
    "momentum_decay": _non_negative, "nesterov": _flag, "maximize": _flag, "amsgrad": _flag,
    "centered": _flag, "decoupled_weight_decay": _flag,
}


def grad_conditioning(options, sum_of_squares):
    """(scale, lo, hi) for ``rules.condition`` as float64, or None when the step must be skipped.

    options carries max_grad_norm, clip_value, grad_scale and skip_nonfinite;
    sum_of_squares() gives the gradients' total sum of squares and is called only when the
    norm is needed (clipping by norm, or the non-finite check).
    """
    lo, hi = -math.inf, math.inf
    if options.clip_value is not None:
        lo, hi = -options.clip_value, options.clip_value
    unscale = 1.0 / options.grad_scale if options.grad_scale is not None else 1.0
    if options.max_grad_norm is None and not options.skip_nonfinite:
        return unscale, lo, hi
    norm = math.sqrt(sum_of_squares()) * unscale
    if options.skip_nonfinite and not math.isfinite(norm):
        return None
    scale = 1.0
    if options.max_grad_norm is not None:  # as clip_grad_norm_: max_norm / (norm + 1e-6), at most 1
        scale = min(options.max_grad_norm / (norm + 1e-6), 1.0)
    return scale * unscale, lo, hi


class Optimizer:
    """Base of every fastlr optimizer.

    params: one array, a list of arrays, or torch-style groups
    ``[{"params": [a, b], "lr": 1e-2}, c]``. Arrays are float32/float64 NumPy arrays,
    torch tensors (CPU or CUDA), CuPy arrays or numba device arrays; states are
    allocated by the same library. ``lr`` may be a float or a schedule
    ``schedule(step) -> lr`` (step 0-based: the first step() uses ``schedule(0)``).

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
    """

    defaults = {}
    # Scalar (non-array) per-parameter state and its initial value, e.g. NAdam's mu_product.
    scalar_state = {}
    # Scalar state -> name of the rules function giving its value for this step (before `scalars`).
    scalar_updates = {}
    # Name of the rules.<algo>_scalars function; its arguments are bound by name (see _arg).
    scalars = None

    def __init__(self, params, defaults, *, max_grad_norm=None, clip_value=None, grad_scale=None,
                 skip_nonfinite=False, capturable=False):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        self._buffers = []          # Buffer of each param, in index order
        self._flat_states = {}      # param index -> (state names, flat kernel views)
        self._grad_cache = {}       # param index -> Buffer of the last gradient array seen
        self._group_index = []      # param index -> its group's index
        self._checked = {}          # group index -> hyperparameters last validated
        self._resolved = {}         # group index -> (the group as last seen, its resolved hyperparameters)
        self._ensured = {}          # param index -> (resolved hyperparameters, state) last ensured
        self._device_state = {}     # param index -> capturable device scalars (fastlr.capturable)
        self._lr_device = {}        # group index -> (lr, its device view) for capturable steps
        self._step_count = 0
        self.skipped_steps = 0
        self.last_step_skipped = False
        if library(params) is not None:
            params = [params]
        params = list(params)
        if not params:
            raise ValueError("params: expected at least one array or param group, got an empty list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group if isinstance(group, dict) else {"params": [group]})
        self.max_grad_norm, self.clip_value, self.grad_scale = max_grad_norm, clip_value, grad_scale
        for name in ("max_grad_norm", "clip_value", "grad_scale"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _flag("skip_nonfinite", skip_nonfinite)
        self.skip_nonfinite = skip_nonfinite or grad_scale is not None
        _flag("capturable", capturable)
        self.capturable = capturable
        if capturable:
            _capturable.check_options(self)

    # ------------------------------------------------------------ groups
    def add_param_group(self, group):
        """Add a group ``{"params": [...], **hyperparameters}``; missing ones take the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        arrays = group["params"]
        arrays = [arrays] if library(arrays) is not None else list(arrays)
        if not arrays:
            raise ValueError("param group: 'params' is empty")
        group = {**self.defaults, **group, "params": arrays}
        self._check_group(group, f"param_groups[{len(self.param_groups)}]")
        start = len(self._buffers)
        known = {id(b.obj) for b in self._buffers}
        new = []
        for j, p in enumerate(arrays):
            buf = Buffer(f"params[{start + j}]", p)
            if id(p) in known or id(p) in {id(b.obj) for b in new}:
                raise ValueError(f"params[{start + j}]: this array appears in more than one place")
            new.append(buf)
        self._buffers.extend(new)
        self._group_index.extend([len(self.param_groups)] * len(new))
        self.param_groups.append(group)

    @classmethod
    def _check_group(cls, group, where):
        for name, check in CHECKS.items():
            if name in group:
                check(f"{where}: {name}", group[name])
        cls._check_options(group, where)

    @classmethod
    def _check_options(cls, group, where):
        """Checks that involve several hyperparameters (overridden where needed)."""

    # ------------------------------------------------------------ per-algorithm hooks
    states = ()  # ((state name, initial value), ...) when they do not depend on options

    @classmethod
    def _state_names(cls, group):
        """((state name, initial value), ...) for the group's options."""
        return cls.states

    @classmethod
    def _rule(cls, group):
        """The element rule (one of rules.ELEMENT_RULES) for the group's options."""
        raise NotImplementedError

    @classmethod
    def _plan(cls, group, pstate):
        """(element rule name, float64 scalars) for one param's step; pstate['step'] is 1-based.

        Sets the scalar states of pstate for this step first (``scalar_updates``).
        """
        for name, fn in cls.scalar_updates.items():
            pstate[name] = _call(fn, cls, group, pstate)
        return cls._rule(group), _call(cls.scalars, cls, group, pstate)

    @classmethod
    def _arg(cls, name, group, pstate):
        """A rules function's argument by name: the param's state, else the group's, else the class's."""
        if name in pstate:
            return pstate[name]
        if name in group:
            return group[name]
        return getattr(cls, name)

    # ------------------------------------------------------------ stepping
    def _grads(self, grads):
        """Grads in param order (None to skip a param), validated against their params."""
        n = len(self._buffers)
        if grads is None:
            if any(b.lib != "torch" for b in self._buffers):
                raise TypeError("grads: required (only torch tensors carry their own .grad)")
            grads = [b.obj.grad for b in self._buffers]
        elif library(grads) is not None:
            grads = [grads]
        else:
            grads = [g for item in grads
                     for g in ([item] if item is None or library(item) is not None else item)]
        if len(grads) != n:
            raise ValueError(f"grads: expected {n} gradient(s), one per param, got {len(grads)}")
        out = []
        for i, (g, pbuf) in enumerate(zip(grads, self._buffers)):
            if g is None:
                out.append(None)
                continue
            gbuf = self._grad_cache.get(i)
            # The same NumPy/CuPy/numba array as last step cannot have changed shape, dtype or
            # layout: reuse its checks and flat view. torch tensors can (resize_), so recheck.
            if gbuf is None or gbuf.obj is not g or gbuf.lib == "torch":
                gbuf = Buffer(f"grads[{i}]", g, writeable=False)
                same_kind(f"grads[{i}]", gbuf, pbuf, f"params[{i}]")
                self._grad_cache[i] = gbuf
            out.append(gbuf)
        return out

    def _resolved_groups(self):
        """Each group's hyperparameters for this step, the schedule evaluated and all checked.

        A group unchanged since the last step (and with a float lr) gives the same dict object
        again, which lets the per-param caches below recognise it by identity.
        """
        resolved = []
        for k, group in enumerate(self.param_groups):
            seen, hp = self._resolved.get(k, (None, None))
            if seen == group:  # "params" is the same list: compared by identity, not elementwise
                resolved.append(hp)
                continue
            hp = dict(group)
            if self.capturable:
                _capturable.check_lr(f"param_groups[{k}]", hp["lr"])
            if callable(hp["lr"]):
                hp["lr"] = hp["lr"](self._step_count)
                if callable(hp["lr"]):
                    raise TypeError(f"param_groups[{k}]: lr schedule returned a callable")
            hp.pop("params")
            if not self.capturable and library(hp["lr"]) is not None:
                hp["lr"] = host_scalar(hp["lr"])
            if self._checked.get(k) != hp:  # checks rerun only when a value changed
                self._check_group(hp, f"param_groups[{k}]")
                self._checked[k] = dict(hp)
            static = not callable(group["lr"]) and library(group["lr"]) is None
            self._resolved[k] = (dict(group), hp) if static else (None, None)
            resolved.append(hp)
        return resolved

    def _conditioning(self, gbufs):
        return grad_conditioning(self, lambda: sum(
            sum_of_squares(b.kernel_view(), b.on_cuda, current_stream(b.obj) if b.on_cuda else 0)
            for b in gbufs if b is not None))

    def step(self, grads=None):
        """Update every param that has a gradient, in place. Returns False if the step was skipped.

        grads mirror the params: one array, or a list in param order (nested lists per
        group are flattened), None to leave a param out. Without grads, torch tensors'
        ``.grad`` is used. Everything is validated before any buffer changes.
        """
        gbufs = self._grads(grads)
        groups = self._resolved_groups()
        plain = self.max_grad_norm is None and self.clip_value is None and self.grad_scale is None \
            and not self.skip_nonfinite
        c = None if plain else self._conditioning(gbufs)
        self.last_step_skipped = not plain and c is None
        if self.last_step_skipped:
            self.skipped_steps += 1
            return False
        for i, gbuf in enumerate(gbufs):
            if gbuf is None:
                continue
            hp = groups[self._group_index[i]]
            pbuf = self._buffers[i]
            pstate = self._ensure_state(i, hp)
            ci = NO_CONDITIONING if plain else c
            stream = current_stream(pbuf.obj) if pbuf.on_cuda else 0
            if self.capturable:
                _capturable.step_param(self, i, hp, pstate, pbuf, gbuf, ci, stream)
                continue
            pstate["step"] += 1
            rule, h = self._plan(hp, pstate)
            run(rule, pbuf.kernel_view(), gbuf.kernel_view(), self._flat_states[i][1], h, ci, pbuf.on_cuda,
                stream)
        self._step_count += 1
        return True

    def _ensure_state(self, i, group):
        """The param's state, its arrays allocated on first use (by the param's own library)."""
        pstate = self.state.get(i)
        last = self._ensured.get(i)
        if last is not None and last[0] is group and last[1] is pstate:
            return pstate  # same options and state dict as last step: nothing to allocate or view
        names = self._state_names(group)
        if pstate is None:
            pstate = self.state[i] = {"step": 0, **self.scalar_state}
        if self.capturable:
            _capturable.to_device(self, i, pstate)
        for name, init in names:
            if name not in pstate:
                pstate[name] = full_like(self._buffers[i].obj, init)
        key = tuple(name for name, _ in names)
        if self._flat_states.get(i, (None,))[0] != key:  # flat views, made once per option set
            bufs = [Buffer(f"state[{i}][{name!r}]", pstate[name]) for name in key]
            self._flat_states[i] = (key, [b.kernel_view() for b in bufs])
        self._ensured[i] = (group, pstate)
        return pstate

    def step_rows(self, indices, grad_rows, param=None):
        """Update only rows ``indices`` of a 2-D param with ``grad_rows`` (lazy; duplicate ids summed).

        param: the table's index (param-group order) or the array itself; None when the optimizer
        has one param. Safe to call from many threads at once. Returns the param's step count.
        See ``fastlr.sparse``.
        """
        if self.capturable:
            raise NotImplementedError("step_rows: not available with capturable=True")
        from .sparse import step_rows
        return step_rows(self, param, indices, grad_rows)

    def zero_grad(self):
        """For torch tensors: drop the gradients (set .grad to None), as torch does."""
        for b in self._buffers:
            if b.lib == "torch":
                b.obj.grad = None

    # ------------------------------------------------------------ state dict
    def state_dict(self):
        """Hyperparameters, step counts and COPIES of the state arrays (a snapshot)."""
        state = {}
        for i, pstate in self.state.items():
            state[i] = {k: (_snapshot(v) if library(v) is not None else v)
                        for k, v in pstate.items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"algorithm": type(self).__name__, "state": state, "param_groups": groups,
                "step_count": self._step_count}

    def load_state_dict(self, state_dict):
        """Load a state dict of the same algorithm and param layout; checked fully before any change."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict: expected a dict with 'state' and 'param_groups'")
        if state_dict.get("algorithm", name) != name:
            raise ValueError(f"state_dict: it was saved by {state_dict['algorithm']}, this is {name}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param group(s), got {len(groups)}")
        new_groups = []
        for k, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"state_dict: param_groups[{k}] has {len(saved['params'])} params, "
                                 f"expected {len(group['params'])}")
            new = {**group, **{key: v for key, v in saved.items() if key != "params"},
                   "params": group["params"]}
            self._check_group(new, f"state_dict: param_groups[{k}]")
            new_groups.append(new)
        index = {}  # saved param id -> our param index
        for saved, group_params in zip(groups, self._group_indices()):
            index.update(zip(saved["params"], group_params))
        loaded = {}
        for key, saved in state_dict["state"].items():
            if key not in index:
                raise ValueError(f"state_dict: state for unknown param {key!r}")
            i = index[key]
            group = new_groups[self._group_of(i)]
            expected = [n for n, _ in self._state_names(group)]
            missing = [n for n in ["step", *expected, *self.scalar_state] if n not in saved]
            if missing:
                raise ValueError(f"state_dict: state[{key}] lacks {missing} (expected by {name} "
                                 f"with these options)")
            ref = self._buffers[i]
            for n in expected:
                same_kind(f"state_dict: state[{key}][{n!r}]", _host_buffer(n, saved[n], ref), ref,
                          f"params[{i}]")
            loaded[i] = saved
        # Everything checked: now change things.
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state, self._flat_states, self._device_state, self._ensured = {}, {}, {}, {}
        for i, saved in loaded.items():
            group = new_groups[self._group_of(i)]
            # host numbers here; capturable steps move them to the device on the next step
            pstate = self.state[i] = {"step": int(host_scalar(saved["step"])),
                                      **{k: host_scalar(saved[k]) for k in self.scalar_state}}
            for n, _ in self._state_names(group):
                pstate[n] = full_like(self._buffers[i].obj, 0.0)
                copy_into(pstate[n], saved[n])
        self._step_count = int(state_dict.get("step_count", self._step_count))

    def _group_indices(self):
        start = 0
        for group in self.param_groups:
            n = len(group["params"])
            yield list(range(start, start + n))
            start += n

    def _group_of(self, i):
        return self._group_index[i]

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {v}" for key, v in sorted(group.items()) if key != "params"]
        return "\n".join(lines + [")"])


def _call(fn_name, cls, group, pstate):
    """rules.<fn_name>(...) with each argument bound by name (as Optimizer._arg, inlined: per step)."""
    return getattr(rules, fn_name)(*[pstate[n] if n in pstate else group[n] if n in group else getattr(cls, n)
                                     for n in arg_names(fn_name)])


def _snapshot(x):
    lib = library(x)
    if lib == "torch":
        return x.detach().clone()
    if lib == "cupy":
        return x.copy()
    return to_numpy(x)


def _host_buffer(name, x, ref):
    """A Buffer describing a saved state array, for shape/dtype checks (device may differ)."""
    buf = Buffer(name, x, writeable=False)
    buf.device = ref.device  # saved states may live on the host; they are copied over
    return buf


def _sign(maximize):
    return -1.0 if maximize else 1.0


# ---------------------------------------------------------------- the algorithms
class SGD(Optimizer):
    """Stochastic gradient descent, with momentum, dampening and Nesterov momentum (torch.optim.SGD)."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize),
                         **conditioning)

    @classmethod
    def _check_options(cls, group, where):
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov requires momentum > 0 and dampening == 0 "
                             f"(got momentum={group['momentum']}, dampening={group['dampening']})")

    @classmethod
    def _state_names(cls, group):
        return (("momentum_buffer", 0.0),) if group["momentum"] != 0 else ()

    scalars = "sgd_scalars"

    @classmethod
    def _rule(cls, g):
        return "sgd_momentum" if g["momentum"] != 0 else "sgd"


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): per-element lr from the sum of squared gradients."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize), **conditioning)

    @classmethod
    def _state_names(cls, group):
        return (("sum", group["initial_accumulator_value"]),)

    scalars = "adagrad_scalars"

    @classmethod
    def _rule(cls, g):
        return "adagrad"


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): eps added outside the square root, optional centering and momentum."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         **conditioning)

    @classmethod
    def _state_names(cls, group):
        return (("square_avg", 0.0),) + ((("grad_avg", 0.0),) if group["centered"] else ()) + \
            ((("momentum_buffer", 0.0),) if group["momentum"] > 0 else ())

    scalars = "rmsprop_scalars"

    @classmethod
    def _rule(cls, g):
        return "rmsprop" + ("_centered" if g["centered"] else "") + ("_momentum" if g["momentum"] > 0 else "")


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False,
                 **conditioning):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **conditioning)

    states = ("square_avg", 0.0), ("acc_delta", 0.0)

    scalars = "adadelta_scalars"

    @classmethod
    def _rule(cls, g):
        return "adadelta"


class Adam(Optimizer):
    """Adam (torch.optim.Adam) with bias correction; AMSGrad; eps added after the bias-corrected sqrt(v)."""

    decoupled_weight_decay = False  # per group when a group sets it, as torch's Adam
    scalars = "adam_scalars"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize), **conditioning)

    @classmethod
    def _state_names(cls, group):
        return (("exp_avg", 0.0), ("exp_avg_sq", 0.0)) + ((("max_exp_avg_sq", 0.0),) if group["amsgrad"] else ())

    @classmethod
    def _rule(cls, g):
        return "adam_amsgrad" if g["amsgrad"] else "adam"


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay p <- p (1 - lr wd)."""

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, **conditioning):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, **conditioning)


class Adamax(Optimizer):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *, maximize=False,
                 **conditioning):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **conditioning)

    states = ("exp_avg", 0.0), ("exp_inf", 0.0)

    scalars = "adamax_scalars"

    @classmethod
    def _rule(cls, g):
        return "adamax"


class NAdam(Optimizer):
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum and momentum decay."""

    scalar_state = {"mu_product": 1.0}
    scalar_updates = {"mu_product": "nadam_mu_product"}
    scalars = "nadam_scalars"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                         **conditioning)

    states = ("exp_avg", 0.0), ("exp_avg_sq", 0.0)

    @classmethod
    def _rule(cls, g):
        return "nadam"


class RAdam(Optimizer):
    """RAdam (torch.optim.RAdam): Adam with the variance rectification term."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                         **conditioning)

    states = ("exp_avg", 0.0), ("exp_avg_sq", 0.0)

    scalars = "radam_scalars"

    @classmethod
    def _rule(cls, g):
        return "radam"


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), decoupled weight decay."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, *, maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize),
                         **conditioning)

    states = (("exp_avg", 0.0),)

    scalars = "lion_scalars"

    @classmethod
    def _rule(cls, g):
        return "lion"
