"""fastlr.schedules: closed-form values, optax's values (a committed table made by
tests/optax_schedules.py), torch.optim.lr_scheduler agreement, argument checks."""
import json
import math

import numpy as np
import pytest

import fastlr
from fastlr import schedules as S
from optax_schedules import CASES as OPTAX_CASES
from optax_schedules import STEPS as OPTAX_STEPS
from optax_schedules import build, case_id, load_table

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-15)  # noqa: E731


# ---------------------------------------------------------------- closed forms
def test_constant():
    s = S.constant_schedule(0.5)
    assert [s(t) for t in (0, 1, 1000)] == [0.5, 0.5, 0.5]


def test_returns_python_float_for_numpy_and_python_ints():
    s = S.linear_schedule(1.0, 0.0, 10)
    for t in (3, np.int32(3), np.int64(3), np.uint8(3)):
        v = s(t)
        assert type(v) is float and v == approx(0.7)
    with pytest.raises((TypeError, ValueError)):
        s("3")


def test_linear_and_polynomial():
    s = S.linear_schedule(1.0, 0.0, 10, transition_begin=5)
    assert [s(t) for t in (0, 5, 6, 10, 15, 20)] == [approx(v) for v in (1, 1, 0.9, 0.5, 0, 0)]
    p = S.polynomial_schedule(1.0, 0.01, 2, 100, transition_begin=5)  # optax's docstring
    assert [round(p(t), 4) for t in (0, 5, 6, 104, 105, 110)] == [1.0, 1.0, 0.9803, 0.0101, 0.01, 0.01]
    assert S.polynomial_schedule(2.0, 1.0, 3, 0)(50) == 2.0  # transition_steps == 0: constant


def test_exponential_decay():
    s = S.exponential_decay(2.0, 10, 0.5)
    assert s(0) == 2.0 and s(10) == approx(1.0) and s(5) == approx(2.0 * 0.5 ** 0.5)
    st = S.exponential_decay(2.0, 10, 0.5, transition_begin=3, staircase=True)
    assert [st(t) for t in (0, 3, 12, 13, 22, 23)] == [approx(v) for v in (2, 2, 2, 1, 1, 0.5)]
    floor = S.exponential_decay(1.0, 1, 0.5, end_value=0.1)
    assert floor(2) == approx(0.25) and floor(100) == 0.1
    ceil = S.exponential_decay(1.0, 1, 2.0, end_value=5.0)  # decay_rate > 1: an upper bound
    assert ceil(2) == 4.0 and ceil(3) == 5.0


def test_cosine_decay():
    s = S.cosine_decay_schedule(2.0, 100, alpha=0.1)
    assert s(0) == approx(2.0) and s(50) == approx(2.0 * (0.9 * 0.5 + 0.1))
    assert s(100) == approx(0.2) and s(1000) == approx(0.2)
    e = S.cosine_decay_schedule(1.0, 100, exponent=2.0)
    assert e(50) == approx(0.25)


def test_warmups():
    w = S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 110, end_value=0.1)
    assert w(0) == 0.0 and w(5) == approx(0.5) and w(10) == approx(1.0)
    assert w(60) == approx(0.1 + 0.9 * 0.5) and w(110) == approx(0.1) and w(500) == approx(0.1)
    c = S.warmup_constant_schedule(0.0, 2.0, 4)
    assert [c(t) for t in range(7)] == [approx(v) for v in (0, 0.5, 1, 1.5, 2, 2, 2)]
    x = S.warmup_exponential_decay_schedule(0.0, 1.0, 10, 5, 0.5, transition_begin=2)
    assert x(5) == approx(0.5) and x(10) == 1.0 and x(12) == 1.0 and x(17) == approx(0.5)


def test_piecewise_constant():
    s = S.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.01})  # optax's docstring
    assert [s(t) for t in (0, 99, 100, 150, 199, 200, 250)] == [approx(v) for v in
                                                                  (1, 1, 0.1, 0.1, 0.1, 1e-3, 1e-3)]
    assert S.piecewise_constant_schedule(3.0)(10) == 3.0


