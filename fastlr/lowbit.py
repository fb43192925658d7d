"""Optimizer states in low precision: the host side of ``kernels/lowbit_cpu.py`` / ``lowbit_cuda.py``.

A functional interface for the optimizer engine (which binds rules, hyperparameters and the
per-step scalars ``h`` as for float32 states):

    states = lowbit.new_states("adam", p, "8bit")     # one entry per state of rules.adam
    lowbit.step("adam", p, g, states, h)              # one fused step, in place
    run = lowbit.launcher("adam", p, g, states)       # or: check the arrays once, then per step
    run(h, c)                                         # launch only (the engine's cached path)
    m = lowbit.dequantize(states[0])                  # float32, e.g. state_dict(dequantize=True)
    states[0] = lowbit.quantize(m, "8bit", signed=True)   # e.g. loading a float32 state dict

Precisions (``quant.PRECISIONS``): "fp32" (float arrays, the ordinary kernels), "bf16" (bfloat16
bits in uint16 arrays, or int16 views of bfloat16 tensors; rounded to nearest even, or
stochastically with ``r=(key, base)``), "8bit" and "4bit" (``Quantized``: block-wise codes with
one float32 absmax per block; signed or unsigned map per state by ``quant.SIGNED_STATE``).
Params with fewer than ``min_size`` elements get float32 states whatever the precision (as
bitsandbytes' ``min_8bit_size``). Params and grads are flat float32 (or float64) arrays; CUDA
arrays (numba device arrays, or anything with ``__cuda_array_interface__`` after
``numba.cuda.as_cuda_array``) run the CUDA kernels, on the default stream unless given one.

A step that is not launched writes nothing: skipping a non-finite step leaves codes and absmax
bit-identical (the engine decides before calling ``step``).
"""
import math
from typing import NamedTuple

import numpy as np

from ._launch import kernel_module
from .kernels import quant, rules
from .kernels._codegen import n_states, scalar_names

SERIAL_BELOW = 1 << 15      # fewer elements: the one-thread kernels (waking the pool costs more)
NO_CONDITIONING = (1.0, -math.inf, math.inf)
BF16_DTYPES = (np.dtype(np.uint16), np.dtype(np.int16))


class Quantized(NamedTuple):
    """One block-wise quantized state of ``size`` elements (arrays on the host or the device)."""
    codes: object       # uint8: size codes (8bit) or (size + 1) // 2 bytes, high nibble first (4bit)
    absmax: object      # float32: one per block of quant.BLOCK_SIZE[precision]
    precision: str      # "8bit" or "4bit"
    signed: bool        # which map: signed (first moments) or unsigned (second moments)
    size: int

    @property
    def codebook(self):
        return quant.CODEBOOKS[self.precision, self.signed]


def _kernels(name):
    """fastlr.kernels.<name>, imported on first use."""
    return kernel_module(name)


def _on_cuda(x):
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray")


def _check_precision(precision):
    if precision not in quant.PRECISIONS:
        raise ValueError(f"state precision must be one of {quant.PRECISIONS}, got {precision!r}")


