"""The NumPy API reads what the caller holds at every step: replaced, cleared or edited states, arrays
rebound in param_groups, arrays changed in place, copies made by pickle and deepcopy. Compared
with a fresh run of the float64 reference given the same history."""
import copy
import pickle

import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer
from fastlr.specs import SPECS
from reference import REFERENCES, assert_close

# algorithms whose params step independently (the reference runs param by param): not those with a
# per-group schedule or step (schedule-free, Adan, Lamb) or a clip by the norm over all params (Lamb)
ALGOS = [n for n in CASES if not (SPECS[n].group_state or SPECS[n].global_clip)]
HP = {name: CASES[name][-1] for name in ALGOS}


def _arrays(seed=0, shapes=((7,), (3, 5), (40,))):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _grads(params, step):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(p.shape) for p in params]


class Mirror:
    """fastlr.<Algo> over float64 arrays beside the float64 reference, fed the same grads."""

    def __init__(self, name, seed=0):
        self.name, self.hp = name, HP[name]
        self.params = _arrays(seed)
        self.ref = [p.copy() for p in self.params]
        self.ref_state = [{} for _ in self.params]
        self.ref_steps = [0] * len(self.params)
        self.opt = optimizer(fastlr, name)(self.params, **self.hp)
        self.t = 0

    def step(self, n=1):
        for _ in range(n):
            self.t += 1
            grads = _grads(self.params, self.t)
            self.opt.step(grads)
            for i, g in enumerate(grads):
                self.ref_steps[i] += 1
                REFERENCES[self.name](self.ref[i], g, self.ref_state[i], self.ref_steps[i], **self.hp)

    def check(self):
        for p, r in zip(self.params, self.ref):
            assert_close(p, r, np.float64)


@pytest.mark.parametrize("name", ALGOS)
def test_cleared_and_deleted_state_restart(name):
    m = Mirror(name)
    m.step(3)
    m.opt.state.clear()
    m.ref_state = [{} for _ in m.params]
    m.ref_steps = [0] * len(m.params)
    m.step(2)
    del m.opt.state[1]
    m.ref_state[1], m.ref_steps[1] = {}, 0
    m.step(2)
    m.check()


@pytest.mark.parametrize("name", [n for n in ALGOS if n != "SGD"])
def test_replaced_state_array_and_step_are_used(name):
    m = Mirror(name)
    m.step(3)
    key = next(k for k, v in m.opt.state[2].items() if isinstance(v, np.ndarray))
    new = np.full_like(m.params[2], 0.5)
    m.opt.state[2][key] = new
    m.ref_state[2][key] = new.copy()
    m.opt.state[0]["step"] = 1
    m.ref_steps[0] = 1
    m.step(3)
    m.check()
    assert m.opt.state[2][key] is new                 # updated in place, not copied
    m.opt.state[2][key] = np.zeros(3)                 # a wrong replacement is refused, nothing changes
    before = [p.copy() for p in m.params]
    with pytest.raises(ValueError, match=rf"state\[2\]\[{key!r}\]: expected shape"):
        m.opt.step(_grads(m.params, 99))
    assert all(np.array_equal(a, b) for a, b in zip(before, m.params))


@pytest.mark.parametrize("name", ALGOS)
def test_params_rebound_in_param_groups(name):
    m = Mirror(name)
    m.step(2)
    fresh = np.linspace(-1, 1, m.params[1].size).reshape(m.params[1].shape)
    m.opt.param_groups[0]["params"][1] = fresh       # a new array for param 1: its state carries on
    m.params[1] = fresh
    m.ref[1] = fresh.copy()
    m.step(3)
    m.check()


def test_in_place_changes_of_a_validated_array_are_caught():
    p, g = np.zeros(8), np.ones(8)
    opt = fastlr.Adam(p, lr=0.1)
    opt.step(g)
    p.dtype = np.float32          # the same object, reinterpreted: 16 float32 values
    with pytest.raises((TypeError, ValueError), match=r"grads\[0\]|params\[0\]"):
        opt.step(g)
    p.dtype = np.float64
    opt.step(g)
    q = np.zeros(8)
    opt.param_groups[0]["params"][0] = q
    q.shape = (2, 4)
    with pytest.raises(ValueError, match="shape"):
        opt.step(g)               # a (8,) grad for a (2, 4) param
    q.shape = (8,)
    before = opt.state[0]["exp_avg"].copy()
    opt.step(g)
    assert not np.array_equal(before, opt.state[0]["exp_avg"])


