"""Raw memory for numba CPU kernels: typed pointers from integer addresses, and NumPy arrays'
fields read straight from their object structs.

* ``at(addr, lo, like)``: a pointer to element ``lo`` of the memory at ``addr``, typed as the
  dtype of the array ``like`` (``numba.carray(at(...), n)`` is then an array over it). This is
  how a segment-table kernel reaches many separate arrays in one call.
* ``gather(objs, ...)``: for a table of NumPy array *object* addresses (``id(a)``), reads
  each array's data pointer, dtype, flags and shape from its ``PyArrayObject`` struct and
  validates them, all in native code. Reading what the user holds now costs nanoseconds per
  array instead of the microsecond of ``a.ctypes.data`` / ``__array_interface__``.

The struct layout (``PyArrayObject_fields`` of NumPy's public ndarraytypes.h: data, nd,
dimensions, strides, base, descr, flags after the object header) has been stable since NumPy
1.7. It is verified against a probe array when this module is imported; where it does not
match (another Python build), ``STRUCT_OK`` is False and callers read the fields through
Python instead.
"""
import ctypes
import sys

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic


@intrinsic
def at(typingctx, addr, lo, like):
    """Pointer (typed as like.dtype) to element lo of the memory starting at integer address addr."""
    ptr_t = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        a, offset, _ = args
        nbytes = builder.mul(offset, offset.type(context.get_abi_sizeof(context.get_data_type(like.dtype))))
        a = builder.add(builder.zext(a, ir.IntType(64)) if a.type.width < 64 else a,
                        builder.sext(nbytes, ir.IntType(64)) if nbytes.type.width < 64 else nbytes)
        return builder.inttoptr(a, context.get_value_type(ptr_t))
    return ptr_t(addr, lo, like), codegen


def _loader(width):
    @intrinsic
    def load(typingctx, addr):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(width).as_pointer())
            value = builder.load(ptr)
            return builder.sext(value, ir.IntType(64)) if width < 64 else value
        return types.int64(types.int64), codegen
    return load


load_i64 = _loader(64)
load_i32 = _loader(32)

# Offsets into PyArrayObject on a 64-bit CPython with the standard object header.
_HEAD = 2 * ctypes.sizeof(ctypes.c_void_p)
OFF_TYPE = ctypes.sizeof(ctypes.c_ssize_t)
OFF_DATA = _HEAD
OFF_ND = _HEAD + 8
OFF_DIMS = _HEAD + 16
OFF_DESCR = _HEAD + 40
OFF_FLAGS = _HEAD + 48

# NumPy's flag bits.
C_CONTIGUOUS, ALIGNED, WRITEABLE = 0x0001, 0x0100, 0x0400

# gather() status codes: 0 is ok; otherwise code + 8 * (row * columns + column).
BAD_TYPE, BAD_DTYPE, NOT_CONTIGUOUS, NOT_ALIGNED, READ_ONLY, BAD_SHAPE, OVERLAP = 1, 2, 3, 4, 5, 6, 7
# gather() returns -1 when every array is fine but some row's size changed.


# Offsets into PyListObject: its length (ob_size) and its item pointer array.
OFF_LIST_SIZE = _HEAD
OFF_LIST_ITEMS = _HEAD + 8
# gather() status when the list of grads does not have one item per row.
BAD_LIST = 8 * 2**40