def test_piecewise_interpolate():
    s = S.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})  # optax's docstring
    assert [s(t) for t in range(0, 11, 2)] == [approx(v) for v in (1, 0.55, 0.1, 0.0505, 0.001, 0.001)]
    c = S.piecewise_interpolate_schedule("cosine", 1.0, {10: 0.0})
    assert c(0) == approx(1.0) and c(5) == approx(0.5) and c(10) == 0.0
    assert S.piecewise_interpolate_schedule("linear", 2.0)(7) == 2.0


def test_onecycles():
    lin = S.linear_onecycle_schedule(100, 1.0)
    assert lin(0) == approx(1 / 25) and lin(30) == approx(1.0) and lin(85) == approx(1 / 25)
    assert lin(100) == approx(1 / 25 / 1e4) and lin(57.5) == approx(0.52)
    cos = S.cosine_onecycle_schedule(100, 1.0)
    assert cos(0) == approx(1 / 25) and cos(30) == approx(1.0) and cos(200) == approx(1 / 25 / 1e4)
    assert cos(65) == approx((1.0 + 1 / 25 / 1e4) / 2)


def test_sgdr_and_join():
    cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
    s = S.sgdr_schedule([cycle, {**cycle, "peak_value": 0.5}])
    one = S.warmup_cosine_decay_schedule(**cycle)
    assert [s(t) for t in range(10)] == [one(t) for t in range(10)]
    assert s(10) == 0.0 and s(12) == approx(0.5) and s(100) == approx(0.0)
    j = S.join_schedules([S.constant_schedule(1.0), S.linear_schedule(2.0, 0.0, 4),
                          S.constant_schedule(7.0)], [3, 5])
    assert [j(t) for t in range(7)] == [1.0, 1.0, 1.0, 2.0, 1.5, 7.0, 7.0]  # later ones see t - boundary


def test_torch_forms_closed_form():
    assert [S.step_lr(1.0, 3, 0.5)(t) for t in (0, 2, 3, 6, 7)] == [1, 1, 0.5, 0.25, 0.25]
    m = S.multistep_lr(1.0, [5, 2, 5], gamma=0.5)  # unsorted, 5 twice: counted twice
    assert [m(t) for t in (0, 2, 4, 5, 100)] == [1, 0.5, 0.5, 0.125, 0.125]
    w = S.cosine_annealing_warm_restarts(1.0, 2, T_mult=2)
    # cycles of 2, 4, 8 steps: restarts at t = 2 and t = 6
    assert [w(t) for t in (0, 1, 2, 3, 4, 5, 6)] == [approx(v) for v in (
        1, 0.5, 1, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 1)]


# ---------------------------------------------------------------- against optax 0.2.8
TORCH_STYLE = {"step_lr", "multistep_lr", "cosine_annealing_warm_restarts", "ReduceLROnPlateau", "ScaledSchedule"}
OPTAX_TABLE = load_table()


def test_optax_table_is_current_and_covers_every_optax_schedule():
    cases, values, version = OPTAX_TABLE
    assert cases == json.loads(json.dumps(OPTAX_CASES)), "rerun tests/optax_schedules.py"
    assert version == "0.2.8"
    for v in values.values():
        assert v.shape == (len(OPTAX_CASES), OPTAX_STEPS)
    assert {c["name"] for c in OPTAX_CASES} == set(S.__all__) - TORCH_STYLE


# optax's float32 output carries float32 rounding: rtol 1e-6 per value plus 1e-6 of the schedule's
# largest value (for values that cancel towards 0, e.g. a cosine's end). In float64, optax computes
# the same formulas in the same order, so its values must match to rounding.
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-14)])
@pytest.mark.parametrize("i", range(len(OPTAX_CASES)), ids=[case_id(i, c) for i, c in enumerate(OPTAX_CASES)])
def test_against_optax_table(i, dtype, rtol):
    cases, values, _ = OPTAX_TABLE
    expected = values[dtype][i].astype(np.float64)
    schedule = build(S, cases[i])
    got = [schedule(t) for t in range(OPTAX_STEPS)]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max(),
                               err_msg=json.dumps(cases[i]))


