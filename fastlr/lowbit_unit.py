"""The engine's unit for params whose states are held in low precision (``state_precision=``).

A route (``engine.register_route``) sends every param with at least ``state_min_size`` elements
of an optimizer with ``state_precision`` "bf16", "8bit" or "4bit" to ``LowbitUnit``; smaller
params keep fp32 states in the ordinary units. The unit creates its params' states (layout:
``fastlr.state_precision``), checks at every step what the caller holds (params, grads, codes,
absmax, bf16 states: library, dtype, shape, strides, device, address; a replaced or cleared state
is re-created, or rejected with an error naming it, before anything changes), and on the CPU calls
one segment-table kernel over all its params (``kernels/lowbit_cpu.py``'s ``TABLE``: one parallel
launch per step, whatever the number of params), on CUDA one fused kernel per param.
Step counts, per-step scalars, gradient conditioning
and the non-finite skip are the engine's: a skipped step launches nothing, so codes and absmax
stay bit-identical.

16-bit torch params with ``master_weights=True`` work too: the kernel updates the float32 master
copy from a float32 copy of the grad, then the master is written to the param (nearest even), as
``fastlr.mixed`` does. Not here: capturable steps, 16-bit params with stochastic rounding
(refused at construction), DTensor params, ``step_rows`` (refused).
"""
import numpy as np

from . import engine as _engine
from . import lowbit
from ._arrays import Buffer, library, same_kind
from ._launch import kernel_module, sum_of_squares
from .kernels import quant

FAMILIES = ("numpy", "torch-cpu", "cuda", "torch-half")


def numel(x):
    n = x.numel() if library(x) == "torch" else x.size
    return int(n)


def route(engine, names, param, kind):
    """The engine's route: "lowbit" for a param whose states its optimizer holds in low precision."""
    return "lowbit" if routed(engine.opt, names, param, kind) else None


def routed(opt, names, param, kind):
    """Whether ``opt`` holds the states (``names``) of ``param`` (of Kind ``kind``) in low precision."""
    if getattr(opt, "state_precision", "fp32") == "fp32" or not names or kind.family not in FAMILIES:
        return False
    if numel(param) < opt.state_min_size:
        return False
    if type(param).__name__ == "DTensor":
        raise TypeError(f"state_precision={opt.state_precision!r}: DTensor params (FSDP2) are not supported; "
                        f"use state_precision='fp32'")
    return kind.family != "torch-half" or getattr(opt, "master_weights", False)  # else mixed.py explains


def is_quantized(precision):
    return precision in quant.BLOCK_SIZE


def n_codes(size, precision):
    return size if precision == "8bit" else (size + 1) // 2


