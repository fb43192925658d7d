"""Run under NUMBA_ENABLE_CUDASIM=1 (by test_sparse_cuda_sim.py): step_rows through the CUDA row
kernels on numba device arrays, compared with the CPU kernels. Prints one JSON line."""
import json
import os

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

import fastlr  # noqa: E402
from fastlr.sparse import RowWiseAdagrad, step_rows  # noqa: E402

CASES = [("Adam", {}), ("AdamW", dict(amsgrad=True, maximize=True)), ("SGD", dict(momentum=0.9, nesterov=True)),
         ("Adagrad", dict(lr_decay=0.01, initial_accumulator_value=0.1)), ("RowWiseAdagrad", dict(weight_decay=0.01))]
rng = np.random.default_rng(0)
p0 = rng.standard_normal((6, 3)).astype(np.float32)
steps = [(rng.integers(0, 5, 7), rng.standard_normal((7, 3)).astype(np.float32)) for _ in range(3)]


def make(name, p, **hp):
    return RowWiseAdagrad(p, lr=0.1, **hp) if name == "RowWiseAdagrad" else getattr(fastlr, name)(p, lr=0.1, **hp)


def host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


results = []
for name, hp in CASES:
    p, dp = p0.copy(), cuda.to_device(p0)
    cpu, gpu = make(name, p, **hp), make(name, dp, **hp)
    for k, (ids, rows) in enumerate(steps):
        step_rows(cpu, None, ids, rows)
        step_rows(gpu, None, cuda.to_device(ids) if k == 1 else ids, cuda.to_device(rows))  # ids on either side
    err = float(np.max(np.abs(dp.copy_to_host() - p)))
    state_err = max(float(np.max(np.abs(host(gpu.state[0][key]) - cpu.state[0][key])))
                    for key in cpu.state[0] if key != "step")
    results.append({"name": name, "err": err, "state_err": state_err, "untouched": bool(
        dp.copy_to_host()[5].tobytes() == p0[5].tobytes()), "state_kind": type(gpu.state[0][
            next(k for k in gpu.state[0] if k != "step")]).__name__})

# max_grad_norm through the device reduction of the coalesced gradient: rows 2+2 at id 1 -> norm 4*sqrt(3)
dp = cuda.to_device(np.zeros((4, 3), np.float32))
step_rows(fastlr.SGD(dp, lr=1.0, max_grad_norm=1.0), None, np.array([1, 1]), cuda.to_device(np.full((2, 3), 2.0,
                                                                                                    np.float32)))
clipped = float(dp.copy_to_host()[1, 0])

# bad input on the device path: nothing changes
dp = cuda.to_device(p0)
opt = fastlr.Adam(dp)
step_rows(opt, None, np.array([0]), cuda.to_device(np.ones((1, 3), np.float32)))
before = dp.copy_to_host().tobytes(), opt.state[0]["exp_avg"].copy_to_host().tobytes()
try:
    step_rows(opt, None, np.array([1, 6]), cuda.to_device(np.ones((2, 3), np.float32)))
    bad = "no error"
except IndexError as e:
    bad = str(e)
unchanged = before == (dp.copy_to_host().tobytes(), opt.state[0]["exp_avg"].copy_to_host().tobytes())
print(json.dumps({"results": results, "clipped": clipped, "bad": bad, "unchanged": unchanged,
                  "step": opt.state[0]["step"]}))
