"""fastlr.lr_find: the learning-rate range test on a linear regression."""
import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr.lr_find import LRFindResult, lr_find


def regression(seed=0, n=256, d=8, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = X @ rng.standard_normal(d).astype(dtype) + 0.1 * rng.standard_normal(n).astype(dtype)
    w = np.zeros(d, dtype)

    def grad_fn():
        r = X @ w - y
        return 0.5 * float(r @ r) / n, (X.T @ r / n).astype(dtype)
    return w, grad_fn


def snapshot(opt):
    sd = opt.state_dict()
    params = [p.copy() for g in opt.param_groups for p in g["params"]]
    return sd, params


def assert_same(opt, before):
    sd0, params0 = before
    sd1, params1 = snapshot(opt)
    for a, b in zip(params0, params1):
        assert a.tobytes() == b.tobytes()
    assert sd0["step_count"] == sd1["step_count"]
    assert sd0["param_groups"] == sd1["param_groups"]
    assert sd0["state"].keys() == sd1["state"].keys()
    for i in sd0["state"]:
        for k, v in sd0["state"][i].items():
            w = sd1["state"][i][k]
            assert (v.tobytes() == w.tobytes()) if isinstance(v, np.ndarray) else v == w


def test_curve_diverges_and_everything_is_restored():
    w, grad_fn = regression()
    opt = fastlr.SGD(w, lr=0.01, momentum=0.9)
    for _ in range(3):  # some state (momentum buffers, step counts) to restore
        opt.step(grad_fn()[1])
    before = snapshot(opt)
    res = lr_find(opt, grad_fn, start_lr=1e-5, end_lr=100.0, num_steps=120)
    assert isinstance(res, LRFindResult)
    lrs = np.array(res.lrs)
    assert lrs[0] == pytest.approx(1e-5) and np.all(np.diff(lrs) > 0)  # exponential in lr
    np.testing.assert_allclose(np.diff(np.log(lrs)), np.log(1e7) / 119, rtol=1e-9)
    assert res.diverged and len(res.lrs) == len(res.losses) < 120
    assert all(loss <= 4.0 * min(res.losses[:i]) for i, loss in enumerate(res.losses) if i)
    assert min(res.losses) < 0.5 * res.losses[0]  # it did train before diverging
    assert lrs[0] <= res.suggestion <= lrs[-1]
    assert_same(opt, before)
    assert opt.param_groups[0]["lr"] == 0.01


def test_suggestion_is_steepest_descent_and_below_divergence():
    w, grad_fn = regression(seed=1)
    opt = fastlr.Adam(w, lr=1e-3)
    before = snapshot(opt)
    res = lr_find(opt, grad_fn, num_steps=100)
    slope = np.gradient(np.array(res.losses), np.log(res.lrs))
    assert res.suggestion == res.lrs[int(np.argmin(slope))]
    assert res.suggestion < res.lrs[-1]
    assert_same(opt, before)
    assert opt.state == {}  # it had not stepped before: no state afterwards either


def test_schedule_lr_and_state_are_restored_with_groups():
    rng = np.random.default_rng(2)
    a, b = np.zeros(4), np.zeros(3)
    target_a, target_b = rng.standard_normal(4), rng.standard_normal(3)

    def grad_fn():
        da, db = a - target_a, b - target_b
        return 0.5 * float(da @ da + db @ db), [da, db]

    sched = schedules.cosine_decay_schedule(0.1, 50)
    opt = fastlr.AdamW([{"params": [a], "lr": sched}, {"params": [b], "lr": 0.02}])
    for _ in range(4):
        opt.step(grad_fn()[1])
    before = snapshot(opt)
    res = lr_find(opt, grad_fn, start_lr=1e-4, end_lr=1e3, num_steps=60)
    assert_same(opt, before)
    assert opt.param_groups[0]["lr"] is sched and opt.param_groups[1]["lr"] == 0.02
    assert 1e-4 <= res.suggestion <= 1e3
    # training goes on exactly as it would have without the range test
    twin_a, twin_b = before[1]
    twin = fastlr.AdamW([{"params": [twin_a], "lr": sched}, {"params": [twin_b], "lr": 0.02}])
    twin.load_state_dict(before[0])
    for _ in range(3):
        g = grad_fn()[1]
        opt.step(g)
        twin.step([twin_a - target_a, twin_b - target_b])
    assert a.tobytes() == twin_a.tobytes() and b.tobytes() == twin_b.tobytes()


def test_no_divergence_runs_all_steps():
    w, grad_fn = regression(seed=3)
    opt = fastlr.SGD(w, lr=0.1)
    num_steps = 30
    res = lr_find(opt, grad_fn, start_lr=1e-6, end_lr=1e-2, num_steps=num_steps, smooth=0.0)
    assert not res.diverged and len(res.lrs) == num_steps
    assert res.lrs[-1] == pytest.approx(1e-2)
    assert res.losses == res.raw_losses  # smooth=0: no smoothing
    assert np.all(np.diff(res.losses) <= 0)  # small lrs on a quadratic: the loss only falls


def test_nonfinite_loss_stops_and_restores():
    w, grad_fn = regression(seed=4)
    calls = []

    def exploding():
        loss, g = grad_fn()
        calls.append(1)
        return (float("nan") if len(calls) > 5 else loss), g

    opt = fastlr.SGD(w, lr=0.1)
    before = snapshot(opt)
    res = lr_find(opt, exploding, num_steps=50)
    assert res.diverged and len(res.lrs) == 5
    assert_same(opt, before)


def test_restored_when_grad_fn_raises():
    w, grad_fn = regression(seed=5)
    opt = fastlr.Adam(w, lr=1e-3)
    opt.step(grad_fn()[1])
    before = snapshot(opt)
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("boom")
        return grad_fn()

    with pytest.raises(RuntimeError, match="boom"):
        lr_find(opt, failing)
    assert_same(opt, before)


def test_torch_params_restored():
    torch = pytest.importorskip("torch")
    w = torch.zeros(5, dtype=torch.float64)
    target = torch.arange(5, dtype=torch.float64)
    opt = fastlr.Adam(w, lr=1e-2)

    def grad_fn():
        d = w - target
        return float(0.5 * (d @ d)), d.clone()

    opt.step(grad_fn()[1])
    w0 = w.clone()
    lr_find(opt, grad_fn, num_steps=40)
    assert torch.equal(w, w0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(start_lr=0.0), "start_lr"), (dict(end_lr=1e-8), "end_lr"), (dict(num_steps=1), "num_steps"),
    (dict(smooth=1.0), "smooth"), (dict(diverge_threshold=1.0), "diverge_threshold"),
])
def test_bad_arguments(kwargs, name):
    w, grad_fn = regression()
    with pytest.raises(ValueError, match=name):
        lr_find(fastlr.SGD(w, lr=0.1), grad_fn, **kwargs)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    w, grad_fn = regression(seed=6)
    res = lr_find(fastlr.SGD(w, lr=0.1), grad_fn, num_steps=50)
    path = tmp_path / "lr.png"
    res.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
