"""Every algorithm through the CUDA kernels on numba device arrays, against the float64 reference;
gradient conditioning through the CUDA reductions."""
import math

import numpy as np
import pytest
from numba import cuda

import fastlr
from cases import CASES, case_id, optimizer
from conftest import make_data
from reference import REFERENCES, assert_close
from sim_helpers import host

# the first and the last of each algorithm's option grid: every option off, every option on
# (the algorithms of issue 14: the last, every option on, to keep the simulator session short)
CLASSIC = ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion")
DENSE = [(name, hp) for name, cases in CASES.items() for hp in ((cases[0], cases[-1]) if name in CLASSIC
                                                                 else (cases[-1],))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hp", DENSE, ids=[case_id(n, h) for n, h in DENSE])
def test_matches_reference_with_states_on_the_device(name, hp, dtype):
    p, grads = make_data(3, 37, dtype, seed=5)
    ref, ref_state = p.astype(np.float64), {}
    for t, g in enumerate(grads, 1):
        REFERENCES[name](ref, g.astype(np.float64), ref_state, t, **hp)
    dp = cuda.to_device(p)
    opt = optimizer(fastlr, name)(dp, **hp)
    for g in grads:
        opt.step(cuda.to_device(g))
    assert_close(dp.copy_to_host(), ref, dtype)
    state = opt.state[0]
    assert state["step"] == len(grads)
    group = opt.param_groups[0]
    for key, value in ref_state.items():   # per-param state, or per-group (schedule-free's weight_sum, lr_max)
        if key not in state:
            if key in group:
                assert_close(group[key], value, dtype, err_msg=key)
            continue
        if np.ndim(value):
            assert hasattr(state[key], "copy_to_host"), f"{key} is a {type(state[key]).__name__}, not on the device"
        assert_close(host(state[key]), value, dtype, err_msg=key)


def test_clip_grad_norm():
    dp = cuda.to_device(np.ones(20, np.float32))
    g = np.full(20, 2.0, np.float32)
    fastlr.SGD(dp, lr=1.0, max_grad_norm=1.0).step(cuda.to_device(g))
    coef = 1.0 / (np.linalg.norm(g.astype(np.float64)) + 1e-6)  # torch's clip_grad_norm_ coefficient
    np.testing.assert_allclose(dp.copy_to_host(), 1.0 - g * coef, rtol=1e-6)
    assert math.isclose(coef, 1 / (2 * math.sqrt(20) + 1e-6))


def test_nonfinite_step_is_skipped_bit_identically():
    dp = cuda.to_device(np.ones(20, np.float32))
    opt = fastlr.SGD(dp, lr=1.0, grad_scale=2.0)
    before = dp.copy_to_host()
    assert opt.step(cuda.to_device(np.array([np.nan] + [1.0] * 19, np.float32))) is False
    assert opt.last_step_skipped and opt.skipped_steps == 1
    assert dp.copy_to_host().tobytes() == before.tobytes()
