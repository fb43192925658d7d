"""Bad input raises a clear error naming the argument, and leaves every buffer bit-identical."""
import numpy as np
import pytest

import fastlr


def snapshot(opt, params):
    return [p.copy() for p in params], {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()}
                                         for i, s in opt.state.items()}


def assert_unchanged(opt, params, snap):
    before_p, before_s = snap
    for p, q in zip(params, before_p):
        assert p.tobytes() == q.tobytes()
    assert set(opt.state) == set(before_s)
    for i, s in before_s.items():
        for k, v in s.items():
            now = opt.state[i][k]
            assert (now.tobytes() == v.tobytes()) if hasattr(v, "tobytes") else now == v


@pytest.fixture
def trained():
    """An Adam optimizer over two params, a few steps in (states exist)."""
    a, b = np.ones(10, np.float32), np.ones((3, 4), np.float32)
    opt = fastlr.Adam([a, b], lr=0.1)
    for _ in range(3):
        opt.step([np.ones_like(a), np.ones_like(b)])
    return opt, [a, b]


BAD_GRADS = [
    (lambda a, b: [np.ones(11, np.float32), np.ones_like(b)], ValueError, r"grads\[0\]: expected shape \(10,\)"),
    (lambda a, b: [np.ones_like(a)], ValueError, r"grads: expected 2 gradient"),
    (lambda a, b: [np.ones(10, np.float64), np.ones_like(b)], TypeError, r"grads\[0\]: expected dtype float32"),
    (lambda a, b: [np.ones(10, np.int32), np.ones_like(b)], TypeError,
     r"grads\[0\]: expected dtype float32 or float64"),
    (lambda a, b: [np.ones(20, np.float32)[::2], np.ones_like(b)], ValueError, r"grads\[0\]: expected a C-contiguous"),
    (lambda a, b: [np.ones_like(a), "x"], TypeError, r"grads\[1\]: expected a NumPy array"),
    # the second gradient is bad: the first param must not have been updated either
    (lambda a, b: [np.ones_like(a), np.ones((4, 3), np.float32)], ValueError, r"grads\[1\]: expected shape"),
]


@pytest.mark.parametrize("make,exc,match", BAD_GRADS)
def test_bad_grads_change_nothing(trained, make, exc, match):
    opt, params = trained
    snap = snapshot(opt, params)
    with pytest.raises(exc, match=match):
        opt.step(make(*params))
    assert_unchanged(opt, params, snap)


BAD_HYPER = [
    ("lr", -1.0, r"lr: expected a finite value >= 0"),
    ("lr", float("nan"), r"lr: expected a finite number, got nan"),
    ("eps", 0.0, r"eps: expected a finite value > 0"),
    ("betas", (0.9, 1.0), r"betas\[1\]: expected a value in \[0, 1\)"),
    ("betas", (-0.1, 0.9), r"betas\[0\]"),
    ("weight_decay", float("nan"), r"weight_decay: expected a finite number, got nan"),
    ("amsgrad", 1, r"amsgrad: expected True or False"),
]


@pytest.mark.parametrize("key,value,match", BAD_HYPER)
def test_bad_hyperparameters_at_construction(key, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastlr.Adam(np.zeros(3, np.float32), **{key: value})


@pytest.mark.parametrize("key,value,match", BAD_HYPER)
def test_bad_hyperparameters_edited_between_steps(trained, key, value, match):
    opt, params = trained
    snap = snapshot(opt, params)
    opt.param_groups[0][key] = value
    with pytest.raises((ValueError, TypeError), match=match):
        opt.step([np.ones_like(p) for p in params])
    assert_unchanged(opt, params, snap)


def test_schedule_returning_nan_changes_nothing(trained):
    opt, params = trained
    snap = snapshot(opt, params)
    opt.param_groups[0]["lr"] = lambda step: float("nan")
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr"):
        opt.step([np.ones_like(p) for p in params])
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(momentum=-0.1), r"momentum: expected a finite value >= 0"),
    (dict(nesterov=True), r"nesterov requires momentum > 0 and dampening == 0"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), r"nesterov requires"),
])
def test_sgd_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastlr.SGD(np.zeros(3, np.float32), **kwargs)


