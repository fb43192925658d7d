"""fastlr.torch: drop-in ``torch.optim.Optimizer`` subclasses running fastlr's kernels.

    import fastlr.torch
    opt = fastlr.torch.Adam(model.parameters(), lr=1e-3)   # as torch.optim.Adam
    loss.backward(); opt.step(); opt.zero_grad()

Every algorithm of ``fastlr.optim`` is here with torch.optim's constructor (the
torch-only switches ``foreach``, ``fused``, ``capturable``, ``differentiable`` are
accepted; the last two must stay False). They work with torch's lr schedulers,
``torch.amp.GradScaler``, ``step(closure)``, param groups and state dicts.

Flat buffers: at construction the params of each group are packed into one contiguous
buffer per (dtype, device) and each param becomes a view of it (``p.data``), as are
their ``.grad`` and the states, so a step is one kernel launch per buffer. Gradients
that autograd allocated anew (after ``zero_grad()``, which sets them to None as torch
does) are copied into the flat gradient buffer in the step; use
``zero_grad(set_to_none=False)`` to keep them as views (zero-copy accumulation).

State dicts use torch's layout and keys (``state[i]["exp_avg"]``, ``"step"`` as a float
tensor, ...): a state dict from ``torch.optim.Adam`` loads into ``fastlr.torch.Adam``
and the reverse. Extra options, shared by every algorithm (see ``fastlr.Optimizer``):
``max_grad_norm``, ``clip_value``, ``grad_scale``, ``skip_nonfinite`` (fused gradient
conditioning), and for bfloat16/float16 params ``master_weights=True`` (float32 master
copy in the optimizer, rounded values written back) or ``stochastic_rounding=True``
(bfloat16 updated in place with stochastic rounding, deterministic given ``seed``).
Optimizer states of half-precision params are float32.
"""
import inspect
import math

import numpy as np
import torch

from . import optim as _core
from ._launch import NO_CONDITIONING, run, sum_of_squares

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion"]

_OPTIONS = ("max_grad_norm", "clip_value", "grad_scale", "skip_nonfinite", "master_weights",
            "stochastic_rounding", "seed")
_TORCH_SWITCHES = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
_FULL = (torch.float32, torch.float64)
_HALF = (torch.bfloat16, torch.float16)
_HALF_NAME = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _kernel_view(t):
    """Zero-copy 1-D view of a contiguous tensor for the kernels (half floats as uint16 bits)."""
    t = t.detach()
    if t.dtype in _HALF:
        t = t.view(torch.int16)
    if t.device.type == "cpu":
        a = t.numpy()
        return a.view(np.uint16) if a.dtype == np.int16 else a
    from numba import cuda
    return cuda.as_cuda_array(t)


def _stream(flat):
    """The caller's current torch CUDA stream, for numba launches (no device-wide sync)."""
    if flat.device.type != "cuda":
        return 0
    from .streams import current_stream
    return current_stream(flat)


class _Bucket:
    """The params of one group sharing a dtype and device, packed into one flat buffer."""

    def __init__(self, params, mode):
        self.params = params
        self.mode = mode  # "plain", "master" or "sr"
        self.dtype, self.device = params[0].dtype, params[0].device
        self.sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        total = self.offsets[-1]
        with torch.no_grad():
            flat = torch.empty(total, dtype=self.dtype, device=self.device)
            grad = torch.zeros(total, dtype=self.dtype, device=self.device)
            for p, a, n in zip(params, self.offsets, self.sizes):
                flat[a:a + n].copy_(p.detach().reshape(-1))
                if p.grad is not None:
                    grad[a:a + n].copy_(p.grad.reshape(-1))
            self.gviews = [grad[a:a + n].view_as(p) for p, a, n in zip(params, self.offsets, self.sizes)]
            for p, a, n, gv in zip(params, self.offsets, self.sizes, self.gviews):
                p.data = flat[a:a + n].view_as(p)
                if p.grad is not None:
                    p.grad = gv
        self.flat, self.grad = flat, grad
        self.state_dtype = torch.float32 if self.dtype in _HALF else self.dtype
        self.states = {}            # state name -> flat tensor (state_dtype)
        self.master = None          # float32 copy of the params (master_weights)
        self.steps = torch.zeros(len(params), dtype=torch.float32)  # torch's per-param float step
        self.scalars = {}           # scalar state name (NAdam mu_product) -> flat float32 tensor
        self.pstate = [None] * len(params)  # python step / scalar state per param, None before the first step
        self.index = 0              # the optimizer's number for this buffer (stochastic rounding streams)
        self.exposed = None         # state key every param of the bucket exposes, once they all do
        self._views = {}

    def view(self, key, tensor):
        """Cached kernel view of one of the flat tensors."""
        v = self._views.get(key)
        if v is None or v[0] is not tensor:
            v = self._views[key] = (tensor, _kernel_view(tensor))
        return v[1]

    def state_flat(self, name, init):
        if name not in self.states:
            self.states[name] = torch.full((self.offsets[-1],), float(init), dtype=self.state_dtype,
                                           device=self.device)
        return self.states[name]

    def ensure_master(self):
        if self.master is None:
            self.master = self.flat.detach().to(torch.float32)
        return self.master


