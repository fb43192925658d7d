"""fastlr.torch: drop-in torch.optim.Optimizer subclasses, compared with torch.optim on a small model."""
import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastlr  # noqa: E402
import fastlr.torch as ft  # noqa: E402
from cases import CASES, optimizer  # noqa: E402
from refimpls import reference_optimizer  # noqa: E402

ALGOS = list(CASES)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).to(dtype)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 6, generator=g, dtype=dtype), torch.randint(0, 3, (48,), generator=g)


def _train(opt, model, steps, X, Y, scheduler=None):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _assert_same_weights(m1, m2, rtol=1e-5):
    for a, b in zip(m1.parameters(), m2.parameters()):
        a, b = a.detach().double().numpy(), b.detach().double().numpy()
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max()))


def _reference_opt(name, params, hp):
    if name == "Lion":  # torch.optim has no Lion: fastlr's core optimizer on the same tensors
        return fastlr.Lion(list(params), **hp)
    return reference_optimizer(name, params, **hp)


CASES_50 = [(n, h) for n in ALGOS for h in (CASES[n][0], CASES[n][-1])]


@pytest.mark.parametrize("name,hp", CASES_50, ids=[f"{n}-{i % 2}" for i, (n, _) in enumerate(CASES_50)])
def test_trains_like_torch_optim(name, hp):
    X, Y = _data()
    m_ref, m = _model(), _model()
    _train(_reference_opt(name, m_ref.parameters(), hp), m_ref, 50, X, Y)
    opt = optimizer(ft, name)(m.parameters(), **hp)
    assert isinstance(opt, torch.optim.Optimizer)
    _train(opt, m, 50, X, Y)
    _assert_same_weights(m, m_ref)


def test_float64_and_param_groups():
    X, Y = _data(torch.float64)
    m_ref, m = _model(torch.float64), _model(torch.float64)

    def groups(model):
        return [{"params": model[0].parameters(), "lr": 1e-2, "weight_decay": 0.1},
                {"params": model[2].parameters()}]
    _train(torch.optim.Adam(groups(m_ref), lr=3e-3, foreach=False), m_ref, 30, X, Y)
    _train(ft.Adam(groups(m), lr=3e-3), m, 30, X, Y)
    _assert_same_weights(m, m_ref, rtol=1e-12)


def test_params_keep_their_storage_and_a_group_is_one_kernel_call(monkeypatch):
    m = _model()
    ptrs = [p.data_ptr() for p in m.parameters()]
    opt = ft.Adam(m.parameters(), lr=1e-3)
    from fastlr.kernels import cpu
    calls = []
    for name, kernel in list(cpu.TABLE_KERNELS.items()):
        monkeypatch.setitem(cpu.TABLE_KERNELS, name,
                            lambda *a, _k=kernel, _n=name, **kw: calls.append(_n) or _k(*a, **kw))
    X, Y = _data()
    _train(opt, m, 2, X, Y)
    assert len(calls) == 2 and all(c.startswith("adam") for c in calls)   # one call per step for the group
    assert [p.data_ptr() for p in m.parameters()] == ptrs                  # no packing, no copies
    for p in m.parameters():
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["step"].dtype == torch.float32 and st["step"].dim() == 0


@pytest.mark.parametrize("set_to_none", [True, False])
def test_grads_are_read_where_autograd_put_them(set_to_none):
    X, Y = _data()
    m_ref, m = _model(), _model()
    ref = torch.optim.SGD(m_ref.parameters(), lr=0.1, momentum=0.9, foreach=False)
    opt = ft.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        for model, o in ((m_ref, ref), (m, opt)):
            o.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.cross_entropy(model(X), Y).backward()
        grads = [(p.grad, p.grad.data_ptr(), p.grad.clone()) for p in m.parameters()]
        ref.step()
        opt.step()
        for p, (g, ptr, value) in zip(m.parameters(), grads):   # the step neither moved nor changed them
            assert p.grad is g and g.data_ptr() == ptr and torch.equal(g, value)
    _assert_same_weights(m, m_ref)


