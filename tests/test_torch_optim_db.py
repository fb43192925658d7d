"""torch's own optimizer test matrix (``torch.testing._internal.common_optimizers.optim_db``): every plain CPU
configuration of every torch.optim algorithm fastlr.torch has, run side by side with torch.optim over the same
grads (20 steps, float32 and float64). "Plain": no torch-only switch (foreach, fused, capturable,
differentiable) that changes what is run rather than what is computed."""
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


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(6, 5, generator=gen, dtype=dtype), torch.randn(5, generator=gen, dtype=dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs,desc", CONFIGS, ids=[f"{n}-{d}" for n, _, d in CONFIGS])
def test_optim_db_configuration(name, kwargs, desc, dtype):
    ref = [p.clone().requires_grad_() for p in _params(dtype)]
    ours = [p.clone().requires_grad_() for p in _params(dtype)]
    kw = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    t_opt = getattr(torch.optim, name)(ref, foreach=False, **kwargs)
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
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())