class _TorchOptimizer(torch.optim.Optimizer):
    """Shared machinery; the subclasses only name their fastlr core algorithm."""

    _core_cls = None           # fastlr.optim class whose rules and checks are used
    _torch_has_step = True     # torch keeps a "step" state (not SGD)

    def __init__(self, params, *args, **kwargs):
        sig = inspect.signature(type(self)._core_cls.__init__)
        switches = {k: kwargs.pop(k) for k in list(kwargs) if k in _TORCH_SWITCHES}
        for k in ("capturable", "differentiable"):
            if switches.get(k):
                raise ValueError(f"{k}=True is not supported by fastlr.torch")
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
        decoupled = None
        if issubclass(type(self)._core_cls, _core.Adam):  # torch's Adam has the switch, AdamW sets it
            decoupled = kwargs.pop("decoupled_weight_decay", type(self)._core_cls.decoupled_weight_decay)
        bound = sig.bind(None, None, *args, **kwargs)
        bound.apply_defaults()
        defaults = {k: v for k, v in bound.arguments.items() if k not in ("self", "params", "conditioning")}
        if bound.arguments.get("conditioning"):
            raise TypeError(f"unexpected keyword argument(s) {sorted(bound.arguments['conditioning'])}")
        torch_cls = getattr(torch.optim, type(self).__name__, None)
        if torch_cls is not None:  # torch's own group keys too, so state dicts look the same
            tsig = inspect.signature(torch_cls.__init__).parameters
            for k, default in _TORCH_SWITCHES.items():
                if k in tsig:
                    defaults[k] = switches.get(k, default)
        if decoupled is not None:
            defaults["decoupled_weight_decay"] = decoupled
        self._init_options(**options)
        self._buckets = []
        self.last_step_skipped = False
        self.skipped_steps = 0
        self._checked = {}
        self._exposed = {}
        super().__init__(params, defaults)

    def _init_options(self, max_grad_norm=None, clip_value=None, grad_scale=None, skip_nonfinite=False,
                      master_weights=False, stochastic_rounding=False, seed=0):
        for name, v in (("max_grad_norm", max_grad_norm), ("clip_value", clip_value), ("grad_scale", grad_scale)):
            if v is not None:
                _core._positive(name, v)
        for name, v in (("skip_nonfinite", skip_nonfinite), ("master_weights", master_weights),
                        ("stochastic_rounding", stochastic_rounding)):
            _core._flag(name, v)
        if master_weights and stochastic_rounding:
            raise ValueError("master_weights and stochastic_rounding: choose one")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        self.max_grad_norm, self.clip_value, self.grad_scale = max_grad_norm, clip_value, grad_scale
        self.skip_nonfinite = skip_nonfinite or grad_scale is not None
        self.master_weights, self.stochastic_rounding, self.seed = master_weights, stochastic_rounding, seed

    # ------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        named = params
        params = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
        where = f"param_groups[{len(self.param_groups)}]"
        for j, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{where}: params[{j}]: expected a torch.Tensor, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{where}: params[{j}] is not a leaf tensor (can't optimize a non-leaf "
                                 f"Tensor); pass model parameters or tensors made with requires_grad=True")
            if p.is_sparse or p.layout != torch.strided:
                raise TypeError(f"{where}: params[{j}]: sparse/non-strided params are not supported")
            if p.dtype not in _FULL + _HALF:
                raise TypeError(f"{where}: params[{j}]: expected a float32, float64, bfloat16 or float16 "
                                f"tensor, got {p.dtype}")
            if p.dtype in _HALF and not (self.master_weights or self.stochastic_rounding):
                raise TypeError(f"{where}: params[{j}] is {p.dtype}: pass master_weights=True (float32 "
                                f"master copy) or stochastic_rounding=True (bfloat16 only)")
            if p.dtype == torch.float16 and self.stochastic_rounding:
                raise TypeError(f"{where}: params[{j}]: stochastic_rounding supports bfloat16 only; use "
                                f"master_weights=True for float16")
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError(f"{where}: params[{j}] has a sparse grad; this optimizer is dense")
        devices = {str(p.device) for p in params}
        if len(devices) > 1:
            raise ValueError(f"{where}: params on several devices ({sorted(devices)}); put each device's "
                             f"params in a group of its own")
        check = {k: (float(v) if isinstance(v, torch.Tensor) else v)
                 for k, v in {**self.defaults, **param_group}.items() if k != "params"}
        type(self)._core_cls._check_group(check, where)
        seen = {id(p) for b in self._buckets for p in b.params}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError(f"{where}: some parameters appear in more than one parameter group")
        super().add_param_group({**param_group, "params": named})
        group = self.param_groups[-1]
        by_kind = {}
        for p in params:
            by_kind.setdefault((p.dtype, str(p.device)), []).append(p)
        mode = "master" if self.master_weights else "sr" if self.stochastic_rounding else "plain"
        group["_buckets"] = [len(self._buckets) + k for k in range(len(by_kind))]
        for (dtype, _), ps in by_kind.items():
            self._buckets.append(_Bucket(ps, mode if dtype in _HALF else "plain"))
            self._buckets[-1].index = len(self._buckets) - 1

    def __getstate__(self):
        raise TypeError("pickle the state_dict() of a fastlr.torch optimizer, not the optimizer")

    # ------------------------------------------------------------ stepping
    def _planner(self, hp):
        cls = type(self)._core_cls
        if issubclass(cls, _core.Adam):
            return _core.AdamW if hp.get("decoupled_weight_decay", cls.decoupled_weight_decay) else _core.Adam
        return cls

    def _resolved(self, k, group):
        hp = {key: (float(v) if isinstance(v, torch.Tensor) else v) for key, v in group.items()
              if key not in ("params", "_buckets")}
        if self._checked.get(k) != hp:
            self._core_cls._check_group(hp, f"param_groups[{k}]")
            self._checked[k] = dict(hp)
        return hp

    def _collect(self):
        """Per bucket, the params that have a gradient, and grads copied into the flat buffers.

        Everything is checked before any grad is moved."""
        work = []
        for k, group in enumerate(self.param_groups):
            hp = self._resolved(k, group)
            for b in (self._buckets[i] for i in group["_buckets"]):
                has, copies = [], []
                for j, p in enumerate(b.params):
                    g = p.grad
                    if g is None:
                        has.append(False)
                        continue
                    if g is b.gviews[j]:  # still the view of the flat buffer: nothing to check or copy
                        has.append(True)
                        continue
                    if g.is_sparse or g.layout != torch.strided:
                        raise TypeError(f"param_groups[{k}]: a param has a sparse grad; {type(self).__name__} "
                                        f"is dense (use a sparse optimizer or dense grads)")
                    if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                        raise ValueError(f"param_groups[{k}]: a grad of shape {tuple(g.shape)}, {g.dtype} on "
                                         f"{g.device} does not match its param ({tuple(p.shape)}, {p.dtype}, "
                                         f"{p.device})")
                    has.append(True)
                    copies.append(j)
                work.append((hp, b, has, copies))
        with torch.no_grad():
            for _, b, _, copies in work:
                for j in copies:
                    p, view = b.params[j], b.gviews[j]
                    if p.grad.data_ptr() != view.data_ptr():
                        view.copy_(p.grad)
                    p.grad = view
        return work

    def _runs(self, b, has):
        """Maximal runs [j0, j1) of params with grads and equal scalar state: one launch each."""
        runs, j = [], 0
        while j < len(has):
            if not has[j]:
                j += 1
                continue
            j1 = j + 1
            while j1 < len(has) and has[j1] and b.pstate[j1] == b.pstate[j]:
                j1 += 1
            runs.append((j, j1))
            j = j1
        return runs

    def _conditioning(self, work):
        return _core.grad_conditioning(self, lambda: self._sum_of_squares(work))

    def _sum_of_squares(self, work):
        total, on_device = 0.0, []
        for _, b, has, _ in work:
            for j0, j1 in self._runs(b, has):
                seg = b.grad[b.offsets[j0]:b.offsets[j1]]
                if b.device.type == "cpu" and b.dtype in _FULL:
                    total += sum_of_squares(_kernel_view(seg), False)
                else:  # one reduction pass on the grads' own device/stream, float64 accumulation
                    on_device.append(torch.linalg.vector_norm(seg, dtype=torch.float64) ** 2)
        by_device = {}
        for t in on_device:
            by_device.setdefault(t.device, []).append(t)
        for ts in by_device.values():  # one host read per device (GradScaler syncs there too)
            total += float(torch.stack(ts).sum())
        return total

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param that has a grad. Returns the closure's loss (torch semantics).

        ``last_step_skipped`` says whether non-finite gradients made this step a no-op."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        c = self._conditioning(work)
        self.last_step_skipped = c is None
        if c is None:
            self.skipped_steps += 1
            return loss
        plain = c == (1.0, -math.inf, math.inf)
        for hp, b, has, _ in work:
            for j0, j1 in self._runs(b, has):
                self._launch(hp, b, j0, j1, c, plain)
        return loss

    def _launch(self, hp, b, j0, j1, c, plain):
        planner = self._planner(hp)
        names = planner._state_names(hp)
        ps = dict(b.pstate[j0] or {"step": 0, **planner.scalar_state})
        ps["step"] += 1
        rule, h = planner._plan(hp, ps)
        a, z = b.offsets[j0], b.offsets[j1]
        states = [b.view(("s", n), b.state_flat(n, init))[a:z] for n, init in names]
        for j in range(j0, j1):  # one shared dict per run (replaced, never mutated)
            b.pstate[j] = ps
        b.steps[j0:j1] = float(ps["step"])
        for name in planner.scalar_state:
            flat = b.scalars.setdefault(name, torch.zeros(len(b.params), dtype=torch.float32))
            flat[j0:j1] = ps[name]
        self._expose(b, j0, j1, names)
        stream = _stream(b.flat)
        on_cuda = b.device.type == "cuda"
        if b.mode == "plain":
            run(rule, b.view("p", b.flat)[a:z], b.view("g", b.grad)[a:z], states, h,
                NO_CONDITIONING if plain else c, on_cuda, stream)
            return
        from . import mixed
        master = b.view("m", b.ensure_master())[a:z] if b.mode == "master" else None
        mixed.run(rule, _HALF_NAME[b.dtype], b.view("p", b.flat)[a:z], b.view("g", b.grad)[a:z], master,
                  states, h, c, mixed.seed_mix(self.seed, ps["step"], a, b.index) if b.mode == "sr" else 0,
                  on_cuda, stream)

    def _expose(self, b, j0, j1, names):
        """torch-layout per-param state: views of the flat states, step as a float tensor."""
        key = (tuple(names), b.master is not None)
        if b.exposed == key:  # every param of the bucket already shows these states
            return
        for j in range(j0, j1):
            p, a, n = b.params[j], b.offsets[j], b.sizes[j]
            st = self.state[p]
            if len(st) and self._exposed.get(id(p)) == key:
                continue
            st.clear()
            if self._torch_has_step:
                st["step"] = b.steps[j]
            for name in type(self)._core_cls.scalar_state:
                st[name] = b.scalars[name][j]
            for name, _ in names:
                st[name] = b.states[name][a:a + n].view_as(p)
            if b.master is not None:
                st["master_param"] = b.master[a:a + n].view_as(p)
            self._exposed[id(p)] = key
        if all(self._exposed.get(id(p)) == key for p in b.params):
            b.exposed = key

    # ------------------------------------------------------------ zero_grad / state dicts
    def zero_grad(self, set_to_none=True):
        """As torch: grads set to None; with set_to_none=False the flat grad buffers are zeroed in one
        operation each and the grads stay views of them (zero-copy accumulation by autograd)."""
        if set_to_none:
            return super().zero_grad(set_to_none=True)
        with torch.no_grad():
            for b in self._buckets:
                b.grad.zero_()
                for p, gv in zip(b.params, b.gviews):
                    if p.grad is not None:
                        p.grad = gv

    def state_dict(self):
        sd = super().state_dict()
        out = {}
        for i, st in sd["state"].items():
            out[i] = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
        groups = [{k: v for k, v in g.items() if k != "_buckets"} for g in sd["param_groups"]]
        return {"state": out, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state dict of torch.optim's layout (from torch.optim.X or fastlr.torch.X); checked first."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param group(s), "
                             f"got {len(saved_groups)}")
        index = {}
        for k, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"state_dict: param_groups[{k}] has {len(sg['params'])} params, "
                                 f"expected {len(g['params'])}")
            hp = {**{key: v for key, v in g.items() if key not in ("params", "_buckets")},
                  **{key: v for key, v in sg.items() if key not in ("params", "param_names")}}
            hp = {key: (float(v) if isinstance(v, torch.Tensor) else v) for key, v in hp.items()}
            self._core_cls._check_group(hp, f"state_dict: param_groups[{k}]")
            index.update(zip(sg["params"], [(p, hp) for p in g["params"]]))
        loaded = {}
        for key, st in state_dict["state"].items():
            if key not in index:
                raise ValueError(f"state_dict: state for unknown param {key!r}")
            p, hp = index[key]
            planner = self._planner(hp)
            for name, _ in planner._state_names(hp):
                if name not in st:
                    raise ValueError(f"state_dict: state[{key}] lacks {name!r} (expected by "
                                     f"{type(self).__name__} with these options)")
                if tuple(st[name].shape) != tuple(p.shape):
                    raise ValueError(f"state_dict: state[{key}][{name!r}] has shape {tuple(st[name].shape)}, "
                                     f"its param {tuple(p.shape)}")
            loaded[id(p)] = (st, hp)
        # Checked: let torch set the groups, then put the states into the flat buffers.
        buckets = [g["_buckets"] for g in self.param_groups]
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        for g, bk in zip(self.param_groups, buckets):
            g["_buckets"] = bk
        self._checked = {}
        self._exposed = {}
        self.state.clear()
        with torch.no_grad():
            for b in self._buckets:
                b.pstate = [None] * len(b.params)
                b.exposed = None
                for j, (p, a, n) in enumerate(zip(b.params, b.offsets, b.sizes)):
                    if id(p) not in loaded:
                        continue
                    st, hp = loaded[id(p)]
                    planner = self._planner(hp)
                    names = planner._state_names(hp)
                    for name, init in names:
                        b.state_flat(name, init)[a:a + n].copy_(st[name].detach().reshape(-1))
                    step = st.get("step")
                    step = int(float(step)) if step is not None else (1 if names else 0)
                    ps = {"step": step}
                    for name, init in planner.scalar_state.items():
                        ps[name] = float(st[name]) if name in st else init
                        flat = b.scalars.setdefault(name, torch.zeros(len(b.params), dtype=torch.float32))
                        flat[j] = ps[name]
                    b.pstate[j] = ps
                    b.steps[j] = float(step)
                    if b.mode == "master":
                        src = st.get("master_param", p.detach())
                        b.ensure_master()[a:a + n].copy_(src.detach().reshape(-1))
                    self._expose(b, j, j + 1, names)


def _make(name):
    core = getattr(_core, name)

    def __init__(self, params, *args, **kwargs):
        _TorchOptimizer.__init__(self, params, *args, **kwargs)

    sig = inspect.signature(core.__init__)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in
             [*_TORCH_SWITCHES.items(), ("max_grad_norm", None), ("clip_value", None), ("grad_scale", None),
              ("skip_nonfinite", False), ("master_weights", False), ("stochastic_rounding", False), ("seed", 0)]]
    if issubclass(core, _core.Adam):
        extra.append(inspect.Parameter("decoupled_weight_decay", inspect.Parameter.KEYWORD_ONLY,
                                       default=core.decoupled_weight_decay))
    __init__.__signature__ = sig.replace(parameters=params + extra)
    cls = type(name, (_TorchOptimizer,), {
        "__init__": __init__, "_core_cls": core, "_torch_has_step": name != "SGD",
        "__doc__": f"fastlr's {name} as a torch.optim.Optimizer (see fastlr.torch).\n\n{core.__doc__}",
        "__module__": __name__})
    return cls


for _name in __all__:
    globals()[_name] = _make(_name)