def test_dtypes_in_one_group_each_get_their_own_kernel_call():
    a = torch.zeros(5, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = ft.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(5), torch.ones(3, dtype=torch.float64)
    opt.step()
    assert torch.allclose(a.detach(), torch.full((5,), -0.1))
    assert torch.allclose(b.detach(), torch.full((3,), -0.1, dtype=torch.float64))
    assert opt.state[b]["exp_avg"].dtype == torch.float64


def test_params_without_grad_are_skipped_as_torch_does():
    X, Y = _data()
    m_ref, m = _model(), _model()
    opts = [torch.optim.Adam(m_ref.parameters(), lr=1e-2, foreach=False), ft.Adam(m.parameters(), lr=1e-2)]
    for step in range(6):
        for model, opt in zip((m_ref, m), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), Y).backward()
            if step % 2:
                model[0].bias.grad = None  # this param misses every other step
            opt.step()
    _assert_same_weights(m, m_ref)
    assert float(opts[1].state[m[0].bias]["step"]) == float(opts[0].state[m_ref[0].bias]["step"]) == 3


@pytest.mark.parametrize("name,hp", [("Adam", dict(lr=1e-2, amsgrad=True)), ("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("NAdam", {}), ("RMSprop", dict(centered=True, momentum=0.5)),
                                     ("Adagrad", {}), ("AdamW", {}), ("ASGD", dict(t0=5.0)), ("Rprop", {}),
                                     ("Adopt", dict(weight_decay=0.01, decoupled=True)),
                                     ("Adan", dict(weight_decay=0.02)),
                                     ("SGDScheduleFree", dict(lr=0.1)), ("AdamWScheduleFree", dict(warmup_steps=3)),
                                     ("RAdamScheduleFree", {})])
def test_state_dicts_cross_load_with_torch_optim(name, hp):
    """With the reference implementation (torch.optim, timm, schedulefree), both ways."""
    X, Y = _data()
    # torch -> fastlr
    m_ref = _model()
    t_opt = reference_optimizer(name, m_ref.parameters(), **hp)
    _train(t_opt, m_ref, 10, X, Y)
    m = copy.deepcopy(m_ref)
    f_opt = optimizer(ft, name)(m.parameters(), **hp)
    f_opt.load_state_dict(copy.deepcopy(t_opt.state_dict()))
    sd_f, sd_t = f_opt.state_dict(), t_opt.state_dict()
    assert sd_f["state"].keys() == sd_t["state"].keys()
    for i in sd_t["state"]:
        assert sd_f["state"][i].keys() == sd_t["state"][i].keys()
        for k, v in sd_t["state"][i].items():
            assert torch.equal(sd_f["state"][i][k], v), (i, k)
    _train(t_opt, m_ref, 10, X, Y)
    _train(f_opt, m, 10, X, Y)
    _assert_same_weights(m, m_ref)
    # fastlr -> torch
    m2 = copy.deepcopy(m)
    t2 = reference_optimizer(name, m2.parameters(), **hp)
    t2.load_state_dict(copy.deepcopy(f_opt.state_dict()))
    _train(t2, m2, 10, X, Y)
    _train(f_opt, m, 10, X, Y)
    _assert_same_weights(m, m2)


def test_state_dict_round_trip_and_check_before_change():
    X, Y = _data()
    m = _model()
    opt = ft.Adam(m.parameters(), lr=1e-2)
    _train(opt, m, 3, X, Y)
    sd = copy.deepcopy(opt.state_dict())   # torch's state_dict holds references to the live states
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = torch.zeros(7)
    before = {k: v.clone() for k, v in opt.state[next(iter(m.parameters()))].items()}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    for k, v in opt.state[next(iter(m.parameters()))].items():
        assert torch.equal(v, before[k])
    m2 = copy.deepcopy(m)
    opt2 = ft.Adam(m2.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    _train(opt, m, 3, X, Y)
    _train(opt2, m2, 3, X, Y)
    _assert_same_weights(m, m2, rtol=0)


def test_lr_schedulers_and_closure():
    X, Y = _data()
    m_ref, m = _model(), _model()
    t_opt = torch.optim.SGD(m_ref.parameters(), lr=0.1, momentum=0.9, foreach=False)
    f_opt = ft.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _train(t_opt, m_ref, 20, X, Y, torch.optim.lr_scheduler.CosineAnnealingLR(t_opt, T_max=20))
    _train(f_opt, m, 20, X, Y, torch.optim.lr_scheduler.CosineAnnealingLR(f_opt, T_max=20))
    _assert_same_weights(m, m_ref)

    def closure():
        f_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(X), Y)
        loss.backward()
        return loss
    loss = f_opt.step(closure)
    assert isinstance(loss, torch.Tensor)


def test_grad_scaler_cpu():
    X, Y = _data()
    m_ref, m = _model(), _model()
    opts = [torch.optim.Adam(m_ref.parameters(), lr=1e-2, foreach=False), ft.Adam(m.parameters(), lr=1e-2)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0), torch.amp.GradScaler("cpu", init_scale=1024.0)]
    for step in range(8):
        for model, opt, scaler in zip((m_ref, m), opts, scalers):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), Y)
            if step == 3:
                loss = loss * float("inf")  # non-finite grads: the scaler skips this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    _assert_same_weights(m, m_ref)
    assert scalers[1].get_scale() == scalers[0].get_scale() < 1024.0


