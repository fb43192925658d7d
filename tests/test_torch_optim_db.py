"""torch's own optimizer test matrix (``torch.testing._internal.common_optimizers.optim_db``): every plain CPU
configuration of every torch.optim algorithm fastlr.torch has, run side by side with torch.optim over the same
grads (20 steps, float32 and float64). "Plain": no torch-only switch (foreach, fused, capturable,
differentiable) that changes what is run rather than what is computed."""
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")   # common_optimizers imports it
from torch.testing._internal.common_optimizers import optim_db  # noqa: E402

import fastlr.torch as ft  # noqa: E402

SWITCHES = {"foreach", "fused", "capturable", "differentiable"}


def _configs():
    out = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in ft.__all__:
            continue
        for inp in info.optim_inputs_func("cpu", None):
            if SWITCHES & set(inp.kwargs):
                continue
            out.append((name, inp.kwargs, inp.desc))
    return out


CONFIGS = _configs()


def _params(name, dtype):
    """A matrix and a vector (Muon: two matrices, its only shape)."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(6, 5, generator=gen, dtype=dtype),
            torch.randn((4, 3) if name == "Muon" else (5,), generator=gen, dtype=dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs,desc", CONFIGS, ids=[f"{n}-{d}" for n, _, d in CONFIGS])
def test_optim_db_configuration(name, kwargs, desc, dtype):
    ref = [p.clone().requires_grad_() for p in _params(name, dtype)]
    ours = [p.clone().requires_grad_() for p in _params(name, dtype)]
    kw = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    cls = getattr(torch.optim, name)
    single = {"foreach": False} if "foreach" in inspect.signature(cls).parameters else {}   # (Muon has none)
    t_opt = cls(ref, **single, **kwargs)
    f_opt = getattr(ft, name)(ours, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        for a, b in zip(ref, ours):
            g = torch.randn(a.shape, generator=gen, dtype=dtype)
            a.grad, b.grad = g.clone(), g.clone()
        t_opt.step()
        f_opt.step()
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(ref, ours):
        a, b = a.detach().numpy(), b.detach().numpy()
        # Muon's Newton-Schulz runs in bfloat16: equal within its precision (tests/test_muon.py)
        atol = 20 * float(kwargs.get("lr", 1e-3)) * 2.0 ** -7 * 2 if name == "Muon" else rtol * np.abs(a).max()
        np.testing.assert_allclose(b, a, rtol=0 if name == "Muon" else rtol, atol=atol)
