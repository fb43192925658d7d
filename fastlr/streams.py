"""The caller's current CUDA stream, for numba launches that must not sync the device.

Kernels launched on numba's default stream (0) serialize with every other stream (the
legacy default stream) and the old ``cuda.to_device`` / ``copy_to_host`` calls without a
stream synchronize the device. These helpers launch on the stream the array's library is
using now (CuPy: ``cupy.cuda.get_current_stream()``, torch: ``torch.cuda.current_stream()``),
wrapped with ``numba.cuda.external_stream``. Nothing here imports torch or cupy unless an
array of theirs is passed.
"""
import numpy as np

from ._arrays import library

_EXTERNAL = {}


def current_stream(x):
    """numba stream object for the stream `x`'s library is currently using (0: numba default)."""
    lib = library(x)
    if lib == "cupy":
        import cupy
        ptr = cupy.cuda.get_current_stream().ptr
    elif lib == "torch" and x.device.type == "cuda":
        import torch
        ptr = torch.cuda.current_stream(x.device).cuda_stream
    else:
        return 0
    if ptr == 0:
        return 0
    stream = _EXTERNAL.get(ptr)
    if stream is None:
        from numba import cuda
        stream = _EXTERNAL[ptr] = cuda.external_stream(ptr)
    return stream


def sum_of_squares_on(flat, stream):
    """float64 sum of squares of a flat device array, on `stream`: waits for that stream only."""
    from numba import cuda

    from .kernels import cuda as kernels
    out = cuda.to_device(np.zeros(1), stream=stream) if stream else cuda.to_device(np.zeros(1))
    blocks, threads = kernels.launch_config(flat.size)
    kernels.sumsq[blocks, threads, stream](flat, out)
    host = out.copy_to_host(stream=stream) if stream else out.copy_to_host()
    if stream:
        stream.synchronize()
    return float(host[0])
