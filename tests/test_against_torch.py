"""Direct comparison with each algorithm's reference implementation (torch.optim, timm.optim, schedulefree;
CPU, float32 and float64) over 50 steps, state included."""
import numpy as np
import pytest

import fastlr
from cases import ALL, case_id, optimizer
from conftest import make_data
from reference import assert_close

torch = pytest.importorskip("torch")
from refimpls import has_reference, reference_optimizer  # noqa: E402

TORCH_CASES = [(n, h) for n, h in ALL if has_reference(n)]  # Lion has none (its paper's float64 reference only)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hp", TORCH_CASES, ids=[case_id(n, h) for n, h in TORCH_CASES])
def test_matches_torch_optim(name, hp, dtype):
    p, grads = make_data(50, 129, dtype, seed=7)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = reference_optimizer(name, [tp], **hp)
    opt = optimizer(fastlr, name)(p, **hp)
    if hasattr(opt, "train"):
        opt.train()
    for g in grads:
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step(g)
    assert_close(p, tp.detach().numpy(), dtype)
    tstate, state = topt.state[tp], opt.state[0]
    assert state["step"] == int(tstate.get("step", 50))
    for key, value in tstate.items():
        if key == "step":
            continue
        value = value.item() if value.ndim == 0 else value.numpy()  # NAdam's mu_product is a 0-d tensor
        assert_close(state[key], value, dtype, err_msg=key)


def test_torch_cpu_tensors_are_updated_zero_copy():
    """fastlr.Adam takes CPU torch tensors directly and reads their .grad when step() has no grads."""
    w = torch.zeros(1000, requires_grad=True)
    w.grad = torch.ones(1000)
    opt = fastlr.Adam([w], lr=0.1)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((1000,), -0.1))
    assert isinstance(opt.state[0]["exp_avg"], torch.Tensor)