@njit(cache=True)   # holds the GIL: it reads a Python list, which no other thread may change meanwhile
def gather(objs, meta, ptrs, sizes, last, spans, glist):
    """Read and check the arrays whose object addresses fill objs (rows: tensors; columns: p, g, states).

    glist: the address of a Python list whose items are this step's gradients (written into column 1
    of objs first, at native speed), or 0 when the caller filled that column itself.

    meta rows: [0] the addresses of the accepted Python types (two), [1] each column's dtype object
    address, [2] its item size, [3] 1 where the column is written by the update. On success fills
    ptrs (data addresses) and sizes (elements per row) and returns 0, or minus (1 if some size
    changed since the last call (the work list must be rebuilt) + 2 if a written array moved).
    Every array must have its row's column 0 shape, be C-contiguous and aligned; no written array
    may overlap another written array, and no gradient may overlap a written array other than its
    own param. Both are checked whenever an address or size differs from those of the last accepted
    call (``last``, which then takes the new addresses; ``spans``: the written arrays' sorted byte
    ranges); the same addresses and sizes as a call that passed need no new check. Otherwise
    returns a status code (see BAD_TYPE ...) locating the first offending array; ``last`` is then
    left as it was.
    """
    n, k = objs.shape
    if glist != 0:
        if load_i64(glist + OFF_LIST_SIZE) != n:
            return BAD_LIST
        items = load_i64(glist + OFF_LIST_ITEMS)
        for t in range(n):
            objs[t, 1] = load_i64(items + 8 * t)
    changed = False
    resized = False
    gmoved = False
    for t in range(n):
        a0 = objs[t, 0]
        nd0 = load_i32(a0 + OFF_ND)
        dims0 = load_i64(a0 + OFF_DIMS)
        size = 1
        for d in range(nd0):
            size *= load_i64(dims0 + 8 * d)
        for c in range(k):
            a = objs[t, c]
            where = 8 * (t * k + c)
            tp = load_i64(a + OFF_TYPE)
            if tp != meta[0, 0] and tp != meta[0, 1]:
                return BAD_TYPE + where
            if load_i64(a + OFF_DESCR) != meta[1, c]:
                return BAD_DTYPE + where
            flags = load_i32(a + OFF_FLAGS)
            if flags & C_CONTIGUOUS == 0:
                return NOT_CONTIGUOUS + where
            if flags & ALIGNED == 0:
                return NOT_ALIGNED + where
            if meta[3, c] and flags & WRITEABLE == 0:
                return READ_ONLY + where
            if c > 0:
                if load_i32(a + OFF_ND) != nd0:
                    return BAD_SHAPE + where
                dims = load_i64(a + OFF_DIMS)
                for d in range(nd0):
                    if load_i64(dims + 8 * d) != load_i64(dims0 + 8 * d):
                        return BAD_SHAPE + where
            p = load_i64(a + OFF_DATA)
            if p != last[t, c]:
                if meta[3, c]:
                    changed = True
                else:
                    gmoved = True
            ptrs[t, c] = p
        if sizes[t] != size:
            resized = True
            sizes[t] = size
    if changed or resized:
        bad = overlap(ptrs, sizes, meta[2], meta[3])
        if bad >= 0:
            return OVERLAP + 8 * bad
        written_spans(ptrs, sizes, meta[2], meta[3], spans)
    if changed or resized or gmoved:   # else the same arrays as at the last accepted call
        bad = grad_alias(ptrs, sizes, meta[2], spans)
        if bad >= 0:
            return OVERLAP + 8 * (bad * k + 1)
        last[:, :] = ptrs
    return -(1 * resized + 2 * changed)


@njit(cache=True, nogil=True)
def written_spans(ptrs, sizes, itemsize, writable, spans):
    """spans[0, 0] = m, then rows 1..m: the (start, end) byte ranges of the written arrays, by start."""
    n, k = ptrs.shape
    m = 0
    for t in range(n):
        for c in range(k):
            if writable[c] and sizes[t] * itemsize[c] > 0:
                m += 1
                spans[m, 0] = ptrs[t, c]
                spans[m, 1] = ptrs[t, c] + sizes[t] * itemsize[c]
    order = np.argsort(spans[1:m + 1, 0])
    spans[1:m + 1] = spans[1:m + 1][order]
    spans[0, 0] = m


@njit(cache=True, nogil=True)
def grad_alias(ptrs, sizes, itemsize, spans):
    """-1, or the row whose gradient (column 1) overlaps a written array other than its own param
    (a grad that IS its param, element for element, is harmless: each element is read, then written)."""
    m = spans[0, 0]
    for t in range(ptrs.shape[0]):
        nbytes = sizes[t] * itemsize[1]
        if nbytes == 0:
            continue
        g0, g1 = ptrs[t, 1], ptrs[t, 1] + nbytes
        lo, hi = 1, m + 1          # first span starting at or after g1
        while lo < hi:
            mid = (lo + hi) // 2
            if spans[mid, 0] < g1:
                lo = mid + 1
            else:
                hi = mid
        j = lo - 1                 # spans before j start below g1: the one ending last overlaps if any
        while j >= 1 and spans[j, 1] > g0:
            if not (spans[j, 0] == ptrs[t, 0] and g0 == ptrs[t, 0] and spans[j, 1] == g1):
                return t
            j -= 1
    return -1


