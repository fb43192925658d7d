"""CPU kernels for optimizer states held in low precision, generated from the element rules.

Two families, each compiled over ``kernels.cpu.R`` (no formula is written here):

* ``BLOCKWISE[prec, rule]`` (prec "8bit" or "4bit"; rules with at least one state):
  ``kernel(p, g, codes_0, absmax_0, codes_1, absmax_1, ..., h64, c64)`` over flat arrays,
  states in the order of the rule's arguments. Per block of ``quant.BLOCK_SIZE[prec]`` elements
  (a param's last block may be shorter): dequantize each state (``qmap[code] * absmax``), run
  the element rule in the params' dtype, take each state's new absmax, write the nearest codes
  (``quant.encode``). Each state uses the signed or the unsigned map of ``quant.SIGNED_STATE``.
  codes are uint8 (``p.size`` of them for 8 bits, ``(p.size + 1) // 2`` for 4 bits), absmax
  float32 (one per block).
* ``BF16[rule]``: ``kernel(p, g, s_0, s_1, ..., h64, c64, r)`` with each state stored as
  bfloat16 bits (uint16), computed in float32, written back to nearest even (``r = (-1, 0)``)
  or stochastically (``r = (key, base)``: element i of state j gets the random bits
  ``random16(key + j, base + i)``, deterministic).

* ``TABLE[prec, rule]`` (prec "8bit", "4bit" or "bf16"): either family over many params in one call,
  ``kernel(ptrs, work, hidx, htab, c64, keys, like)``, as ``kernels.cpu.TABLE_KERNELS`` (see below).

``h64`` and ``c64`` are tuples of float64 as for ``kernels.cpu.KERNELS``; ``_serial`` kernels
run on one thread (small params). Kernels release the GIL.

Why it is fast: the block loop lives in a separate (not inlined) function called once per chunk
of blocks, on per-block slices, so LLVM sees plain counted loops over arrays and vectorizes
them. Per block: each state is decoded into a contiguous per-chunk scratch row (``decode_64``),
one pass runs the rule over p, g and the rows while keeping an integer max of |state| bits
(branch-free), then one pass per state divides by the new absmax and encodes (``ENCODE_*``, made
by ``encoder_64``). Table lookups are the cost of the low-bit kernels and gathers are slow here
(see below), so where the CPU has AVX-512 VBMI both decode and encode look up by byte permutes,
64 values at a time, and fall back to quant.decode / quant.encode (gathers) elsewhere and for a
block's last < 64 elements; the codes are the same (tests/lowbit_exhaustive.py compares the
encoders on every float32 bit pattern). 4-bit codes are unpacked into a uint8 row first and packed
after. The maps and tables are module constants and their parameters literals, so they fold into
the machine code. Measured costs: docs/PERFORMANCE.md, "Low-precision states".

Arrays must be contiguous (``fastlr.lowbit`` checks). Kernel and whole-state conversion names
carry ``quant.QUANT_HASH``: numba's cache watches only this file, not the tables they inline.
"""
import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import carray, config, njit, prange, types  # noqa: F401  (carray, prange: the generated kernels)
from numba.core import cgutils
from numba.extending import intrinsic

from . import quant
from ._codegen import generate_source, n_states, scalar_names
from ._pointers import at  # noqa: F401  (the generated table kernels)
from .cpu import R, table_template  # noqa: F401

Q = quant.compiled(njit(inline="always", error_model="numpy"))
CHUNK_BLOCKS = 64  # blocks per parallel work item (16K elements at 8 bits)
BITS = {"8bit": 8, "4bit": 4}

def _byte_planes(values):
    """256 int32 or float32 values as 4 planes of 256 bytes (byte k of every value), for vpermi2b."""
    return np.ascontiguousarray(np.asarray(values).view(np.uint8).reshape(256, 4).T).ravel()


