"""Where the time of a 4K-param Adam step goes (docs/PERFORMANCE.md, the engine section). Median of
30000 calls of each piece, in one process; numba on one thread (a 4K step runs the serial kernel)."""
import time

import numba
import numpy as np

import fastlr
from fastlr.kernels import _pointers, cpu


def median_us(f, reps=30000):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e6


numba.set_num_threads(1)
p, g = np.ones(4096, np.float32), np.full(4096, 0.1, np.float32)
o = fastlr.Adam(p, lr=1e-3)
for _ in range(200):
    o.step(g)
engine = o._engine
plan = engine._plans[0]
unit = plan.units[0]
hps = engine.resolve(0)
c = (1.0, -np.inf, np.inf)
for name, f in [("step", lambda: o.step(g)),
                ("engine.step", lambda: engine.step([[g]], o)),
                ("  resolve (hyperparameters)", lambda: engine.resolve(0)),
                ("  plans (read what is held)", lambda: engine._plans_for(hps, [[g]])),
                ("    gather (native struct reads)", lambda: _pointers.gather(unit.objs, unit.meta, unit.ptrs,
                                                                              unit.sizes, unit.last, unit.wspans)),
                ("  check_counts", lambda: engine.front.check_counts(engine.spec, [unit])),
                ("  launch (counts, scalars, kernel)", lambda: engine._launch(plan, unit, c)),
                ("    host rule", lambda: plan.uniform(5)),
                ("    table kernel", lambda: cpu.TABLE_KERNELS["adam_serial"](unit.ptrs, unit.work, unit.hzero,
                                                                              unit.htab, c, unit.like))]:
    print(f"{name:<38}{median_us(f):6.2f} us")