# ---------------------------------------------------------------- bad arguments
BAD = [
    ("transition_steps", lambda: S.linear_schedule(1.0, 0.0, -1)),
    ("transition_begin", lambda: S.polynomial_schedule(1.0, 0.0, 2, 10, transition_begin=-3)),
    ("transition_steps", lambda: S.exponential_decay(1.0, -5, 0.5)),
    ("decay_rate", lambda: S.exponential_decay(1.0, 5, 0.0)),
    ("decay_rate", lambda: S.exponential_decay(1.0, 5, -0.5)),
    ("init_value", lambda: S.exponential_decay(float("nan"), 5, 0.5)),
    ("decay_steps", lambda: S.cosine_decay_schedule(1.0, 0)),
    ("decay_steps", lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10)),
    ("warmup_steps", lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10)),
    ("boundaries_and_scales", lambda: S.piecewise_constant_schedule(1.0, {10: -0.5})),
    ("boundaries_and_scales", lambda: S.piecewise_constant_schedule(1.0, {-10: 0.5})),
    ("interpolate_type", lambda: S.piecewise_interpolate_schedule("cubic", 1.0, {10: 0.5})),
    ("transition_steps", lambda: S.linear_onecycle_schedule(0, 1.0)),
    ("pct_start", lambda: S.cosine_onecycle_schedule(100, 1.0, pct_start=1.5)),
    ("pct_final", lambda: S.linear_onecycle_schedule(100, 1.0, pct_start=0.5, pct_final=0.4)),
    ("div_factor", lambda: S.cosine_onecycle_schedule(100, 1.0, div_factor=0)),
    ("cosine_kwargs", lambda: S.sgdr_schedule([])),
    ("schedules", lambda: S.join_schedules([], [])),
    ("boundaries", lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, [])),
    ("boundaries", lambda: S.join_schedules([S.constant_schedule(1.0)] * 3, [5, 2])),
    ("boundaries[0]", lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, [-1])),
    ("step_size", lambda: S.step_lr(1.0, 0)),
    ("milestones[1]", lambda: S.multistep_lr(1.0, [3, -1])),
    ("T_0", lambda: S.cosine_annealing_warm_restarts(1.0, 0)),
    ("T_mult", lambda: S.cosine_annealing_warm_restarts(1.0, 10, T_mult=0)),
    ("T_0", lambda: S.cosine_annealing_warm_restarts(1.0, 2.5)),
]


@pytest.mark.parametrize("name,make", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_bad_arguments_raise(name, make):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_reduce_on_plateau_bad_arguments():
    opt = fastlr.SGD(np.zeros(3), lr=0.1)
    for kwargs, name in [({"mode": "mean"}, "mode"), ({"threshold_mode": "x"}, "threshold_mode"),
                         ({"factor": 1.0}, "factor"), ({"patience": -1}, "patience"),
                         ({"min_lr": [0.1, 0.2]}, "min_lr"), ({"cooldown": 1.5}, "cooldown")]:
        with pytest.raises(ValueError, match=name):
            S.ReduceLROnPlateau(opt, **kwargs)


# ---------------------------------------------------------------- optimizers take schedules
def test_optimizer_uses_schedule_as_lr():
    w = np.zeros(4)
    sched = S.step_lr(0.1, 2, gamma=0.5)
    opt = fastlr.SGD(w, lr=sched)
    g = np.array([1.0, -2.0, 0.5, 0.0])
    expected = np.zeros(4)
    for t in range(6):
        opt.step(g)
        expected -= sched(t) * g
    np.testing.assert_allclose(w, expected, rtol=1e-15, atol=0)
    assert opt.param_groups[0]["lr"] is sched


def test_optimizer_accepts_every_schedule():
    for sched in [S.warmup_cosine_decay_schedule(0.0, 0.1, 3, 20), S.cosine_onecycle_schedule(20, 0.1),
                  S.cosine_annealing_warm_restarts(0.1, 5), S.piecewise_constant_schedule(0.1, {3: 0.5})]:
        w = np.ones(3, np.float32)
        opt = fastlr.Adam(w, lr=sched)
        for _ in range(5):
            opt.step(np.ones(3, np.float32))
        assert np.all(np.isfinite(w)) and np.all(w < 1)


# ---------------------------------------------------------------- against torch
try:
    import torch
    from torch.optim import lr_scheduler as L
except ImportError:  # pragma: no cover
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def torch_lrs(make_scheduler, lr, n, groups=1):
    params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for _ in range(groups)]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