def encoder_planes(cb):
    """encoder_64's tables for codebook ``cb``: uint8[9 * 256].

    ``cb.table``'s codes (the code of each bucket's lower end) grow by 0 or 1 from one bucket to the
    next (at most one boundary per bucket), so they are kept as one base code per word of 32
    buckets (256 bytes) and a bitmap per word (bit t: the code grows from bucket 32w + t to the next;
    4 byte planes); then the boundaries' integer keys (``quant._bucket_keys``; 4 byte planes, padded
    with int32 max, which no key reaches). Up to 256 words: 8192 buckets (build_codebook's limit).
    """
    codes = (cb.table & 0xFF).astype(np.int64)
    words = (codes.size + 31) // 32
    padded = np.concatenate([codes, np.full(32 * words + 1 - codes.size, codes[-1])])
    steps = np.diff(padded)
    if words > 256 or steps.min() < 0 or steps.max() > 1 or cb.bounds.size > 255:
        raise ValueError("encoder_64 needs at most 8192 buckets, each with at most one boundary")
    base = np.zeros(256, np.uint8)
    base[:words] = padded[:32 * words:32]
    bitmap = np.zeros(256, np.uint32)
    bitmap[:words] = (steps.reshape(words, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(axis=1)
    keys = np.full(256, 0x7FFFFFFF, np.int32)
    keys[:cb.bounds.size] = quant._bucket_keys(cb.bounds, cb.lo_bits, cb.hi_bits)
    return np.concatenate([base, _byte_planes(bitmap), _byte_planes(keys)])


# The maps and encoder tables, as module globals the generated kernels read (frozen constants);
# PLANES_*: each map's float32 bytes as 4 planes of 256 (byte k of every code), for decode_64.
for (_prec, _signed), _cb in quant.CODEBOOKS.items():
    _tag = f"{_prec}_{'s' if _signed else 'u'}"
    globals()[f"QMAP_{_tag}"] = _cb.qmap
    globals()[f"TABLE_{_tag}"] = _cb.table
    _padded = np.zeros(256, np.float32)
    _padded[:_cb.qmap.size] = _cb.qmap
    globals()[f"PLANES_{_tag}"] = _byte_planes(_padded)
    globals()[f"ENCODER_{_tag}"] = encoder_planes(_cb)

# Table lookups are what the low-bit kernels cost: as gathers they take ~1 cycle per element on the
# AMD Zen 4 this project runs on (microcoded; 0.32 ns per element, one thread, whatever the table
# size), and the other vector work waits for them. Byte permutes (vpermi2b: 64 lookups into 128
# bytes per instruction) do the same lookups 3-4x cheaper. So where the CPU has AVX-512 VBMI,
# blocks are decoded 64 codes at a time by decode_64 and encoded by encoder_64's intrinsics below; elsewhere (and
# for a block's last < 64 elements) by quant.decode and quant.encode, which LLVM turns into gathers.
VBMI = config.CPU_NAME is None and all(llvm_binding.get_host_cpu_features().get(f, False)
                                       for f in ("avx512f", "avx512bw", "avx512vbmi"))
_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
_V64B, _V64W, _V64I, _V64F = (ir.VectorType(t, 64) for t in (_I8, _I16, _I32, _F32))


def _interleave(builder, a, b):
    """[a0, b0, a1, b1, ...] of two vectors of the same type."""
    n = a.type.count
    order = [x for j in range(n) for x in (j, n + j)]
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 2 * n), order))


def _splat64(builder, value):
    """A vector of 64 copies of a scalar."""
    v = builder.insert_element(ir.Constant(ir.VectorType(value.type, 64), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_V64I, [0] * 64))


