"""CUDA kernels for optimizer states held in low precision: the two families of lowbit_cpu.py,
compiled over ``kernels.cuda.R`` and the element functions of ``kernels/quant.py``.

* ``BLOCKWISE[prec, rule]``: ``kernel(p, g, codes_0, absmax_0, ..., h64, c64, qmap_0, table_0, ...)``
  launched as ``kernel[blocks, quant.BLOCK_SIZE[prec], stream](...)``: one CUDA block per
  quantization block (grid-stride over them), one thread per element. Each thread decodes its
  states, runs the element rule, the block takes each state's absmax by a shared-memory max
  over the |state| bits, and each thread writes its nearest code (4-bit: even threads write
  the byte of a pair). The maps and encoder tables (``quant.CODEBOOKS[prec, signed].qmap`` and
  ``.table``, per state) are passed as device arrays: read through the cache, not as constant
  memory, which serializes when the lanes of a warp read different entries.
* ``BF16[rule]``: ``kernel(p, g, s_0, ..., h64, c64, r)`` grid-stride, states as bfloat16 bits in
  uint16 arrays (int16 views of torch bfloat16 tensors work on a GPU, where the store wraps, but
  not in the simulator), rounding as in lowbit_cpu.

Works under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): the tests run it on tiny arrays.
"""
import numpy as np  # noqa: F401  (used by the generated kernels)
from numba import cuda

from . import quant
from ._codegen import generate_source, n_states
from .cuda import _SIMULATOR, R  # noqa: F401

Q = quant.compiled(cuda.jit(device=True))
BITS = {"8bit": 8, "4bit": 4}


@cuda.jit(device=True)
def block_absmax(red, bits, tid, nthreads):
    """The block's new absmax (quant.block_scale) from every thread's |state| bits (0 when idle)."""
    red[tid] = bits
    cuda.syncthreads()
    step = nthreads // 2
    while step > 0:
        if tid < step and red[tid + step] > red[tid]:
            red[tid] = red[tid + step]
        cuda.syncthreads()
        step //= 2
    out = Q.block_scale(red[0])
    cuda.syncthreads()  # red is reused by the next state
    return out


_BLOCKWISE = """
def {name}(p, g, {state_args}h64, c64, {table_args}):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    tid = cuda.threadIdx.x
    red = cuda.shared.array({block}, np.int32)
    packed = cuda.shared.array({block}, np.int32)
    for blk in range(cuda.blockIdx.x, (p.size + {block} - 1) // {block}, cuda.gridDim.x):
        i = blk * {block} + tid
        m = min({block}, p.size - blk * {block})
        active = tid < m
{decode}        if active:
            p[i], {values} = R.{rule}(p[i], R.condition(g[i], c), {values}, h)
{store}"""


def _blockwise_fields(rule, prec):
    """The per-state lines of _BLOCKWISE for one rule and precision."""
    bits, block, ind = BITS[prec], quant.BLOCK_SIZE[prec], " " * 8
    decode, store = "", ""
    for j, signed in enumerate(quant.state_signs(rule)):
        code = f"c{j}[i]" if bits == 8 else f"(c{j}[i >> 1] >> (4 - 4 * (tid & 1))) & 15"
        decode += f"{ind}s{j} = Q.decode({code}, q{j}, a{j}[blk]) if active else np.float32(0.0)\n"
        store += (f"{ind}d{j} = block_absmax(red, Q.abs_bits(s{j}) if active else np.int32(0), tid, {block})\n"
                  f"{ind}if tid == 0:\n{ind}    a{j}[blk] = d{j}\n"
                  f"{ind}code = Q.encode(np.float32(s{j}) / d{j}, t{j}, {quant.CODEBOOKS[prec, signed].literals})\n")
        if bits == 8:
            store += f"{ind}if active:\n{ind}    c{j}[i] = code\n"
        else:  # the pair's even thread writes its byte; a missing odd partner leaves the low nibble 0
            store += (f"{ind}packed[tid] = code if active else 0\n{ind}cuda.syncthreads()\n"
                      f"{ind}if active and tid % 2 == 0:\n"
                      f"{ind}    c{j}[i >> 1] = (packed[tid] << 4) | (packed[tid + 1] if tid + 1 < m else 0)\n"
                      f"{ind}cuda.syncthreads()\n")
    k = n_states(rule)
    return {
        **quant.kernel_fields(rule, "c"), "block": block, "decode": decode, "store": store,
        "state_args": "".join(f"c{j}, a{j}, " for j in range(k)),
        "table_args": ", ".join(f"q{j}, t{j}" for j in range(k)),
    }


_BF16 = """
def {name}(p, g, {state_args}h64, c64, r):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    key, base = r
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
{decode}        p[i], {values} = R.{rule}(p[i], R.condition(g[i], c), {values}, h)
{encode}"""


def _bf16_fields(rule):
    k, ind = n_states(rule), " " * 8
    return {
        **quant.kernel_fields(rule, "b"),
        "decode": "".join(f"{ind}s{j} = np.float32(R.bf16_to_float_arith(b{j}[i]))\n" for j in range(k)),
        "encode": "".join(f"{ind}b{j}[i] = R.float_to_bf16_arith(s{j}, "
                          f"R.random16(key + {j}, base + i) if key >= 0 else -1)\n" for j in range(k)),
    }


BLOCKWISE, BF16 = {}, {}
for _rule in quant.STATEFUL_RULES:
    for _prec in BITS:
        BLOCKWISE[_prec, _rule] = generate_source(
            _BLOCKWISE, f"{_rule}_{_prec}_{quant.QUANT_HASH}", globals(), cuda.jit(cache=not _SIMULATOR),
            **_blockwise_fields(_rule, _prec))
    BF16[_rule] = generate_source(_BF16, f"{_rule}_bf16", globals(), cuda.jit(cache=not _SIMULATOR),
                                  **_bf16_fields(_rule))


def ptx_cases():
    """(label, kernel, example args) of each kernel here, typed as ``fastlr.lowbit`` launches them
    (fastlr.kernels.ptx): float32/float64 params, h and c as tuples of floats; block-wise: uint8 codes,
    float32 absmax, then each state's float32 map and int32 encoder table; bf16: uint16 bits (NumPy API,
    numba) or int16 (views of torch bfloat16 tensors) and the rounding key (int, int)."""
    from ._codegen import scalar_names
    c = (1.0, -np.inf, np.inf)
    for dtype in (np.float32, np.float64):
        a, d = np.zeros(1, dtype), dtype.__name__
        for (prec, rule), kernel in BLOCKWISE.items():
            signs = quant.state_signs(rule)
            states = tuple(x for _ in signs for x in (np.zeros(1, np.uint8), np.zeros(1, np.float32)))
            books = [quant.CODEBOOKS[prec, sg] for sg in signs]
            tables = tuple(x for cb in books for x in (cb.qmap, cb.table))
            h = (1.0,) * len(scalar_names(rule))
            yield f"BLOCKWISE[{prec}, {rule}] {d}", kernel, (a, a, *states, h, c, *tables)
        for rule, kernel in BF16.items():
            for bits in (np.uint16, np.int16):
                states = (np.zeros(1, bits),) * n_states(rule)
                yield (f"BF16[{rule}] {d}, {bits.__name__} states", kernel,
                       (a, a, *states, (1.0,) * len(scalar_names(rule)), c, (1, 0)))
