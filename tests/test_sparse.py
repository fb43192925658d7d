"""Row-sparse updates (``opt.step_rows``): lazy semantics against a float64 reference and against
torch's sparse optimizers, duplicates, concurrency, gradient conditioning and bad input."""
import threading

import numpy as np
import pytest

import fastlr
from cases import CASES, optimizer, whole_step_only
from fastlr.sparse import RowWiseAdagrad
from fastlr.specs import SPECS
from reference import REFERENCES, assert_close

# (name, hp) pairs: the first and last option combination of every algorithm
# (per-group schedules and per-tensor norms have no lazy row updates: test_group_schedules_refuse_step_rows)
LAZY = [name for name in CASES if not whole_step_only(name, {})]
SWEEP = [(name, hp) for name in LAZY for hp in (CASES[name][0], CASES[name][-1]) if not whole_step_only(name, hp)]
# float64 for every algorithm, float32 too for those the sparse API is built for
DTYPED = [(case, np.float64) for case in SWEEP] + \
    [(case, np.float32) for case in SWEEP if case[0] in ("SGD", "Adagrad", "Adam", "AdamW")]


def _id(case):
    name, hp = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in hp.items())


def batches(n_rows, dim, n_steps, n_ids, dtype, seed=0):
    """Random batches (ids with duplicates, some rows never touched) and their gradient rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        ids = rng.integers(0, n_rows - 2, n_ids)  # the last two rows are never touched
        out.append((ids, rng.standard_normal((n_ids, dim)).astype(dtype)))
    return out


def coalesce(ids, rows):
    """(unique ids, summed rows), summed in float64."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    total = np.zeros((uniq.size, rows.shape[1]))
    np.add.at(total, inverse, rows.astype(np.float64))
    return uniq, total