def n_blocks(size, precision):
    return -(-size // quant.BLOCK_SIZE[precision])


def new_states(param, precision, inits):
    """{name: array}: the states ``inits`` ((name, value >= 0) pairs) of a param, in ``precision``,
    made by the param's library on its device. A quantized constant is exact: absmax = value and
    every code the map's last (1.0; any code decodes to 0 when absmax is 0)."""
    size, out = numel(param), {}
    for name, value in inits:
        value = float(value)
        if value < 0:
            raise ValueError(f"{name}: low-precision states start at values >= 0, got {value}")
        if precision == "bf16":
            out[name] = _bf16_like(param, value)
            continue
        last = 0xFF if value else 0
        codes = np.full(n_codes(size, precision), last, np.uint8)
        if precision == "4bit" and size % 2:
            codes[-1] &= 0xF0   # the unused low nibble of an odd last block stays 0
        out[name] = _like(param, codes)
        out[f"{name}_absmax"] = _like(param, np.full(n_blocks(size, precision), value, np.float32))
    return out


def _like(param, host):
    """A host array as an array of the param's library on its device."""
    lib = library(param)
    if lib == "numpy":
        return host
    if lib == "torch":
        import torch
        return torch.from_numpy(host).to(param.device)
    if lib == "cupy":
        import cupy
        with param.device:
            return cupy.asarray(host)
    from numba import cuda
    return cuda.to_device(host)


def _bf16_like(param, value):
    """bf16 states of the param's shape: bfloat16 tensors with its strides (torch), uint16 bits elsewhere."""
    if library(param) == "torch":
        import torch
        return torch.full_like(param.detach(), value, dtype=torch.bfloat16, memory_format=torch.preserve_format)
    return _like(param, np.full(tuple(param.shape), lowbit.to_bf16(np.float32(value)), np.uint16))


def flat_view(x):
    """The flat kernel view of a dense array of any dtype (bfloat16 tensors as uint16/int16 bits)."""
    lib = library(x)
    if lib == "numpy":
        return x.reshape(-1)
    if lib == "torch":
        import torch
        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        if not t.is_contiguous():
            t = t.as_strided((t.numel(),), (1,))
        t = t.reshape(-1)
        if t.device.type == "cpu":
            a = t.numpy()
            return a.view(np.uint16) if a.dtype == np.int16 else a
    from numba import cuda
    arr = x if lib == "numba" else cuda.as_cuda_array(t if lib == "torch" else x, sync=False)
    return arr.reshape(arr.size) if arr.ndim != 1 else arr


def _address(x):
    """(start address, bytes) of an array's memory; (None, id) where it has none (the simulator)."""
    lib = library(x)
    if lib == "numpy":
        return x.__array_interface__["data"][0], x.nbytes
    if lib == "torch":
        return x.data_ptr(), x.numel() * x.element_size()
    iface = getattr(x, "__cuda_array_interface__", None)
    if iface is None:
        return None, id(x)
    return iface["data"][0], numel(x) * int(iface["typestr"][2:])


def _fingerprint(x):
    """What a check of x relies on: the object, its memory, dtype, shape and strides (None: missing)."""
    if type(x) is np.ndarray:   # the common case first (a few hundred ns)
        return id(x), x.__array_interface__["data"][0], x.dtype, x.shape, x.strides, x.flags.writeable
    if x is None:
        return None
    if library(x) == "torch":
        return id(x), x.data_ptr(), x.dtype, x.shape, x.stride(), x.device
    return id(x), _address(x), x.dtype, tuple(x.shape), getattr(x, "strides", None)


class LowbitUnit(_engine.Unit):
    """Params of one kind whose states are held in low precision: one fused kernel per param per step."""

    def __init__(self, *args):
        super().__init__(*args)
        opt = self.engine.opt
        _refuse(self.engine.spec, args[1].rule, args[1].hp, opt.state_precision)
        self.precision = opt.state_precision
        self.quantized = is_quantized(self.precision)
        self.stochastic = opt.state_stochastic_rounding
        self.master = self.kind.family == "torch-half"
        self.cuda = self.kind.family == "cuda" or (self.master and "cuda" in self.kind.key[2])

    @classmethod
    def create_states(cls, engine, pstate, param, inits):
        copies = [name for name, init in inits if isinstance(init, str)]
        if copies:   # a state that starts as a copy of the param (ASGD's ax, schedule-free's z) is param-like
            raise ValueError(f"state_precision={engine.opt.state_precision!r}: not available for {engine.spec.name}, "
                             f"whose state {copies[0]!r} is a copy of the params (it keeps their precision); use "
                             f"state_precision='fp32'")
        missing = [(name, init) for name, init in inits if name not in pstate]
        for name, value in new_states(param, engine.opt.state_precision, missing).items():
            pstate[name] = value

    # ------------------------------------------------------------ what the caller holds
    def read(self, allcols):
        params, grads, states = allcols[0], allcols[1], allcols[2:]
        extra = [[st.get(f"{n}_absmax") for st in self.pstates] for n in self.names] if self.quantized else []
        if self.master:
            extra.append([st.get("master_param") for st in self.pstates])
        held = [params, *states, *extra]
        meta = [list(map(_fingerprint, col)) for col in held]
        if meta != self.checked:
            self._validate(params, states, extra)
            self.checked = meta
            self.targets = [flat_view(x) for x in (extra[-1] if self.master else params)]
            self.arrays = [self._state_arrays(r, states, extra) for r in range(len(params))]
            self.held_objs = held   # keeps the checked objects (and so their addresses) alive
            if not self.cuda:
                self._new_table()
        self.params = params
        self.gviews = [self._grad_view(r, p, g) for r, (p, g) in enumerate(zip(params, grads))]
        if not self.cuda:
            self.ptrs[:, 1] = [g.__array_interface__["data"][0] for g in self.gviews]

    def _new_table(self):
        """The segment table of the CPU kernels: every param's addresses (the grads' set at each step)."""
        n = len(self.targets)
        self.ptrs = np.array([[_address(self.targets[r])[0], 0, *[_address(a)[0] for a in self.arrays[r]]]
                              for r in range(n)], np.int64)
        sizes = np.array([t.size for t in self.targets], np.int64)
        self.work = kernel_module("cpu").make_work(sizes, _engine.CHUNK)   # whole blocks: CHUNK % 256 == 0
        self.total = int(sizes.sum())
        self.like = np.empty(0, self.targets[0].dtype)
        self.keys, self.hzero = np.full(n, -1, np.int64), np.zeros(n, np.int64)

    def _state_arrays(self, r, states, extra):
        if not self.quantized:
            return tuple(flat_view(col[r]) for col in states)
        return tuple(flat_view(a) for j in range(len(states)) for a in (states[j][r], extra[j][r]))

    def _grad_view(self, r, p, g):
        """The grad's flat float view, checked against its param (a new object at every torch step)."""
        name = self.column_name(r, 1)
        if library(g) == "torch" and library(p) == "torch":
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(f"{name}: expected {p.dtype} of shape {tuple(p.shape)} on {p.device} (as its "
                                 f"param), got {g.dtype} of shape {tuple(g.shape)} on {g.device}")
            if g.stride() != p.stride():   # autograd gives a grad its param's layout; anything else: a copy
                import torch
                g = torch.empty_like(p.detach(), memory_format=torch.preserve_format).copy_(g)
            if self.master:
                import torch
                g = g.detach().to(torch.float32, memory_format=torch.preserve_format)
            return flat_view(g)
        buf = Buffer(name, g, writeable=False)
        same_kind(name, buf, self.pbufs[r], self.pbufs[r].name)
        return buf.kernel_view()

    def _validate(self, params, states, extra):
        """Every param and state of the unit, with messages naming the array; raises on the first bad one."""
        spans, self.pbufs = [], []
        for r, p in enumerate(params):
            pname = self.column_name(r, 0)
            if self.master:
                _check_master(pname, p, extra[-1][r])
            else:
                self.pbufs.append(Buffer(pname, p))
            target = extra[-1][r] if self.master else p
            spans.append((*_address(target), pname))
            size = numel(p)
            for j, name in enumerate(self.names):
                where = self.column_name(r, 2 + j)
                if self.quantized:
                    self._check_codes(where, states[j][r], p, size, name)
                    absmax = extra[j][r]
                    _check_flat(where.replace(repr(name), repr(f"{name}_absmax")), absmax, p, "float32",
                                n_blocks(size, self.precision), "one float32 absmax per block", name)
                    spans += [(*_address(states[j][r]), where), (*_address(absmax), where + " absmax")]
                else:
                    _check_bf16(where, states[j][r], p)
                    spans.append((*_address(states[j][r]), where))
        pair = _engine.first_overlap((a, a + n, name) for a, n, name in spans if a is not None and n)
        if pair:
            raise ValueError(f"{pair[1]}: shares memory with {pair[0]}; every param and state must have memory of "
                             f"its own")
        self._spans = [(a, a + n, name) for a, n, name in spans if a is not None and n]

    def _check_codes(self, where, codes, p, size, name):
        _check_flat(where, codes, p, "uint8", n_codes(size, self.precision),
                    f"{self.precision} codes of a param of {size} elements", name)

    # ------------------------------------------------------------ the step
    def launch(self, rule, htab, hidx, c):
        from .streams import current_stream
        c = tuple(map(float, c))
        keys = self._rounding_keys() if self.stochastic else None
        if not self.cuda:   # one call over the unit's segment table
            if keys is not None:
                self.keys[:] = [int(key) for key, _ in keys]
            serial = self.total < lowbit.SERIAL_BELOW
            kernel = kernel_module("lowbit_cpu").TABLE[self.precision, rule + ("_serial" if serial else "")]
            with _engine.parallel_guard(serial):
                kernel(self.ptrs, self.work, self.hzero if hidx is None else hidx, htab, c, self.keys, self.like)
        else:   # one launch per param, on the caller's current stream
            rows = htab.tolist()
            for r, (target, g, arrays) in enumerate(zip(self.targets, self.gviews, self.arrays)):
                h = rows[0 if hidx is None else int(hidx[r])]
                kernel, tables = lowbit.kernel_for(rule, self.precision, True, target.size, False,
                                                   current_stream(self.params[r]))
                kernel(target, g, *arrays, *lowbit.launch_scalars(self.precision, h, c,
                                                                 None if keys is None else keys[r]), *tables)
        if self.master:   # the master copies rounded to nearest even into the 16-bit params
            for p, st in zip(self.params, self.pstates):
                p.detach().copy_(st["master_param"])

    def _rounding_keys(self):
        """Per param (key, base) for stochastic rounding of bf16 states: this step's, the param's own."""
        from .mixed import seed_mix
        steps = self.engine.front.steps(self.pstates, self.front_cache)
        seed = getattr(self.engine.opt, "seed", 0)
        return [seed_mix(seed, int(t), 0, label[3]) for t, label in zip(steps, self.labels)]

    def sumsq(self):
        from .streams import current_stream
        return sum(sum_of_squares(g, self.cuda, current_stream(p) if self.cuda else 0)
                   for g, p in zip(self.gviews, self.params))

    def grad_addresses(self):
        if self.cuda:
            return ()
        return [(*_address(g), *_address(p)) for g, p in zip(self.gviews, self.params)]

    def spans(self):
        if not self.master:
            return self._spans
        return self._spans + [(a, a + n, self.column_name(r, 0)) for r, p in enumerate(self.params)
                              for a, n in (_address(p),)]


def functional_update(spec, group, pstate, pbuf, gbuf, names, states, precision):
    """fastlr.functional's update with states in low precision (checked first, then one fused kernel)."""
    from .engine import plan_scalars
    from .streams import current_stream
    if precision not in quant.PRECISIONS or precision == "fp32":
        raise ValueError(f"state_precision: expected one of {quant.PRECISIONS}, got {precision!r}")
    rule = spec.rule(group)
    _refuse(spec, rule, group, precision)
    p, size = pbuf.obj, numel(pbuf.obj)
    held, spans = [], [(*_address(p), "param")]
    for name, state, signed in zip(names, states, quant.state_signs(rule)):
        if precision == "bf16":
            _check_bf16(name, state, p)
            held.append(flat_view(state))
            spans.append((*_address(state), name))
            continue
        if isinstance(state, lowbit.Quantized):   # as fastlr.lowbit.new_states / quantize make them
            state = (state.codes, state.absmax)
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError(f"{name}: expected a pair (codes, absmax) for {precision} states, got "
                             f"{type(state).__name__}")
        _check_flat(f"{name} codes", state[0], p, "uint8", n_codes(size, precision),
                    f"{precision} codes of a param of {size} elements", name)
        _check_flat(f"{name} absmax", state[1], p, "float32", n_blocks(size, precision),
                    "one float32 absmax per block", name)
        held.append(lowbit.Quantized(flat_view(state[0]), flat_view(state[1]), precision, signed, size))
        spans += [(*_address(state[0]), f"{name} codes"), (*_address(state[1]), f"{name} absmax")]
    pair = _engine.first_overlap((a, a + n, w) for a, n, w in spans if a is not None and n)
    if pair:
        raise ValueError(f"{pair[1]}: shares memory with {pair[0]}")
    rule, h = plan_scalars(spec, group, pstate)
    lowbit.step(rule, pbuf.kernel_view(), gbuf.kernel_view(), held, h,
                stream=current_stream(p) if pbuf.on_cuda else 0)


def _refuse(spec, rule, hp, precision):
    """A ValueError saying why when ``spec``'s rule for these hyperparameters has no low-precision states."""
    from .state_precision import unavailable
    reason = unavailable(spec, precision, hp) or \
        (rule not in quant.STATEFUL_RULES and f"rules.{rule} has no low-precision kernels")
    if reason:
        raise ValueError(f"state_precision={precision!r}: not available for {spec.name} with these options: {reason}; "
                         f"use state_precision='fp32' (see fastlr.state_precision)")


def _check_flat(where, x, p, dtype, n, what, name):
    """A state array of the low-bit layout: 1-D, contiguous, dtype, n elements, the param's library and device."""
    if x is None:
        raise ValueError(f"{where}: missing; {what} expected (clear the param's state to start it again)")
    if library(x) != library(p) or str(x.dtype).removeprefix("torch.") != dtype or tuple(x.shape) != (n,):
        raise ValueError(f"{where}: expected {what}: a {dtype} array of shape ({n},) made like its param "
                         f"({library(p)}), got {type(x).__name__} {getattr(x, 'dtype', '')} of shape "
                         f"{tuple(getattr(x, 'shape', ()))} (state {name!r} is held in low precision: "
                         f"see fastlr.state_precision)")
    _check_place(where, x, p)


def _check_bf16(where, x, p):
    """A bf16 state: bfloat16 tensor with the param's shape and strides (torch), uint16 bits elsewhere."""
    expected = "bfloat16" if library(p) == "torch" else "uint16"
    if x is None or library(x) != library(p) or str(x.dtype).removeprefix("torch.") != expected \
            or tuple(x.shape) != tuple(p.shape):
        raise ValueError(f"{where}: expected a {expected} array of shape {tuple(p.shape)} made like its param "
                         f"(bf16 states), got {type(x).__name__} {getattr(x, 'dtype', '')} of shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if library(x) == "torch" and x.stride() != p.stride():
        raise ValueError(f"{where}: strides {x.stride()} differ from its param's {p.stride()}")
    _check_place(where, x, p)


def _check_place(where, x, p):
    """Same device as the param, contiguous (dense, for torch), writeable."""
    lib = library(x)
    if lib == "torch":
        from ._arrays import dense
        if x.device != p.device:
            raise ValueError(f"{where}: on {x.device}, its param on {p.device}")
        if not dense(x):
            raise ValueError(f"{where}: expected a dense tensor")
        return
    if lib == "numpy":
        if not (x.flags.c_contiguous and x.flags.writeable and x.flags.aligned):
            raise ValueError(f"{where}: expected a C-contiguous, aligned, writeable array")
        return
    if not lowbit._contiguous(x):
        raise ValueError(f"{where}: expected a contiguous array")


def _check_master(pname, p, master):
    """A 16-bit param with its float32 master copy (master_weights=True)."""
    import torch

    from ._arrays import dense
    if not dense(p):
        raise ValueError(f"{pname}: expected a dense tensor")
    if not isinstance(master, torch.Tensor) or master.dtype != torch.float32 or master.shape != p.shape \
            or master.device != p.device or master.stride() != p.stride():
        raise ValueError(f"{pname}: master_param: expected a float32 tensor of shape {tuple(p.shape)} on "
                         f"{p.device} with the param's strides")


_engine.register_unit("lowbit", LowbitUnit)
_engine.register_route(route)