class _ByteTables:
    """Lookups into tables of 256 bytes, 64 at a time, by byte permutes (AVX-512 VBMI).

    ``array`` (uint8, a multiple of 256 long) is loaded into registers once, before the loop:
    table k is bytes 256k .. 256k + 255.
    """
    def __init__(self, context, builder, array_type, array):
        t = context.make_array(array_type)(context, builder, array)
        self.builder = builder
        self.perm = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V64B, [_V64B] * 3),
                                                   "llvm.x86.avx512.vpermi2var.qi.512")
        self.base = builder.bitcast(t.data, _V64B.as_pointer())
        self.quarters = {}

    def preload(self, tables, wide=True):
        """Load these tables now (before the loop: the loop body only reuses them)."""
        for k in tables:
            for j in range(4 if wide else 2):
                self._quarter(4 * k + j)

    def _quarter(self, k):
        if k not in self.quarters:
            self.quarters[k] = self.builder.load(self.builder.gep(self.base, [ir.Constant(_I32, k)]), align=1)
        return self.quarters[k]

    def byte(self, k, idx, wide=True):
        """table k at the 64 byte indices idx: two vpermi2b (by the low 7 bits), selected by the top
        bit; one where no index reaches 128 (``wide=False``)."""
        b = self.builder
        low = b.call(self.perm, [self._quarter(4 * k), idx, self._quarter(4 * k + 1)])
        if not wide:
            return low
        top = b.icmp_signed("<", idx, ir.Constant(_V64B, [0] * 64))
        return b.select(top, b.call(self.perm, [self._quarter(4 * k + 2), idx, self._quarter(4 * k + 3)]), low)

    def int32(self, k, idx, wide=True):
        """Tables k .. k + 3 as the byte planes of 256 int32 (``_byte_planes``), at idx: <64 x i32>."""
        b, planes = self.builder, [self.byte(k + j, idx, wide) for j in range(4)]
        low = b.bitcast(_interleave(b, planes[0], planes[1]), _V64W)
        high = b.bitcast(_interleave(b, planes[2], planes[3]), _V64W)
        return b.bitcast(_interleave(b, low, high), _V64I)


def _groups_of_64(builder, nitems):
    return builder.udiv(nitems, ir.Constant(nitems.type, 64))


@intrinsic
def decode_64(typingctx, codes, out, planes, absmax):
    """out[i] = map[codes[i]] * absmax for i < 64 * (codes.size // 64); returns that count.

    ``planes`` holds the map's float32 bytes plane by plane (4 x 256, ``_byte_planes``). Per 64
    codes: for each byte plane two ``vpermi2b`` (128 entries each, by the code's low 7 bits) and a
    select by its top bit, then the 4 planes interleaved into 64 floats: no gathers. AVX-512 VBMI only.
    """
    def codegen(context, builder, sig, args):
        c = context.make_array(sig.args[0])(context, builder, args[0])
        o = context.make_array(sig.args[1])(context, builder, args[1])
        tables = _ByteTables(context, builder, sig.args[2], args[2])
        tables.preload(range(4))
        scale = _splat64(builder, args[3])
        groups = _groups_of_64(builder, c.nitems)
        src, dst = builder.bitcast(c.data, _V64B.as_pointer()), builder.bitcast(o.data, _V64F.as_pointer())
        with cgutils.for_range(builder, groups) as loop:
            idx = builder.load(builder.gep(src, [loop.index]), align=1)
            values = builder.bitcast(tables.int32(0, idx), _V64F)
            builder.store(builder.fmul(values, scale), builder.gep(dst, [loop.index]), align=4)
        return builder.mul(groups, ir.Constant(groups.type, 64))
    return types.intp(codes, out, planes, absmax), codegen


