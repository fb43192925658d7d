"""state_dict round trips exactly, and a run resumed from a mid-training snapshot continues bit-identically."""
import pickle

import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer
from conftest import make_data

ALGORITHMS = list(CASES)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_resume_is_bit_identical(name):
    hp = CASES[name][-1]  # the last combination turns most options on
    p, grads = make_data(20, 300, np.float32, seed=3)
    full = p.copy()
    opt = optimizer(fastlr, name)(full, **hp)
    for g in grads:
        opt.step(g)

    first = p.copy()
    opt1 = optimizer(fastlr, name)(first, **hp)
    for g in grads[:10]:
        opt1.step(g)
    saved = pickle.loads(pickle.dumps(opt1.state_dict()))
    resumed = first.copy()
    opt2 = optimizer(fastlr, name)(resumed, **hp)
    opt2.load_state_dict(saved)
    for g in grads[10:]:
        opt2.step(g)
    assert resumed.tobytes() == full.tobytes()
    assert opt2.state[0]["step"] == len(grads)


def test_state_dict_is_a_snapshot():
    w = np.zeros(5, np.float32)
    opt = fastlr.Adam(w)
    opt.step(np.ones_like(w))
    sd = opt.state_dict()
    opt.step(np.ones_like(w))
    assert sd["state"][0]["step"] == 1
    assert not np.array_equal(sd["state"][0]["exp_avg"], opt.state[0]["exp_avg"])


def test_hyperparameters_round_trip():
    w = np.zeros(5, np.float32)
    opt = fastlr.SGD(w, lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    other = fastlr.SGD(np.zeros(5, np.float32), lr=0.5)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["momentum"] == 0.9
