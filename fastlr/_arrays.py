"""Array kinds: recognise NumPy, torch, CuPy and numba device arrays, validate them, view them flat.

Every array is classified once, up front (``kind_of``): NumPy arrays (exact ``ndarray`` or
``memmap``) and CPU torch tensors run on the CPU kernels; torch CUDA tensors, CuPy arrays and
numba device arrays (real or simulated) on the CUDA kernels. Anything else (``np.matrix``,
masked arrays, meta or sparse tensors, lists) is rejected with a message saying why. Nothing
here imports torch or cupy: a tensor is recognised by its type's module, and only the library
that made an array is asked to allocate states like it.
"""
from collections import namedtuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# family: "numpy", "torch-cpu" or "cuda"; key: what arrays of one unit share; dtype: NumPy dtype
# (or torch's name for 16-bit floats).
Kind = namedtuple("Kind", "family key dtype")


def library(x):
    """'numpy', 'torch', 'cupy', 'numba' (numba device arrays, real or simulated), 'cuda' (another
    object with ``__cuda_array_interface__``) or None."""
    if isinstance(x, np.ndarray):
        return "numpy"
    module = type(x).__module__
    for name in ("torch", "cupy", "numba"):
        if module.startswith(name):
            return name
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda"
    return None


def _torch_dtype(x):
    name = str(x.dtype).removeprefix("torch.")
    try:
        return np.dtype(name)
    except TypeError:
        return name  # bfloat16 and friends have no NumPy dtype


def kind_of(x):
    """The Kind of an array fastlr can update in place, or None (see ``describe_kind``)."""
    lib = library(x)
    if lib == "numpy":
        if type(x) not in (np.ndarray, np.memmap):
            return None
        return Kind("numpy", ("numpy", x.dtype), x.dtype)
    if lib == "torch":
        if not _is_tensor(x) or x.layout.__str__() != "torch.strided" or x.is_sparse:
            return None
        device = x.device.type
        if device not in ("cpu", "cuda"):
            return None
        name = str(x.dtype)
        if name in ("torch.bfloat16", "torch.float16"):   # fastlr.torch's mixed-precision modes
            name = name.removeprefix("torch.")
            return Kind("torch-half", ("torch-half", name, str(x.device)), name)
        dtype = _torch_dtype(x)
        if device == "cpu":
            return Kind("torch-cpu", ("torch-cpu", dtype), dtype)
        return Kind("cuda", ("cuda", dtype, str(x.device)), dtype)
    if lib in ("cupy", "numba", "cuda"):
        if lib == "cupy" and not hasattr(x, "__cuda_array_interface__"):
            return None
        dtype = np.dtype(x.dtype)
        return Kind("cuda", ("cuda", dtype, _cuda_device(lib, x)), dtype)
    return None


def _is_tensor(x):
    import torch
    return isinstance(x, torch.Tensor)


def describe_kind(x):
    """Why ``kind_of(x)`` is None, as the rest of an error message."""
    if isinstance(x, np.ndarray):
        what = type(x).__module__ + "." + type(x).__name__
        hint = "; pass np.asarray(x) if its memory should be updated as a plain array" \
            if not isinstance(x, np.ma.MaskedArray) else " (its mask would be ignored)"
        return f"expected a plain NumPy array (numpy.ndarray), got {what}{hint}"
    if library(x) == "torch" and _is_tensor(x):
        if x.is_sparse or str(x.layout) != "torch.strided":
            return (f"sparse/non-strided tensors ({x.layout}) are not supported here; for embedding tables, "
                    f"fastlr's sparse updates are step_rows(ids, rows) of the NumPy-API optimizers on the "
                    f"table's memory (fastlr.Adagrad(emb.weight.data).step_rows(...), see fastlr.sparse)")
        return f"tensors on device {x.device.type!r} are not supported (expected a CPU or CUDA tensor)"
    return (f"expected a NumPy array, torch tensor, CuPy array or numba device array, got "
            f"{type(x).__module__}.{type(x).__name__}")


