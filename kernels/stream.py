"""The bandwidth ceiling: in-place stream kernels with an optimizer's memory traffic and trivial math.

``STREAM[k](p, g, s0, ..., s{k-1}, a, b)`` reads p, g and k state arrays and writes p and
the k states back, one pass, like an update rule with k state arrays (Adam: k=2, so
4 reads and 3 writes = 28 B/param in float32). The math is one multiply-add per array:

    s_j[i] = b * s_j[i] + g[i]        p[i] = p[i] - a * g[i]

An optimizer step cannot move fewer bytes, so ``bytes / time`` of these kernels is the
rate an optimizer kernel is measured against (``fastlr.bench``). Kernels are generated
from one template and compiled as code of this module, so ``cache=True`` reuses them
in a new process (closures would recompile every time). ``STREAM_SERIAL[k]`` is the
one-thread version (used below ``fastlr._launch.SERIAL_BELOW``, as fastlr's dispatch does).
``CUDA_STREAM(k)`` is the same kernel for numba.cuda (built on first use; never imported
by the CPU path).
"""
from numba import njit, prange

MAX_STATES = 4  # AMSGrad: m, v, v_max; Adan: m, v, diff, previous gradient

_TEMPLATE = """
def stream_{k}(p, g, {states}a, b):
    for i in prange(p.size):
        x = g[i]
{updates}        p[i] = p[i] - a * x
"""

_CUDA_TEMPLATE = """
def cuda_stream_{k}(p, g, {states}a, b):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.size, stride):
        x = g[i]
{updates}        p[i] = p[i] - a * x
"""


def _render(template, k):
    return template.format(
        k=k, states="".join(f"s{j}, " for j in range(k)),
        updates="".join(f"        s{j}[i] = b * s{j}[i] + x\n" for j in range(k)))


def _generate(template, k, extra, decorate):
    namespace = dict(globals(), **extra)  # __name__ too: numba's cache re-imports the module by it
    code = compile(_render(template, k), __file__, "exec")
    exec(code, namespace)
    name = template.split("(")[0].split()[-1].format(k=k)
    return decorate(namespace[name])


STREAM = {k: _generate(_TEMPLATE, k, {"prange": prange},
                       njit(parallel=True, cache=True, nogil=True, error_model="numpy"))
          for k in range(MAX_STATES + 1)}

# One-thread versions, for sizes where fastlr also runs serial (fastlr._launch.SERIAL_BELOW).
STREAM_SERIAL = {k: _generate(_TEMPLATE.replace("stream_{k}", "stream_serial_{k}"), k, {"prange": range},
                              njit(cache=True, nogil=True, error_model="numpy"))
                 for k in range(MAX_STATES + 1)}

# The first pass of a two-pass rule (fastlr.twopass) at its ceiling: reads p, g and k states, writes nothing.
_READ_TEMPLATE = """
def stream_read_{k}(p, g, {states}a, b):
    s = 0.0
    for i in prange(p.size):
        s += p[i] + g[i]{reads}
    return s
"""


def _render_read(k, serial):
    src = _READ_TEMPLATE.format(k=k, states="".join(f"s{j}, " for j in range(k)),
                                reads="".join(f" + s{j}[i]" for j in range(k)))
    return src.replace("stream_read_", "stream_read_serial_") if serial else src


def _generate_read(k, serial):
    """Reassociation allowed (the sum is a sink, not a result): the read loop vectorizes as a copy does."""
    namespace = dict(globals(), prange=range if serial else prange)
    exec(compile(_render_read(k, serial), __file__, "exec"), namespace)
    fn = namespace[f"stream_read_{'serial_' if serial else ''}{k}"]
    jit = dict(cache=True, nogil=True, fastmath={"reassoc"})
    return njit(**jit)(fn) if serial else njit(parallel=True, **jit)(fn)


STREAM_READ = {k: _generate_read(k, False) for k in range(MAX_STATES + 1)}
STREAM_READ_SERIAL = {k: _generate_read(k, True) for k in range(MAX_STATES + 1)}

_CUDA = {}


def CUDA_STREAM(k):
    """The CUDA version of ``STREAM[k]`` (grid-stride loop), compiled on first use."""
    if k not in _CUDA:
        from numba import cuda
        _CUDA[k] = _generate(_CUDA_TEMPLATE, k, {"cuda": cuda}, cuda.jit)
    return _CUDA[k]


def bytes_per_param(k, itemsize):
    """Bytes one step moves per parameter with k state arrays: (k + 2) reads, (k + 1) writes."""
    return (2 * k + 3) * itemsize


def ptx_cases():
    """(label, kernel, example args) of the CUDA stream kernels, as fastlr.bench launches them."""
    import numpy as np
    for k in range(MAX_STATES + 1):
        for dtype in (np.float32, np.float64):
            yield f"CUDA_STREAM({k}) {dtype.__name__}", CUDA_STREAM(k), (
                *(np.zeros(1, dtype),) * (k + 2), dtype(1e-3), dtype(0.5))
