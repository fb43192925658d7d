"""Run under NUMBA_ENABLE_CUDASIM=1 (by test_cuda_sim.py): every algorithm through the CUDA
kernels on numba device arrays, compared with the float64 reference. Prints one JSON line."""
import json
import os
import sys

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

import fastlr  # noqa: E402
from cases import CASES  # noqa: E402
from conftest import make_data  # noqa: E402
from reference import REFERENCES  # noqa: E402


def check(name, hp, dtype, steps=3, size=37):
    p, grads = make_data(steps, size, dtype, seed=5)
    ref = p.astype(np.float64)
    state = {}
    for t, g in enumerate(grads, 1):
        REFERENCES[name](ref, g.astype(np.float64), state, t, **hp)
    dp = cuda.to_device(p)
    opt = getattr(fastlr, name)(dp, **hp)
    for g in grads:
        opt.step(cuda.to_device(g))
    out = dp.copy_to_host()
    err = float(np.max(np.abs(out - ref)) / max(1.0, np.abs(ref).max()))
    kind = type(opt.state[0][next(k for k in opt.state[0] if k not in ("step", "mu_product"))]).__name__ \
        if len(opt.state[0]) > 1 + len(opt.scalar_state) else "none"
    return {"name": name, "hp": repr(hp), "dtype": np.dtype(dtype).name, "err": err, "state_kind": kind}


results = []
for name, cases in CASES.items():
    for hp in (cases[0], cases[-1]):
        for dtype in (np.float32, np.float64):
            results.append(check(name, hp, dtype))

# gradient conditioning through the CUDA reduction
dp = cuda.to_device(np.ones(20, np.float32))
opt = fastlr.SGD(dp, lr=1.0, max_grad_norm=1.0)
opt.step(cuda.to_device(np.full(20, 2.0, np.float32)))
clip = float(dp.copy_to_host()[0])
opt = fastlr.SGD(dp, lr=1.0, grad_scale=2.0)
before = dp.copy_to_host()
applied = opt.step(cuda.to_device(np.array([np.nan] + [1.0] * 19, np.float32)))
skipped = (not applied) and dp.copy_to_host().tobytes() == before.tobytes()
print(json.dumps({"results": results, "clip_value": clip, "skip_ok": skipped}))
