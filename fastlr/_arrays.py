"""Array kinds: recognise NumPy, torch, CuPy and numba device arrays, validate them, view them flat.

Nothing here imports torch or cupy: a tensor is recognised by its type's module, and
only the library that made an array is asked to allocate states like it.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def library(x):
    """'numpy', 'torch', 'cupy' or 'numba' (numba device arrays, real or simulated)."""
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


class Buffer:
    """A validated array: where it lives, its dtype and shape, and a flat view for the kernels."""

    __slots__ = ("obj", "lib", "device", "dtype", "shape", "flat")

    def __init__(self, name, x, writeable=True):
        lib = library(x)
        if lib is None:
            raise TypeError(f"{name}: expected a NumPy array, torch tensor, CuPy array or numba "
                            f"device array, got {type(x).__name__}")
        self.obj, self.lib = x, lib
        self.shape = tuple(x.shape)
        if lib == "torch":
            if x.is_sparse:
                raise TypeError(f"{name}: sparse tensors are not supported here (use step_rows)")
            self.dtype = _torch_dtype(x)
            self.device = "cpu" if x.device.type == "cpu" else str(x.device)
            contiguous = x.is_contiguous()
        else:
            self.dtype = np.dtype(x.dtype)
            self.device = "cpu" if lib == "numpy" else _cuda_device(lib, x)
            contiguous = _c_contiguous(lib, x)
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {self.dtype}")
        if not contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array (got strides for shape "
                             f"{self.shape}); pass a contiguous copy")
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
    if lib == "torch" and device == "cpu":
        return x.detach().numpy().reshape(-1)
    from numba import cuda
    # sync=False: no stream synchronize on conversion (illegal inside CUDA graph capture);
    # kernels are ordered by launching on the array library's current stream instead.
    arr = x if lib == "numba" else cuda.as_cuda_array(x.detach() if lib == "torch" else x, sync=False)
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
    """A new contiguous array like `x` (or of `shape`, x's dtype) filled with `fill`, made by x's library."""
    lib = library(x)
    shape = tuple(x.shape) if shape is None else shape
    if lib == "numpy":
        return np.full(shape, fill, dtype=x.dtype)
    if lib == "torch":
        import torch
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
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
    """A Python float from a number or a one-element array of any supported library."""
    return float(to_numpy(x).reshape(-1)[0]) if library(x) is not None else x


def to_numpy(x):
    """A host NumPy copy of any supported array."""
    lib = library(x)
    if lib == "numpy":
        return x.copy()
    if lib == "torch":
        return x.detach().cpu().numpy().copy()
    if lib == "cupy":
        return x.get()
    if lib == "numba":
        return x.copy_to_host()
    from numba import cuda
    return cuda.as_cuda_array(x).copy_to_host()


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