@njit(cache=True, nogil=True)
def overlap(ptrs, sizes, itemsize, writable):
    """-1 if no written array (param, state) shares memory with another written array, else the flat
    index (row * k + column) of one that does. Gradients are only read: they may alias anything."""
    n, k = ptrs.shape
    m = n * k
    start = np.empty(m, np.int64)
    for t in range(n):
        for c in range(k):
            start[t * k + c] = ptrs[t, c]
    order = np.argsort(start)
    end = np.int64(-1)
    for j in range(m):
        idx = order[j]
        t, c = idx // k, idx % k
        nbytes = sizes[t] * itemsize[c]
        if nbytes == 0 or not writable[c]:
            continue
        s = start[idx]
        if s < end:
            return idx
        end = max(end, s + nbytes)
    return -1


def describe(code):
    """(reason, flat index) of a gather() status code."""
    if code == BAD_LIST:
        return "list", -1
    reasons = {BAD_TYPE: "type", BAD_DTYPE: "dtype", NOT_CONTIGUOUS: "not C-contiguous",
               NOT_ALIGNED: "not aligned", READ_ONLY: "read-only", BAD_SHAPE: "shape", OVERLAP: "overlap"}
    return reasons[code % 8], code // 8


def _verify():
    """True when the struct offsets above read a probe array's fields correctly."""
    if sys.maxsize != 2**63 - 1 or getattr(sys, "_is_gil_enabled", lambda: True)() is False:
        return False
    a = np.zeros((3, 5), np.float32)[1:]
    b = np.zeros(7, np.float64)
    b.flags.writeable = False
    items = [a, b, None]
    try:
        objs = np.array([[id(a)], [id(b)]], np.int64)
        out = _probe(objs)
        listed = _probe_list(id(items), len(items))
    except Exception:
        return False
    expect = [[id(type(a)), a.ctypes.data, a.ndim, a.shape[0], id(a.dtype), 1],
              [id(type(b)), b.ctypes.data, b.ndim, b.shape[0], id(b.dtype), 0]]
    return out.tolist() == expect and listed.tolist() == [len(items), *map(id, items)]


@njit(cache=True)
def _probe_list(addr, n):
    out = np.zeros(n + 1, np.int64)
    out[0] = load_i64(addr + OFF_LIST_SIZE)
    if out[0] == n:
        for i in range(n):
            out[i + 1] = load_i64(load_i64(addr + OFF_LIST_ITEMS) + 8 * i)
    return out


@njit(cache=True)
def _probe(objs):
    out = np.empty((objs.shape[0], 6), np.int64)
    for t in range(objs.shape[0]):
        a = objs[t, 0]
        out[t, 0] = load_i64(a + OFF_TYPE)
        out[t, 1] = load_i64(a + OFF_DATA)
        out[t, 2] = load_i32(a + OFF_ND)
        out[t, 3] = load_i64(load_i64(a + OFF_DIMS))
        out[t, 4] = load_i64(a + OFF_DESCR)
        out[t, 5] = 1 if load_i32(a + OFF_FLAGS) & WRITEABLE else 0
    return out


STRUCT_OK = _verify()


# ---------------------------------------------------------------- scalars at addresses
_F32 = np.empty(0, np.float32)
_F64 = np.empty(0, np.float64)


@njit(cache=True, nogil=True)
def read_scalars(addrs, is64, out):
    """out[i] = the float32 (is64[i] == 0) or float64 value at addrs[i] (e.g. torch's 0-d step tensors)."""
    for i in range(addrs.size):
        if is64[i]:
            out[i] = carray(at(addrs[i], 0, _F64), 1)[0]
        else:
            out[i] = carray(at(addrs[i], 0, _F32), 1)[0]


@njit(cache=True, nogil=True)
def add_scalars(addrs, is64, delta):
    """Add delta to each float32/float64 value at addrs, in its own precision (as ``t += 1`` does)."""
    for i in range(addrs.size):
        if is64[i]:
            v = carray(at(addrs[i], 0, _F64), 1)
            v[0] += delta
        else:
            v32 = carray(at(addrs[i], 0, _F32), 1)
            v32[0] += np.float32(delta)
