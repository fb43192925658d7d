"""State dicts of states held in low precision: export as floats, load from any precision.

``as_float`` turns one param's saved state (codes + absmax, bf16 tensors or uint16 bits) into float
arrays of the param's shape in torch's layout, which the optimizers' ordinary load checks then
validate (shape, finite, non-negative second moments); ``to_precision`` turns checked float
states into the optimizer's own precision for that param. So a ``torch.optim.AdamW`` state dict
loads into an 8-bit optimizer, an 8-bit one exports as float32 (``state_dict(dequantize=True)``),
and states saved in the optimizer's own low-bit precision load as they are, code for code.
"""
import numpy as np

from . import lowbit
from ._arrays import kind_of, library
from .kernels import quant
from .lowbit_unit import _like, flat_view, n_blocks, n_codes, numel, routed


def signs(spec, hp):
    """{state name: True (signed map) or False} for a group's states (from the element rule's arguments)."""
    names = [n for n, _ in spec.states(hp)]
    return dict(zip(names, quant.state_signs(spec.rule(hp)))) if names else {}


def as_float(param, saved, spec, hp, precision=None, on_device=False):
    """A copy of a param's saved state with every state of ``spec.states(hp)`` as a float array of the
    param's shape and memory layout (host arrays, or on the param's device with ``on_device``); the
    absmax entries dropped. ``precision``: how to read codes whose sizes fit both 8 and 4 bits (1 element)."""
    out = dict(saved)
    size = numel(param)
    for name, signed in signs(spec, hp).items():
        value, absmax = saved.get(name), saved.get(f"{name}_absmax")
        if value is None:
            continue
        dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
        if absmax is not None and dtype == "uint8":
            codes, scales = _host_flat(value), _host_flat(absmax).astype(np.float32)
            prec = _codes_precision(f"state[{name!r}]", codes.size, scales.size, size, precision)
            flat = lowbit.dequantize(lowbit.Quantized(np.ascontiguousarray(codes), np.ascontiguousarray(scales),
                                                      prec, signed, size))
            del out[f"{name}_absmax"]
        elif dtype == "bfloat16" or (dtype == "uint16" and tuple(value.shape) == tuple(param.shape)):
            flat = lowbit.dequantize(_host_flat(value).view(np.uint16))
        else:
            continue
        out[name] = _float_like(param, flat, on_device)
    return out


def to_precision(opt, param, pstate, spec, hp, saved=None):
    """Checked float states (the param's library and device) in the optimizer's state precision for this
    param (unchanged where it keeps fp32 states). States that ``saved`` held quantized in this precision are
    taken from there, code for code (re-quantizing decoded values may change a block's absmax)."""
    names = signs(spec, hp)
    kind = kind_of(param)
    if kind is None or not routed(opt, tuple(names), param, kind):
        return pstate
    precision, size = opt.state_precision, numel(param)
    out = dict(pstate)
    for name, signed in names.items():
        if precision == "bf16":
            out[name] = _bits_like(param, lowbit.to_bf16(_host_flat(pstate[name]).astype(np.float32)))
            continue
        codes, absmax = (saved or {}).get(name), (saved or {}).get(f"{name}_absmax")
        if absmax is not None and tuple(codes.shape) == (n_codes(size, precision),) \
                and tuple(absmax.shape) == (n_blocks(size, precision),):
            q = lowbit.Quantized(_host_flat(codes), _host_flat(absmax).astype(np.float32), precision, signed, size)
        else:
            q = lowbit.quantize(_host_flat(pstate[name]).astype(np.float32), precision, signed)
        out[name], out[f"{name}_absmax"] = _like(param, q.codes), _like(param, q.absmax)
    return out


def _codes_precision(where, n, n_absmax, size, prefer):
    fits = [p for p in ("8bit", "4bit") if n == n_codes(size, p) and n_absmax == n_blocks(size, p)]
    if not fits:
        raise ValueError(f"state_dict: {where}: {n} codes and {n_absmax} absmax fit neither 8-bit nor 4-bit states "
                         f"of a param of {size} elements")
    return prefer if prefer in fits else fits[0]


def _host_flat(x):
    """A host NumPy copy of an array's elements in memory order (bfloat16 tensors as their bits)."""
    v = flat_view(x)
    return v.copy_to_host() if hasattr(v, "copy_to_host") else np.array(v)


def _float_dtype(param):
    dtype = str(param.dtype).removeprefix("torch.")
    return dtype if dtype in ("float32", "float64") else "float32"


def _float_like(param, flat, on_device):
    """Float values in the param's memory order as an array of its shape and layout: a torch tensor with its
    strides (CPU, or its device), a NumPy array (or, on_device, one like the param)."""
    dtype = _float_dtype(param)
    if library(param) == "torch":
        import torch
        t = torch.empty_strided(tuple(param.shape), param.stride(), dtype=getattr(torch, dtype))
        flat_view(t)[:] = flat
        return t.to(param.device) if on_device else t
    host = flat.astype(dtype).reshape(tuple(param.shape))
    return _like(param, host) if on_device else host


def _bits_like(param, bits):
    """bf16 bits in the param's memory order as its bf16 state: a bfloat16 tensor with the param's strides,
    or uint16 bits of its shape."""
    if library(param) == "torch":
        import torch
        t = torch.empty_strided(tuple(param.shape), param.stride(), dtype=torch.bfloat16)
        flat_view(t)[:] = bits.view(np.uint16)
        return t.to(param.device)
    return _like(param, bits.reshape(tuple(param.shape)))