@pytest.mark.parametrize("name", ALGOS)
def test_pickle_and_deepcopy_step_their_own_arrays(name):
    m = Mirror(name)
    m.step(2)
    for clone in (pickle.loads(pickle.dumps(m.opt)), copy.deepcopy(m.opt)):
        params = [p for g in clone.param_groups for p in g["params"]]
        assert all(p is not q and np.array_equal(p, q) for p, q in zip(params, m.params))
        before = [p.copy() for p in m.params]
        clone.step(_grads(params, 3))
        assert all(np.array_equal(a, b) for a, b in zip(before, m.params))   # the original is untouched
        assert all(not np.array_equal(a, b) for a, b in zip(params, m.params))
        assert int(clone.state[0]["step"]) == 3
    m.step(1)
    m.check()


def test_views_of_one_base_train_and_overlaps_are_refused():
    base = np.zeros(30)
    a, b = base[:10], base[10:]
    opt = fastlr.SGD([a, b], lr=0.1)
    opt.step([np.ones(10), np.ones(20)])
    assert np.allclose(base, -0.1)
    with pytest.raises(ValueError, match="shares memory"):
        fastlr.SGD([base[:10], base[5:15]])
    opt.param_groups[0]["params"][1] = base[5:25]
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([np.ones(10), np.ones(20)])
    assert np.allclose(base, -0.1)


def test_many_arrays_are_one_table_call(monkeypatch):
    from fastlr.kernels import cpu
    calls = []
    for key, kernel in list(cpu.TABLE_KERNELS.items()):
        monkeypatch.setitem(cpu.TABLE_KERNELS, key, lambda *a, _k=kernel, _n=key: calls.append(_n) or _k(*a))
    params = _arrays(shapes=[(n,) for n in range(1, 60)])
    opt = fastlr.Adam(params)
    opt.step(_grads(params, 1))
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["AdamW", "Adagrad"])
def test_empty_param_groups_are_accepted(name):
    """HF-style no-decay groups can be empty: torch.optim accepts them and so does fastlr. Empty groups
    take no grads, keep their place in state dicts ('params': [], as torch) and can be added later."""
    hp = HP[name]
    params = _arrays()
    ref, ref_state = [p.copy() for p in params], [{} for _ in params]
    opt = optimizer(fastlr, name)([{"params": []}, {"params": params[:2]}, {"params": [], "lr": 0.5},
                                   {"params": params[2:]}], **hp)

    def step(o, t):
        grads = _grads(params, t)
        o.step(grads)
        for i, g in enumerate(grads):
            REFERENCES[name](ref[i], g, ref_state[i], t, **hp)

    for t in (1, 2):
        step(opt, t)
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[], [0, 1], [], [2]]
    copies = [p.copy() for p in params]
    other = optimizer(fastlr, name)([{"params": []}, {"params": copies[:2]}, {"params": []},
                                     {"params": copies[2:]}], **hp)
    other.load_state_dict(sd)
    assert other.param_groups[2]["lr"] == 0.5
    opt.add_param_group({"params": []})
    for t in (3, 4):
        other.step(_grads(params, t))
        step(opt, t)
    for p, c, r in zip(params, copies, ref):
        assert_close(p, r, np.float64)
        np.testing.assert_array_equal(c, p)
    with pytest.raises(ValueError, match="params: expected at least one array"):
        optimizer(fastlr, name)([], **hp)


def test_a_list_hyperparameter_edited_in_place_is_used():
    """group["betas"][0] = ... on a list: the next step uses it, as assigning a new list does."""
    g = np.array([1.0, -2.0, 3.0, 0.5])
    ps = [np.zeros(4), np.zeros(4)]
    opts = [fastlr.Adam([p], lr=1e-2, betas=[0.9, 0.999]) for p in ps]
    for opt in opts:
        opt.step([g])
        opt.step([-g])
    opts[0].param_groups[0]["betas"][0] = 0.0
    opts[1].param_groups[0]["betas"] = [0.0, 0.999]
    for opt in opts:
        opt.step([g])
    np.testing.assert_array_equal(ps[0], ps[1])


def test_a_scalar_in_a_grads_list_is_named():
    opt = fastlr.Adam([np.zeros(3), np.array(1.5)])
    for bad, shown in (([np.ones(3), np.float64(1.0)], r"grads\[1\] = numpy.float64"),
                       ([np.ones(3), 1.0], r"grads\[1\] = builtins.float")):
        with pytest.raises(TypeError, match=shown):
            opt.step(bad)
