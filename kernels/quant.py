"""Quantization maps and the nearest-code search for block-wise low-precision optimizer states.

Plain Python and NumPy: nothing here imports numba. The element functions at the bottom
(``ELEMENT_FUNCTIONS``) are compiled for the CPU by
``kernels/lowbit_cpu.py`` and for CUDA by ``kernels/lowbit_cuda.py``, as rules.py is.

Maps (value for value as the peers build them; tests/test_lowbit_kernels.py compares):

* 8-bit (blocks of 256, one float32 absmax per block): bitsandbytes' dynamic ("tree") maps,
  ``create_dynamic_map(signed=True)`` for first moments, ``(signed=False)`` for second moments;
  torchao's ``torchao.optim.quant_utils.create_dynamic_map`` builds the same 256 values.
* 4-bit (blocks of 128, two codes per byte, the first element in the high nibble): torchao's
  ``create_dynamic_map(True, 3, 4)`` for first moments and ``linspace(0, 1, 17)[1:]`` (linear,
  no zero) for second moments.

Rounding: torchao's rule (``quantize_8bit_with_qmap``): with ``y = x / absmax`` in float32, the
code is the largest k with ``qmap[k] <= y`` (0 below the map), moved up to k + 1 when
``float32(y - qmap[k]) >= float32(qmap[k+1] - qmap[k]) * 0.5``: nearest code, ties toward the
larger code. ``thresholds(qmap)`` turns that rule into the 2**bits - 1 float32 boundaries
``t[k]`` (the smallest float32 y that the rule puts above code k), so that
``code(y) = #{k : y >= t[k]}`` reproduces torchao for every float32 y. It is also the exact
nearest code for every y except one float32 value each at 2 of the 255 boundaries of the signed
8-bit map (near +-1.9e-6), where torchao's float32 residual test moves the boundary by one ulp;
fastlr follows torchao there. (bitsandbytes' CPU fallback multiplies by 1/absmax and breaks ties
toward the smaller code: it differs from torchao, rarely, in the same way.)

How the nearest code is found, and what it costs (``encode``): no search. The float32 bits of
|y| are clamped to ``[lo_bits, hi_bits]`` (every |y| below ``lo_bits`` has the same code, as has
every y above 1), made into an integer key that is monotone in y (the bits for y >= 0, their
complement for y < 0), and cut into buckets by a right shift: a bucket is a range of
2**shift consecutive float32 values, and ``shift`` is chosen as large as possible such that no
bucket holds more than one boundary. One int32 table entry per bucket packs the code of the
bucket's lower end and the key offset of its boundary inside the bucket (2**shift when none):
``code = (entry & 0xFF) + (key & (2**shift - 1) >= (entry >> 8))``. Per element that is
one float division (``x / absmax``, as torchao), a handful of integer operations, ONE gather
from a table of a few thousand int32 (``TABLE_BYTES``; it stays in L1) and one compare: all
branch-free, so LLVM vectorizes it (AVX2/AVX-512 gathers), and it is exact by construction:
tests/lowbit_exhaustive.py checks every float32 with |y| <= 1 for every map (none differs),
tests/test_lowbit_kernels.py a sweep against brute force and torchao's own functions. Decoding is one gather from
the 16- or 256-entry map times the block's absmax.
"""
import hashlib
from types import ModuleType
from typing import NamedTuple

import numpy as np

from ._codegen import arg_names, n_states, scalar_names

BLOCK_SIZE = {"8bit": 256, "4bit": 128}
MIN_SIZE = 4096          # smaller tensors keep float32 states (bitsandbytes' min_8bit_size)
ABSMAX_FLOOR = 1e-12     # torchao's scale_tensor clips each block's absmax to this
PRECISIONS = ("fp32", "bf16", "8bit", "4bit")