class Buffer:
    """A validated array: where it lives, its dtype and shape, and a flat view for the kernels."""

    __slots__ = ("name", "obj", "lib", "device", "dtype", "shape", "flat")

    def __init__(self, name, x, writeable=True):
        self.name = name
        kind = kind_of(x)
        if kind is None:
            raise TypeError(f"{name}: {describe_kind(x)}")
        lib = library(x)
        self.obj, self.lib = x, lib
        self.shape = tuple(x.shape)
        self.dtype = kind.dtype
        if lib == "torch":
            self.device = "cpu" if x.device.type == "cpu" else str(x.device)
            contiguous = dense(x)
        else:
            self.device = "cpu" if lib == "numpy" else _cuda_device(lib, x)
            contiguous = _c_contiguous(lib, x)
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {self.dtype}")
        if not contiguous:
            what = "C-contiguous or otherwise dense tensor" if lib == "torch" else "C-contiguous array"
            raise ValueError(f"{name}: expected a {what} (got {_layout(lib, x, self.shape, self.dtype)}); "
                             f"pass a contiguous copy")
        if lib == "numpy" and not x.flags.aligned:
            raise ValueError(f"{name}: the array's memory is not aligned to its item size; pass an aligned copy")
        if writeable and lib == "numpy" and not x.flags.writeable:
            raise ValueError(f"{name}: the array is read-only; it must be writeable to update in place")
        self.flat = None

    @property
    def on_cuda(self):
        return self.device != "cpu"

    def kernel_view(self):
        """The 1-D view the kernels update (zero-copy), made once and cached."""
        if self.flat is None:
            self.flat = _flat(self.lib, self.obj, self.device)
        return self.flat


def dense(t):
    """A torch tensor is non-overlapping and dense (C-contiguous, channels_last, transposed, ...): ordered
    by stride, each dim's stride is the product of the sizes below it."""
    if t.is_contiguous():
        return True
    expect = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expect:
            return False
        expect *= size
    return True


def _layout(lib, x, shape, dtype):
    """'shape (4, 4) with strides (32, 8) in bytes; C order has (16, 4)', for a contiguity error."""
    if lib == "torch":
        strides, unit, step = tuple(x.stride()), "elements", 1
    else:
        strides = getattr(x, "strides", None) or x.__cuda_array_interface__.get("strides")
        unit, step = "bytes", np.dtype(dtype).itemsize
    c_order = []
    for n in reversed(shape):
        c_order.insert(0, step)
        step *= max(n, 1)
    return f"shape {shape} with strides {tuple(strides)} in {unit}; C order has {tuple(c_order)}"


def _c_contiguous(lib, x):
    if lib in ("numpy", "cupy"):
        return x.flags.c_contiguous
    if lib == "numba":
        return x.is_c_contiguous()
    return x.__cuda_array_interface__.get("strides") is None


def _cuda_device(lib, x):
    if lib == "cupy":
        return f"cuda:{x.device.id}"
    return "cuda"


def _flat(lib, x, device):
    if lib == "numpy":
        return x.reshape(-1)
    if lib == "torch":
        x = x.detach()
        if not x.is_contiguous():  # dense in another dimension order: the same block of memory
            x = x.as_strided((x.numel(),), (1,))
        if device == "cpu":
            return x.numpy().reshape(-1)
    from numba import cuda
    # sync=False: no stream synchronize on conversion (illegal inside CUDA graph capture);
    # kernels are ordered by launching on the array library's current stream instead.
    arr = x if lib == "numba" else cuda.as_cuda_array(x, sync=False)
    return arr.reshape(arr.size) if arr.ndim != 1 else arr


def same_kind(name, buf, ref, ref_name):
    """Raise unless `buf` matches `ref` in shape, dtype and device."""
    if buf.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (as {ref_name}), got {buf.shape}")
    if buf.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (as {ref_name}), got {buf.dtype}")
    if buf.device != ref.device:
        raise ValueError(f"{name}: expected an array on {ref.device} (as {ref_name}), got {buf.device}")


def full_like(x, fill, shape=None):
    """A new array like `x` (or of `shape`, x's dtype) filled with `fill`, made by x's library
    (torch: with x's memory format, so states share the param's layout)."""
    lib = library(x)
    if lib == "numpy":
        return np.full(tuple(x.shape) if shape is None else shape, fill, dtype=x.dtype)
    if lib == "torch":
        import torch
        if shape is None:
            return torch.full_like(x.detach(), fill, memory_format=torch.preserve_format)
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
    shape = tuple(x.shape) if shape is None else shape
    if lib == "cupy":
        import cupy
        with x.device:
            return cupy.full(shape, fill, dtype=x.dtype)
    from numba import cuda
    return cuda.to_device(np.full(shape, fill, dtype=x.dtype))