def test_conditioning_options_match_torch_clipping():
    X, Y = _data()
    m_ref, m = _model(), _model()
    t_opt = torch.optim.Adam(m_ref.parameters(), lr=1e-2, foreach=False)
    f_opt = ft.Adam(m.parameters(), lr=1e-2, max_grad_norm=0.05, clip_value=0.02)
    for _ in range(10):
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(m_ref(X), Y).backward()
        torch.nn.utils.clip_grad_norm_(m_ref.parameters(), 0.05)  # fastlr: norm of the raw grads, then clamp
        torch.nn.utils.clip_grad_value_(m_ref.parameters(), 0.02)
        t_opt.step()
    _train(f_opt, m, 10, X, Y)
    _assert_same_weights(m, m_ref)


def test_bad_input_raises_before_change():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        ft.Adam([x * 2])
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="several devices"):
        ft.Adam([a, b])
    with pytest.raises(TypeError, match="master_weights"):
        ft.Adam([torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)])
    with pytest.raises(TypeError, match="float32"):
        ft.Adam([torch.zeros(3, dtype=torch.int32)])
    with pytest.raises(ValueError, match="betas"):
        ft.Adam([a], betas=(1.5, 0.9))
    h = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    with pytest.raises(TypeError, match="bfloat16 only"):
        ft.Adam([h], stochastic_rounding=True)
    with pytest.raises(ValueError, match="choose one"):
        ft.Adam([h], stochastic_rounding=True, master_weights=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        ft.Adam([a], max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam([a], capturable=True)
    with pytest.raises(ValueError, match="more than one"):
        ft.Adam([{"params": [a]}, {"params": [a]}])
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ft.Adam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before) and not opt.state


def test_import_fastlr_does_not_import_torch():
    code = ("import sys, fastlr, fastlr.mixed; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam", "Lion"])
def test_cuda_tensors_train_like_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    X, Y = _data()
    hp = CASES[name][-1]
    m_cpu, m_gpu = _model(), _model().cuda()
    _train(optimizer(ft, name)(m_cpu.parameters(), **hp), m_cpu, 20, X, Y)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # kernels follow the caller's current stream
        _train(optimizer(ft, name)(m_gpu.parameters(), max_grad_norm=1e9, **hp), m_gpu, 20, X.cuda(), Y.cuda())
    torch.cuda.synchronize()
    _assert_same_weights(m_gpu.cpu(), m_cpu, rtol=1e-4)