# ---------------------------------------------------------------- maps
def linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps) in float32, value for value (torch 2.x CPU).

    torch computes the float32 step, then start + step * i for the first half and
    end - step * (steps - 1 - i) for the second, each rounded once (a fused multiply-add).
    """
    start, end = np.float32(start), np.float32(end)
    step = np.float64((end - start) / np.float32(steps - 1))
    i = np.arange(steps)
    first = np.float64(start) + step * i
    second = np.float64(end) - step * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(np.float32)


def dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' ``create_dynamic_map`` (torchao's copy without the zero padding), float32, sorted.

    Decade i (i = 0 .. max_exponent_bits - 1) holds the midpoints of a float32 linspace over
    [0.1, 1] with 2**(i + free bits) intervals, scaled by 10**(i - max_exponent_bits + 1);
    0 and 1 complete it. The scale is a Python float cast to float32, as torch's scalar product.
    """
    non_sign_bits = total_bits - 1
    values = [np.float32(0.0), np.float32(1.0)]
    for i in range(max_exponent_bits):
        n = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1))
        bounds = linspace_f32(0.1, 1.0, n + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        for sign in (1.0, -1.0) if signed else (1.0,):
            values.extend(np.float32(sign * 10.0 ** (i - max_exponent_bits + 1)) * means)
    qmap = np.sort(np.array(values, np.float32))
    if qmap.size != 2 ** total_bits:
        raise ValueError(f"a dynamic map of {total_bits} bits needs {2 ** total_bits} values, got {qmap.size}")
    return qmap


def linear_map(total_bits=4):
    """torchao's 4-bit second-moment map: linspace(0, 1, 2**bits + 1) without the zero."""
    return linspace_f32(0.0, 1.0, 2 ** total_bits + 1)[1:]


def thresholds(qmap):
    """The float32 boundaries of torchao's rounding rule: code(y) = #{k : y >= t[k]}.

    t[k] is the smallest float32 y in [qmap[k], qmap[k+1]] with
    float32(y - qmap[k]) >= float32(qmap[k+1] - qmap[k]) * 0.5 (a bisection over float32 bits).
    """
    q = np.asarray(qmap, np.float32)
    out = np.empty(q.size - 1, np.float32)
    for k in range(q.size - 1):
        lo, hi = q[k], q[k + 1]
        half = np.float32(hi - lo) * np.float32(0.5)
        a, b = _key(lo), _key(hi)  # the rule holds at hi, not at lo
        while a < b:
            mid = (a + b) // 2
            if np.float32(_unkey(mid) - lo) >= half:
                b = mid
            else:
                a = mid + 1
        out[k] = _unkey(a)
    return out


def _key(x):
    """A Python int monotone in the float32 value x (for bisection over float32 values)."""
    b = int(np.float32(x).view(np.int32))
    return b if b >= 0 else -(b & 0x7FFFFFFF) - 1


def _unkey(k):
    b = k if k >= 0 else (-(k + 1)) | -0x80000000
    return np.int32(b).view(np.float32)


# ---------------------------------------------------------------- nearest-code tables
class Codebook(NamedTuple):
    """One map with its encoder table; the ints are compiled into kernels as literals."""
    qmap: np.ndarray        # float32 code values, sorted
    bounds: np.ndarray      # float32 rounding boundaries (thresholds(qmap))
    table: np.ndarray       # int32 per bucket: boundary offset << 8 | code of the bucket's low end
    lo_bits: int            # |y| bits below this share one code
    hi_bits: int            # |y| bits above this (y beyond +-1, inf, NaN) share one code
    shift: int              # a bucket is 2**shift consecutive float32 values
    half: int               # buckets per sign: index = (key >> shift) + half

    @property
    def literals(self):
        """encode's integer arguments, as source text for generated kernels."""
        return f"{self.lo_bits}, {self.hi_bits}, {self.shift}, {self.half}"

    @property
    def zero_code(self):
        """The code that float 0 gets (fresh states are zeros)."""
        return int(np.searchsorted(self.bounds, np.float32(0.0), side="right"))


ONE_BITS = 0x3F800000  # float32 1.0


def build_codebook(qmap, max_table=8192):  # max_table < 2**16: encode indexes with a uint16
    """The bucket table for ``qmap``: the widest buckets (largest shift) that hold at most one
    boundary each, within ``max_table`` entries."""
    qmap = np.asarray(qmap, np.float32)
    bounds = thresholds(qmap)
    mags = np.abs(bounds).view(np.int32).astype(np.int64)
    for shift in range(22, 8, -1):
        lo_bits = max(0, ((int(mags[mags > 0].min()) >> shift) - 1) << shift)
        half = ((ONE_BITS - lo_bits) >> shift) + 1
        keys = _bucket_keys(bounds, lo_bits, ONE_BITS)
        buckets = (keys >> shift) + half
        if 2 * half <= max_table and np.unique(buckets).size == buckets.size:
            break
    else:
        raise ValueError("no bucket width separates the boundaries of this map")
    n = 2 * half
    lows = np.arange(n, dtype=np.int64) - half << shift          # smallest key of each bucket
    codes = np.searchsorted(keys, lows, side="right")             # boundaries at or below it
    offsets = np.full(n, 1 << shift, np.int64)                    # no boundary inside
    inside = buckets[keys > lows[buckets]]                        # boundary not at the bucket's start
    offsets[inside] = keys[keys > lows[buckets]] - lows[inside]
    table = (offsets << 8 | codes).astype(np.int32)  # offset <= 2**shift <= 2**22: positive
    return Codebook(qmap, bounds, table, int(lo_bits), ONE_BITS, int(shift), int(half))


def _bucket_keys(y, lo_bits, hi_bits):
    """encode's integer key for float32 array y (NumPy; equal to the scalar code below)."""
    b = np.asarray(y, np.float32).view(np.int32).astype(np.int64)
    a = np.clip(b & 0x7FFFFFFF, lo_bits, hi_bits) - lo_bits
    return np.where(b < 0, -a - 1, a)


CODEBOOKS = {
    ("8bit", True): build_codebook(dynamic_map(True, 7, 8)),
    ("8bit", False): build_codebook(dynamic_map(False, 7, 8)),
    ("4bit", True): build_codebook(dynamic_map(True, 3, 4)),
    ("4bit", False): build_codebook(linear_map(4)),
}
TABLE_BYTES = {k: cb.table.nbytes for k, cb in CODEBOOKS.items()}

# First moments (signed map) and second moments (unsigned map), by the rules' state argument
# names: the one place that classifies a state. A rule with a new state name must be added here.
SIGNED_STATE = {
    "m": True, "buf": True, "grad_avg": True, "d": True, "neg_pre": True, "prev": True,
    "v": False, "v_max": False, "u": False, "state_sum": False, "square_avg": False, "acc_delta": False,
    "step_size": False,
}


def state_signs(rule):
    """Per state of element rule ``rule``: True for the signed map, False for the unsigned one."""
    names = arg_names(rule)[2:-1]
    unknown = [n for n in names if n not in SIGNED_STATE]
    if unknown:
        raise ValueError(f"state_precision: the state(s) {unknown} of rules.{rule} have no low-precision "
                         f"kernels; use state_precision='fp32'")
    return tuple(SIGNED_STATE[n] for n in names)


# The rules with low-bit kernels: torch.optim's classic ten, Lion, and of issue 14's algorithms those whose
# states are all per-element moments: Adopt (m, v), Adan (m, v, d and the previous gradient, negated) and
# Rprop (the previous gradient, whose sign is all it is read for, and per-element step sizes). The others
# keep fp32 states, and fastlr.state_precision says why (UNAVAILABLE): states that are copies or averages of
# the params, factored or matrix steps, and per-tensor first passes (which read the states in fp32).
STATEFUL_RULES = ("sgd_momentum", "adagrad", "rmsprop", "rmsprop_centered", "rmsprop_momentum",
                  "rmsprop_centered_momentum", "adadelta", "adam", "adam_amsgrad", "adamax", "nadam", "radam",
                  "lion", "adopt", "adan", "rprop")


def kernel_fields(rule, state_prefix):
    """Template fields shared by the low-precision kernels of a rule (lowbit_cpu.py, lowbit_cuda.py):
    the rule, its state arguments ("b0, b1, "), their values ("s0, s1") and h cast to p's dtype."""
    k = n_states(rule)
    return {
        "rule": rule,
        "state_args": "".join(f"{state_prefix}{j}, " for j in range(k)),
        "values": ", ".join(f"s{j}" for j in range(k)),
        "h_cast": "".join(f"p.dtype.type(h64[{j}]), " for j in range(len(scalar_names(rule)))),
    }


# Kernels built from these tables are named after this hash, so numba's cache never serves a
# kernel compiled against older tables.
with open(__file__, "rb") as _source:
    QUANT_HASH = hashlib.sha1(_source.read()).hexdigest()[:10]


# ---------------------------------------------------------------- element functions (compiled)
ELEMENT_FUNCTIONS = ("abs_bits", "block_scale", "decode", "encode", "store_codes", "unpack_nibbles", "pack_nibbles")


def compiled(decorate, names=ELEMENT_FUNCTIONS):
    """A namespace of the element functions, each compiled with ``decorate`` over the compiled others."""
    namespace = dict(globals())
    for name in names:
        fn = globals()[name]
        namespace[name] = decorate(type(fn)(fn.__code__, namespace, name, fn.__defaults__))
    module = ModuleType(__name__ + ".compiled")  # numba resolves attributes of modules only
    for name in names:
        setattr(module, name, namespace[name])
    return module


def abs_bits(x):
    """The int32 bits of |float32(x)|: non-negative, ordered as |x| (NaN above inf), so an
    integer max over them is the float absmax without a float compare LLVM won't vectorize."""
    return np.int32(np.float32(x).view(np.int32) & np.int32(0x7FFFFFFF))


def block_scale(max_abs_bits):
    """The block's new absmax from abs_bits' running max, clipped below as torchao clips it."""
    a = np.int32(max_abs_bits).view(np.float32)
    if a < np.float32(ABSMAX_FLOOR):  # NaN passes: the block's states are NaN anyway
        return np.float32(ABSMAX_FLOOR)
    return a


def decode(code, qmap, absmax):
    """The state value of one code: qmap[code] * absmax (float32)."""
    return qmap[code] * absmax


def encode(y, table, lo_bits, hi_bits, shift, half):
    """The code of float32 y (normalized: |y| <= 1) by torchao's rule; see the module docstring.

    Every intermediate is cast back to int32 (numba computes integer expressions in int64): so
    LLVM keeps 16 lanes per AVX-512 register; the table index is a uint16 (tables have fewer than
    2**16 entries, build_codebook checks), so the gather takes 32-bit indices: 30% faster here.
    """
    i32 = np.int32
    b = np.float32(y).view(np.int32)
    a = i32(min(max(i32(b & i32(0x7FFFFFFF)), i32(lo_bits)), i32(hi_bits)) - i32(lo_bits))
    key = i32(a ^ i32(b >> i32(31)))          # y < 0: -a - 1, so the key grows with y
    entry = table[np.uint16(i32(key >> i32(shift)) + i32(half))]  # < 2**16: 32-bit gather indices
    above = i32(key & i32((1 << shift) - 1)) >= i32(entry >> i32(8))
    return i32(entry & i32(0xFF)) + i32(above)


def store_codes(src, m, absmax, codes, table, lo_bits, hi_bits, shift, half):
    """codes[i] = the code of src[i] / absmax for i < m (one code per byte)."""
    for i in range(m):
        codes[i] = encode(src[i] / absmax, table, lo_bits, hi_bits, shift, half)


def unpack_nibbles(packed, m, codes):
    """codes[0:m] from two codes per byte, the earlier element in the high nibble."""
    for i in range(m >> 1):
        b = packed[i]
        codes[2 * i] = b >> 4
        codes[2 * i + 1] = b & 15
    if m & 1:
        codes[m - 1] = packed[m >> 1] >> 4


def pack_nibbles(codes, m, packed):
    """The inverse of unpack_nibbles; an odd m (a param's last block) leaves the last low nibble 0."""
    for i in range(m >> 1):
        packed[i] = (codes[2 * i] << 4) | codes[2 * i + 1]
    if m & 1:
        packed[m >> 1] = codes[m - 1] << 4
