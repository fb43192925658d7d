"""Every algorithm x option combination against the float64 NumPy reference of torch's formulas."""
import zlib

import numpy as np
import pytest

import fastlr
from cases import ALL, case_id
from conftest import make_data
from reference import REFERENCES, assert_close


def run_fastlr(name, hp, p, grads):
    opt = getattr(fastlr, name)(p, **hp)
    if hasattr(opt, "train"):   # schedule-free: steps run in train mode
        opt.train()
    for g in grads:
        opt.step(g)
    return opt


def run_reference(name, hp, p, grads):
    p = p.astype(np.float64)
    state = {}
    for t, g in enumerate(grads, 1):
        REFERENCES[name](p, g.astype(np.float64), state, t, **hp)
    return p, state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hp", ALL, ids=[case_id(n, h) for n, h in ALL])
def test_matches_reference(name, hp, dtype):
    # a seed of its own per case, the same in every run (str hash() is salted per process)
    p, grads = make_data(50, 257, dtype, seed=zlib.crc32(case_id(name, hp).encode()))
    ref_p, ref_state = run_reference(name, hp, p, grads)
    opt = run_fastlr(name, hp, p, grads)
    assert_close(p, ref_p, dtype)
    state = opt.state[0]
    assert state["step"] == len(grads)
    group = opt.param_groups[0]
    for key, value in ref_state.items():   # per-param state, or per-group (schedule-free's weight_sum, lr_max)
        if key in state or key in group:
            assert_close(state[key] if key in state else group[key], value, dtype, err_msg=key)


def test_functional_matches_class():
    p, grads = make_data(10, 100, np.float32)
    q = p.copy()
    run_fastlr("Adam", dict(lr=1e-2, amsgrad=True), p, grads)
    m, v, vmax = (np.zeros_like(q) for _ in range(3))
    for t, g in enumerate(grads, 1):
        out = fastlr.functional.adam_(q, g, m, v, vmax, step=t, lr=1e-2, amsgrad=True)
        assert out == {"step": t}
    np.testing.assert_array_equal(p, q)


def test_functional_nadam_threads_mu_product():
    p, grads = make_data(10, 100, np.float64)
    q = p.copy()
    opt = run_fastlr("NAdam", {}, p, grads)
    m, v = np.zeros_like(q), np.zeros_like(q)
    mu_product = 1.0
    for t, g in enumerate(grads, 1):
        mu_product = fastlr.functional.nadam_(q, g, m, v, step=t, mu_product=mu_product)["mu_product"]
    np.testing.assert_array_equal(p, q)
    assert mu_product == opt.state[0]["mu_product"]


def test_param_groups_and_multidim():
    a, b, c = (np.ones(s, np.float32) for s in [(3, 4), (5,), (2, 2, 2)])
    opt = fastlr.SGD([{"params": [a, b], "lr": 0.5}, c], lr=0.1)
    ga, gb, gc = (np.ones_like(x) for x in (a, b, c))
    opt.step([[ga, gb], gc])
    assert np.all(a == 0.5) and np.all(b == 0.5) and np.allclose(c, 0.9)
    opt.param_groups[1]["lr"] = 0.2
    opt.step([ga, None, gc])  # flat list; None skips b
    assert np.all(a == 0.0) and np.all(b == 0.5) and np.allclose(c, 0.7)


def test_lr_schedule_is_evaluated_per_step():
    w = np.zeros(4, np.float32)
    seen = []
    opt = fastlr.SGD(w, lr=lambda k: seen.append(k) or 0.1 * (k + 1))
    for _ in range(3):
        opt.step(np.ones_like(w))
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(w, -(0.1 + 0.2 + 0.3))
