"""Hostile use (issue 12): every bad input is a clear ValueError/TypeError naming the argument, raised
before any buffer, state or count changes; threads, state dicts and non-finite gradients behave as
docs/RELIABILITY.md promises. The state machine at the end interleaves all of it."""
import copy
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import fastlr
import fastlr.functional as F

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix, on purpose
import fastlr.torch as ft  # noqa: E402


# ---------------------------------------------------------------- snapshots
def _value(v):
    """A comparable, bit-exact picture of a value: arrays as (dtype, shape, bytes)."""
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, torch.Tensor):
        t = v.detach()
        if t.device.type == "meta":
            return ("tensor", "meta", tuple(v.shape), id(v))
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        return ("tensor", str(v.dtype), tuple(v.shape), t.cpu().numpy().tobytes())
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(map(_value, v)))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((repr(k), _value(x)) for k, x in v.items())))
    return ("other", repr(v))


def snapshot(opt):
    """Everything a step, an edit or a load could change: params, groups, states, counts."""
    params = [p for g in opt.param_groups for p in g.get("params", [])]
    where = {id(p): i for i, p in enumerate(params)}
    groups = [{k: _value(v) for k, v in g.items()} for g in opt.param_groups]
    state = {where.get(id(k), repr(k)) if isinstance(k, torch.Tensor) else k: _value(s)
             for k, s in opt.state.items()} if isinstance(opt.state, dict) else _value(opt.state)
    counts = {n: getattr(opt, n, None) for n in ("_step_count", "skipped_steps", "last_step_skipped")}
    return groups, state, counts


def rejected(opt, call, exc, match):
    """call() raises exc matching `match` and leaves every buffer, state and count of opt bit-identical."""
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        call()
    assert snapshot(opt) == before


def trained(cls=fastlr.Adam, dtypes=(np.float32, np.float64), **kw):
    """An optimizer over params of each dtype (in one group: one unit per dtype), two steps in."""
    params = [np.linspace(-1, 1, 6 + i).astype(d) for i, d in enumerate(dtypes)]
    opt = cls(params, **kw)
    for _ in range(2):
        opt.step(grads_for(params))
    return opt, params


def grads_for(params, scale=1.0):
    return [np.full_like(p, 0.5 * scale) for p in params]


def torch_trained(cls=None, n_groups=2, **kw):
    """A fastlr.torch optimizer over a float32 and a float64 param (one group each), one step in."""
    ps = [torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=d)) for d in (torch.float32, torch.float64)]
    groups = [{"params": [p]} for p in ps] if n_groups == 2 else [{"params": ps}]
    opt = (cls or ft.Adam)(groups, **kw)
    torch_step(opt, ps)
    return opt, ps


def torch_step(opt, ps):
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    opt.step()


# ---------------------------------------------------------------- hyperparameters
HUGE = 10**400   # an int no float can hold


@pytest.mark.parametrize("name,value,match", [
    ("lr", HUGE, r"lr: expected a real number representable as a float"),
    ("lr", np.array([0.5, 100.0]), r"lr: expected a real number, got an array of shape \(2,\)"),
    ("lr", torch.tensor(0.1, device="meta"), r"lr: expected a real number"),
    ("eps", HUGE, r"eps: expected a real number representable"),
    ("weight_decay", np.array([0.0, 1.0]), r"weight_decay: expected a real number, got an array"),
    ("betas", np.float32(0.5), r"betas: expected a pair"),
    ("betas", (0.9, np.array([0.9, 0.99])), r"betas\[1\]: expected a real number, got an array"),
    ("betas", (torch.tensor(0.9), torch.tensor([0.9, 0.1])), r"betas\[1\]: expected a real number, got an array"),
])
def test_bad_hyperparameter_at_construction_and_between_steps(name, value, match):
    with pytest.raises(ValueError, match=match):
        fastlr.Adam(np.zeros(3), **{name: value})
    opt, params = trained()
    opt.param_groups[0][name] = value
    rejected(opt, lambda: opt.step(grads_for(params)), ValueError, match)
    if name != "lr" or not isinstance(value, torch.Tensor):   # torch's constructor checks lr itself
        with pytest.raises(ValueError, match=match):
            ft.Adam([torch.nn.Parameter(torch.zeros(3))], **{name: value})


def test_schedule_returning_a_huge_int_changes_nothing():
    opt, params = trained()
    opt.param_groups[0]["lr"] = lambda step: HUGE
    rejected(opt, lambda: opt.step(grads_for(params)), ValueError, r"lr: expected a real number representable")


def test_torch_betas_edited_to_a_numpy_scalar_between_steps():
    opt, ps = torch_trained()
    opt.param_groups[1]["betas"] = np.float32(0.5)
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    rejected(opt, opt.step, ValueError, r"param_groups\[1\]: betas: expected a pair")


@pytest.mark.parametrize("lr", [np.float32(0.25), np.array([0.25]), torch.tensor(0.25), torch.tensor([0.25])])
def test_one_element_hyperparameters_equal_the_float(lr):
    a, b = np.ones(4), np.ones(4)
    fastlr.Adam(a, lr=lr).step(np.full(4, 0.5))
    fastlr.Adam(b, lr=0.25).step(np.full(4, 0.5))
    assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- array kinds
