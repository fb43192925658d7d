"""Gradient conditioning fused into the step (max_grad_norm, clip_value, grad_scale, non-finite
skipping), compared with torch.nn.utils.clip_grad_norm_ / clip_grad_value_ and GradScaler semantics."""
import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer
from conftest import make_data
from fastlr.specs import SPECS

torch = pytest.importorskip("torch")
from refimpls import reference_optimizer  # noqa: E402

SIZES = (37, 200, 1 << 15)  # the last one takes the parallel kernels


def _setup(dtype, seed=3, steps=6):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [[(rng.standard_normal(n) * (1 + 3 * s)).astype(dtype) for n in SIZES] for s in range(steps)]
    return params, grads


def _torch_run(name, hp, params, grads, max_norm=None, clip=None, groups=None):
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    spec = [{"params": [tps[i] for i in g], **extra} for g, extra in groups] if groups else tps
    opt = reference_optimizer(name, spec, **hp)
    for gs in grads:
        for t, g in zip(tps, gs):
            t.grad = torch.from_numpy(g.copy())
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(tps, max_norm)
        if clip is not None:
            torch.nn.utils.clip_grad_value_(tps, clip)
        opt.step()
    return [t.detach().numpy() for t in tps]


def _close(a, b, dtype):
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


# Without weight decay: with it, a clipped gradient can cancel wd * p almost exactly, and then a
# 1-ulp difference between torch's float32 clip coefficient and fastlr's (float64, rounded once)
# is amplified past rtol 1e-5 (seen for one element in 32768).
ALGOS = [(n, {**CASES[n][0], **({"maximize": True} if "maximize" in SPECS[n].defaults else {})})
         for n in CASES if n != "Lion" and "max_grad_norm" not in SPECS[n].defaults]   # (Lamb: its own clip)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hp", ALGOS, ids=[n for n, _ in ALGOS])
def test_max_grad_norm_equals_clip_grad_norm(name, hp, dtype):
    params, grads = _setup(dtype)
    ref = _torch_run(name, hp, params, grads, max_norm=1.5)
    opt = optimizer(fastlr, name)(params, max_grad_norm=1.5, **hp)
    for gs in grads:
        opt.step(gs)
    _close(params, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_value_and_both_over_several_groups(dtype):
    params, grads = _setup(dtype)
    groups = [([0, 2], {"lr": 1e-2, "weight_decay": 0.1}), ([1], {"lr": 3e-3})]
    hp = dict(amsgrad=True)
    ref = _torch_run("Adam", hp, params, grads, clip=0.7, groups=groups)
    ps = [p.copy() for p in params]
    opt = fastlr.Adam([{"params": [ps[i] for i in g], **extra} for g, extra in groups], clip_value=0.7, **hp)
    for gs in grads:
        opt.step([gs[0], gs[2], gs[1]])
    _close(ps, ref, dtype)
    # norm clipping is global over all groups, then the value clamp (torch: clip_grad_norm_, clip_grad_value_)
    ref = _torch_run("Adam", hp, params, grads, max_norm=2.0, clip=0.05, groups=groups)
    ps = [p.copy() for p in params]
    opt = fastlr.Adam([{"params": [ps[i] for i in g], **extra} for g, extra in groups], clip_value=0.05,
                      max_grad_norm=2.0, **hp)
    for gs in grads:
        opt.step([gs[0], gs[2], gs[1]])
    _close(ps, ref, dtype)


def test_norm_below_max_leaves_grads_alone():
    params, grads = _setup(np.float64)
    ref = _torch_run("SGD", dict(lr=0.1, momentum=0.9), params, grads)
    opt = fastlr.SGD(params, lr=0.1, momentum=0.9, max_grad_norm=1e9)
    for gs in grads:
        opt.step(gs)
    _close(params, ref, np.float64)


def test_grad_scale_divides_the_loss_scale_out():
    params, grads = _setup(np.float32)
    ref = [p.copy() for p in params]
    a, b = fastlr.Adam(ref, lr=1e-2), fastlr.Adam(params, lr=1e-2, grad_scale=1024.0)
    for gs in grads:
        a.step(gs)
        b.step([g * np.float32(1024.0) for g in gs])
    _close(params, ref, np.float32)


def _snapshot(opt, params):
    return [p.copy() for p in params], {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                            for k, v in s.items()} for i, s in opt.state.items()}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD", "Lion"])
