"""Mixed precision: bfloat16 / float16 params and grads, float32 states; master weights and
stochastic rounding, on the CPU kernels (the CUDA kernels: tests/cudasim/test_sim_mixed.py)."""
import copy

import numpy as np
import pytest

from fastlr.kernels import rules

torch = pytest.importorskip("torch")
import fastlr.torch as ft  # noqa: E402
from cases import CASES, optimizer  # noqa: E402
from fastlr.specs import SPECS  # noqa: E402
from refimpls import reference_optimizer  # noqa: E402

BF16, FP16 = (7, 8), (10, 5)


def _values(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-42, 38.5, n)
    extras = [0.0, -0.0, float("inf"), -float("inf"), 3.3895314e38, 3.4e38, 1e-45, 9.2e-41, 65504.0, 65520.0,
              6e-8, 2.9e-8, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8]
    return torch.cat([x, torch.tensor(extras)])


@pytest.mark.parametrize("dtype,fmt", [(torch.bfloat16, BF16), (torch.float16, FP16)])
def test_round_to_nearest_even_and_decode_match_torch(dtype, fmt):
    x = _values(4000)
    bits = x.to(dtype).view(torch.int16).numpy().view(np.uint16)
    mine = np.array([rules.float_to_half(float(v), -1.0, *fmt) for v in x.numpy()])
    assert np.array_equal(mine, bits.astype(np.int64))
    decoded = np.array([rules.half_to_float(b, *fmt) for b in bits], np.float32)
    np.testing.assert_array_equal(decoded, x.to(dtype).float().numpy())
    nan_bits = torch.tensor(float("nan")).to(dtype).view(torch.int16).item() & 0xFFFF
    assert rules.float_to_half(float("nan"), -1.0, *fmt) == nan_bits


def test_bit_level_bf16_conversions_equal_the_arithmetic_ones():
    x = _values(4000, seed=1).numpy()
    for v in x[::7]:
        for r in (-1, 0, 1, 0x7FFF, 0x8000, 0xFFFF):
            assert rules.float_to_bf16(v, r) == rules.float_to_half(float(v), r, *BF16), (v, r)
    bits = x.astype(np.float32).view(np.uint32) >> 16
    for b in bits[::5]:
        a, f = rules.bf16_to_float(b), rules.half_to_float(b, *BF16)
        assert (a == f) or (a != a and f != f)


def test_stochastic_rounding_is_unbiased_and_between_neighbours():
    x = np.float32(1.0 + 0.3 * 2 ** -7)  # 30% of the way from 1 to the next bfloat16
    lo, hi = rules.float_to_bf16(1.0, -1), rules.float_to_bf16(1.0 + 2 ** -7, -1)
    outs = np.array([rules.float_to_bf16(x, rules.random16(12345, i)) for i in range(20000)])
    assert set(np.unique(outs)) == {lo, hi}
    assert abs(np.mean(outs == hi) - 0.3) < 0.015
    r = np.array([rules.random16(99, i) for i in range(20000)])
    assert 0 <= r.min() and r.max() < 65536 and abs(r.mean() / 65536 - 0.5) < 0.01


def _half_setup(dtype, n=300, steps=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(n, generator=g).to(dtype)
    grads = [torch.randn(n, generator=g).to(dtype) for _ in range(steps)]
    return p0, grads


MASTER_CASES = [(n, CASES[n][0]) for n in CASES if SPECS[n].half_params] + \
    [("Adam", dict(amsgrad=True, weight_decay=0.01))]


@pytest.mark.parametrize("name,hp", MASTER_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MASTER_CASES)])
def test_master_weights_follow_float32_training(name, hp):
    """Master copy == the fp32 optimizer fed the same (16-bit) grads; params == master rounded."""
    import fastlr
    for dtype in (torch.bfloat16, torch.float16):
        p0, grads = _half_setup(dtype)
        w = p0.clone().requires_grad_()
        ref = p0.float().clone().requires_grad_()
        opt = optimizer(ft, name)([w], master_weights=True, **hp)
        ref_opt = fastlr.Lion([ref], **hp) if name == "Lion" else \
            reference_optimizer(name, [ref], **hp)
        for g in grads:
            w.grad, ref.grad = g.clone(), g.float()
            opt.step()
            ref_opt.step()
        master = opt.state[w]["master_param"]
        np.testing.assert_allclose(master.numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
        assert torch.equal(w.detach(), master.to(dtype))
        for k, v in opt.state[w].items():
            if k not in ("step", "mu_product"):
                assert v.dtype == torch.float32, k


def test_stochastic_rounding_deterministic_given_seed_and_unbiased():
    p0, grads = _half_setup(torch.bfloat16, n=4000, steps=20)
    runs = []
    for seed in (7, 7, 8):
        w = p0.clone().requires_grad_()
        opt = ft.SGD([w], lr=1e-3, stochastic_rounding=True, seed=seed)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        runs.append(w.detach().clone())
        assert set(opt.state[w]) == set()  # SGD without momentum: no state, no fp32 copy
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # updates far below half a bf16 ulp: round to nearest never moves, stochastic rounding moves on average
    w = torch.ones(4000, dtype=torch.bfloat16, requires_grad=True)
    opt = ft.SGD([w], lr=1e-3, stochastic_rounding=True, seed=0)
    rne = torch.ones(4000, dtype=torch.bfloat16)
    for _ in range(20):
        w.grad = torch.ones(4000, dtype=torch.bfloat16)
        opt.step()
        rne = (rne.float() - 1e-3).to(torch.bfloat16)
    assert torch.equal(rne, torch.ones(4000, dtype=torch.bfloat16))
    assert abs(w.detach().double().mean().item() - 0.98) < 1e-3


def test_mixed_state_dict_round_trip_keeps_master_and_fp32_states():
    p0, grads = _half_setup(torch.bfloat16)
    w = p0.clone().requires_grad_()
    opt = ft.AdamW([w], lr=1e-2, master_weights=True)
    for g in grads[:4]:
        w.grad = g.clone()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())   # torch's state_dict holds references to the live states
    assert sd["state"][0]["master_param"].dtype == torch.float32 and sd["state"][0]["exp_avg"].dtype == torch.float32
    w2 = w.detach().clone().requires_grad_()
    opt2 = ft.AdamW([w2], lr=1e-2, master_weights=True)
    opt2.load_state_dict(sd)
    for g in grads[4:]:
        for p, o in ((w, opt), (w2, opt2)):
            p.grad = g.clone()
            o.step()
    assert torch.equal(w.detach(), w2.detach())
    assert torch.equal(opt.state[w]["master_param"], opt2.state[w2]["master_param"])