class _Sub(np.ndarray):
    pass


BAD_KINDS = [
    (lambda: np.asmatrix(np.ones((1, 6))), r"got numpy\.matrix"),
    (lambda: np.ma.MaskedArray(np.ones(6), mask=[0, 1, 0, 0, 0, 0]), r"MaskedArray \(its mask would be ignored\)"),
    (lambda: np.ones(6).view(_Sub), r"expected a plain NumPy array"),
    (lambda: torch.ones(6, dtype=torch.float64, device="meta"), r"tensors on device 'meta' are not supported"),
    (lambda: torch.ones(6, dtype=torch.float64).to_sparse(), r"sparse/non-strided tensors"),
]


@pytest.mark.parametrize("make,match", BAD_KINDS)
def test_unsupported_array_kinds_are_rejected_at_construction(make, match):
    with pytest.raises(TypeError, match=r"params\[1\]: .*" + match):
        fastlr.Adam([np.ones(6), make()])


@pytest.mark.parametrize("make,match", BAD_KINDS)
def test_unsupported_grad_kinds_change_nothing(make, match):
    opt, params = trained(dtypes=(np.float64, np.float64))
    bad = make()
    rejected(opt, lambda: opt.step([np.ones(6), bad]), TypeError, r"grads\[1\]: .*" + match)


@pytest.mark.parametrize("make,match", BAD_KINDS[:3])
def test_unsupported_kinds_put_in_params_or_state_change_nothing(make, match):
    opt, params = trained(dtypes=(np.float64, np.float64))
    first = opt.param_groups[0]["params"][1]
    opt.param_groups[0]["params"][1] = make()
    rejected(opt, lambda: opt.step(grads_for(params)), TypeError, r"params\[1\]: .*" + match)
    opt.param_groups[0]["params"][1] = first
    opt.state[1]["exp_avg"] = make()
    rejected(opt, lambda: opt.step(grads_for(params)), TypeError, r"state\[1\]\['exp_avg'\]: .*" + match)


def test_torch_meta_params_are_rejected_by_the_torch_front():
    p = torch.nn.Parameter(torch.zeros(3))
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\]: tensors on device 'meta'"):
        ft.Adam([{"params": [p]}, {"params": [meta]}])


def test_memmap_grads_and_params_work_as_plain_arrays(tmp_path):
    path = tmp_path / "g.bin"
    np.arange(8, dtype=np.float64).tofile(path)
    grad = np.memmap(path, np.float64, mode="r", shape=(6,), offset=16)
    table = np.memmap(tmp_path / "p.bin", np.float64, mode="w+", shape=(6,))
    table[:] = 1.0
    plain = np.ones(6)
    for p in (table, plain):
        opt = fastlr.Adam([np.ones(3), p], lr=0.1)
        opt.step([np.ones(3), grad])
        opt.step([np.ones(3), np.asarray(grad)])
    assert np.asarray(table).tobytes() == plain.tobytes()


def test_memmap_grad_that_is_not_aligned_changes_nothing(tmp_path):
    path = tmp_path / "g.bin"
    np.zeros(64, np.uint8).tofile(path)
    grad = np.memmap(path, np.float64, mode="r", shape=(6,), offset=1)
    opt, params = trained(dtypes=(np.float64, np.float64))
    rejected(opt, lambda: opt.step([np.ones(6), grad]), ValueError, r"grads\[1\]: the array's memory is not aligned")


def test_read_only_memmap_param_is_rejected(tmp_path):
    path = tmp_path / "p.bin"
    np.zeros(6).tofile(path)
    with pytest.raises(ValueError, match=r"params\[0\]: the array is read-only"):
        fastlr.Adam(np.memmap(path, np.float64, mode="r", shape=(6,)))


# ---------------------------------------------------------------- dtypes changed in place
def test_param_dtype_assigned_in_place_changes_nothing_and_writes_nothing_past_it():
    """`p.dtype = np.float32` on a validated float64 param whose grad and states were retyped too: the
    float64 kernels would write 64 bytes past each array. The arrays are views of buffers twice their
    size, so a write past them shows in the second halves."""
    bufs = {n: np.zeros(16) for n in ("p", "g", "exp_avg", "exp_avg_sq")}
    p = bufs["p"][:8]
    opt = fastlr.Adam(p, lr=0.1)
    opt.step(bufs["g"][:8] + 1)
    for n in ("exp_avg", "exp_avg_sq"):
        bufs[n][:8] = opt.state[0][n]
        opt.state[0][n] = bufs[n][:8]
    views = {n: b[:8] for n, b in bufs.items()}
    for v in views.values():
        v.dtype = np.float32
    opt.state[0].update({n: views[n] for n in ("exp_avg", "exp_avg_sq")})
    opt.param_groups[0]["params"][0].dtype = np.float32
    tails = {n: b[8:].copy() for n, b in bufs.items()}
    rejected(opt, lambda: opt.step(views["g"]), TypeError,
             r"params\[0\]: changed from float64 to float32 after its states were made")
    assert all(bufs[n][8:].tobytes() == tails[n].tobytes() for n in bufs)
    del opt.state[0]   # the documented way on: states made again in the new dtype
    opt.step(np.ones(16, np.float32))
    assert opt.state[0]["exp_avg"].dtype == np.float32


