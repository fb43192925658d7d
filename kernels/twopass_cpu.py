"""CPU first passes of the two-pass rules (``rules.TWO_PASS``): per-tensor float64 sums over a segment table.

``SUMS[rule](ptrs, work, hidx, htab, c, like, out)`` runs the rule's first pass, ``rules.<rule>_sums``, over
every work row of a segment table (the layout of ``kernels.cpu.TABLE_KERNELS``) and writes the float64 sums of
each returned value over the row's elements into ``out[w, :]``; the caller adds the rows of each tensor in
work-row order, so the sums do not depend on the number of threads. ``SUMS[rule + "_serial"]``: one thread.
The second pass is the rule's ordinary table kernel in ``kernels.cpu``.
"""
import numpy as np  # noqa: F401  (used by the generated kernels)
from numba import carray, njit, prange  # noqa: F401

from . import rules
from ._codegen import generate, generate_source
from ._pointers import at  # noqa: F401
from .cpu import R, _table_fields, table_template  # noqa: F401

_JIT = dict(cache=True, nogil=True, error_model="numpy")
# The sums may be reassociated (they only feed norms): that lets LLVM vectorize the float64 accumulation,
# which it must otherwise run one element at a time (measured: 96 ms -> see docs/PERFORMANCE.md at 16M).
_SUM_JIT = dict(_JIT, fastmath={"reassoc"})

_CHUNK = """
def {name}(p, g, {states}h64, c64, acc):
    h = ({h_cast})
    c = (p.dtype.type(c64[0]), p.dtype.type(c64[1]), p.dtype.type(c64[2]))
ZERO    for i in range(p.size):
        OUTS = R.{rule}(p[i], R.condition(g[i], c){items}, h)
ADDSSTORE"""

_TABLE = table_template(", like, out", "CHUNK({columns}({h_row}), c64, out[w])")


def chunk_template(k):
    """The serial first-pass loop for a rule summing k values."""
    return (_CHUNK.replace("ZERO", "".join(f"    sum{j} = 0.0\n" for j in range(k)))
            .replace("OUTS", ", ".join(f"x{j}" for j in range(k)) + ("," if k == 1 else ""))
            .replace("ADDS", "".join(f"        sum{j} += np.float64(x{j})\n" for j in range(k)))
            .replace("STORE", "".join(f"    acc[{j}] = sum{j}\n" for j in range(k))))


SUMS, _BY_SUMS = {}, {}
for _rule, _stages in rules.PASSES.items():
    for _stage, (_sums, _k, _) in enumerate(_stages):
        if _sums not in _BY_SUMS:   # one kernel per sums rule (mars and cautious mars share their first)
            _chunk = generate(chunk_template(_k), _sums, f"{_sums}_chunk", globals(), njit(**_SUM_JIT))
            _BY_SUMS[_sums] = {
                _suffix: generate_source(_TABLE, f"{_sums}_table{_suffix}", dict(globals(), CHUNK=_chunk), _decorate,
                                         **_table_fields(_sums))
                for _suffix, _decorate in (("", njit(parallel=True, **_JIT)), ("_serial", njit(**_JIT)))}
        for _suffix, _kernel in _BY_SUMS[_sums].items():
            SUMS[rules.stage_key(_rule, _stage) + _suffix] = _kernel

