"""The tuned CPU paths give the same numbers: serial and parallel kernels, one flat buffer
and many arrays, the stream ceiling kernels. Tiny sizes only."""
import numpy as np
import pytest

from fastlr import _launch, optim
from fastlr.kernels.rules import TWO_PASS
from fastlr.specs import SPECS

# (Muon: 2-D params only, tests/test_muon.py)
CLASSES = [getattr(optim, n) for n in optim.__all__ if n != "Optimizer" and not SPECS[n].matrix_only]
# per-tensor norms (Lamb, Lars, Mars) make many arrays differ from one flat buffer by design
ELEMENTWISE = [c for c in CLASSES if c.spec.rule({**c.spec.defaults, **c.spec.group_defaults(c.spec.defaults)})
               not in TWO_PASS and c.spec.launch is None]   # (Adafactor: per-tensor RMS too)


def _run(cls, shapes, dtype, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = cls(params)
    if hasattr(opt, "train"):   # schedule-free
        opt.train()
    for _ in range(steps):
        opt.step([rng.standard_normal(s).astype(dtype) for s in shapes])
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_serial_and_parallel_paths_agree(cls, dtype, monkeypatch):
    monkeypatch.setattr(_launch, "SERIAL_BELOW", 1 << 40)   # every buffer on the serial kernel
    serial = _run(cls, [(1000,)], dtype)
    monkeypatch.setattr(_launch, "SERIAL_BELOW", 0)         # every buffer on the prange kernel
    parallel = _run(cls, [(1000,)], dtype)
    np.testing.assert_array_equal(serial[0], parallel[0])


@pytest.mark.parametrize("cls", ELEMENTWISE, ids=lambda c: c.__name__)
def test_many_arrays_equal_one_flat_buffer(cls):
    """An elementwise rule over 3 arrays gives the same values as over their concatenation
    (global-norm clipping aside, which is off by default)."""
    shapes = [(7,), (30,), (5, 4)]
    many = _run(cls, shapes, np.float32)
    rng = np.random.default_rng(0)
    flat = np.concatenate([rng.standard_normal(s).astype(np.float32).ravel() for s in shapes])
    opt = cls(flat)
    if hasattr(opt, "train"):
        opt.train()
    for _ in range(3):
        opt.step(np.concatenate([rng.standard_normal(s).astype(np.float32).ravel()
                                 for s in shapes]))
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in many]), flat)


def test_hyperparameters_changed_between_steps_take_effect_despite_the_caches():
    """The step caches (resolved groups, ensured states) are keyed on the group's contents:
    edits in place, a replaced options pair, integer values and a toggled state all apply."""
    from fastlr import Adam
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(50).astype(np.float64) for _ in range(6)]
    changes = [{}, {"lr": 1e-2}, {"weight_decay": 1}, {"betas": (0.5, 0.9)}, {"amsgrad": True}, {"lr": 0}]
    p = np.ones(50)
    cached = Adam(p)
    for g, change in zip(grads, changes):
        cached.param_groups[0].update(change)
        cached.step(g)
    q = np.ones(50)
    fresh_state = None
    for t, g in enumerate(grads):
        hp = {k: v for k, v in {**cached.defaults, **{k: v for c in changes[:t + 1] for k, v in c.items()}}.items()
              if k != "params"}
        fresh = Adam(q, **hp)
        if fresh_state is not None:
            fresh.load_state_dict(fresh_state)
            fresh.param_groups[0].update(hp)
        fresh.step(g)
        fresh_state = fresh.state_dict()
    np.testing.assert_array_equal(p, q)
    assert np.all(p == q) and cached.state[0]["step"] == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_of_squares_do_not_depend_on_the_thread_count_and_keep_nan_and_inf(dtype):
    """The reassociated (vectorized) sums of squares: the same value on 1 and 2 threads, serial or parallel,
    flat or over a segment table, within float64 rounding of the exact sum; NaN and Inf still come through."""
    import math

    import numba

    from fastlr.engine import CHUNK
    from fastlr.kernels import cpu
    g = np.random.default_rng(0).standard_normal(3 * CHUNK + 12345).astype(dtype)
    work = cpu.make_work(np.array([g.size], np.int64), CHUNK)

    def sums(x):
        out = np.empty(work.shape[0])
        cpu.table_sumsq(np.array([[0, x.ctypes.data]], np.int64), work, 1, x[:0], out)
        return cpu.sumsq(x), cpu.sumsq_serial(x), float(out.sum())

    before = numba.get_num_threads()
    try:
        seen = set()
        for threads in {1, numba.config.NUMBA_NUM_THREADS}:
            numba.set_num_threads(threads)
            seen.add(sums(g))
    finally:
        numba.set_num_threads(before)
    assert len(seen) == 1
    flat, serial, table = seen.pop()
    assert flat == serial
    exact = math.fsum(np.square(g.astype(np.float64)).tolist())
    assert table == pytest.approx(exact, rel=1e-13) and flat == pytest.approx(exact, rel=1e-13)
    for bad, expected in ((np.nan, math.isnan), (np.inf, math.isinf), (-np.inf, math.isinf)):
        h = g.copy()
        h[CHUNK + 7] = bad
        assert all(expected(s) for s in sums(h))
