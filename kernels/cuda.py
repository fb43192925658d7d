"""CUDA kernels: the same element rules, compiled as device functions inside grid-stride kernels.

``KERNELS[rule]`` has the signature of the CPU kernels, ``kernel(p, g, *states, h, c)``,
launched as ``kernel[blocks, threads, stream](...)`` (see ``launch_config``). Works under
the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) for tests without a GPU.

For ``capturable=True`` (a step that can be recorded in a CUDA graph and replayed), nothing
may come from the host per step: ``prepare_kernel(...)`` returns a one-thread kernel that
advances the step count in device memory and evaluates the host rule ``<algo>_scalars`` on
the device into a small array, and ``DEVICE_H_KERNELS[rule]`` reads ``h`` from that array.
"""
import functools
import math

import numpy as np
from numba import config, cuda

from . import rules
from ._codegen import compile_rules, generate, generate_source, n_states, scalar_names
from ._pointers import at  # noqa: F401  (used by the generated table kernels)

R = compile_rules(cuda.jit(device=True), __name__ + ".R")

_TEMPLATE = """
def {name}(p, g, {states}h64, c64):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

# The simulator interprets Python: nothing to cache there.
_SIMULATOR = bool(config.ENABLE_CUDASIM)

KERNELS = {name: generate(_TEMPLATE, name, name, globals(), cuda.jit(cache=not _SIMULATOR))
           for name in rules.ELEMENT_RULES}

_TEMPLATE_DEVICE_H = """
def {name}(p, g, {states}hd, c64):
    h = ({h_items})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i],{targets} = R.{rule}(p[i], R.condition(g[i], c){items}, h)
"""

DEVICE_H_KERNELS = {name: generate(_TEMPLATE_DEVICE_H, name, name + "_device_h", globals(),
                                   cuda.jit(cache=not _SIMULATOR))
                    for name in rules.ELEMENT_RULES}

# Segment tables on the device: one launch updates many separate arrays. ``ptrs[t]`` holds the
# device addresses of tensor t's param, grad and states, ``work`` rows (t, lo, hi) cut the tensors
# into chunks of TABLE_CHUNK elements (one block per row, grid-stride over rows), tensor t uses
# the scalars ``htab[hidx[t]]``; ``like`` is a device array of the tensors' dtype. The arrays are
# reached through typed pointers (``_pointers.at``), which the simulator cannot run: under it,
# and until a real GPU has verified this path, fastlr launches the per-array kernels above
# (set FASTLR_CUDA_TABLES=1 to use the tables; docs/GPU.md).
TABLE_CHUNK = 1 << 14

_TABLE_TEMPLATE = """
def {name}(ptrs, work, hidx, htab, c64, like):
    c = (like.dtype.type(c64[0]), like.dtype.type(c64[1]), like.dtype.type(c64[2]))
    for w in range(cuda.blockIdx.x, work.shape[0], cuda.gridDim.x):
        t = work[w, 0]
        r = hidx[t]
        h = ({h_row})
{pointers}        for i in range(work[w, 1] + cuda.threadIdx.x, work[w, 2], cuda.blockDim.x):
            a0[i],{columns} = R.{rule}(a0[i], R.condition(a1[i], c){items}, h)
"""


def _table_fields(rule):
    k = n_states(rule)
    return dict(h_row="".join(f"like.dtype.type(htab[r, {j}]), " for j in range(len(scalar_names(rule)))),
                pointers="".join(f"        a{j} = at(ptrs[t, {j}], 0, like)\n" for j in range(2 + k)),
                columns="".join(f" a{2 + j}[i]," for j in range(k)),
                items="".join(f", a{2 + j}[i]" for j in range(k)))


TABLE_KERNELS = {} if _SIMULATOR else {
    name: generate_source(_TABLE_TEMPLATE, f"{name}_table", globals(), cuda.jit(cache=True), rule=name,
                          **_table_fields(name)) for name in rules.ELEMENT_RULES}

# Device values are read as float64 (a float32 lr included): the host rule then computes in
# float64 as on the host, and h is a tuple of one type, which numba can index at run time
# (a float32 lr made it a mixed tuple, which the real compiler rejects; the simulator ran it).
_PREPARE = """
def {name}(step, lr, {device_args}hout, {consts}):
    if cuda.grid(1) == 0:
        step[0] += 1.0
{updates}        h = R.{scalars}({call})
{post}        for j in range(len(h)):
            hout[j] = h[j]
