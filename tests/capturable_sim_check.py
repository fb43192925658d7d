"""Run under NUMBA_ENABLE_CUDASIM=1 (by test_capturable.py): capturable=True steps against eager
CUDA steps and the float64 reference, for every algorithm and option combination. One JSON line."""
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


def host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def run(name, hp, dtype, steps, capturable, lrs=None, size=9, **options):
    """Params and states after `steps` steps; lrs[t] (if given) is set as the group lr before step t."""
    p, grads = make_data(steps, size, dtype, seed=11)
    dp = cuda.to_device(p)
    opt = getattr(fastlr, name)(dp, **hp, capturable=capturable, **options)
    for t, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t]
        opt.step(cuda.to_device(g))
    state = {k: host(v) for k, v in opt.state[0].items() if hasattr(v, "copy_to_host")}
    return host(dp), state, opt


def bits_equal(a, b):
    return a.tobytes() == b.tobytes()


results = []
for name, cases in CASES.items():
    for hp in cases:
        for dtype, steps in ((np.float32, 3), (np.float64, 7)):
            if dtype == np.float64 and hp is not cases[-1]:
                continue  # float64 over more steps (RAdam's rectified branch) for one case each
            p_cap, s_cap, opt = run(name, hp, dtype, steps, True)
            p_eager, s_eager, _ = run(name, hp, dtype, steps, False)
            same_states = all(bits_equal(s_cap[k], s_eager[k]) for k in s_eager)
            ref = make_data(steps, 9, dtype, seed=11)[0].astype(np.float64)
            st = {}
            for t, g in enumerate(make_data(steps, 9, dtype, seed=11)[1], 1):
                REFERENCES[name](ref, g.astype(np.float64), st, t, **hp)
            err = float(np.max(np.abs(p_cap - ref)) / max(1.0, np.abs(ref).max()))
            results.append({"name": name, "hp": repr(hp), "dtype": np.dtype(dtype).name, "err": err,
                            "params_equal": bits_equal(p_cap, p_eager), "states_equal": same_states,
                            "step": float(s_cap["step"][0]), "steps": steps,
                            "step_on_device": type(opt.state[0]["step"]).__name__})

# lr as a device array changed in place between steps, and a float lr changed between steps
lr_dev = cuda.to_device(np.array([1e-2]))
p, grads = make_data(4, 23, np.float32, seed=3)
dp = cuda.to_device(p)
opt = fastlr.Adam(dp, lr=lr_dev, capturable=True)
for t, g in enumerate(grads):
    lr_dev.copy_to_device(np.array([1e-2 if t < 2 else 5e-3]))
    opt.step(cuda.to_device(g))
dp2 = cuda.to_device(p)
eager = fastlr.Adam(dp2, lr=1e-2)
for t, g in enumerate(grads):
    eager.param_groups[0]["lr"] = 1e-2 if t < 2 else 5e-3
    eager.step(cuda.to_device(g))
lr_array_ok = bits_equal(host(dp), host(dp2))
float_lr_ok = bits_equal(run("Adam", {}, np.float32, 4, True, lrs=[1e-2, 2e-3, 2e-3, 1e-3])[0],
                         run("Adam", {}, np.float32, 4, False, lrs=[1e-2, 2e-3, 2e-3, 1e-3])[0])
clip_ok = bits_equal(run("Adam", {}, np.float32, 3, True, clip_value=0.1)[0],
                     run("Adam", {}, np.float32, 3, False, clip_value=0.1)[0])

# state dict: capturable -> eager -> capturable resumes equal an uninterrupted eager run
p, grads = make_data(6, 23, np.float64, seed=4)
a = cuda.to_device(p)
cap = fastlr.NAdam(a, capturable=True)
for g in grads[:3]:
    cap.step(cuda.to_device(g))
sd = cap.state_dict()
b = cuda.to_device(host(a))
eager = fastlr.NAdam(b)
eager.load_state_dict(sd)
eager.step(cuda.to_device(grads[3]))
c = cuda.to_device(host(b))
cap2 = fastlr.NAdam(c, capturable=True)
cap2.load_state_dict(eager.state_dict())
for g in grads[4:]:
    cap2.step(cuda.to_device(g))
d = cuda.to_device(p)
plain = fastlr.NAdam(d)
for g in grads:
    plain.step(cuda.to_device(g))
resume_ok = bits_equal(host(c), host(d)) and float(host(cap2.state[0]["step"])[0]) == 6.0 \
    and abs(float(host(cap2.state[0]["mu_product"])[0]) - plain.state[0]["mu_product"]) == 0.0


def error(fn):
    try:
        fn()
    except (TypeError, ValueError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"
    return None


dp = cuda.to_device(np.ones(5, np.float32))
g = cuda.to_device(np.ones(5, np.float32))


def schedule_later():
    opt = fastlr.Adam(dp, capturable=True)
    opt.param_groups[0]["lr"] = lambda t: 0.1
    opt.step(g)


errors = {
    "cpu": error(lambda: fastlr.Adam(np.ones(5, np.float32), capturable=True)),
    "max_grad_norm": error(lambda: fastlr.Adam(dp, capturable=True, max_grad_norm=1.0)),
    "grad_scale": error(lambda: fastlr.Adam(dp, capturable=True, grad_scale=2.0)),
    "schedule": error(lambda: fastlr.Adam(dp, lr=lambda t: 0.1, capturable=True)),
    "schedule_later": error(lambda: schedule_later()),
    "lr_shape": error(lambda: fastlr.Adam(dp, lr=cuda.to_device(np.ones(2)), capturable=True).step(g)),
    "step_rows": error(lambda: fastlr.Adam(cuda.to_device(np.ones((4, 2))), capturable=True)
                       .step_rows(np.array([0]), np.ones((1, 2)))),
}
print(json.dumps({"results": results, "lr_array_ok": lr_array_ok, "float_lr_ok": float_lr_ok,
                  "clip_ok": clip_ok, "resume_ok": resume_ok, "errors": errors}))
