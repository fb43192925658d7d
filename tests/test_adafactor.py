"""Adafactor against torch.optim.Adafactor (50 steps, every option, float32/float64, vectors, matrices and a
3-D param, NumPy and torch front ends), a float64 reference of its factored update, state dicts and bad input."""
import copy

import numpy as np
import pytest

import fastlr
from fastlr.specs import SPECS

torch = pytest.importorskip("torch")
import fastlr.torch as ft  # noqa: E402

SHAPES = [(6, 5), (5,), (3, 4, 2)]
CASES = SPECS["Adafactor"].test_cases() + [dict(eps=(None, 1e-2))]
RUNS = [(hp, dtype) for hp in CASES for dtype in (torch.float32, torch.float64)]


def _steps(opts, params_of, n, dtype, gen):
    for _ in range(n):
        gs = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
        for o, ps in zip(opts, params_of):
            if isinstance(ps[0], np.ndarray):
                o.step([g.numpy() for g in gs])
                continue
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            o.step()


@pytest.mark.parametrize("hp,dtype", RUNS, ids=[f"{i // 2}-{str(d)[6:]}" for i, (_, d) in enumerate(RUNS)])
def test_matches_torch_optim_adafactor(hp, dtype):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    ref, ours = ([p.clone().requires_grad_() for p in init] for _ in range(2))
    arrays = [p.numpy().copy() for p in init]
    opts = [torch.optim.Adafactor(ref, foreach=False, **hp), ft.Adafactor(ours, **hp), fastlr.Adafactor(arrays, **hp)]
    _steps(opts, [ref, ours, arrays], 50, dtype, gen)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for i, (a, b, c) in enumerate(zip(ref, ours, arrays)):
        a = a.detach().numpy()
        np.testing.assert_allclose(b.detach().numpy(), a, rtol=rtol, atol=rtol * np.abs(a).max())
        np.testing.assert_allclose(c, a, rtol=rtol, atol=rtol * np.abs(a).max())
        for k, v in opts[0].state[ref[i]].items():
            np.testing.assert_allclose(np.asarray(opts[2].state[i][k]), v.numpy(), rtol=rtol, err_msg=k)
            np.testing.assert_allclose(opts[1].state[ours[i]][k].numpy(), v.numpy(), rtol=rtol, err_msg=k)


def _reference(p, g, state, t, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0):
    """Shazeer and Stern 2018 as torch writes it (float64): relative step, factored or plain second moment."""
    eps1 = np.finfo(np.float64).eps if eps[0] is None else eps[0]
    w = t ** beta2_decay
    alpha = max(eps[1], np.sqrt(np.mean(p * p))) * min(lr, t ** -0.5)
    p *= 1 - lr * weight_decay
    if g.ndim > 1:
        r = state.setdefault("row_var", np.zeros(g.shape[:-1] + (1,)))
        c = state.setdefault("col_var", np.zeros(g.shape[:-2] + (1,) + g.shape[-1:]))
        r += w * (np.mean(g * g, axis=-1, keepdims=True) - r)
        c += w * (np.mean(g * g, axis=-2, keepdims=True) - c)
        v = r * c / np.maximum(np.mean(r, axis=-2, keepdims=True), eps1)
    else:
        v = state.setdefault("variance", np.zeros_like(g))
        v += w * (g * g - v)
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    p -= alpha / max(1.0, np.sqrt(np.mean(u * u)) / d) * u


@pytest.mark.parametrize("hp", CASES[:-1], ids=[str(i) for i in range(len(CASES) - 1)])
def test_matches_a_float64_reference(hp):
    rng = np.random.default_rng(1)
    ps = [rng.standard_normal(s) for s in SHAPES]
    refs, states = [p.copy() for p in ps], [{} for _ in ps]
    opt = fastlr.Adafactor(ps, **hp)
    sign = -1.0 if hp.get("maximize") else 1.0
    kw = {k: v for k, v in hp.items() if k != "maximize"}
    for t in range(1, 31):
        gs = [rng.standard_normal(s) for s in SHAPES]
        opt.step(gs)
        for p, g, st in zip(refs, gs, states):
            _reference(p, sign * g, st, t, **kw)
    for p, r in zip(ps, refs):
        np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trips_and_cross_loads_with_torch():
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    a, b = ([p.clone() for p in init] for _ in range(2))
    full, part = fastlr.Adafactor([x.numpy() for x in a], weight_decay=0.1), None
    arrays_b = [x.numpy() for x in b]
    part = fastlr.Adafactor(arrays_b, weight_decay=0.1)
    grads = [[torch.randn(s, generator=gen).numpy() for s in SHAPES] for _ in range(6)]
    for g in grads:
        full.step(g)
    for g in grads[:3]:
        part.step(g)
    resumed = fastlr.Adafactor(arrays_b, weight_decay=0.1)
    resumed.load_state_dict(copy.deepcopy(part.state_dict()))
    for g in grads[3:]:
        resumed.step(g)
    for x, y in zip(a, arrays_b):
        np.testing.assert_array_equal(x.numpy(), y)
    # torch.optim.Adafactor's state dict into fastlr.torch, and back
    ref = [p.clone().requires_grad_() for p in init]
    ours = [p.clone().requires_grad_() for p in init]
    t_opt = torch.optim.Adafactor(ref, foreach=False)
    _steps([t_opt], [ref], 3, torch.float32, gen)
    f_opt = ft.Adafactor(ours)
    with torch.no_grad():
        for p, q in zip(ours, ref):
            p.copy_(q)
    f_opt.load_state_dict(copy.deepcopy(t_opt.state_dict()))
    _steps([t_opt, f_opt], [ref, ours], 3, torch.float32, gen)
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused_before_anything_changes():
    with pytest.raises(ValueError, match="eps: expected a pair"):
        fastlr.Adafactor(np.zeros(3), eps=1e-3)
    with pytest.raises(ValueError, match="beta2_decay: expected a value <= 0"):
        fastlr.Adafactor(np.zeros(3), beta2_decay=0.5)
    with pytest.raises(ValueError, match="d: expected a finite value >= 1"):
        fastlr.Adafactor(np.zeros(3), d=0.5)
    a, b = np.ones((3, 4)), np.ones(5)
    opt = fastlr.Adafactor([a, b])
    opt.step([np.ones_like(a), np.ones_like(b)])
    before = (a.copy(), b.copy(), copy.deepcopy(opt.state))
    opt.state[0]["row_var"] = np.ones((4, 1))        # the wrong shape: refused, nothing changes
    with pytest.raises(ValueError, match="row_var"):
        opt.step([np.ones_like(a), np.ones_like(b)])
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])
    assert opt.state[0]["step"] == before[2][0]["step"] and opt.state[1]["step"] == before[2][1]["step"]