def test_nonfinite_step_is_skipped_bit_identically(name, bad):
    params, grads = _setup(np.float32)
    hp = dict(CASES[name][-1])
    clean = [p.copy() for p in params]
    ref_opt = optimizer(fastlr, name)(clean, grad_scale=8.0, **hp)
    opt = optimizer(fastlr, name)(params, grad_scale=8.0, **hp)
    for s, gs in enumerate(grads):
        if s == 3:
            poisoned = [g.copy() for g in gs]
            poisoned[2][123] = bad
            before_p, before_s = _snapshot(opt, params)
            grads_before = [g.copy() for g in poisoned]
            assert opt.step(poisoned) is False
            assert opt.last_step_skipped and opt.skipped_steps == 1
            after_p, after_s = _snapshot(opt, params)
            for x, y in zip(before_p, after_p):
                assert x.tobytes() == y.tobytes()
            for i in before_s:
                for k, v in before_s[i].items():
                    assert (v.tobytes() == after_s[i][k].tobytes()) if isinstance(v, np.ndarray) else v == after_s[i][k]
            for g, g0 in zip(poisoned, grads_before):  # grads are not rewritten either
                assert g.tobytes() == g0.tobytes()
        assert opt.step(gs) is True and not opt.last_step_skipped
        ref_opt.step(gs)
    for x, y in zip(params, clean):  # the skipped step left no trace
        assert x.tobytes() == y.tobytes()
    assert opt.state[0]["step"] == ref_opt.state[0]["step"] == len(grads)


def test_skip_nonfinite_without_grad_scale_and_default_off():
    p, (g,) = make_data(1, 50, np.float32)
    g[0] = np.nan
    opt = fastlr.Adam(p, skip_nonfinite=True)
    before = p.copy()
    assert opt.step(g) is False and np.array_equal(p, before)
    opt = fastlr.Adam(p)  # off: NaN propagates, as in torch
    opt.step(g)
    assert np.isnan(p[0]) and np.isfinite(p[1:]).all()


def test_conditioning_options_are_validated():
    p = np.zeros(3, np.float32)
    for kw in (dict(max_grad_norm=0), dict(clip_value=-1), dict(grad_scale=float("inf")),
               dict(skip_nonfinite=1)):
        with pytest.raises((ValueError, TypeError)):
            fastlr.Adam(p, **kw)


def test_torch_adapter_skip_leaves_buffers_untouched():
    import fastlr.torch as ft
    w = torch.randn(300, requires_grad=True)
    opt = ft.Adam([w], lr=0.1, grad_scale=4.0)
    w.grad = torch.randn(300)
    opt.step()
    st = opt.state[w]
    held = (w, st["exp_avg"], st["exp_avg_sq"], st["step"])
    before = [t.detach().clone() for t in held]
    w.grad = torch.randn(300)
    w.grad[7] = float("inf")
    opt.step()
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for t0, t in zip(before, held):
        assert torch.equal(t0, t.detach())
    assert float(opt.state[w]["step"]) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coupled_and_decoupled_weight_decay_per_group(dtype):
    """torch.optim.Adam's decoupled_weight_decay per param group, in fastlr.Adam and fastlr.torch.Adam."""
    import fastlr.torch as ft
    params, grads = _setup(dtype)
    groups = [([0, 1], {"weight_decay": 0.1, "decoupled_weight_decay": True}), ([2], {"weight_decay": 0.05})]
    ref = _torch_run("Adam", dict(lr=1e-2), params, grads, groups=groups)
    ps = [p.copy() for p in params]
    opt = fastlr.Adam([{"params": [ps[i] for i in g], **extra} for g, extra in groups], lr=1e-2)
    tps = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = ft.Adam([{"params": [tps[i] for i in g], **extra} for g, extra in groups], lr=1e-2)
    for gs in grads:
        opt.step(gs)
        for t, g in zip(tps, gs):
            t.grad = torch.from_numpy(g.copy())
        topt.step()
    _close(ps, ref, dtype)
    _close([t.detach().numpy() for t in tps], ref, dtype)
    assert not np.allclose(ps[2], _torch_run("AdamW", dict(lr=1e-2, weight_decay=0.05), params, grads)[2])