@pytest.mark.parametrize("params,exc,match", [
    (np.zeros(3, np.int64), TypeError, r"params\[0\]: expected dtype float32 or float64"),
    (np.zeros(3, np.float16), TypeError, r"params\[0\]: expected dtype float32 or float64"),
    (np.zeros((4, 4), np.float32)[:, 0], ValueError,
     r"params\[0\]: expected a C-contiguous array \(got shape \(4,\) with strides \(16,\) in bytes; C order has "
     r"\(4,\)\)"),
    (np.zeros((4, 8), np.float32)[:, ::2], ValueError, r"shape \(4, 4\) with strides \(32, 8\) in bytes; C order has "
     r"\(16, 4\)"),
    ([], ValueError, r"params: expected at least one"),
    ([1.0], TypeError, r"params\[0\]: expected a NumPy array"),
])
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=match):
        fastlr.Adam(params)


def test_read_only_param():
    w = np.zeros(3, np.float32)
    w.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\]: the array is read-only"):
        fastlr.SGD(w)


def test_same_array_twice():
    w = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="appears in more than one place"):
        fastlr.SGD([w, w])


def test_state_dict_from_other_algorithm_or_shape(trained):
    opt, params = trained
    snap = snapshot(opt, params)
    other = fastlr.AdamW([np.ones(10, np.float32), np.ones((3, 4), np.float32)])
    with pytest.raises(ValueError, match="saved by Adam, this is AdamW"):
        other.load_state_dict(opt.state_dict())
    wrong = fastlr.Adam([np.ones(10, np.float32), np.ones((4, 3), np.float32)])
    wrong_sd = wrong.state_dict()
    wrong.step([np.ones(10, np.float32), np.ones((4, 3), np.float32)])
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\]: expected shape \(3, 4\)"):
        opt.load_state_dict(wrong.state_dict())
    sd = opt.state_dict()
    del sd["state"][1]["step"]
    with pytest.raises(ValueError, match="lacks"):
        opt.load_state_dict(sd)
    assert wrong_sd["state"] == {}
    assert_unchanged(opt, params, snap)
    assert opt.param_groups[0]["amsgrad"] is False


@pytest.mark.parametrize("call,match", [
    (lambda w, g, m, v: fastlr.functional.adam_(w, g, m, step=1), r"expected state arrays \(exp_avg, exp_avg_sq\)"),
    (lambda w, g, m, v: fastlr.functional.adam_(w, g, m, v, step=0), r"step: expected the 1-based"),
    (lambda w, g, m, v: fastlr.functional.adam_(w, g, m, v[:5], step=1), r"exp_avg_sq: expected shape"),
    (lambda w, g, m, v: fastlr.functional.adam_(w, g, m, v, step=1, lr=-1), r"adam_: lr"),
    (lambda w, g, m, v: fastlr.functional.adam_(w, g, m, v, step=1, momentum=0.9), r"unexpected keyword"),
])
def test_functional_bad_input(call, match):
    w, g, m, v = np.ones(10, np.float32), np.ones(10, np.float32), np.zeros(10, np.float32), np.zeros(10, np.float32)
    before = [x.copy() for x in (w, m, v)]
    with pytest.raises((ValueError, TypeError), match=match):
        call(w, g, m, v)
    for x, y in zip((w, m, v), before):
        assert x.tobytes() == y.tobytes()


def test_nonfinite_gradients_propagate_as_in_torch():
    w = np.ones(4, np.float32)
    opt = fastlr.Adam(w)
    opt.step(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32))
    assert np.isnan(w[0]) and np.isnan(w[1]) and np.isnan(w[2]) and np.isfinite(w[3])


def test_contiguity_errors_show_the_strides():
    """The NumPy classes (above), the functional API and fastlr.torch name the strides they got."""
    import fastlr.functional as F
    p, m, v = np.zeros((4, 8))[:, ::2], np.zeros((4, 4)), np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"param: expected a C-contiguous array \(got shape \(4, 4\) with strides "
                                         r"\(64, 16\) in bytes; C order has \(32, 8\)\)"):
        F.adam_(p, np.zeros((4, 4)), m, v, step=1, lr=1e-3)
    torch = pytest.importorskip("torch")
    import fastlr.torch
    w = torch.nn.Parameter(torch.zeros(4, 8))
    opt = fastlr.torch.Adam([w])
    w.grad = torch.zeros(4, 16)[:, ::2]
    with pytest.raises(ValueError, match=r"\.grad: expected a C-contiguous or otherwise dense tensor \(got shape "
                                         r"\(4, 8\) with strides \(16, 2\) in elements; C order has \(8, 1\)\)"):
        opt.step()
    assert not w.any()