def encoder_64(cb):
    """An intrinsic ``encode(src, codes, absmax, tables)`` for codebook ``cb``: codes[i] =
    quant.encode(src[i] / absmax, cb...) for i < 64 * (codes.size // 64); returns that count.

    The same integer key and bucket as quant.encode (cb's integers compiled in; ``tables`` =
    ``encoder_planes(cb)``), but no gather of the bucket's entry: per 64 values, the bucket's code is
    its word's base code (one byte lookup) plus the number of set bits below it in the word's bitmap
    (4 byte lookups, a shift and a popcount), plus one if the key reaches the next boundary's key
    (4 byte lookups by that code): 18 vpermi2b per 64 values, 9 to 13 where the tables have fewer
    than 128 words or boundaries (one vpermi2b per lookup). AVX-512 VBMI only.
    """
    words = (cb.table.size + 31) // 32
    wide_words, wide_keys = words > 128, cb.bounds.size + 1 > 128

    @intrinsic
    def encode(typingctx, src, codes, absmax, tables):
        def codegen(context, builder, sig, args):
            b = builder
            s = context.make_array(sig.args[0])(context, b, args[0])
            c = context.make_array(sig.args[1])(context, b, args[1])
            lookup = _ByteTables(context, b, sig.args[3], args[3])
            lookup.preload(range(5), wide_words)
            lookup.preload(range(5, 9), wide_keys)
            ctpop = cgutils.get_or_insert_function(b.module, ir.FunctionType(_V64I, [_V64I]), "llvm.ctpop.v64i32")
            scale = _splat64(b, args[2])

            def k32(v):
                return ir.Constant(_V64I, [v] * 64)
            groups = _groups_of_64(b, c.nitems)
            src, dst = b.bitcast(s.data, _V64F.as_pointer()), b.bitcast(c.data, _V64B.as_pointer())
            with cgutils.for_range(b, groups) as loop:
                bits = b.bitcast(b.fdiv(b.load(b.gep(src, [loop.index]), align=4), scale), _V64I)
                a = b.and_(bits, k32(0x7FFFFFFF))
                a = b.select(b.icmp_signed(">", a, k32(cb.lo_bits)), a, k32(cb.lo_bits))
                a = b.select(b.icmp_signed("<", a, k32(cb.hi_bits)), a, k32(cb.hi_bits))
                key = b.xor(b.sub(a, k32(cb.lo_bits)), b.ashr(bits, k32(31)))     # as quant.encode
                bucket = b.lshr(b.add(key, k32(cb.half << cb.shift)), k32(cb.shift))  # (key >> shift) + half
                word = b.trunc(b.lshr(bucket, k32(5)), _V64B)
                below = b.sub(b.shl(k32(1), b.and_(bucket, k32(31))), k32(1))
                bitmap = lookup.int32(1, word, wide_words)
                code = b.add(b.zext(lookup.byte(0, word, wide_words), _V64I), b.call(ctpop, [b.and_(bitmap, below)]))
                code = b.trunc(code, _V64B)
                above = b.icmp_signed(">=", key, lookup.int32(5, code, wide_keys))
                b.store(b.add(code, b.zext(above, _V64B)), b.gep(dst, [loop.index]), align=1)
            return b.mul(groups, ir.Constant(groups.type, 64))
        return types.intp(src, codes, absmax, tables), codegen
    return encode


for (_prec, _signed), _cb in quant.CODEBOOKS.items():
    globals()[f"ENCODE_{_prec}_{'s' if _signed else 'u'}"] = encoder_64(_cb)


_BLOCKWISE = """
@njit(cache=True, nogil=True, error_model="numpy")
def {name}_blocks(p, g, {state_args}first, last, h, c, {scratch}):
    for blk in range(first, last):
        lo = blk * {block}
        m = min({block}, p.size - lo)
        pb, gb = p[lo:lo + m], g[lo:lo + m]
{per_block}{decode}        for i in range(m):
{load}            pb[i], {values} = R.{rule}(pb[i], R.condition(gb[i], c), {values}, h)
{keep}{store}

def {name}(p, g, {state_args}h64, c64):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    nblocks = (p.size + {block} - 1) // {block}
    for k in {loop}((nblocks + {chunk} - 1) // {chunk}):
{alloc}        {name}_blocks(p, g, {state_args}k * {chunk}, min(nblocks, (k + 1) * {chunk}), h, c, {scratch})
"""