def test_param_dtype_changed_with_the_states_in_torch_is_rejected():
    opt, ps = torch_trained(n_groups=1)
    p = ps[0]
    p.data = p.data.double()
    for n in ("exp_avg", "exp_avg_sq"):
        opt.state[p][n] = opt.state[p][n].double()
    p.grad = torch.ones(5, dtype=torch.float64)
    ps[1].grad = torch.ones(5, dtype=torch.float64)
    rejected(opt, opt.step, TypeError, r"param_groups\[0\]\['params'\]\[0\]: changed from float32 to float64")


@pytest.mark.parametrize("new", [torch.float32, torch.float16])
def test_bfloat16_param_changed_in_place_is_rejected(new):
    """A master-weights bfloat16 param made float32 (the kernel would run over twice its elements: it
    crashed) or float16 (decoded as bfloat16: wrong values)."""
    p = torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))
    opt = ft.Adam([p], master_weights=True)
    p.grad = torch.ones(64, dtype=torch.bfloat16)
    opt.step()
    big = {n: torch.zeros(128) for n in ("exp_avg", "exp_avg_sq", "master_param")}   # room to see overruns
    for n, b in big.items():
        b[:64] = opt.state[p][n]
        opt.state[p][n] = b[:64]
    p.data = p.data.to(new)
    p.grad = torch.ones(64, dtype=new)
    tails = {n: b[64:].clone() for n, b in big.items()}
    rejected(opt, opt.step, TypeError, r"changed from bfloat16 cpu to float")
    assert all(torch.equal(big[n][64:], tails[n]) for n in big)


# ---------------------------------------------------------------- overlapping params
@pytest.mark.parametrize("make,match", [
    (lambda w: [w, w[:]], r"params\[1\]: shares memory with params\[0\]"),
    (lambda w: [w[:5], w[3:]], r"params\[1\]: shares memory with params\[0\]"),
    (lambda w: [{"params": [w[:4]]}, {"params": [w[2:6]], "lr": 0.1}], r"params\[1\]: shares memory with params\[0\]"),
    (lambda w: [w, w], r"params\[1\]: this array appears in more than one place"),
])
def test_overlapping_params_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        fastlr.SGD(make(np.zeros(8)))


