"""``capturable=True``: CUDA steps whose every input lives in device memory, for CUDA graphs.

A CUDA graph replays the kernels it recorded with the arguments they had, and runs no host
code. So a capturable step keeps each param's step count (and NAdam's mu_product) as a
float64 one-element array on the device, reads the learning rate from device memory, and
evaluates the algorithm's host rule ``rules.<algo>_scalars`` on the device (a one-thread
kernel, ``kernels.cuda.prepare_kernel``) before the update kernel reads those scalars.
The other hyperparameters are kernel arguments: fixed at capture, as in torch.

``lr`` may be a float (written to device memory by a kernel whenever its value changes
between eager steps) or a one-element CUDA array that the caller updates in place between
graph replays (``lr.fill_(x)`` / ``lr[...] = x``). Schedules (callables) run on the host and
cannot be replayed: use a device lr array. Gradient-norm clipping and loss scaling with a
non-finite check need the norm on the host, a device sync that a graph cannot contain, so
they are refused; ``clip_value`` works.
"""
import functools

import numpy as np

from ._arrays import Buffer, full_like, library, scalar_like
from ._launch import kernel_module
from .kernels import _codegen, rules

_ON_DEVICE = ("step", "lr")


def check_options(opt):
    """Raise at construction when an option or a param cannot take part in capturable steps."""
    for name in ("max_grad_norm", "grad_scale"):
        if getattr(opt, name) is not None:
            raise ValueError(f"{name}: not available with capturable=True (it needs the gradient norm on "
                             f"the host, a device sync that a CUDA graph cannot hold); use clip_value")
    if opt.skip_nonfinite:
        raise ValueError("skip_nonfinite: not available with capturable=True (a host-side decision)")
    if opt.spec.group_updates or not opt.spec.lazy_rows or any(
            opt.spec.rule({**opt.spec.constants, **g}) in rules.TWO_PASS for g in opt.param_groups):
        raise ValueError(f"capturable: not available for {type(opt).__name__}: its per-group schedule or per-tensor "
                         f"norms are computed on the host, as its reference does")
    i = 0
    for k, group in enumerate(opt.param_groups):
        for p in group["params"]:
            b = Buffer(f"params[{i}]", p)
            if not b.on_cuda:
                raise ValueError(f"params[{i}]: on the {b.device}, but capturable=True needs CUDA arrays "
                                 f"(capturable steps exist for CUDA graphs)")
            i += 1
        check_lr(f"param_groups[{k}]", group["lr"])


def check_lr(where, lr):
    """A device lr: a one-element float32/float64 CUDA array."""
    if callable(lr):
        raise TypeError(f"{where}: lr is a schedule, which runs on the host and is not replayed by a "
                        f"CUDA graph; with capturable=True pass a one-element CUDA array and update it "
                        f"in place")
    if library(lr) is not None:
        buf = Buffer(f"{where}: lr", lr, writeable=False)
        if not buf.on_cuda or int(np.prod(buf.shape)) != 1:
            raise ValueError(f"{where}: lr: expected a float or a one-element CUDA array, got shape "
                             f"{buf.shape} on {buf.device}")


def step(opt, grads):
    """One capturable step of a fastlr optimizer: the engine validates and creates states, then each
    param's prepare and update kernels are launched on its stream (no host sync)."""
    for k, group in enumerate(opt.param_groups):
        check_lr(f"param_groups[{k}]", group["lr"])
    return opt._engine.step(grads, opt, launch=_launch_unit)


def _to_device(spec, like, pstate):
    """Move the param's step count and scalar states to one-element float64 device arrays."""
    for name in ("step", *spec.scalar_state):
        if library(pstate[name]) is None:
            pstate[name] = scalar_like(like, pstate[name])


