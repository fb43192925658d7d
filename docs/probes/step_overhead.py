"""Where the time of a 4K-param Adam step goes (docs/PERFORMANCE.md). Best of 5 x 20000 calls."""
import time

import numpy as np

import fastlr
from fastlr._launch import NO_CONDITIONING, run
from fastlr.kernels import cpu


def best_us(f, reps=20000):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


p, g = np.ones(4096, np.float32), np.full(4096, 0.1, np.float32)
o = fastlr.Adam(p, lr=1e-3)
for _ in range(200):
    o.step(g)
hp = o._resolved_groups()[0]
ps = dict(o.state[0])
rule, h = o._plan(hp, ps)
pv, gv, st = o._buffers[0].kernel_view(), o._grad_cache[0].kernel_view(), o._flat_states[0][1]
kernel = cpu.KERNELS[rule + "_serial"]
for name, f in [("step", lambda: o.step(g)), ("_grads", lambda: o._grads(g)),
                ("_resolved_groups", o._resolved_groups), ("_ensure_state", lambda: o._ensure_state(0, hp)),
                ("_plan", lambda: o._plan(hp, ps)), ("run", lambda: run(rule, pv, gv, st, h, NO_CONDITIONING, False)),
                ("kernel call", lambda: kernel(pv, gv, *st, h, NO_CONDITIONING))]:
    print(f"{name:<18}{best_us(f):6.2f} us")