CASES_VS_TORCH = [
    ("StepLR", lambda o: L.StepLR(o, 7, gamma=0.7), S.step_lr(0.3, 7, gamma=0.7), 400),
    ("MultiStepLR", lambda o: L.MultiStepLR(o, [10, 50, 50, 220], gamma=0.3),
     S.multistep_lr(0.3, [10, 50, 50, 220], gamma=0.3), 400),
    ("CosineAnnealingWarmRestarts", lambda o: L.CosineAnnealingWarmRestarts(o, 10, eta_min=0.01),
     S.cosine_annealing_warm_restarts(0.3, 10, eta_min=0.01), 400),
    ("CosineAnnealingWarmRestarts-Tmult", lambda o: L.CosineAnnealingWarmRestarts(o, 3, T_mult=2, eta_min=0.01),
     S.cosine_annealing_warm_restarts(0.3, 3, T_mult=2, eta_min=0.01), 400),
    ("ExponentialLR", lambda o: L.ExponentialLR(o, gamma=0.99), S.exponential_decay(0.3, 1, 0.99), 400),
    ("LinearLR", lambda o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=150),
     S.linear_schedule(0.3 * 0.1, 0.3 * 0.9, 150), 400),
    ("CosineAnnealingLR", lambda o: L.CosineAnnealingLR(o, T_max=200, eta_min=0.03),
     S.cosine_decay_schedule(0.3, 200, alpha=0.1), 201),
    # torch's OneCycleLR ends its phases at pct * total - 1; optax's at int(pct * T):
    # total_steps = T + 1 and pct_start = (int(0.3 T) + 1) / (T + 1) line them up.
    ("OneCycleLR-cos", lambda o: L.OneCycleLR(o, max_lr=0.3, total_steps=301, pct_start=91 / 301),
     S.cosine_onecycle_schedule(300, 0.3, pct_start=0.3), 301),
    ("OneCycleLR-linear-3phase",
     lambda o: L.OneCycleLR(o, max_lr=0.3, total_steps=301, pct_start=91 / 301, anneal_strategy="linear",
                            three_phase=True),
     S.linear_onecycle_schedule(300, 0.3, pct_start=0.3, pct_final=0.6), 301),
]


