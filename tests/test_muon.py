"""Muon against torch.optim.Muon (2-D params): NumPy and torch front ends, Newton-Schulz in bfloat16 (as torch)
and float32, every option, 50 steps; a float64 reference of the element parts; bad input."""
import numpy as np
import pytest

import fastlr
from fastlr.specs import SPECS

torch = pytest.importorskip("torch")
import fastlr.torch as ft  # noqa: E402
from fastlr.muon import newton_schulz  # noqa: E402

SHAPES = [(12, 7), (5, 9), (8, 8)]
CASES = SPECS["Muon"].test_cases() + [dict(adjust_lr_fn="match_rms_adamw", momentum=0.8, ns_steps=3),
                                      dict(ns_coefficients=(3.4, -4.7, 2.0), eps=1e-5)]


def _grads(steps, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]


def _run(make, params, grads, numpy=False):
    opt = make(params)
    for gs in grads:
        if numpy:
            opt.step([g.numpy() for g in gs])
        else:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
    return opt


RUNS = [(hp, torch.float32) for hp in CASES] + [(CASES[0], torch.float64)]


@pytest.mark.parametrize("hp,dtype", RUNS, ids=[f"{i}-{str(d)[6:]}" for i, (_, d) in enumerate(RUNS)])
def test_matches_torch_optim_muon(hp, dtype):
    """bfloat16 Newton-Schulz as torch: the momentum buffers agree to float rounding; O agrees within bfloat16
    precision (a 1-ulp difference of the input can round an element of O the other way), so each step's
    param update agrees to lr_adjusted * 2^-7, over 50 steps."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = _grads(50, dtype)
    ref = [p.clone().requires_grad_() for p in init]
    ours = [p.clone().requires_grad_() for p in init]
    arrays = [p.numpy().copy() for p in init]
    t = _run(lambda ps: torch.optim.Muon(ps, **hp), ref, grads)
    f = _run(lambda ps: ft.Muon(ps, **hp), ours, grads)
    n = _run(lambda ps: fastlr.Muon(ps, **hp), arrays, grads, numpy=True)
    lr = hp.get("lr", 1e-3)
    for i, (a, b, c) in enumerate(zip(ref, ours, arrays)):
        bound = 50 * lr * max(np.sqrt(max(1, a.shape[0] / a.shape[1])), 0.2 * np.sqrt(max(a.shape))) * 2.0 ** -7
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=0, atol=bound)
        np.testing.assert_allclose(c, a.detach().numpy(), rtol=0, atol=bound)
        rtol = 1e-6 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(f.state[b]["momentum_buffer"].numpy(), t.state[a]["momentum_buffer"].numpy(),
                                   rtol=rtol, atol=rtol)
        np.testing.assert_allclose(n.state[i]["momentum_buffer"], t.state[a]["momentum_buffer"].numpy(),
                                   rtol=rtol, atol=rtol)


def test_float32_newton_schulz_and_the_numpy_path_agree():
    """ns_dtype="float32": torch and NumPy's own matmul (no torch) give the same O to float32 rounding."""
    from fastlr.muon import _newton_schulz_numpy
    u = torch.randn(12, 7, generator=torch.Generator().manual_seed(3))
    coeffs = SPECS["Muon"].defaults["ns_coefficients"]
    a = newton_schulz(u, coeffs, 5, 1e-7, "float32").numpy()
    b = _newton_schulz_numpy(u.numpy(), coeffs, 5, 1e-7, np)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # orthogonalized: singular values near 1 (the quintic keeps them in about (0.5, 1.5))
    s = np.linalg.svd(a, compute_uv=False)
    assert s.min() > 0.4 and s.max() < 1.6


def test_element_parts_match_a_float64_reference():
    """With O fixed, one step is p (1 - lr wd) - lr sqrt(max(1, A/B)) O and the Nesterov momentum (float64)."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal((12, 7))
    gs = [rng.standard_normal((12, 7)) for _ in range(5)]
    opt = fastlr.Muon(p, lr=0.02, ns_dtype="float32")
    ref, buf = p.copy(), np.zeros_like(p)
    for g in gs:
        u_expected = None
        buf += 0.05 * (g - buf)
        u_expected = g + 0.95 * (buf - g)
        o = newton_schulz(torch.from_numpy(u_expected), (3.4445, -4.775, 2.0315), 5, 1e-7, "float32").double().numpy()
        ref = ref * (1 - 0.02 * 0.1) - 0.02 * np.sqrt(12 / 7) * o
        opt.step(g)
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], buf, rtol=1e-12)
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused_before_anything_changes():
    with pytest.raises(ValueError, match="2-D params only"):
        fastlr.Muon(np.zeros(5))
    with pytest.raises(ValueError, match="2-D params only"):
        ft.Muon([torch.zeros(2, 3, 4, requires_grad=True)])
    with pytest.raises(ValueError, match="ns_dtype"):
        fastlr.Muon(np.zeros((2, 3)), ns_dtype="float16")
    with pytest.raises(ValueError, match="ns_steps"):
        fastlr.Muon(np.zeros((2, 3)), ns_steps=100)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        fastlr.Muon(np.zeros((2, 3)), adjust_lr_fn="other")
    p = np.ones((3, 4))
    opt = fastlr.Muon(p)
    with pytest.raises(ValueError, match="shape"):
        opt.step(np.ones((4, 3)))
    assert (p == 1).all() and not opt.state


@pytest.mark.parametrize("api", [fastlr, ft], ids=["numpy", "torch"])
def test_help_shows_every_default(api):
    """help() shows each class's generated signature (Muon adds ns_dtype to it) and a short spec repr."""
    import inspect
    import pydoc
    for name in [n for n in api.__all__ if getattr(getattr(api, n), "spec", None) is not None]:
        cls = getattr(api, name)
        params = inspect.signature(cls).parameters
        assert inspect.Parameter.VAR_POSITIONAL not in {p.kind for p in params.values()}, name
        for k, v in cls.spec.defaults.items():
            assert params[k].default == v, (name, k)
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        assert f"spec = Spec({name!r})" in text, name
    assert inspect.signature(api.Muon).parameters["ns_dtype"].default == "bfloat16"
    assert "Update: " in api.Muon.__doc__