def _n_blocks(size, precision):
    return -(-size // quant.BLOCK_SIZE[precision])


def _n_codes(size, precision):
    return size if precision == "8bit" else (size + 1) // 2


def precision_of(states):
    """The precision the states of one param are held in ("fp32" for a stateless rule)."""
    if not states:
        return "fp32"
    s = states[0]
    if isinstance(s, Quantized):
        return s.precision
    return "bf16" if np.dtype(s.dtype) in BF16_DTYPES else "fp32"


# ---------------------------------------------------------------- allocation and conversion
def new_states(rule, p, precision, min_size=quant.MIN_SIZE):
    """Zero states for element rule ``rule`` and flat param ``p`` (NumPy or numba device array).

    Quantized states start with absmax 0 (they decode to 0, as torchao's), bf16 as +0.
    """
    _check_precision(precision)
    if rule not in rules.ELEMENT_RULES:
        raise ValueError(f"rule must be one of rules.ELEMENT_RULES, got {rule!r}")
    if not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative int, got {min_size!r}")
    size = int(p.size)
    if precision == "fp32" or size < min_size:
        return [_zeros(p, size, p.dtype) for _ in range(n_states(rule))]
    if precision == "bf16":
        return [_zeros(p, size, np.uint16) for _ in range(n_states(rule))]
    out = []
    for signed in quant.state_signs(rule):
        codes = np.full(_n_codes(size, precision), quant.CODEBOOKS[precision, signed].zero_code, np.uint8)
        if precision == "4bit":
            codes = codes << 4 | codes  # both nibbles
            if size % 2:
                codes[-1] &= 0xF0
        q = Quantized(codes, np.zeros(_n_blocks(size, precision), np.float32), precision, signed, size)
        out.append(_to_device(q) if _on_cuda(p) else q)
    return out


def _zeros(like, size, dtype):
    x = np.zeros(size, dtype)
    return _to_device(x) if _on_cuda(like) else x


def _to_device(x):
    from numba import cuda
    if isinstance(x, Quantized):
        return x._replace(codes=cuda.to_device(x.codes), absmax=cuda.to_device(x.absmax))
    return cuda.to_device(x)


def _to_host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def quantize(x, precision, signed):
    """A flat float array as a ``Quantized`` state (device arrays stay on the device)."""
    if precision not in quant.BLOCK_SIZE:
        raise ValueError(f"precision must be '8bit' or '4bit', got {precision!r}")
    host = _to_host(x)
    if host.ndim != 1 or host.dtype.kind != "f":
        raise TypeError(f"x must be a flat float array, got {host.dtype} of shape {host.shape}")
    size = host.size
    cb = quant.CODEBOOKS[precision, bool(signed)]
    codes = np.zeros(_n_codes(size, precision), np.uint8)
    absmax = np.zeros(_n_blocks(size, precision), np.float32)
    _kernels("lowbit_cpu").quantize_blocks(np.ascontiguousarray(host), codes, absmax, cb.table, cb.lo_bits,
                                           cb.hi_bits, cb.shift, cb.half, quant.BLOCK_SIZE[precision],
                                           8 if precision == "8bit" else 4)
    q = Quantized(codes, absmax, precision, bool(signed), size)
    return _to_device(q) if _on_cuda(x) else q


def dequantize(state):
    """A state as a float32 NumPy array (host copy): Quantized, bf16 bits or float arrays."""
    if isinstance(state, Quantized):
        out = np.empty(state.size, np.float32)
        _kernels("lowbit_cpu").dequantize_blocks(_to_host(state.codes), _to_host(state.absmax), state.codebook.qmap,
                                                 out, quant.BLOCK_SIZE[state.precision],
                                                 8 if state.precision == "8bit" else 4)
        return out
    host = _to_host(state)
    if host.dtype in BF16_DTYPES:
        return (host.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return host.astype(np.float32)


def to_bf16(x):
    """A float array as bfloat16 bits (uint16), rounded to nearest even."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(np.asarray(x, np.float32)), np.uint16(0x7FC0), bits)


def state_bytes(states):
    """Bytes held by the states of one param (codes + absmax, or the arrays)."""
    total = 0
    for s in states:
        arrays = (s.codes, s.absmax) if isinstance(s, Quantized) else (s,)
        total += sum(int(a.size) * np.dtype(a.dtype).itemsize for a in arrays)
    return total


# ---------------------------------------------------------------- the step
def step(rule, p, g, states, h, c=NO_CONDITIONING, r=None, stream=0):
    """One fused step of element rule ``rule`` on flat ``p`` with grad ``g``, states updated in place.

    ``h``: the rule's per-step scalars (``rules.<algo>_scalars``), ``c``: gradient conditioning
    (scale, lo, hi), ``r``: ``(key, base)`` for stochastic rounding of bf16 states (None: to
    nearest even). Everything is checked before anything is written.
    """
    _validate_scalars(rule, h, c, r)
    launcher(rule, p, g, states, stream=stream)(h, c, r)


def launcher(rule, p, g, states, serial=None, stream=0):
    """Check p, g and states once; return ``run(h, c=NO_CONDITIONING, r=None)`` that launches the
    kernel on them with no further checks (for an engine that validated when it cached).

    ``serial``: force the one-thread CPU kernel (True) or the parallel one (False); default by size.
    """
    precision = _validate(rule, p, g, states)
    kernel, tables = kernel_for(rule, precision, _on_cuda(p), p.size, serial, stream)
    arrays = kernel_arrays(states)

    def run(h, c=NO_CONDITIONING, r=None):
        kernel(p, g, *arrays, *launch_scalars(precision, h, c, r), *tables)
    return run


def kernel_arrays(states):
    """The arrays a kernel takes for these states: each Quantized as (codes, absmax), others as they are."""
    return tuple(a for s in states for a in ((s.codes, s.absmax) if isinstance(s, Quantized) else (s,)))


def launch_scalars(precision, h, c, r=None):
    """The scalar arguments after the arrays: h and c as floats, and for bf16 the rounding key."""
    scalars = (tuple(map(float, h)), tuple(map(float, c)))
    if precision == "bf16":
        scalars += ((-1, 0) if r is None else (int(r[0]), int(r[1])),)
    return scalars


def kernel_for(rule, precision, cuda, size, serial=None, stream=0):
    """(kernel, device tables): the kernel of element rule ``rule`` for states in ``precision`` over
    ``size`` elements, configured for launch on CUDA, and the map/encoder tables it takes last (CUDA
    low-bit kernels only). Call it as ``kernel(p, g, *kernel_arrays(states), *launch_scalars(...), *tables)``."""
    if precision == "fp32":
        module = _kernels("cuda" if cuda else "cpu")
    else:
        module = _kernels("lowbit_cuda" if cuda else "lowbit_cpu")
    if serial is None:
        serial = size < SERIAL_BELOW
    suffix = "_serial" if serial and not cuda else ""
    if precision == "fp32":
        kernel = module.KERNELS[rule + suffix]
    elif precision == "bf16":
        kernel = module.BF16[rule + suffix]
    else:
        kernel = module.BLOCKWISE[precision, rule + suffix]
    tables = ()
    if cuda:
        from .kernels.cuda import launch_config
        blocks, threads = launch_config(size, quant.BLOCK_SIZE.get(precision, 256))  # blockwise: one per block
        kernel = kernel[blocks, threads, stream]
        if precision in quant.BLOCK_SIZE:
            tables = tuple(a for signed in quant.state_signs(rule) for a in _device_tables(precision, signed))
    return kernel, tables


_DEVICE_TABLES = {}


def _device_tables(precision, signed):
    """The map and encoder table of one codebook as device arrays (copied once)."""
    key = (precision, signed)
    if key not in _DEVICE_TABLES:
        from numba import cuda
        cb = quant.CODEBOOKS[key]
        _DEVICE_TABLES[key] = (cuda.to_device(cb.qmap), cuda.to_device(cb.table))
    return _DEVICE_TABLES[key]


def _contiguous(x):
    is_c = getattr(x, "is_c_contiguous", None)  # numba device arrays
    if callable(is_c):
        return bool(is_c())
    return bool(getattr(getattr(x, "flags", None), "c_contiguous", True))  # NumPy


def _validate(rule, p, g, states):
    """Check the arrays of a step; return the states' precision."""
    if rule not in rules.ELEMENT_RULES:
        raise ValueError(f"rule must be one of rules.ELEMENT_RULES, got {rule!r}")
    for name, x in (("p", p), ("g", g)):
        if len(getattr(x, "shape", ())) != 1 or np.dtype(x.dtype) not in (np.float32, np.float64):
            raise TypeError(f"{name} must be a flat float32 or float64 array, got {getattr(x, 'dtype', type(x))} "
                            f"of shape {getattr(x, 'shape', None)}")
    if g.size != p.size or _on_cuda(g) != _on_cuda(p):
        raise ValueError(f"g must match p (size {p.size}, same device), got size {g.size}")
    arrays = [p, g] + [a for s in states for a in ((s.codes, s.absmax) if isinstance(s, Quantized) else (s,))]
    if not all(_contiguous(a) for a in arrays):
        raise ValueError("p, g and every state array must be contiguous (the kernels read them as flat memory)")
    if len(states) != n_states(rule):
        raise ValueError(f"rules.{rule} has {n_states(rule)} state(s), got {len(states)}")
    precision = precision_of(states)
    for j, s in enumerate(states):
        if precision_of([s]) != precision:
            raise TypeError(f"states[{j}] is {precision_of([s])}, states[0] is {precision}: one precision per param")
        if isinstance(s, Quantized):
            _check_quantized(j, s, p.size, quant.state_signs(rule)[j])
        elif s.shape != p.shape or (precision == "fp32" and s.dtype != p.dtype):
            raise ValueError(f"states[{j}] must have p's shape {p.shape}"
                             + (" and dtype" if precision == "fp32" else "")
                             + f", got {s.dtype} of shape {s.shape}")
        if not isinstance(s, Quantized) and _on_cuda(s) != _on_cuda(p):
            raise ValueError(f"states[{j}] must be on p's device")
    return precision


def _validate_scalars(rule, h, c, r):
    if rule in rules.ELEMENT_RULES and len(h) != len(scalar_names(rule)):
        raise ValueError(f"h must hold the {len(scalar_names(rule))} scalars of rules.{rule}, got {len(h)}")
    if len(c) != 3:
        raise ValueError(f"c must be (scale, lo, hi), got {c!r}")
    if r is not None and (len(r) != 2 or int(r[0]) < 0):
        raise ValueError(f"r must be (key >= 0, base) or None, got {r!r}")


def _check_quantized(j, s, size, signed):
    if s.size != size:
        raise ValueError(f"states[{j}] holds {s.size} elements, p has {size}")
    if s.signed != signed:
        raise ValueError(f"states[{j}] uses the {'signed' if s.signed else 'unsigned'} map, "
                         f"quant.SIGNED_STATE asks for the {'signed' if signed else 'unsigned'} one")
    for name, arr, dtype, n in (("codes", s.codes, np.uint8, _n_codes(size, s.precision)),
                                ("absmax", s.absmax, np.float32, _n_blocks(size, s.precision))):
        if np.dtype(arr.dtype) != dtype or arr.shape != (n,):
            raise ValueError(f"states[{j}].{name} must be {np.dtype(dtype).name} of shape ({n},), "
                             f"got {arr.dtype} of shape {arr.shape}")