@needs_torch
@pytest.mark.parametrize("name,make,sched,n", CASES_VS_TORCH, ids=[c[0] for c in CASES_VS_TORCH])
def test_against_torch_schedulers(name, make, sched, n):
    expected = torch_lrs(make, 0.3, n)
    got = [sched(t) for t in range(n)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


def metric_sequence(n=300, seed=0):
    """Improving, then plateauing with noise, a few jumps: exercises patience and cooldown."""
    rng = np.random.default_rng(seed)
    trend = np.concatenate([np.linspace(10, 5, n // 3), np.full(n - n // 3, 5.0)])
    m = trend + 0.05 * rng.standard_normal(n)
    m[::37] -= 0.5
    return m


PLATEAU = [
    dict(mode="min"),
    dict(mode="min", patience=3, cooldown=2, factor=0.5, min_lr=1e-3),
    dict(mode="min", threshold_mode="abs", threshold=0.02, patience=4, factor=0.3),
    dict(mode="max", patience=5, factor=0.5),
    dict(mode="max", threshold_mode="abs", threshold=0.05, patience=2, cooldown=3, min_lr=[1e-2, 1e-4]),
    dict(mode="min", patience=0, factor=0.5, eps=1e-3),
]


@needs_torch
@pytest.mark.parametrize("kwargs", PLATEAU, ids=[str(i) for i in range(len(PLATEAU))])
def test_reduce_on_plateau_against_torch(kwargs):
    metrics = metric_sequence()
    if kwargs["mode"] == "max":
        metrics = 20.0 - metrics
    topt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1},
                            {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5}])
    tsched = L.ReduceLROnPlateau(topt, **kwargs)
    opt = fastlr.SGD([{"params": [np.zeros(2)], "lr": 0.1}, {"params": [np.zeros(2)], "lr": 0.5}])
    sched = S.ReduceLROnPlateau(opt, **kwargs)
    reductions = 0
    for m in metrics:
        tsched.step(float(m))
        sched.step(m)
        got = [g["lr"] for g in opt.param_groups]
        assert got == [g["lr"] for g in topt.param_groups]
        assert sched.num_bad_epochs == tsched.num_bad_epochs and sched.best == tsched.best
        assert sched.cooldown_counter == tsched.cooldown_counter
        reductions += got != [0.1, 0.5]
    assert reductions > 0  # the sequence does trigger reductions


def test_reduce_on_plateau_with_a_schedule_lr():
    metrics = metric_sequence(seed=1)
    kwargs = dict(patience=3, cooldown=1, factor=0.5, min_lr=1e-3)
    w_float, w_sched = np.zeros(2), np.zeros(2)
    opt_f = fastlr.SGD(w_float, lr=0.2)
    opt_s = fastlr.SGD(w_sched, lr=S.constant_schedule(0.2))
    rf, rs = S.ReduceLROnPlateau(opt_f, **kwargs), S.ReduceLROnPlateau(opt_s, **kwargs)
    g = np.array([1.0, -1.0])
    for m in metrics:
        rf.step(m)
        rs.step(m)
        opt_f.step(g)
        opt_s.step(g)
        assert rs.get_last_lr() == rf.get_last_lr() == [opt_f.param_groups[0]["lr"]]
    assert rf.get_last_lr()[0] == 1e-3  # reached the floor
    np.testing.assert_array_equal(w_float, w_sched)
    wrapped = opt_s.param_groups[0]["lr"]
    assert isinstance(wrapped, S.ScaledSchedule)
    # a schedule's own values below min_lr are kept; above, the reduction floors at min_lr
    low = S.ScaledSchedule(S.linear_schedule(0.0, 1.0, 10), scale=1e-6, min_lr=1e-3)
    assert low(0) == 0.0 and low(5) == 1e-3


def test_reduce_on_plateau_state_dict_round_trip():
    opt = fastlr.SGD(np.zeros(2), lr=0.1)
    a = S.ReduceLROnPlateau(opt, patience=1)
    for m in (3.0, 2.0, 2.0, 2.0):
        a.step(m)
    b = S.ReduceLROnPlateau(opt, patience=1)
    b.load_state_dict(a.state_dict())
    assert (b.best, b.num_bad_epochs, b.last_epoch) == (a.best, a.num_bad_epochs, a.last_epoch)


# ---------------------------------------------------------------- pickling
def every_schedule():
    """One built schedule per case of the optax table and of the torch comparisons, and a ScaledSchedule."""
    built = [build(S, c) for c in OPTAX_CASES] + [c[2] for c in CASES_VS_TORCH]
    return built + [S.ScaledSchedule(S.cosine_decay_schedule(0.1, 50), scale=0.5, min_lr=1e-3)]


def test_every_schedule_pickles_with_the_same_values_and_repr():
    import pickle
    schedules = every_schedule()
    names = {type(s).__name__ for s in schedules}
    assert len(names) > 5  # the cases cover the schedule kinds, not one class many times
    for s in schedules:
        copy = pickle.loads(pickle.dumps(s))
        assert [copy(t) for t in range(OPTAX_STEPS)] == [s(t) for t in range(OPTAX_STEPS)]
        assert repr(copy) == repr(s)
    assert repr(S.cosine_decay_schedule(0.1, 100)) == "cosine_decay_schedule(init_value=0.1, decay_steps=100)"


def test_optimizer_with_a_schedule_pickles_and_steps_on_identically():
    import pickle
    rng = np.random.default_rng(0)
    w = rng.standard_normal(8)
    grads = rng.standard_normal((6, 8))
    opt = fastlr.AdamW(w, lr=S.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10))
    for g in grads[:3]:
        opt.step(g)
    clone = pickle.loads(pickle.dumps(opt))
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    fresh_w = w.copy()
    fresh = fastlr.AdamW(fresh_w, lr=0.5)
    fresh.load_state_dict(saved)
    for g in grads[3:]:
        for o in (opt, clone, fresh):
            o.step(g)
    np.testing.assert_array_equal(clone.param_groups[0]["params"][0], w)
    np.testing.assert_array_equal(fresh_w, w)


@needs_torch
def test_torch_save_of_a_state_dict_with_a_schedule(tmp_path):
    opt = fastlr.AdamW(np.ones(4), lr=S.cosine_decay_schedule(0.1, 100))
    opt.step(np.ones(4))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=False)
    assert repr(loaded["param_groups"][0]["lr"]) == repr(opt.param_groups[0]["lr"])
