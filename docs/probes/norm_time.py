"""The sums of squares (max_grad_norm, skip_nonfinite, timm Lamb's clip) and where Lamb's step goes, next to the
stream ceilings (docs/PERFORMANCE.md, "Issue 14 speed misses"). CPU, float32, one process, everything
interleaved (medians), at 1 and 2 threads.

    python docs/probes/norm_time.py [size, default 16M] [repeat, default 7]

Rows (times only; the ratios to the ceilings come from `fastlr bench`, where each ceiling is timed next to one
algorithm): Adam, Adam(max_grad_norm=1.0), Adam(skip_nonfinite=True); the gradient's sum of squares as kernels.cpu
runs it (reassociated, vectorized) and as it ran before (in order: the same loop compiled without reassociation);
timm-default Lamb's step and its three passes (global norm, first pass, element pass); the stream kernels (read
passes and the stream pass with 2 states) for scale.
"""
import os
import statistics
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as fastlr bench: numba's pool must not spin

import numba
import numpy as np
from numba import njit

import fastlr
from fastlr.bench import Case, _data, ceiling_case, measure, parse_size
from fastlr.engine import CHUNK
from fastlr.kernels import cpu, rules, twopass_cpu
from fastlr.kernels.stream import STREAM, STREAM_READ


def in_order_table_sumsq():
    """kernels.cpu's table sum of squares as it was: one float64 addition after another (no reassociation)."""
    namespace = dict(vars(cpu))
    exec(compile("def sumsq_in_order(g, lo, hi):\n    s = 0.0\n    for i in range(lo, hi):\n"
                 "        x = np.float64(g[i])\n        s += x * x\n    return s\n", "<in order>", "exec"), namespace)
    namespace["_range_sumsq"] = njit(nogil=True)(namespace["sumsq_in_order"])
    exec(compile(cpu._TABLE_SUMSQ.format(name="table_sumsq_in_order"), "<in order>", "exec"), namespace)
    return njit(parallel=True, nogil=True)(namespace["table_sumsq_in_order"])


def cases(n):
    dt = np.float32
    out = []
    for name, kw in (("adam", {}), ("adam max_grad_norm=1", {"max_grad_norm": 1.0}),
                     ("adam skip_nonfinite", {"skip_nonfinite": True}), ("lamb (timm defaults)", None)):
        p, g = _data(n, dt, 0)
        opt = fastlr.Lamb(p) if kw is None else fastlr.Adam(p, **kw)
        out.append(Case(name, lambda opt=opt, g=g: opt.step(g)))
    p, g = _data(n, dt, 1)
    m, v = np.full_like(p, 1e-4), np.full_like(p, 1e-6)
    work = cpu.make_work(np.array([n], np.int64), CHUNK)
    ptrs = np.array([[a.ctypes.data for a in (p, g, m, v)]], np.int64)
    keep = (p, g, m, v)   # ptrs holds only addresses: the arrays must live as long as the cases
    h = rules.lamb_scalars(3, 1e-3, True, (0.9, 0.999), 1e-6, 0.01, True, False, False, False, False, 1e-3)
    htab, hidx, c, like = np.array([h], np.float64), np.zeros(1, np.int64), (1.0, -np.inf, np.inf), p[:0]
    sums, sums2 = np.empty(work.shape[0]), np.empty((work.shape[0], 2))
    old = in_order_table_sumsq()
    arrs = [np.full(n, 0.5, dt) for _ in range(4)]
    a, b = dt(1e-3), dt(0.5)
    out += [Case("sum of squares of g", lambda: (keep, cpu.table_sumsq(ptrs, work, 1, like, sums))),
            Case("  the same, in order (before)", lambda: old(ptrs, work, 1, like, sums)),
            Case("lamb first pass", lambda: twopass_cpu.SUMS["lamb"](ptrs, work, hidx, htab, c, like, sums2)),
            Case("lamb element pass", lambda: cpu.TABLE_KERNELS["lamb"](ptrs, work, hidx, htab, c, like)),
            Case("ceiling: read p, g", lambda: STREAM_READ[0](arrs[0], arrs[1], a, b)),
            Case("ceiling: read p, g, 2 states", lambda: STREAM_READ[2](*arrs, a, b)),
            Case("ceiling: stream, 2 states", lambda: STREAM[2](*arrs, a, b)),
            ceiling_case("adam", n, dt, False), ceiling_case("lamb", n, dt, False)]
    out[-2].name, out[-1].name = "ceiling: adam", "ceiling: two-pass (lamb)"
    return out


def main(n, repeat):
    all_cases = cases(n)
    load = open("/proc/loadavg").read().split()[:3]
    print(f"n={n}, float32, load {' '.join(load)}")
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        for case in all_cases:
            case.samples = []
        measure(all_cases, repeat, 0.1)
        t = {case.name: statistics.median(case.samples) for case in all_cases}
        print(f"\n{numba.get_num_threads()} thread(s)")
        for name, seconds in t.items():
            print(f"  {name:32s} {seconds * 1e3:9.3f} ms {seconds / n * 1e9:7.3f} ns/element")
        parts = t["sum of squares of g"] + t["lamb first pass"] + t["lamb element pass"]
        print(f"  lamb: passes {parts * 1e3:.2f} ms of a {t['lamb (timm defaults)'] * 1e3:.2f} ms step")
    print(f"\nload after {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main(parse_size(sys.argv[1]) if len(sys.argv) > 1 else 1 << 24, int(sys.argv[2]) if len(sys.argv) > 2 else 7)