@functools.cache
def _layout(spec):
    """(names read from device memory, hyperparameter names passed as kernel arguments, arg names)."""
    fns = (*spec.scalar_updates.values(), spec.scalars, *spec.scalar_post_updates.values())
    arg_names = tuple((fn, _codegen.arg_names(fn)) for fn in fns)
    device = (*_ON_DEVICE, *spec.scalar_state)
    consts = tuple(dict.fromkeys(n for _, names in arg_names for n in names if n not in device))
    return tuple(spec.scalar_state), consts, arg_names


def _const(value):
    """Hyperparameters as the kernel expects them: bools stay, numbers become floats, pairs tuples."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(float(v) for v in value)
    return float(value)


class _DeviceState:
    """Per-param kernel views of the device scalars, and the array the scalars are written into."""

    __slots__ = ("owner", "rule", "step", "scalars", "h")

    def __init__(self, obj, pstate, names, rule):
        self.owner, self.rule = pstate["step"], rule
        self.step = Buffer("step", pstate["step"]).kernel_view()
        self.scalars = [Buffer(n, pstate[n]).kernel_view() for n in names]
        # in the params' dtype: the prepare kernel's float64 results are cast on the way in
        self.h = Buffer("h", full_like(obj, 0.0, (len(_codegen.scalar_names(rule)),))).kernel_view()


def prepare(spec, group, pstate):
    """(prepare kernel, names of the scalar states it reads from device memory, its constant arguments)
    for one param of an algorithm: the kernel ``k(step, lr, *device scalars, hout, *consts)`` that
    advances the step count and writes this step's scalars (see ``kernels.cuda.prepare_kernel``)."""
    names, const_names, arg_names = _layout(spec)
    kernel = kernel_module("cuda").prepare_kernel(spec.scalars, tuple(spec.scalar_updates.items()), names,
                                                  const_names, arg_names, tuple(spec.scalar_post_updates.items()))
    consts = [_const(pstate[n] if n in pstate else group[n] if n in group else spec.constants[n])
              for n in const_names]
    return kernel, names, consts


def _launch_unit(engine, plan, unit, c):
    """Prepare and update kernels for every param of a CUDA unit, on the caller's stream."""
    from .streams import current_stream
    spec, hp = engine.spec, plan.hp
    cuda = kernel_module("cuda")
    rule = spec.rule(hp)
    devices = engine.__dict__.setdefault("device_state", {})   # dropped with the engine on copies
    lrs = engine.__dict__.setdefault("lr_device", {})
    for r, pstate in enumerate(unit.pstates):
        obj = unit.objs[0][r]
        stream = current_stream(obj)
        _to_device(spec, obj, pstate)
        names = tuple(spec.scalar_state)
        dev = devices.get(id(pstate))
        if dev is None or dev.rule != rule or dev.owner is not pstate["step"]:
            dev = devices[id(pstate)] = _DeviceState(obj, pstate, names, rule)
        lr = _lr_view(lrs, plan.k, hp["lr"], obj, stream)
        kernel, names, consts = prepare(spec, hp, pstate)
        kernel[1, 1, stream](dev.step, lr, *dev.scalars, dev.h, *consts)
        p = unit.arrays[0][r]
        blocks, threads = cuda.launch_config(p.size)
        cuda.DEVICE_H_KERNELS[rule][blocks, threads, stream](p, unit.arrays[1][r],
                                                             *[col[r] for col in unit.arrays[2:]], dev.h, c)


def _lr_view(cache, k, lr, like, stream):
    """The group's lr as a device array view: the caller's array, or ours holding the float."""
    cached = cache.get(k)
    if library(lr) is not None:
        if cached is None or cached[0] is not lr:
            view = Buffer(f"param_groups[{k}]: lr", lr, writeable=False).kernel_view()
            cached = cache[k] = (lr, view)
        return cached[1]
    if cached is None or library(cached[0]) is not None:
        cached = (None, Buffer("lr", scalar_like(like, 0.0)).kernel_view())
    if cached[0] != lr:  # written by a kernel, not a host copy: ordered on the stream, no sync
        kernel_module("cuda").fill_scalar[1, 1, stream](cached[1], float(lr))
        cached = (lr, cached[1])
    cache[k] = cached
    return cached[1]
