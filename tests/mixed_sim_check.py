"""Run under NUMBA_ENABLE_CUDASIM=1 (by test_mixed_precision.py): the mixed-precision CUDA kernels
on numba device arrays against the CPU kernels. Prints one JSON line."""
import json
import os

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from fastlr import mixed  # noqa: E402
from fastlr.kernels import rules  # noqa: E402

rng = np.random.default_rng(0)
n = 40
x = rng.standard_normal(n).astype(np.float32)
p16 = np.array([rules.float_to_half(float(v), -1.0, 7, 8) for v in x], np.uint16)
g16 = np.array([rules.float_to_half(float(v), -1.0, 7, 8) for v in rng.standard_normal(n)], np.uint16)
h = rules.adam_scalars(1, 1e-2, (0.9, 0.999), 1e-8, 0.0, False, False)
c = (1.0, -np.inf, np.inf)
res = {}
for mode in ("master", "sr"):  # the CPU converts bf16 on the bits, CUDA by arithmetic: same results
    outs = []
    for on_cuda in (False, True):
        p, g = p16.copy(), g16.copy()
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        master = x.copy() if mode == "master" else None
        if on_cuda:  # int16 views, as torch bf16 CUDA tensors give
            arrs = [cuda.to_device(a) for a in (p.view(np.int16), g.view(np.int16), m, v)]
            dm = cuda.to_device(master) if master is not None else None
            mixed.run("adam", "bf16", arrs[0], arrs[1], dm, arrs[2:], h, c, mixed.seed_mix(3, 1, 0), True)
            outs.append((arrs[0].copy_to_host().view(np.uint16), arrs[2].copy_to_host()))
        else:
            mixed.run("adam", "bf16", p, g, master, [m, v], h, c, mixed.seed_mix(3, 1, 0), False)
            outs.append((p, m))
    res[mode + "_equal"] = bool(np.array_equal(outs[0][0], outs[1][0]) and
                                np.allclose(outs[0][1], outs[1][1], rtol=1e-6))
print(json.dumps(res))