def test_skip_and_clipping_with_bf16():
    p0, grads = _half_setup(torch.bfloat16)
    w = p0.clone().requires_grad_()
    opt = ft.Adam([w], lr=1e-2, master_weights=True, max_grad_norm=0.5, grad_scale=2.0)
    w.grad = grads[0].clone()
    opt.step()
    st = opt.state[w]
    held = (w, st["master_param"], st["exp_avg"], st["exp_avg_sq"], st["step"])
    before = [t.detach().clone() for t in held]
    g = grads[1].clone()
    g[5] = float("nan")
    w.grad = g
    opt.step()
    assert opt.last_step_skipped
    for t0, t in zip(before, held):
        assert torch.equal(t0, t.detach())


def _digits_accuracy(dtype, **options):
    from sklearn.datasets import load_digits
    d = load_digits()
    X = torch.tensor((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6), dtype=torch.float32)
    Y = torch.tensor(d.target)
    perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(dtype)
    opt = ft.Adam(model.parameters(), lr=3e-3, **options)
    Xd = X.to(dtype)
    for epoch in range(12):
        order = torch.randperm(len(tr), generator=torch.Generator().manual_seed(epoch))
        for k in range(0, len(tr), 64):
            idx = tr[order[k:k + 64]]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xd[idx]).float(), Y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return (model(Xd[te]).float().argmax(1) == Y[te]).float().mean().item()


def test_bf16_training_on_digits_within_one_percent_of_fp32():
    pytest.importorskip("sklearn")
    fp32 = _digits_accuracy(torch.float32)
    master = _digits_accuracy(torch.bfloat16, master_weights=True)
    sr = _digits_accuracy(torch.bfloat16, stochastic_rounding=True, seed=1)
    assert fp32 > 0.93
    assert master >= fp32 - 0.01, (fp32, master)
    assert sr >= fp32 - 0.01, (fp32, sr)


@pytest.mark.gpu
def test_bf16_on_gpu_tensors():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    p0, grads = _half_setup(torch.bfloat16)
    out = {}
    for dev in ("cpu", "cuda"):
        for mode in ("master_weights", "stochastic_rounding"):
            w = p0.clone().to(dev).requires_grad_()
            opt = ft.Adam([w], lr=1e-2, **{mode: True})
            for g in grads:
                w.grad = g.to(dev)
                opt.step()
            out[dev, mode] = w.detach().cpu()
    for mode in ("master_weights", "stochastic_rounding"):
        diff = (out["cpu", mode].float() - out["cuda", mode].float()).abs().max().item()
        assert diff <= 2 ** -6, (mode, diff)  # at most a rounding step apart (fma contraction on the GPU)


@pytest.mark.parametrize("name", [n for n, spec in SPECS.items() if not spec.half_params])
def test_matrix_algorithms_refuse_16_bit_params(name):
    w = torch.zeros(4, 4, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(TypeError, match="float32/float64 params only"):
        getattr(ft, name)([w], master_weights=True)


@pytest.mark.parametrize("name", [n for n in CASES if SPECS[n].rule({**SPECS[n].constants, **SPECS[n].defaults})
                                  in rules.PASSES])
def test_multi_pass_algorithms_with_16_bit_params_follow_float32(name):
    """Lamb, Lars, Mars on bfloat16 params with master weights, every option of their last test case (caution
    included): the master copies equal the float32 optimizer fed the same 16-bit grads, over several
    params (each its own trust ratio / clip) of different shapes."""
    import fastlr
    hp = CASES[name][-1]
    g = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (9,), (3, 4, 2)]
    p0 = [torch.randn(s, generator=g).to(torch.bfloat16) for s in shapes]
    ws = [p.clone().requires_grad_() for p in p0]
    refs = [p.float().clone().requires_grad_() for p in p0]
    opt = optimizer(ft, name)(ws, master_weights=True, **hp)
    ref_opt = optimizer(fastlr, name)([r.detach().numpy() for r in refs], **hp)
    for _ in range(6):
        grads = [torch.randn(s, generator=g).to(torch.bfloat16) for s in shapes]
        for w, gr in zip(ws, grads):
            w.grad = gr
        opt.step()
        ref_opt.step([gr.float().numpy() for gr in grads])
    for w, r in zip(ws, refs):
        master = opt.state[w]["master_param"]
        np.testing.assert_allclose(master.numpy(), r.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert torch.equal(w.detach(), master.to(torch.bfloat16))