def scalar_like(x, value):
    """A float64 array of one element holding `value`, on x's device and of x's library."""
    lib = library(x)
    if lib == "numpy":
        return np.full(1, value, dtype=np.float64)
    if lib == "torch":
        import torch
        return torch.full((1,), value, dtype=torch.float64, device=x.device)
    if lib == "cupy":
        import cupy
        with x.device:
            return cupy.full(1, value, dtype=np.float64)
    from numba import cuda
    return cuda.to_device(np.full(1, value, dtype=np.float64))


def host_scalar(x):
    """A Python number from a number or a one-element array of any supported library."""
    return float(to_numpy(x).reshape(-1)[0]) if library(x) is not None else x


def to_numpy(x):
    """A host NumPy copy of any supported array."""
    lib = library(x)
    if lib == "numpy":
        return np.array(x)
    if lib == "torch":
        return x.detach().cpu().numpy().copy()
    if lib == "cupy":
        return x.get()
    if lib == "numba":
        return x.copy_to_host()
    from numba import cuda
    return cuda.as_cuda_array(x).copy_to_host()


def memory_span(p):
    """(start, end) byte addresses of a contiguous array's memory, or None when it has none to compare."""
    lib = library(p)
    if lib == "numpy":
        if p.size == 0:
            return None
        start = p.__array_interface__["data"][0]
        return start, start + p.nbytes
    if lib == "torch":
        if p.numel() == 0:
            return None
        return p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()
    iface = getattr(p, "__cuda_array_interface__", None)
    if iface is None:
        return None
    n = 1
    for d in iface["shape"]:
        n *= d
    return (iface["data"][0], iface["data"][0] + n * int(iface["typestr"][2:])) if n else None


def check_disjoint(written, read):
    """Raise unless no array of `written` shares memory with another array of either list ((name,
    array) pairs of contiguous arrays): an update would read what it just wrote, or write twice."""
    items = [(name, a, True) for name, a in written] + [(name, a, False) for name, a in read]
    numpy = all(type(a) is np.ndarray for _, a, _ in items)   # np.may_share_memory: a bounds check in C
    if not numpy:
        items = [(name, memory_span(a), w) for name, a, w in items]
    for i, (n1, a1, w1) in enumerate(items):
        for n0, a0, w0 in items[:i]:
            if (w0 or w1) and (np.may_share_memory(a0, a1) if numpy else
                               a0 and a1 and a1[0] < a0[1] and a0[0] < a1[1]):
                raise ValueError(f"{n1}: shares memory with {n0}; each array written by an update must have "
                                 f"memory of its own, not overlapping any other array of the update")


def max_abs(x):
    """The largest |element| of any supported array as a float (NaN if one is NaN, 0.0 if empty), computed
    by its own library; a DTensor's over every rank."""
    lib = library(x)
    if lib == "torch":
        if x.numel() == 0:
            return 0.0
        v = x.detach().abs().max()
        return float(v.full_tensor() if type(v).__name__ == "DTensor" else v)
    if lib == "cupy":
        import cupy
        return float(cupy.abs(x).max()) if x.size else 0.0
    a = x if lib == "numpy" else to_numpy(x)
    return float(np.abs(a).max()) if a.size else 0.0


def scaled_sumsq(x, m):
    """sum((x / m)**2) in float64, for a norm that no square overflows (m: the largest |element|)."""
    lib = library(x)
    if lib == "torch":
        v = (x.detach().double() / m).square().sum()
        return float(v.full_tensor() if type(v).__name__ == "DTensor" else v)
    if lib == "cupy":
        import cupy
        return float(cupy.square(x.astype(np.float64) / m).sum())
    a = (x if lib == "numpy" else to_numpy(x)).astype(np.float64).reshape(-1) / m
    return float(a @ a)


def copy_into(dst, src):
    """Copy host or device data `src` into the existing array `dst`, in place."""
    lib = library(dst)
    if lib == "numpy":
        np.copyto(dst, to_numpy(src) if library(src) != "numpy" else src)
    elif lib == "torch":
        import torch
        dst.copy_(torch.as_tensor(to_numpy(src)) if library(src) != "torch" else src)
    elif lib == "cupy":
        import cupy
        dst[...] = cupy.asarray(src)
    else:
        dst.copy_to_device(to_numpy(src))