"""


@functools.cache
def prepare_kernel(scalars, updates, device_names, const_names, arg_names, post=()):
    """One-thread kernel ``k(step, lr, *device scalars, hout, *consts)`` run before a captured update.

    It adds 1 to step[0], sets each updated scalar state (``updates``: ((name, rules fn), ...)),
    then writes ``rules.<scalars>(...)`` into hout (the params' dtype); ``post`` updates (ASGD's eta and
    mu: the values the next step uses) run after the host rule. ``arg_names`` maps each
    function name to its argument names (pairs, to be hashable); step, lr and the ``device_names`` are read from device
    memory, the ``const_names`` (hyperparameters fixed at capture) are kernel arguments.
    """
    on_device, arg_names = {"step", "lr", *device_names}, dict(arg_names)

    def call(fn):
        return ", ".join(f"np.float64({n}[0])" if n in on_device else n for n in arg_names[fn])
    updates_src = "".join(f"        {name}[0] = R.{fn}({call(fn)})\n" for name, fn in updates)
    post_src = "".join(f"        {name}[0] = R.{fn}({call(fn)})\n" for name, fn in post)
    return generate_source(_PREPARE, f"prepare_{scalars}" + "".join(f"_{n}" for n in device_names),
                           globals(), cuda.jit(cache=not _SIMULATOR),
                           device_args="".join(f"{n}, " for n in device_names), updates=updates_src, post=post_src,
                           consts=", ".join(const_names), scalars=scalars, call=call(scalars))


@cuda.jit(cache=not _SIMULATOR)
def fill_scalar(out, value):
    """out[0] = value, on the device (a stream-ordered write of a host lr into device memory)."""
    if cuda.grid(1) == 0:
        out[0] = value


THREADS = 256


def launch_config(n, threads=THREADS):
    """(blocks, threads): enough blocks to cover n once, capped at 32 per SM (grid-stride beyond)."""
    blocks = max(1, math.ceil(n / threads))
    return min(blocks, _max_blocks()), threads


@functools.cache
def _max_blocks():
    try:
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    except Exception:  # the simulator reports no SM count
        sms = 1
    return 32 * sms


@cuda.jit(device=True)
def block_sum_into(s, out):
    """Add every thread's value s, summed over the block (256 threads at most), to out[0]."""
    partial = cuda.shared.array(256, np.float64)
    tid = cuda.threadIdx.x
    partial[tid] = s
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        cuda.atomic.add(out, 0, partial[0])


@cuda.jit(cache=not _SIMULATOR)
def sumsq(g, out):
    """out[0] += sum of squares of g, in float64 (one atomic add per block)."""
    s = 0.0
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        x = np.float64(g[i])
        s += x * x
    block_sum_into(s, out)


def ptx_cases():
    """(label, kernel, example args) of each kernel here, typed as launched (fastlr.kernels.ptx)."""
    from ._codegen import n_states, scalar_names
    c = (1.0, -math.inf, math.inf)   # floats, as fastlr._launch passes them
    for dtype in (np.float32, np.float64):
        a, d = np.zeros(1, dtype), dtype.__name__
        for rule in rules.ELEMENT_RULES:
            arrays, n_h = (a,) * (2 + n_states(rule)), len(scalar_names(rule))
            yield f"KERNELS[{rule}] {d}", KERNELS[rule], (*arrays, (1.0,) * n_h, c)
            yield f"DEVICE_H_KERNELS[{rule}] {d}", DEVICE_H_KERNELS[rule], (*arrays, np.zeros(n_h, dtype), c)
            if rule in TABLE_KERNELS:
                table = (np.zeros((1, 2 + n_states(rule)), np.int64), np.zeros((1, 3), np.int64), np.zeros(1, np.int64),
                         np.zeros((1, n_h)), c, a)
                yield f"TABLE_KERNELS[{rule}] {d}", TABLE_KERNELS[rule], table
        yield f"sumsq {d}", sumsq, (a, np.zeros(1))
    yield "fill_scalar", fill_scalar, (np.zeros(1), 1.0)