def lazy_reference(name, hp, p, state, t, ids, rows):
    """The dense float64 reference applied to the touched rows only (their states too)."""
    uniq, g = coalesce(ids, rows)
    sub = {k: (v[uniq] if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    sub_p = p[uniq]
    REFERENCES[name](sub_p, g, sub, t, **hp)
    p[uniq] = sub_p
    for k, v in sub.items():
        if not isinstance(v, np.ndarray):
            state[k] = v
            continue
        if k not in state:  # created on this step: untouched rows hold the initial value
            state[k] = np.full_like(p, dict(SPECS[name].states({**SPECS[name].defaults, **hp}))[k])
        state[k][uniq] = v


def table(n_rows, dim, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((n_rows, dim)).astype(dtype)


# ---------------------------------------------------------------- semantics
@pytest.mark.parametrize("case,dtype", DTYPED, ids=[f"{_id(c)}-{np.dtype(d).name}" for c, d in DTYPED])
def test_lazy_rows_match_reference(case, dtype):
    """Duplicates summed, touched rows updated by the dense formula, untouched rows and states kept."""
    name, hp = case
    p = table(12, 5, dtype)
    ref, ref_state = p.astype(np.float64), {}
    opt = optimizer(fastlr, name)(p, **hp)
    untouched = p[-2:].copy()
    for t, (ids, rows) in enumerate(batches(12, 5, 4, 9, dtype), 1):
        assert opt.step_rows(ids, rows) == t
        lazy_reference(name, hp, ref, ref_state, t, ids, rows)
    assert_close(p, ref, dtype)
    for key, value in ref_state.items():
        if isinstance(value, np.ndarray):
            assert_close(opt.state[0][key], value, dtype, err_msg=key)
    assert p[-2:].tobytes() == untouched.tobytes()
    assert opt.state[0]["step"] == t


@pytest.mark.parametrize("name", [n for n in CASES if n not in LAZY])
def test_group_schedules_refuse_step_rows(name):
    p = table(4, 3, np.float32)
    before = p.copy()
    opt = optimizer(fastlr, name)(p)
    with pytest.raises(NotImplementedError, match="step_rows: not available"):
        opt.step_rows(np.array([0, 1]), np.ones((2, 3), np.float32))
    assert p.tobytes() == before.tobytes() and not opt.state


@pytest.mark.parametrize("case", SWEEP, ids=_id)
def test_every_row_equals_dense_step(case):
    """step_rows(all rows, g) is step(g), bit for bit: the same element rules and scalars."""
    name, hp = case
    p = table(10, 4, np.float32)
    q = p.copy()
    a, b = optimizer(fastlr, name)(p, **hp), optimizer(fastlr, name)(q, **hp)
    for _, g in batches(10, 4, 3, 10, np.float32):
        a.step_rows(np.arange(10), g)
        b.step(g)
    assert p.tobytes() == q.tobytes()


def test_duplicates_are_summed_in_order():
    p = table(8, 3, np.float32)
    q = p.copy()
    ids = np.array([5, 1, 5, 5, 0, 1])
    rows = table(6, 3, np.float32, seed=3)
    fastlr.Adam(p).step_rows(ids, rows)
    summed = np.zeros((8, 3), np.float32)
    np.add.at(summed, ids, rows)  # float32, in the ids' order: as step_rows sums
    fastlr.Adam(q).step_rows([0, 1, 5], summed[[0, 1, 5]])
    assert p.tobytes() == q.tobytes()


def test_parallel_kernel_equals_serial():
    """Batches big enough for the parallel kernel give the serial kernel's bits."""
    p = table(3000, 64, np.float32)
    q = p.copy()
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 3000, 2000)
    rows = rng.standard_normal((2000, 64)).astype(np.float32)
    fastlr.Adam(p, lr=0.01).step_rows(ids, rows)      # ~1500 unique rows x 64: the parallel kernel
    for part in np.array_split(np.unique(ids), 30):   # disjoint small first steps: the serial kernel
        mask = np.isin(ids, part)
        fastlr.Adam(q, lr=0.01).step_rows(ids[mask], rows[mask])
    assert p.tobytes() == q.tobytes()


def test_empty_batch_counts_a_step():
    p = table(4, 2, np.float32)
    before = p.copy()
    opt = fastlr.Adam(p)
    assert opt.step_rows(np.array([], np.int64), np.zeros((0, 2), np.float32)) == 1
    assert opt.step_rows([], np.zeros((0, 2), np.float32)) == 2
    assert p.tobytes() == before.tobytes()


def test_schedule_uses_the_params_step():
    p = table(6, 2, np.float64)
    q = p.copy()
    lr = lambda step: 0.1 / (1 + step)  # noqa: E731
    a, b = fastlr.SGD(p, lr=lr), fastlr.SGD(q, lr=lr)
    for _, g in batches(6, 2, 3, 6, np.float64):
        a.step_rows(np.arange(6), g)
        b.step(g)
    assert p.tobytes() == q.tobytes()


def test_torch_cpu_tables_ids_and_grads():
    torch = pytest.importorskip("torch")
    w = torch.zeros(5, 3)
    opt = fastlr.SGD([w], lr=1.0)
    opt.step_rows(torch.tensor([4, 0, 4]), torch.ones(3, 3))
    assert w[:, 0].tolist() == [-1.0, 0.0, 0.0, 0.0, -2.0]
    assert isinstance(opt.state, dict)


def test_state_dict_round_trip_continues_identically():
    p = table(9, 3, np.float32)
    q = p.copy()
    steps = batches(9, 3, 6, 7, np.float32)
    a = fastlr.Adam(p, lr=0.01)
    b = fastlr.Adam(q, lr=0.01)
    for ids, rows in steps[:3]:
        a.step_rows(ids, rows)
        b.step_rows(ids, rows)
    saved = b.state_dict()
    b.load_state_dict(saved)     # new state arrays: step_rows must pick them up
    for ids, rows in steps[3:]:
        a.step_rows(ids, rows)
        b.step_rows(ids, rows)
    assert p.tobytes() == q.tobytes()


# ---------------------------------------------------------------- torch's sparse optimizers
def _torch_sparse(torch, ids, rows, shape):
    uniq, g = coalesce(ids, rows)
    return torch.sparse_coo_tensor(torch.from_numpy(uniq)[None], torch.from_numpy(g.astype(rows.dtype)), shape,
                                   check_invariants=True)


@pytest.mark.parametrize("maximize", [False, True])
def test_matches_torch_sparse_adam(maximize):
    """torch.optim.SparseAdam on the same coalesced gradients. Its eps sits before the bias
    correction (eps / sqrt(1 - beta2^t) in Adam's terms): with a tiny eps the two agree to rounding."""
    torch = pytest.importorskip("torch")
    p = table(30, 6, np.float64)
    w = torch.nn.Parameter(torch.from_numpy(p.copy()))
    topt = torch.optim.SparseAdam([w], lr=0.01, eps=1e-14, maximize=maximize)
    opt = fastlr.Adam(p, lr=0.01, eps=1e-14, maximize=maximize)
    calls = batches(30, 6, 20, 12, np.float64, seed=9)
    for ids, rows in calls:
        w.grad = _torch_sparse(torch, ids, rows, (30, 6))
        topt.step()
        uniq, g = coalesce(ids, rows)
        opt.step_rows(uniq, g)
    np.testing.assert_allclose(p, w.detach().numpy(), rtol=1e-12, atol=1e-13)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(opt.state[0][key], topt.state[w][key].numpy(), rtol=1e-12, atol=1e-15)
    assert opt.state[0]["step"] == topt.state[w]["step"] == len(calls)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # raised inside torch's sparse Adagrad
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_sparse_adagrad(dtype):
    torch = pytest.importorskip("torch")
    hp = dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)
    p = table(25, 4, dtype)
    w = torch.nn.Parameter(torch.from_numpy(p.copy()))
    topt = torch.optim.Adagrad([w], **hp)
    opt = fastlr.Adagrad(p, **hp)
    for ids, rows in batches(25, 4, 15, 10, dtype, seed=11):
        w.grad = _torch_sparse(torch, ids, rows, (25, 4))
        topt.step()
        uniq, g = coalesce(ids, rows)
        opt.step_rows(uniq, g.astype(dtype))
    assert_close(p, w.detach().numpy(), dtype)
    assert_close(opt.state[0]["sum"], topt.state[w]["sum"].numpy(), dtype)


def test_matches_torch_sparse_sgd():
    torch = pytest.importorskip("torch")
    p = table(25, 4, np.float32)
    w = torch.nn.Parameter(torch.from_numpy(p.copy()))
    topt = torch.optim.SGD([w], lr=0.1)
    opt = fastlr.SGD(p, lr=0.1)
    for ids, rows in batches(25, 4, 10, 10, np.float32, seed=12):
        w.grad = _torch_sparse(torch, ids, rows, (25, 4))
        topt.step()
        uniq, g = coalesce(ids, rows)
        opt.step_rows(uniq, g.astype(np.float32))
    assert_close(p, w.detach().numpy(), np.float32)


# ---------------------------------------------------------------- row-wise Adagrad
def rowwise_reference(p, s, ids, rows, lr, eps, weight_decay=0.0, maximize=False):
    uniq, g = coalesce(ids, rows)
    g = (-g if maximize else g) + weight_decay * p[uniq]
    s[uniq] += (g * g).mean(axis=1)
    p[uniq] -= lr * g / (np.sqrt(s[uniq])[:, None] + eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hp", [dict(), dict(weight_decay=0.01, maximize=True, initial_accumulator_value=0.5)])
def test_rowwise_adagrad_matches_reference(dtype, hp):
    p = table(15, 6, dtype)
    ref = p.astype(np.float64)
    s = np.full(15, hp.get("initial_accumulator_value", 0.0))
    opt = RowWiseAdagrad(p, lr=0.1, **hp)
    for ids, rows in batches(15, 6, 5, 11, dtype, seed=13):
        opt.step_rows(ids, rows)
        rowwise_reference(ref, s, ids, rows, 0.1, 1e-10, hp.get("weight_decay", 0.0), hp.get("maximize", False))
    assert_close(p, ref, dtype)
    assert opt.state[0]["sum"].shape == (15,)   # one accumulator per row
    assert_close(opt.state[0]["sum"], s, dtype)


def test_rowwise_adagrad_dense_step_and_state_dict():
    p = table(7, 3, np.float32)
    q, r = p.copy(), p.copy()
    a, b = RowWiseAdagrad(p, lr=0.1), RowWiseAdagrad(q, lr=0.1)
    steps = batches(7, 3, 4, 7, np.float32)
    for _, g in steps[:2]:
        a.step(g)
        b.step_rows(np.arange(7), g)
    assert p.tobytes() == q.tobytes()
    c = RowWiseAdagrad(r, lr=0.1)
    r[:] = q
    c.load_state_dict(b.state_dict())
    assert c.state[0]["sum"].tobytes() == b.state[0]["sum"].tobytes()
    for ids, rows in steps[2:]:
        b.step_rows(ids, rows)
        c.step_rows(ids, rows)
    assert q.tobytes() == r.tobytes()
    with pytest.raises(ValueError, match="2-D"):
        RowWiseAdagrad(np.zeros(4, np.float32))
    bad = b.state_dict()
    bad["state"][0]["sum"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"'sum'.*shape \(7,\)"):
        c.load_state_dict(bad)


# ---------------------------------------------------------------- concurrency
def _hammer(opt, calls, n_threads=8):
    """Run the (ids, rows) calls from n_threads threads at once; [(step number, ids, rows)]."""
    done, barrier = [], threading.Barrier(n_threads)
    lock = threading.Lock()

    def work(k):
        barrier.wait()
        for ids, rows in calls[k::n_threads]:
            step = opt.step_rows(ids, rows)
            with lock:
                done.append((step, ids, rows))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def test_concurrent_calls_lose_no_update():
    """8 threads of SGD pushes with integer gradients (exact in float64): the sum of all of them."""
    p = np.zeros((4000, 8))
    rng = np.random.default_rng(21)
    calls = [(rng.integers(0, 4000, 300), rng.integers(-3, 4, (300, 8)).astype(np.float64)) for _ in range(400)]
    done = _hammer(fastlr.SGD(p, lr=1.0), calls)
    expected = np.zeros_like(p)
    for ids, rows in calls:
        np.add.at(expected, ids, -rows)
    assert sorted(s for s, _, _ in done) == list(range(1, len(calls) + 1))  # every call got its own step
    assert p.tobytes() == expected.tobytes()


@pytest.mark.parametrize("n_ids,dim", [(64, 16), (1200, 64)])  # serial and parallel kernels
def test_concurrent_calls_equal_sequential_in_step_order(n_ids, dim):
    """Lazy Adam from 8 threads equals running the same calls one by one in the order of the step
    numbers they got: per row, updates keep step order (overlapping, hot ids)."""
    p = table(3000, dim, np.float32)
    q = p.copy()
    rng = np.random.default_rng(22)
    calls = [(np.minimum(rng.zipf(1.3, n_ids) - 1, 2999), rng.standard_normal((n_ids, dim)).astype(np.float32))
             for _ in range(96)]
    done = _hammer(fastlr.Adam(p, lr=0.01), calls)
    seq = fastlr.Adam(q, lr=0.01)
    for step, ids, rows in sorted(done, key=lambda d: d[0]):
        assert seq.step_rows(ids, rows) == step
    assert p.tobytes() == q.tobytes()


# ---------------------------------------------------------------- conditioning
def test_clip_and_scale_apply_to_the_coalesced_gradient():
    p = table(6, 3, np.float32)
    q = p.copy()
    ids = np.array([1, 4, 1])
    rows = table(3, 3, np.float32, seed=5) * 10
    dense = np.zeros((6, 3), np.float32)
    np.add.at(dense, ids, rows)
    # SGD without momentum leaves rows with a zero gradient unchanged: the dense step is the reference
    fastlr.SGD(p, lr=0.1, max_grad_norm=1.0, clip_value=0.05, grad_scale=4.0).step_rows(ids, rows)
    fastlr.SGD(q, lr=0.1, max_grad_norm=1.0, clip_value=0.05, grad_scale=4.0).step(dense)
    np.testing.assert_array_equal(p, q)


def test_nonfinite_gradient_skips_the_step():
    p = table(5, 2, np.float32)
    opt = fastlr.Adam(p, grad_scale=8.0)
    opt.step_rows([0], np.ones((1, 2), np.float32))
    before, state = p.copy(), {k: np.copy(v) for k, v in opt.state[0].items()}
    assert opt.step_rows([1, 2], np.array([[1.0, np.inf], [0.0, 1.0]], np.float32)) == 1
    assert opt.last_step_skipped and opt.skipped_steps == 1
    assert p.tobytes() == before.tobytes()
    assert all(np.array_equal(opt.state[0][k], v) for k, v in state.items())


# ---------------------------------------------------------------- bad input
def _snapshot(opt, p):
    return p.tobytes(), {i: {k: np.asarray(v).tobytes() for k, v in s.items()} for i, s in opt.state.items()}


GOOD = (np.array([0, 3]), np.ones((2, 4), np.float32))
BAD = [
    ((np.array([0, 10]), GOOD[1]), IndexError, r"indices\[1\]: row id 10 is out of range .* 10 rows"),
    ((np.array([-1, 2]), GOOD[1]), IndexError, r"indices\[0\]: row id -1 is out of range"),
    ((np.array([0.0, 1.0]), GOOD[1]), TypeError, "indices: expected integer row ids, got dtype float64"),
    ((np.array([True, False]), GOOD[1]), TypeError, "indices: expected integer row ids, got dtype bool"),
    ((np.array([[0, 1]]), GOOD[1]), ValueError, r"indices: expected a 1-D array of row ids, got shape \(1, 2\)"),
    (("01", GOOD[1]), TypeError, "indices: expected an integer array"),
    ((GOOD[0], np.ones((2, 3), np.float32)), ValueError, r"grad_rows: expected shape \(2, 4\)"),
    ((GOOD[0], np.ones((3, 4), np.float32)), ValueError, r"grad_rows: expected shape \(2, 4\)"),
    ((GOOD[0], np.ones((2, 4), np.float64)), TypeError, "grad_rows: expected dtype float32"),
    ((GOOD[0], np.ones((4, 4), np.float32)[::2]), ValueError, "grad_rows: expected a C-contiguous"),
    ((GOOD[0], [[1.0] * 4] * 2), TypeError, "grad_rows: expected a NumPy array"),
]


@pytest.mark.parametrize("args,error,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_raises_and_changes_nothing(args, error, match):
    p = table(10, 4, np.float32)
    opt = fastlr.Adam(p)
    opt.step_rows(*GOOD)
    before = _snapshot(opt, p)
    with pytest.raises(error, match=match):
        opt.step_rows(*args)
    assert _snapshot(opt, p) == before


def test_bad_table_or_param_choice():
    with pytest.raises(ValueError, match=r"params\[0\]: step_rows needs a 2-D table .* got shape \(5,\)"):
        fastlr.Adam(np.zeros(5, np.float32)).step_rows([0], np.zeros((1, 1), np.float32))
    a, b = np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32)
    opt = fastlr.SGD([a, b], lr=1.0)
    with pytest.raises(ValueError, match="param: the optimizer has 2 params"):
        opt.step_rows([0], np.ones((1, 2), np.float32))
    with pytest.raises(IndexError, match=r"param: expected an index in \[0, 2\)"):
        opt.step_rows([0], np.ones((1, 2), np.float32), param=2)
    with pytest.raises(ValueError, match="not one of the optimizer's params"):
        opt.step_rows([0], np.ones((1, 2), np.float32), param=np.zeros((3, 2), np.float32))
    opt.step_rows([3], np.ones((1, 2), np.float32), param=b)
    opt.step_rows([0], np.ones((1, 2), np.float32), param=0)
    assert b[3].tolist() == [-1.0, -1.0] and a[0].tolist() == [-1.0, -1.0] and not a[1:].any()
