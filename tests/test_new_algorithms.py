"""What the algorithms of issue 14 add beyond the registry-driven tests: the functional updates, the
schedule-free train()/eval() switch (against the schedulefree package, NumPy and torch front ends, 16-bit
params) and state dicts taken in eval mode."""
import copy

import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer
from conftest import make_data
from fastlr.specs import COPY_OF_PARAM, SPECS
from reference import assert_close, schedulefree_x

NEW = ["ASGD", "Rprop", "Adopt", "Adan", "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]
SCHEDULE_FREE = [n for n in NEW if SPECS[n].modes == "schedulefree"]


@pytest.mark.parametrize("name", NEW + ["Lamb", "Lars", "Mars"])
def test_functional_equals_the_optimizer(name):
    hp = CASES[name][-1]
    spec = SPECS[name]
    p, grads = make_data(12, 64, np.float32, seed=2)
    q = p.copy()
    opt = optimizer(fastlr, name)(p, **hp)
    for g in grads:
        opt.step(g)
    update = getattr(fastlr.functional, name.lower() + "_")
    inits = spec.states({**spec.defaults, **hp})
    states = [q.copy() if init == COPY_OF_PARAM else np.full_like(q, init) for _, init in inits]
    carried = {}
    for t, g in enumerate(grads, 1):
        out = update(q, g, *states, step=t, **hp, **carried)
        carried = {k: v for k, v in out.items() if k != "step" and k not in hp}
    np.testing.assert_array_equal(q, p)
    for (n, _), s in zip(inits, states):
        np.testing.assert_array_equal(s, opt.state[0][n], err_msg=n)


@pytest.mark.parametrize("name", [n for n, spec in SPECS.items() if spec.group_updates])
def test_group_state_written_by_the_step_is_kept_and_edits_are_seen(name):
    """The per-group state a step writes (schedule-free's k, weight_sum; the group step) keeps the group as
    resolved; the same optimizer forgetting everything before each step, and both seeing an lr edit, agree
    bit for bit."""
    hp = CASES[name][-1]
    p, grads = make_data(10, 40, np.float64, seed=6)
    q = p.copy()
    opts = [optimizer(fastlr, name)(x, **hp) for x in (p, q)]
    for opt in opts:
        if hasattr(opt, "train"):
            opt.train()
    for t, g in enumerate(grads):
        if t == 4:
            for opt in opts:
                opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5
        opts[1]._engine.reset()   # nothing remembered: everything resolved and checked again
        for opt in opts:
            opt.step(g)
    np.testing.assert_array_equal(p, q)
    assert str(opts[0].param_groups) == str(opts[1].param_groups)


def test_functional_lamb_clips_by_the_global_norm_it_is_given():
    """lamb_ over two arrays with grad_norm= (their global norm) equals fastlr.Lamb over both; without it each
    array is clipped by its own gradient's norm; a bad grad_norm changes nothing."""
    rng = np.random.default_rng(5)
    ps = [rng.standard_normal(n) for n in (40, 24)]
    qs = [p.copy() for p in ps]
    opt = fastlr.Lamb(ps, lr=1e-2)
    states = [[np.zeros_like(q), np.zeros_like(q)] for q in qs]
    carried = [{}, {}]
    for t in range(1, 6):
        grads = [rng.standard_normal(p.shape) * 2 for p in ps]
        opt.step(grads)
        norm = float(np.sqrt(sum(g @ g for g in grads)))
        for j, (q, g) in enumerate(zip(qs, grads)):
            out = fastlr.functional.lamb_(q, g, *states[j], step=t, lr=1e-2, grad_norm=norm, **carried[j])
            carried[j] = {k: v for k, v in out.items() if k != "step"}
    for p, q in zip(ps, qs):   # (the norms are float64 sums in other orders)
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)
    alone, own = qs[0].copy(), [np.zeros_like(qs[0]), np.zeros_like(qs[0])]
    g = rng.standard_normal(alone.shape) * 2
    by_norm, by_own = alone.copy(), [s.copy() for s in own]
    fastlr.functional.lamb_(alone, g, *own, step=1, grad_norm=float(np.linalg.norm(g)))
    fastlr.functional.lamb_(by_norm, g, *by_own, step=1)
    np.testing.assert_array_equal(alone, by_norm)
    before = [alone.copy(), *[s.copy() for s in own]]
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="grad_norm"):
            fastlr.functional.lamb_(alone, g, *own, step=2, grad_norm=bad)
    with pytest.raises(ValueError, match="grad_norm"):
        fastlr.functional.lamb_(alone, g, *own, step=2, grad_norm=1.0, max_grad_norm=None)
    for x, y in zip(before, [alone, *own]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_eval_gives_the_average_and_train_gives_it_back(name):
    p, grads = make_data(20, 33, np.float64, seed=4)
    opt = fastlr.__dict__[name](p, **CASES[name][-1])
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step(grads[0])
    assert not opt.state and opt.param_groups[0]["k"] == 0
    opt.train()
    for g in grads:
        opt.step(g)
    y, z = p.copy(), opt.state[0]["z"].copy()
    group = opt.param_groups[0]
    beta = group["betas"][0] if "betas" in group else group["momentum"]
    opt.eval()
    assert not group["train_mode"]
    assert_close(p, schedulefree_x(y, z, beta), np.float64)
    opt.eval()                       # already in eval mode: nothing moves
    x = p.copy()
    with pytest.raises(RuntimeError, match="train"):
        opt.step(grads[0])
    np.testing.assert_array_equal(p, x)
    opt.train()
    assert_close(p, y, np.float64)


torch_cases = [(n, hp) for n in SCHEDULE_FREE for hp in (CASES[n][0], CASES[n][-1])]


@pytest.mark.parametrize("name,hp", torch_cases, ids=[f"{n}-{i % 2}" for i, (n, _) in enumerate(torch_cases)])
def test_train_eval_cycles_and_eval_checkpoints_match_schedulefree(name, hp):
    """fastlr.torch vs the schedulefree package: training with eval() phases in between, a checkpoint taken in
    eval mode loaded into the other implementation, both ways."""
    torch = pytest.importorskip("torch")
    import fastlr.torch as ft
    from refimpls import reference_optimizer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    twins = [copy.deepcopy(model), copy.deepcopy(model)]
    opts = [reference_optimizer(name, twins[0].parameters(), **hp), getattr(ft, name)(twins[1].parameters(), **hp)]
    opts[1].train()
    X, Y = torch.randn(32, 5, generator=torch.Generator().manual_seed(1)), torch.randn(32, 2)

    def steps(n):
        for m, o in zip(twins, opts):
            for _ in range(n):
                o.zero_grad()
                torch.nn.functional.mse_loss(m(X), Y).backward()
                o.step()

    def same():
        for a, b in zip(twins[0].parameters(), twins[1].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)

    steps(6)
    for o in opts:
        o.eval()
    same()
    # checkpoints in eval mode, as the package requires (the params then hold x)
    saved = [(copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict())) for m, o in zip(twins, opts)]
    for o in opts:
        o.train()
    steps(4)
    same()
    # each checkpoint resumed by the other implementation: fastlr's by the package, the package's by fastlr
    resumed = [copy.deepcopy(model) for _ in range(2)]
    for m, (msd, _) in zip(resumed, saved[::-1]):
        m.load_state_dict(msd)
    others = [reference_optimizer(name, resumed[0].parameters(), **hp),
              getattr(ft, name)(resumed[1].parameters(), **hp)]
    for o, (_, osd) in zip(others, saved[::-1]):
        o.load_state_dict(osd)
        assert not o.param_groups[0]["train_mode"] and o.param_groups[0]["k"] == 6
        o.train()
    twins, opts = resumed, others
    steps(4)
    for a, b in zip(resumed[1].parameters(), twins[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_master_weights_lerp_through_the_master_copy():
    torch = pytest.importorskip("torch")
    import fastlr.torch as ft
    w = torch.randn(300, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).requires_grad_()
    ref = w.detach().float().clone().requires_grad_()
    opt = ft.AdamWScheduleFree([w], master_weights=True, lr=1e-2)
    ref_opt = fastlr.torch.AdamWScheduleFree([ref], lr=1e-2)
    for o in (opt, ref_opt):
        o.train()
    for k in range(5):
        g = torch.randn(300, generator=torch.Generator().manual_seed(10 + k))
        w.grad, ref.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
        opt.step()
        ref_opt.step()
    opt.eval()
    ref_opt.eval()
    master = opt.state[w]["master_param"]
    torch.testing.assert_close(master, ref.detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(w.detach(), master.to(torch.bfloat16))


SHAPES = [(6, 5), (5,), (3, 4, 2), (1,)]
MULTI = [(n, CASES[n][-1]) for n in NEW + ["Lamb", "Lars", "Mars"]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,hp", MULTI, ids=[n for n, _ in MULTI])
def test_many_tensors_of_many_shapes_match_the_reference_implementation(name, hp, dtype):
    """One segment-table call over tensors of several shapes (per-tensor norms, Mars' 2-D path), NumPy and
    torch CPU arrays, against the reference implementation over 30 steps."""
    torch = pytest.importorskip("torch")
    import fastlr.torch as ft
    from refimpls import reference_optimizer
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(s, generator=gen, dtype=tdtype) for s in SHAPES]
    ref, ours, arrays = ([p.clone().requires_grad_() for p in init] for _ in range(3))
    arrays = [p.detach().numpy().copy() for p in init]
    opts = [reference_optimizer(name, ref, **hp), optimizer(ft, name)(ours, **hp),
            optimizer(fastlr, name)(arrays, **hp)]
    for _ in range(30):
        grads = [torch.randn(s, generator=gen, dtype=tdtype) for s in SHAPES]
        for a, b, g in zip(ref, ours, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opts[0].step()
        opts[1].step()
        opts[2].step([g.numpy() for g in grads])
    for a, b, c in zip(ref, ours, arrays):
        assert_close(b.detach().numpy(), a.detach().numpy(), getattr(np, dtype))
        assert_close(c, a.detach().numpy(), getattr(np, dtype))


BAD = {
    "ASGD": ("lambd", -1.0, "lambd: expected a finite value >= 0"),
    "Rprop": ("etas", (1.5, 0.5), "etas: expected 0 < etaminus < 1 < etaplus"),
    "Adopt": ("clip_exp", float("nan"), "clip_exp: expected a finite number, got nan"),
    "Adan": ("betas", (0.9, 0.9), r"betas: expected 3 values \(beta1, beta2, beta3\)"),
    "SGDScheduleFree": ("momentum", 1.0, r"momentum: expected a value in \(0, 1\)"),
    "AdamWScheduleFree": ("warmup_steps", -1, "warmup_steps: expected a whole number"),
    "RAdamScheduleFree": ("silent_sgd_phase", 1, "silent_sgd_phase: expected True or False"),
    "Lamb": ("max_grad_norm", -1.0, "max_grad_norm: expected a finite value > 0"),
    "Lars": ("trust_coeff", -1.0, "trust_coeff: expected a finite value >= 0"),
    "Mars": ("mars_type", "sgd", "mars_type: expected one of"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_changes_nothing_group_schedules_included(name):
    key, value, match = BAD[name]
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(fastlr, name)(np.zeros((3, 4), np.float32), **{key: value})
    a, b = np.ones((3, 4), np.float32), np.ones(5, np.float32)
    opt = optimizer(fastlr, name)([a, b])
    for _ in range(2):
        opt.step([np.full_like(a, 0.5), np.full_like(b, -0.5)])
    before = copy.deepcopy((a, b, opt.state, [{k: v for k, v in g.items() if k != "params"}
                                              for g in opt.param_groups]))

    def unchanged(edited=()):
        now = (a, b, opt.state, [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
        np.testing.assert_array_equal(now[0], before[0])
        np.testing.assert_array_equal(now[1], before[1])
        for g_now, g_before in zip(now[3], before[3]):   # per-group schedules (k, weight_sum, step) kept
            assert {k: v for k, v in g_now.items() if k not in edited} == \
                {k: v for k, v in g_before.items() if k not in edited}
        for i, st in before[2].items():
            for k, v in st.items():
                np.testing.assert_array_equal(now[2][i][k], v)
    with pytest.raises(ValueError, match=r"grads\[1\]: expected shape"):
        opt.step([np.ones_like(a), np.ones(6, np.float32)])
    unchanged()
    opt.param_groups[0][key] = value
    with pytest.raises((ValueError, TypeError), match=match):
        opt.step([np.ones_like(a), np.ones_like(b)])
    unchanged(edited=(key,))


def _bits(a):
    """The bit patterns of an array, every NaN as one pattern (torch and NumPy do not promise NaN payloads)."""
    u = a.view(np.uint32 if a.dtype == np.float32 else np.uint64).copy()
    u[np.isnan(a)] = 1
    return u


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_rprop_is_torch_bit_for_bit_on_zeros_infs_nans_and_subnormals(dtype, maximize):
    """One Rprop step from every combination of special values of (p, g, prev, step_size): params and both
    states equal torch.optim.Rprop's bit for bit, signed zeros included (torch.sign(NaN) is 0 there)."""
    torch = pytest.importorskip("torch")
    values = [0.0, -0.0, 1e-3, -1e-3, 1.5, -0.3, np.inf, -np.inf, np.nan, 1e-40, -3e38, 1e-6, 50.0]
    grid = np.array(np.meshgrid(values, values, values, values, indexing="ij"), dtype).reshape(4, -1)
    p0, g, prev, size = (np.ascontiguousarray(x) for x in grid)
    hp = dict(lr=1e-2, etas=(0.3, 1.5), step_sizes=(1e-6, 50.0), maximize=maximize)
    p = p0.copy()
    ours = fastlr.Rprop(p, **hp)
    ours.step(np.zeros_like(p))          # creates the states, then set them as drawn
    t = torch.tensor(p0, requires_grad=True)
    ref = torch.optim.Rprop([t], **hp, foreach=False)
    t.grad = torch.zeros_like(t)
    ref.step()
    with torch.no_grad():
        t.copy_(torch.from_numpy(p0))
    p[...] = p0
    for name, value in (("prev", prev), ("step_size", size)):
        ours.state[0][name][...] = value
        ref.state[t][name].copy_(torch.from_numpy(value))
    ours.step(g)
    t.grad = torch.from_numpy(g.copy())
    ref.step()
    np.testing.assert_array_equal(_bits(p), _bits(t.detach().numpy()))
    for name in ("prev", "step_size"):
        np.testing.assert_array_equal(_bits(ours.state[0][name]), _bits(ref.state[t][name].numpy()), err_msg=name)


@pytest.mark.parametrize("name", [n for n, spec in SPECS.items() if "max_lr_snapshot" in spec.group_state])
def test_schedule_lr_snapshots_its_initial_value(name):
    """timm's max_lr is the lr when the group was made: a schedule's value at step 0 (a constant schedule
    steps exactly as the constant)."""
    p, grads = make_data(6, 30, np.float64, seed=8)
    q = p.copy()
    hp = {**CASES[name][-1], "decoupled": True, "decoupled_decay": True, "corrected_weight_decay": True,
          "weight_decay": 0.1}
    hp = {k: v for k, v in hp.items() if k in SPECS[name].defaults and k != "lr"}
    a = optimizer(fastlr, name)(p, lr=0.01, **hp)
    b = optimizer(fastlr, name)(q, lr=fastlr.schedules.constant_schedule(0.01), **hp)
    for g in grads:
        a.step(g)
        b.step(g)
    np.testing.assert_array_equal(p, q)
    assert b.param_groups[0]["max_lr_snapshot"] == 0.01


@pytest.mark.parametrize("name,shape", [("Muon", (8, 6)), ("Adafactor", (8, 6)), ("Adafactor", (7,)),
                                        ("Adafactor", (3, 4, 5))])
def test_functional_matrix_algorithms_equal_the_optimizer(name, shape):
    """muon_ and adafactor_ (a step of the optimizer over the caller's arrays) equal the class step by step,
    states included; wrong state counts and bad input change nothing."""
    rng = np.random.default_rng(9)
    p = rng.standard_normal(shape)
    q = p.copy()
    grads = [rng.standard_normal(shape) for _ in range(6)]
    opt = getattr(fastlr, name)(p, weight_decay=0.01)
    update = getattr(fastlr.functional, name.lower() + "_")
    names = [n for n, _ in SPECS[name].states(opt.param_groups[0])]
    if SPECS[name].aux_states is not None:
        names += [n for n, _ in SPECS[name].aux_states(shape)]
    opt.step(grads[0])
    states = [np.zeros(opt.state[0][n].shape) for n in names]
    update(q, grads[0], *states, step=1, weight_decay=0.01)
    for t, g in enumerate(grads[1:], 2):
        opt.step(g)
        assert update(q, g, *states, step=t, weight_decay=0.01) == {"step": t}
        np.testing.assert_array_equal(q, p)
        for n, s in zip(names, states):
            np.testing.assert_array_equal(s, opt.state[0][n], err_msg=n)
    before = [q.copy(), *[s.copy() for s in states]]
    with pytest.raises(TypeError, match="expected state arrays"):
        update(q, grads[0], *states[:-1], step=7)
    with pytest.raises(ValueError, match="step"):
        update(q, grads[0], *states, step=0)
    with pytest.raises((ValueError, TypeError)):
        update(q, np.ones(tuple(n + 1 for n in shape)), *states, step=7)
    for x, y in zip(before, [q, *states]):
        np.testing.assert_array_equal(x, y)


def test_lamb_clip_value_then_global_norm_as_clip_grad_value_then_timm():
    """fastlr's clip_value is torch's clip_grad_value_ before the step: timm's global norm is then taken over
    the clamped grads, and the clamp bounds scale with the clip."""
    torch = pytest.importorskip("torch")
    from refimpls import reference_optimizer
    rng = np.random.default_rng(11)
    shapes = [(6, 5), (7,)]
    ps = [rng.standard_normal(s) for s in shapes]
    qs = [torch.tensor(p.copy(), requires_grad=True) for p in ps]
    ours = fastlr.Lamb(ps, lr=1e-2, clip_value=0.7)
    ref = reference_optimizer("Lamb", qs, lr=1e-2)
    for _ in range(25):
        grads = [rng.standard_normal(s) * 3 for s in shapes]
        ours.step(grads)
        for q, g in zip(qs, grads):
            q.grad = torch.tensor(np.clip(g, -0.7, 0.7))
        ref.step()
    for p, q in zip(ps, qs):
        assert_close(p, q.detach().numpy(), np.float64)


def test_functional_matrix_algorithms_name_their_own_arguments():
    with pytest.raises(ValueError, match=r"^param: Muon updates 2-D params only"):
        fastlr.functional.muon_(np.zeros(5), np.zeros(5), np.zeros(5), step=1)
    with pytest.raises(TypeError, match=r"^momentum_buffer: expected dtype float64"):
        fastlr.functional.muon_(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 4), np.float32), step=1)


def test_functional_low_bit_states_from_new_states():
    """The Quantized states fastlr.lowbit.new_states makes go straight into the functional update."""
    from fastlr import lowbit
    n = 8192
    p = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    q = p.copy()
    opt = fastlr.Adopt(p, state_precision="8bit")
    states = lowbit.new_states("adopt", q, "8bit")
    for t in range(1, 5):
        g = np.random.default_rng(t).standard_normal(n).astype(np.float32)
        opt.step(g)
        fastlr.functional.adopt_(q, g, *states, step=t, state_precision="8bit")
    np.testing.assert_array_equal(p, q)