def _blockwise_fields(rule, prec, loop):
    """The per-state lines of _BLOCKWISE for one rule and precision.

    4-bit codes are unpacked into a per-chunk uint8 row first and packed back after encoding,
    so the update and encode loops are the 8-bit ones (strided nibble access would not vectorize).
    """
    bits, signs, block = BITS[prec], quant.state_signs(rule), quant.BLOCK_SIZE[prec]
    ind, per_block, decode, load, keep, store, alloc = " " * 8, "", "", "", "", "", ""
    for j, signed in enumerate(signs):
        cb = quant.CODEBOOKS[prec, signed]
        tag = f"{prec}_{'s' if signed else 'u'}"
        per_block += f"{ind}d{j}, x{j} = a{j}[blk], np.int32(0)\n"
        if bits == 8:
            per_block += f"{ind}U{j} = c{j}[lo:lo + m]\n"
        else:
            per_block += f"{ind}P{j} = c{j}[lo >> 1:(lo + m + 1) >> 1]\n{ind}Q.unpack_nibbles(P{j}, m, U{j})\n"
            alloc += f"{ind}U{j} = np.empty({block}, np.uint8)\n"
        first = f"decode_64(U{j}[:m], S{j}, PLANES_{tag}, d{j})" if VBMI else "0"
        decode += (f"{ind}for i in range({first}, m):\n"
                   f"{ind}    S{j}[i] = Q.decode(U{j}[i], QMAP_{tag}, d{j})\n")
        load += f"{ind}    s{j} = S{j}[i]\n"
        keep += f"{ind}    S{j}[i] = s{j}\n{ind}    x{j} = max(x{j}, Q.abs_bits(s{j}))\n"
        first = f"ENCODE_{tag}(S{j}[:m], U{j}[:m], d{j}, ENCODER_{tag})" if VBMI else "0"
        store += (f"{ind}d{j} = Q.block_scale(x{j})\n{ind}a{j}[blk] = d{j}\n"
                  f"{ind}for i in range({first}, m):\n"
                  f"{ind}    U{j}[i] = Q.encode(S{j}[i] / d{j}, TABLE_{tag}, {cb.literals})\n")
        if bits == 4:
            store += f"{ind}Q.pack_nibbles(U{j}, m, P{j})\n"
        alloc += f"{ind}S{j} = np.empty({block}, np.float32)\n"
    k = len(signs)
    return {
        **quant.kernel_fields(rule, "c"), "block": block, "chunk": CHUNK_BLOCKS, "loop": loop,
        "state_args": "".join(f"c{j}, a{j}, " for j in range(k)),
        "scratch": ", ".join([f"S{j}" for j in range(k)] + ([f"U{j}" for j in range(k)] if bits == 4 else [])),
        "per_block": per_block, "decode": decode, "load": load, "keep": keep, "store": store, "alloc": alloc,
    }


_BF16 = """
def {name}(p, g, {state_args}h64, c64, r):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
    key, base = r
    if key < 0:  # two loops: the random bits, computed and dropped, would cost 2x in the nearest one
        for i in {loop}(p.size):
{decode}            p[i], {values} = R.{rule}(p[i], R.condition(g[i], c), {values}, h)
{nearest}    else:
        for i in {loop}(p.size):
{decode}            p[i], {values} = R.{rule}(p[i], R.condition(g[i], c), {values}, h)
{stochastic}"""


def _bf16_fields(rule, loop):
    k, ind = n_states(rule), " " * 12
    return {
        **quant.kernel_fields(rule, "b"), "loop": loop,
        "decode": "".join(f"{ind}s{j} = np.float32(R.bf16_to_float(b{j}[i]))\n" for j in range(k)),
        "nearest": "".join(f"{ind}b{j}[i] = R.float_to_bf16(s{j}, -1)\n" for j in range(k)),
        "stochastic": "".join(f"{ind}b{j}[i] = R.float_to_bf16(s{j}, R.random16(key + {j}, base + i))\n"
                              for j in range(k)),
    }


STATEFUL_RULES = quant.STATEFUL_RULES
_PARALLEL = njit(parallel=True, cache=True, nogil=True, error_model="numpy")
_SERIAL = njit(cache=True, nogil=True, error_model="numpy")

BLOCKWISE, BF16 = {}, {}
for _rule in STATEFUL_RULES:
    for _suffix, _loop, _decorate in (("", "prange", _PARALLEL), ("_serial", "range", _SERIAL)):
        for _prec in BITS:
            BLOCKWISE[_prec, _rule + _suffix] = generate_source(
                _BLOCKWISE, f"{_rule}_{_prec}{_suffix}_{quant.QUANT_HASH}{'_vbmi' if VBMI else ''}", globals(),
                _decorate,
                **_blockwise_fields(_rule, _prec, _loop))
        BF16[_rule + _suffix] = generate_source(
            _BF16, f"{_rule}_bf16{_suffix}", globals(), _decorate, **_bf16_fields(_rule, _loop))


# Segment tables: many params in one call, as kernels/cpu.py's TABLE_KERNELS. ``ptrs[t]`` holds the
# addresses of param t's p, g and state arrays (block-wise: codes and absmax per state); ``work`` rows
# (t, lo, hi) cut the params into chunks whose ``lo`` is a multiple of the block size (cpu.make_work
# with a chunk that is), so each chunk is a run of whole blocks (the last maybe short) handed to the
# serial flat kernel on arrays made over its memory. bf16: ``keys[t]`` is param t's rounding key (-1:
# nearest even), the chunk's base its element offset, so the random bits are the flat kernel's.
_TABLE = table_template(", keys, like", "CHUNK(carray(at(ptrs[t, 0], lo, like), n), "
                                      "carray(at(ptrs[t, 1], lo, like), n), {columns}({h_row}), c64{key})")