def test_overlap_made_later_changes_nothing():
    w = np.zeros(8)
    opt = fastlr.SGD([w[:4], np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[2\]: shares memory with params\[0\]"):
        opt.add_param_group({"params": [w[2:6]]})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["params"][1] = w[3:6]
    rejected(opt, lambda: opt.step([np.ones(4), np.ones(3)]), ValueError, r"shares memory")


def test_grad_that_is_another_param_or_a_state_is_rejected():
    """Each param's grad is the other param: the second would be updated with the first one's new values.
    A grad that is exactly its own param is harmless (each element read, then written) and allowed."""
    a, b = np.linspace(-1, 1, 64), np.linspace(1, 2, 64)
    opt = fastlr.SGD([a, b], lr=0.5, momentum=0.9)
    rejected(opt, lambda: opt.step([b, a]), ValueError, r"grads\[0\]: shares memory")
    opt.step([np.ones(64), np.ones(64)])
    aliased = [np.ones(64), opt.state[0]["momentum_buffer"]]
    for _ in range(2):   # a rejected call is not remembered as checked: the same arrays again fail again
        rejected(opt, lambda: opt.step(aliased), ValueError, r"grads\[1\]: shares memory")
    before = a.copy()
    opt.step([a, np.zeros(64)])            # its own param as its grad
    assert not np.array_equal(before, a)
    ta, tb = torch.linspace(-1, 1, 8, requires_grad=True), torch.linspace(1, 2, 8, requires_grad=True)
    topt = ft.SGD([ta, tb], lr=0.5)
    ta.grad, tb.grad = tb.detach(), ta.detach()
    rejected(topt, topt.step, ValueError, r"shares memory")


@pytest.mark.parametrize("groups", [1, 2])
def test_overlapping_torch_params_change_nothing(groups):
    w = torch.zeros(8)
    a, b = torch.nn.Parameter(w[:4]), torch.nn.Parameter(w[2:6])
    opt = ft.SGD([{"params": [a, b]}] if groups == 1 else [{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    rejected(opt, opt.step, ValueError, r"shares memory")


def test_functional_updates_reject_aliased_arrays_and_huge_steps():
    w, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    snap = [a.tobytes() for a in (w, m, v)]
    for call, match in [(lambda: F.adam_(w, np.ones(4), m, m, step=1), r"exp_avg_sq: shares memory with exp_avg"),
                        (lambda: F.adam_(w, w, m, v, step=1), r"grad: shares memory with param"),
                        (lambda: F.adam_(w, np.ones(4), m, v, step=HUGE), r"step: expected the 1-based step")]:
        with pytest.raises(ValueError, match=match):
            call()
    assert [a.tobytes() for a in (w, m, v)] == snap


# ---------------------------------------------------------------- state dicts (NumPy API)
BAD_STEPS = [math.nan, math.inf, "3", None, -5, 2.7, HUGE, np.array([1, 2]), True]


@pytest.mark.parametrize("step", BAD_STEPS, ids=repr)
def test_load_with_a_bad_step_changes_nothing(step):
    opt, params = trained()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.5      # would be loaded first if loading were not transactional
    sd["state"][1]["step"] = step
    rejected(opt, lambda: opt.load_state_dict(sd), ValueError, r"state_dict: state\[1\]\['step'\]: expected a step")


@pytest.mark.parametrize("edit,exc,match", [
    (lambda sd: sd["state"][0]["exp_avg"].fill(np.nan), ValueError, r"\['exp_avg'\]: holds non-finite"),
    (lambda sd: sd["state"][0]["exp_avg_sq"].fill(-1), ValueError, r"\['exp_avg_sq'\]: holds negative"),
    (lambda sd: sd["param_groups"][0].pop("params"), ValueError, r"param_groups\[0\]: expected a dict with a 'params'"),
    (lambda sd: sd.update(state=[]), ValueError, r"state_dict: expected a dict with 'state'"),
    (lambda sd: sd.update(param_groups=3), ValueError, r"state_dict: expected a dict with 'state'"),
    (lambda sd: sd["param_groups"].__setitem__(0, [0, 1]), ValueError, r"param_groups\[0\]: expected a dict"),
    (lambda sd: sd["param_groups"][0].update(params=[[0], 1]), ValueError, r"expected a param id \(int\)"),
    (lambda sd: sd["param_groups"][0].update(params=[0, 0]), ValueError, r"param id 0 appears twice"),
    (lambda sd: sd["state"].__setitem__(0, [1]), ValueError, r"state\[0\]: expected a dict, got list"),
    (lambda sd: sd["state"].__setitem__(7, {}), ValueError, r"state for unknown param 7"),
    (lambda sd: sd["state"][0].update(exp_avg=[0.0] * 6), TypeError, r"state\[0\]\['exp_avg'\]: expected an array"),
    (lambda sd: sd.update(step_count=math.nan), ValueError, r"step_count: expected a step count"),
    (lambda sd: sd["param_groups"][0].update(betas=(0.9,)), ValueError, r"betas: expected a pair"),
    (lambda sd: sd["state"][1].pop("step"), ValueError, r"state\[1\] lacks \['step'\]"),
])
def test_malformed_state_dicts_change_nothing(edit, exc, match):
    opt, params = trained()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = 0.5
    edit(sd)
    rejected(opt, lambda: opt.load_state_dict(sd), exc, match)


@pytest.mark.parametrize("front", ["numpy", "torch"])
def test_state_dict_round_trip_after_amsgrad_is_switched_on(front):
    """The saved states lack max_exp_avg_sq until the next step makes it: loading them back works, and
    equals not saving at all."""
    runs = []
    for reload in (False, True):
        if front == "numpy":
            opt, params = trained()
        else:
            opt, params = torch_trained()
        opt.param_groups[0]["amsgrad"] = True
        if reload:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        if front == "numpy":
            opt.step(grads_for(params))
        else:
            torch_step(opt, params)
        runs.append(snapshot(opt))
    assert runs[0] == runs[1]


def test_row_wise_adagrad_load_is_transactional():
    opt = fastlr.RowWiseAdagrad([np.ones((4, 3)), np.ones((2, 3))])
    opt.step([np.ones((4, 3)), np.ones((2, 3))])
    sd = opt.state_dict()
    sd["state"][1]["step"] = -1
    rejected(opt, lambda: opt.load_state_dict(sd), ValueError, r"state\[1\]\['step'\]")


# ---------------------------------------------------------------- state dicts (fastlr.torch)
@pytest.mark.parametrize("step", [torch.tensor(math.nan), torch.tensor(-5.0), 2.7, "3", None, HUGE,
                                  torch.tensor([1.0, 2.0]), torch.tensor(1.0, device="meta")], ids=repr)
def test_torch_load_with_a_bad_step_changes_nothing(step):
    opt, ps = torch_trained()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = 0.5
    sd["state"][1]["step"] = step
    rejected(opt, lambda: opt.load_state_dict(sd), ValueError, r"state_dict: state\[1\]\['step'\]: expected a step")


@pytest.mark.parametrize("value,exc,match", [
    (np.zeros(5), TypeError, r"expected a tensor, got ndarray"),
    ([0.0] * 5, TypeError, r"expected a tensor, got list"),
    (torch.zeros(5, device="meta"), TypeError, r"expected a dense CPU or CUDA tensor"),
    (torch.zeros(5).to_sparse(), TypeError, r"expected a dense CPU or CUDA tensor"),
    (torch.zeros(5, dtype=torch.int64), TypeError, r"expected a floating-point tensor"),
    (torch.zeros(5, dtype=torch.complex64), TypeError, r"expected a floating-point tensor"),
    (torch.full((5,), 1e300, dtype=torch.float64), ValueError, r"non-finite values \(NaN or Inf\) as torch.float32"),
    (torch.full((5,), math.nan), ValueError, r"non-finite"),
])
def test_torch_load_with_a_bad_state_tensor_changes_nothing(value, exc, match):
    opt, ps = torch_trained()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = value    # the float32 param's
    rejected(opt, lambda: opt.load_state_dict(sd), exc, r"state\[0\]\['exp_avg'\]: .*" + match)


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd["param_groups"][1].update(params=[0]), r"param id 0 appears twice"),
    (lambda sd: sd["param_groups"][1].update(params=[[1]]), r"expected param ids \(ints\)"),
    (lambda sd: sd["param_groups"][0].pop("params"), r"expected a dict with a 'params' list"),
    (lambda sd: sd.update(state=[]), r"expected a dict with 'state'"),
    (lambda sd: sd.update(param_groups=3), r"expected a dict with 'state'"),
    (lambda sd: sd["state"].__setitem__(1, [1]), r"state\[1\]: expected a dict"),
    (lambda sd: sd["param_groups"][1].update(betas=(torch.tensor(0.9), torch.tensor([0.9, 0.1]))),
     r"betas\[1\]: expected a real number, got an array"),
])
def test_torch_malformed_state_dicts_change_nothing(edit, match):
    opt, ps = torch_trained()
    sd = copy.deepcopy(opt.state_dict())
    edit(sd)
    rejected(opt, lambda: opt.load_state_dict(sd), ValueError, match)


def test_torch_integer_step_tensor_loads_as_the_float_count():
    runs = []
    for step in (torch.tensor(3), torch.tensor(3.0)):
        opt, ps = torch_trained()
        sd = copy.deepcopy(opt.state_dict())
        for s in sd["state"].values():
            s["step"] = step.clone()
        opt.load_state_dict(sd)
        torch_step(opt, ps)
        runs.append(snapshot(opt))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- state edited between steps
BAD_EDITS = [
    (lambda st: st.update(step=math.nan), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.update(step=-1), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.update(step=2.5), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.update(step="x"), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.update(step=None), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.update(step=HUGE), ValueError, r"\['step'\]: expected a step count"),
    (lambda st: st.pop("step"), ValueError, r"\['step'\]: missing"),
]


@pytest.mark.parametrize("edit,exc,match", BAD_EDITS)
def test_step_count_edited_in_state_changes_nothing(edit, exc, match):
    """The float64 param's count is bad; the float32 param (another unit, launched first) must not move."""
    opt, params = trained()
    edit(opt.state[1])
    rejected(opt, lambda: opt.step(grads_for(params)), exc, r"state\[1\]" + match)
    rows = fastlr.Adam(np.zeros((4, 2)))
    rows.step_rows([1], np.ones((1, 2)))
    edit(rows.state[0])
    rejected(rows, lambda: rows.step_rows([2], np.ones((1, 2))), exc, r"state\[0\]" + match)


@pytest.mark.parametrize("edit,exc,match", [
    (lambda o: o.state.__setitem__(1, [1]), TypeError, r"state\[1\]: expected a dict of state entries"),
    (lambda o: setattr(o, "state", []), TypeError, r"state: expected a dict"),
    (lambda o: o.param_groups[0].pop("params"), TypeError, r"param_groups\[0\]: expected a dict with a 'params'"),
    (lambda o: o.state[1].update(mu_product="x"), ValueError, r"state\[1\]\['mu_product'\]: expected a real number"),
    (lambda o: o.state[1].update(mu_product=math.inf), ValueError, r"state\[1\]\['mu_product'\]: expected a finite"),
])
def test_state_layout_edited_between_steps_changes_nothing(edit, exc, match):
    opt, params = trained(fastlr.NAdam)
    edit(opt)
    rejected(opt, lambda: opt.step(grads_for(params)), exc, match)


def test_step_rows_state_edits_change_nothing():
    opt = fastlr.Adam(np.zeros((8, 4)))
    opt.step_rows([1, 2], np.ones((2, 4)))
    table = opt.param_groups[0]["params"][0]
    saved = dict(opt.state[0])
    for edit, match in [
        (lambda: opt.state[0].update(exp_avg=table), r"state\[0\]\['exp_avg'\]: shares memory with params\[0\]"),
        (lambda: opt.state[0].update(exp_avg=saved["exp_avg_sq"]), r"'exp_avg_sq'\]: shares memory with state"),
        (lambda: opt.state.__setitem__(0, [1]), r"state\[0\]: expected a dict"),
    ]:
        edit()
        rejected(opt, lambda: opt.step_rows([1, 3], np.ones((2, 4))), (TypeError, ValueError), match)
        opt.state[0] = dict(saved)
    rejected(opt, lambda: opt.step_rows(np.arange(8), table), ValueError, r"grad_rows: shares memory with params")


@pytest.mark.parametrize("edit,match", [
    (lambda st: st.update(step=torch.tensor(math.nan)), r"\['step'\]: expected a step count"),
    (lambda st: st.update(step=torch.tensor(-3.0)), r"\['step'\]: expected a step count"),
    (lambda st: st.pop("step"), r"\['step'\]: missing"),
])
def test_torch_step_count_edited_in_state_changes_nothing(edit, match):
    opt, ps = torch_trained()
    edit(opt.state[ps[1]])
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    rejected(opt, opt.step, ValueError, r"state\[param_groups\[1\]\['params'\]\[0\]\]" + match)


# ---------------------------------------------------------------- non-finite gradients
def test_finite_float64_grads_past_1e154_are_not_skipped():
    """Their float64 sum of squares overflows; the gradients themselves are finite."""
    p = np.ones(4)
    opt = fastlr.SGD(p, lr=1e-200, skip_nonfinite=True)
    assert opt.step(np.full(4, 1e200)) and not opt.last_step_skipped
    assert p.tobytes() == (np.ones(4) - 1e-200 * np.full(4, 1e200)).tobytes()


def test_max_grad_norm_of_float64_grads_past_1e154():
    """clip_grad_norm_'s coefficient from the exact norm (2e200 here), not from an overflowed Inf."""
    p = np.zeros(4)
    fastlr.SGD(p, lr=1.0, max_grad_norm=1.0).step(np.full(4, 1e200))
    np.testing.assert_allclose(p, -np.full(4, 0.5), rtol=1e-12)


@pytest.mark.parametrize("front", ["numpy", "torch", "rows"])
def test_tiny_grad_scale_overflowing_float32_is_skipped(front):
    """1 / 1e-300 is Inf as a float32: the kernel would compute Inf/NaN gradients."""
    if front == "torch":
        ps = [torch.nn.Parameter(torch.linspace(-1, 1, 5)) for _ in range(2)]
        opt = ft.Adam(ps, grad_scale=1e-300)
        for p in ps:
            p.grad = torch.full_like(p, 0.5)
        before = snapshot(opt)
        opt.step()
    else:
        opt = fastlr.SGD([np.ones((3, 2), np.float32)], grad_scale=1e-300)
        before = snapshot(opt)
        if front == "rows":
            opt.step_rows([0, 2], np.ones((2, 2), np.float32))
        else:
            opt.step([np.ones((3, 2), np.float32)])
    assert opt.last_step_skipped and opt.skipped_steps == 1
    assert snapshot(opt)[:2] == before[:2]   # no states made either


@st.composite
def conditioning_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    info = np.finfo(dtype)
    magnitude = st.floats(-float(info.max), float(info.max), allow_nan=False, allow_infinity=False, width=32
                          if dtype == np.float32 else 64)
    n = draw(st.integers(1, 6))
    g = np.array([draw(st.one_of(magnitude, st.sampled_from([0.0, 1.0, math.inf, -math.inf, math.nan])))
                  for _ in range(n)], dtype)
    scale = draw(st.one_of(st.sampled_from([1e-300, 1e-38, 1e-30, 1.0, 1e30, 1e300]),
                           st.floats(1e-300, 1e300)))
    ids = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return dtype, g, scale, ids


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conditioning_cases())
def test_skip_decision_matches_the_kernels_arithmetic(case):
    """A step is skipped exactly when some gradient divided by grad_scale, computed as the kernels do (in
    the params' dtype; duplicate rows summed first for step_rows), is NaN or Inf; otherwise the SGD
    update equals p - lr * (g * float(1 / grad_scale)) in that dtype."""
    dtype, g, scale, ids = case
    t = np.dtype(dtype).type
    with np.errstate(all="ignore"):
        unscaled = g * t(1.0 / scale)
        p = np.ones(g.size, dtype)
        opt = fastlr.SGD(p, lr=0.5, grad_scale=scale)
        stepped = opt.step(g.copy())
        assert stepped == bool(np.isfinite(unscaled).all())
        expect = np.ones(g.size, dtype) - t(0.5) * unscaled if stepped else np.ones(g.size, dtype)
        assert p.tobytes() == expect.tobytes()
        coalesced = np.zeros((3, 1), dtype)
        for k, i in enumerate(ids):   # in the ids' order, as the row kernels add them
            coalesced[i] = coalesced[i] + g[k] if k != ids.index(i) else g[k]
        used = sorted(set(ids))
        table = np.ones((3, 1), dtype)
        rows = fastlr.SGD(table, lr=0.5, grad_scale=scale)
        rows.step_rows(ids, g.reshape(-1, 1).copy())
        assert (not rows.last_step_skipped) == bool(np.isfinite(coalesced[used] * t(1.0 / scale)).all())


# ---------------------------------------------------------------- threads
N_BIG = 1 << 16   # above SERIAL_BELOW: the parallel kernels run


def test_two_threads_stepping_one_optimizer_equal_a_sequential_run():
    def make():
        params = [np.linspace(-1, 1, N_BIG).astype(np.float32), np.linspace(0, 1, N_BIG + 3)]
        return fastlr.Adam(params, lr=1e-3, max_grad_norm=10.0)
    opt, ref_opt = make(), make()
    grads = [np.full(N_BIG, 0.25, np.float32), np.full(N_BIG + 3, -0.5)]   # the same every step: any order
    steps = 15

    def work():
        for _ in range(steps):
            opt.step(grads)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(2 * steps):
        ref_opt.step(grads)
    assert snapshot(opt) == snapshot(ref_opt)


def test_two_threads_stepping_one_torch_optimizer_equal_a_sequential_run():
    def make():
        ps = [torch.nn.Parameter(torch.linspace(-1, 1, N_BIG)) for _ in range(2)]
        for p in ps:
            p.grad = torch.full_like(p, 0.25)
        return ft.AdamW(ps, lr=1e-3)
    opt, ref = make(), make()
    threads = [threading.Thread(target=lambda: [opt.step() for _ in range(10)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(20):
        ref.step()
    assert snapshot(opt) == snapshot(ref)


WORKQUEUE_SCRIPT = r"""
import threading, numpy as np, numba, torch, fastlr, fastlr.torch as ft, fastlr.functional as F
N, STEPS = 1 << 17, 20
def dense():
    w = np.zeros(N, np.float32); o = fastlr.Adam(w, max_grad_norm=1.0); g = np.ones(N, np.float32)
    for _ in range(STEPS): o.step(g)
def rows():
    w = np.zeros((N // 16, 16), np.float32); o = fastlr.Adam(w, max_grad_norm=1.0)
    for _ in range(STEPS): o.step_rows(np.arange(N // 16), np.ones((N // 16, 16), np.float32))
def functional():
    w, m, v, g = (np.zeros(N, np.float32) for _ in range(4))
    for t in range(1, STEPS + 1): F.adam_(w, g, m, v, step=t)
def rowwise():
    o = fastlr.RowWiseAdagrad(np.zeros((N // 16, 16), np.float32), max_grad_norm=1.0)
    for _ in range(STEPS): o.step(np.ones((N // 16, 16), np.float32))
def half():
    p = torch.nn.Parameter(torch.zeros(N, dtype=torch.bfloat16)); o = ft.Adam([p], master_weights=True)
    for _ in range(STEPS): p.grad = torch.ones(N, dtype=torch.bfloat16); o.step()
for pair in [(dense, dense), (dense, rows), (functional, functional), (rowwise, rowwise), (half, half), (half, dense)]:
    ts = [threading.Thread(target=f) for f in pair]
    for t in ts: t.start()
    for t in ts: t.join()
    print("ok", *(f.__name__ for f in pair), flush=True)
print("layer", numba.threading_layer())
"""


def test_workqueue_layer_two_threads_two_optimizers_do_not_abort():
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "layer workqueue" in out.stdout


# ---------------------------------------------------------------- the state machine
SHAPES = ((3, 4), (5,))
DTYPES = (np.float32, np.float64)
finite_grads = st.floats(-4, 4, allow_nan=False, width=32)


class Hostile(RuleBasedStateMachine):
    """An Adam optimizer (a float32 table in group 0, a float64 vector in group 1, grad_scale=2 so the
    non-finite check runs) and its twin, which receives only the calls that were accepted, one after
    the other. After every rule both are bit-identical; a rejected call leaves the optimizer as it was."""

    def __init__(self):
        super().__init__()
        self.opts = [self._make() for _ in range(2)]
        self.saved = None

    @staticmethod
    def _make():
        arrays = [np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(d) for s, d in zip(SHAPES, DTYPES)]
        return fastlr.Adam([{"params": [arrays[0]]}, {"params": [arrays[1]], "lr": 0.01}], lr=0.02,
                           grad_scale=2.0)

    @property
    def opt(self):
        return self.opts[0]

    def params(self, k=0):
        return [g["params"][0] for g in self.opts[k].param_groups]

    def both(self, fn):
        for k in range(2):
            fn(self.opts[k], k)

    # accepted calls
    @rule(values=st.lists(finite_grads, min_size=2, max_size=2), nonfinite=st.booleans())
    def step(self, values, nonfinite):
        grads = [np.full(s, v, d) for s, d, v in zip(SHAPES, DTYPES, values)]
        if nonfinite:
            grads[1][0] = math.nan
        self.both(lambda o, k: o.step([g.copy() for g in grads]))

    @rule(ids=st.lists(st.integers(0, SHAPES[0][0] - 1), max_size=5), v=finite_grads)
    def step_rows(self, ids, v):
        self.both(lambda o, k: o.step_rows(ids, np.full((len(ids), SHAPES[0][1]), v, np.float32), 0))

    @rule(value=st.floats(0, 0.1), key=st.sampled_from(["lr", "weight_decay"]), k=st.integers(0, 1))
    def edit_hyperparameter(self, value, key, k):
        self.both(lambda o, _: o.param_groups[k].__setitem__(key, value))

    @rule(flag=st.booleans())
    def toggle_amsgrad(self, flag):
        self.both(lambda o, _: o.param_groups[0].__setitem__("amsgrad", flag))

    @rule()
    def save(self):
        self.saved = copy.deepcopy(self.opt.state_dict())

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self):
        self.both(lambda o, _: o.load_state_dict(copy.deepcopy(self.saved)))

    @rule(v=finite_grads)
    def two_threads(self, v):
        """The same gradients from two threads: any order of the two steps gives the twin's result."""
        grads = [np.full(s, v, d) for s, d in zip(SHAPES, DTYPES)]
        threads = [threading.Thread(target=self.opt.step, args=([g.copy() for g in grads],)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _ in range(2):
            self.opts[1].step([g.copy() for g in grads])

    # rejected calls: (mutation, undo, exception, message)
    @rule(case=st.integers(0, 15))
    def rejected_call(self, case):
        opt, (table, vec) = self.opt, self.params()
        good = [np.ones(SHAPES[0], np.float32), np.ones(SHAPES[1])]
        group = opt.param_groups[1]

        def edit_group(key, value):
            old = group[key]
            group[key] = value
            return lambda: group.__setitem__(key, old)

        def edit_state(key, value):
            st_ = opt.state.get(1)
            if st_ is None or key not in st_:
                return None
            old = st_[key]
            st_[key] = value
            return lambda: st_.__setitem__(key, old)

        cases = [
            (lambda: edit_group("lr", HUGE), lambda: opt.step(good), ValueError, r"lr: expected a real number"),
            (lambda: edit_group("lr", np.array([0.5, 100.0])), lambda: opt.step(good), ValueError, r"lr: expected"),
            (lambda: edit_group("betas", np.float32(0.5)), lambda: opt.step(good), ValueError, r"betas"),
            (lambda: edit_group("eps", 0.0), lambda: opt.step(good), ValueError, r"eps"),
            (None, lambda: opt.step([good[0], np.ones(4)]), ValueError, r"grads\[1\]: expected shape"),
            (None, lambda: opt.step([good[0], np.ones(5, np.float32)]), TypeError, r"grads\[1\]: expected dtype"),
            (None, lambda: opt.step([good[0], np.asmatrix(np.ones(5))]), TypeError, r"grads\[1\]: expected a plain"),
            (None, lambda: opt.step([good[0], np.ones(10)[::2]]), ValueError, r"grads\[1\]: expected a C-contiguous"),
            (lambda: edit_state("step", math.nan), lambda: opt.step(good), ValueError, r"\['step'\]"),
            (lambda: edit_state("step", -2), lambda: opt.step(good), ValueError, r"\['step'\]"),
            (lambda: edit_state("exp_avg", vec), lambda: opt.step(good), ValueError, r"shares memory"),
            (lambda: edit_state("exp_avg", np.zeros(5, np.float32)), lambda: opt.step(good), TypeError, r"dtype"),
            (None, lambda: opt.step_rows([0, 9], np.ones((2, 4), np.float32), 0), IndexError, r"indices\[1\]"),
            (None, lambda: opt.step_rows([0], table[:1], 0), ValueError, r"grad_rows: shares memory"),
            (None, lambda: opt.load_state_dict({**opt.state_dict(), "step_count": -1}), ValueError, r"step_count"),
            (None, lambda: opt.load_state_dict(_with_bad_step(opt.state_dict())), ValueError, r"step"),
        ]
        mutate, call, exc, match = cases[case]
        undo = mutate() if mutate is not None else None
        if mutate is not None and undo is None:
            return   # the state entry does not exist yet
        rejected(opt, call, exc, match)
        if undo is not None:
            undo()

    @invariant()
    def twins_are_bit_identical(self):
        assert snapshot(self.opts[0]) == snapshot(self.opts[1])


def _with_bad_step(sd):
    """The state dict with every saved step count (or, before any step, the optimizer's) made 2.5."""
    sd = copy.deepcopy(sd)
    for s in sd["state"].values():
        s["step"] = 2.5
    if not sd["state"]:
        sd["step_count"] = 2.5
    return sd


# A few seconds by default; HOSTILE_EXAMPLES=300 for a longer hunt.
Hostile.TestCase.settings = settings(max_examples=int(os.environ.get("HOSTILE_EXAMPLES", 12)), stateful_step_count=25,
                                     deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_hostile_state_machine = Hostile.TestCase


def test_grad_sharing_memory_across_groups_dtypes_or_low_bit_states_is_rejected():
    """A grad that is another group's param, a view of another dtype's param, or the memory of a low-bit state
    is refused before anything changes, as within one group."""
    a, b = np.ones(4, np.float32), np.ones(4, np.float32)
    opt = fastlr.SGD([{"params": [a]}, {"params": [b]}], lr=0.5)
    rejected(opt, lambda: opt.step([np.ones(4, np.float32), a]), ValueError, r"grads\[1\]: shares memory")
    wide = np.ones(8, np.float64)
    mixed = fastlr.SGD([np.ones(4, np.float32), wide], lr=0.5)
    rejected(mixed, lambda: mixed.step([wide.view(np.float32)[:4], np.ones(8)]), ValueError,
             r"grads\[0\]: shares memory")
    n = 8192
    p, g = np.ones(n, np.float32), np.random.default_rng(0).standard_normal(n).astype(np.float32)
    low = fastlr.Adam(p, state_precision="8bit")
    low.step(g)
    low.state[0]["exp_avg_absmax"] = g[:low.state[0]["exp_avg_absmax"].size].copy()
    low.step(g)   # a state of its own memory: fine
    low.state[0]["exp_avg_absmax"] = g[:low.state[0]["exp_avg_absmax"].size]
    rejected(low, lambda: low.step(g), ValueError, r"grads\[0\]: shares memory")