U8, U16, F32 = np.empty(0, np.uint8), np.empty(0, np.uint16), np.empty(0, np.float32)


def _table_fields(rule, prec):
    k, n_h = n_states(rule), len(scalar_names(rule))
    if prec == "bf16":
        columns = "".join(f"carray(at(ptrs[t, {2 + j}], lo, U16), n), " for j in range(k))
    else:
        block, codes = quant.BLOCK_SIZE[prec], ("lo", "n") if prec == "8bit" else ("lo >> 1", "(n + 1) >> 1")
        columns = "".join(f"carray(at(ptrs[t, {2 + 2 * j}], {codes[0]}, U8), {codes[1]}), "
                          f"carray(at(ptrs[t, {3 + 2 * j}], lo // {block}, F32), (n + {block - 1}) // {block}), "
                          for j in range(k))
    return {"columns": columns, "h_row": "".join(f"htab[r, {j}], " for j in range(n_h)),
            "key": ", (keys[t], lo)" if prec == "bf16" else ""}


TABLE = {}
for _rule in STATEFUL_RULES:
    for _prec in ("8bit", "4bit", "bf16"):
        _chunk = BF16[_rule + "_serial"] if _prec == "bf16" else BLOCKWISE[_prec, _rule + "_serial"]
        for _suffix, _decorate in (("", _PARALLEL), ("_serial", _SERIAL)):
            TABLE[_prec, _rule + _suffix] = generate_source(
                _TABLE, f"{_rule}_{_prec}_table{_suffix}_{quant.QUANT_HASH}{'_vbmi' if VBMI else ''}",
                dict(globals(), CHUNK=_chunk), _decorate, **_table_fields(_rule, _prec))


# Whole-state conversions (loading float states, state_dict(dequantize=True)). Generated like the
# kernels so their names carry quant.QUANT_HASH: numba's cache only watches this file, and they
# inline quant.encode and its tables' layout.
_QUANTIZE = """
def {name}(x, codes, absmax, table, lo_bits, hi_bits, shift, half, block, bits):
    for blk in prange(absmax.size):
        lo = blk * block
        m = min(block, x.size - lo)
        src = x[lo:lo + m].astype(np.float32)
        top = np.int32(0)
        for i in range(m):
            top = max(top, Q.abs_bits(src[i]))
        absmax[blk] = Q.block_scale(top)
        if bits == 8:
            Q.store_codes(src, m, absmax[blk], codes[lo:lo + m], table, lo_bits, hi_bits, shift, half)
        else:
            unpacked = np.empty(m, np.uint8)
            Q.store_codes(src, m, absmax[blk], unpacked, table, lo_bits, hi_bits, shift, half)
            Q.pack_nibbles(unpacked, m, codes[lo >> 1:(lo + m + 1) >> 1])
"""

_DEQUANTIZE = """
def {name}(codes, absmax, qmap, out, block, bits):
    for blk in prange(absmax.size):
        lo = blk * block
        m = min(block, out.size - lo)
        unpacked = codes[lo:lo + m] if bits == 8 else np.empty(m, np.uint8)
        if bits == 4:
            Q.unpack_nibbles(codes[lo >> 1:(lo + m + 1) >> 1], m, unpacked)
        for i in range(m):
            out[lo + i] = Q.decode(unpacked[i], qmap, absmax[blk])
"""

quantize_blocks = generate_source(_QUANTIZE, f"quantize_blocks_{quant.QUANT_HASH}", globals(), _PARALLEL)
quantize_blocks.__doc__ = "Whole-state quantization: x (any float dtype) -> codes, absmax (one per block)."
dequantize_blocks = generate_source(_DEQUANTIZE, f"dequantize_blocks_{quant.QUANT_HASH}", globals(), _PARALLEL)
dequantize_blocks.__doc__ = "Whole-state dequantization: codes, absmax -> out (float32)."
