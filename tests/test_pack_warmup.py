"""fastlr.pack (many arrays -> one flat buffer with views) and fastlr.warmup."""
import numpy as np
import pytest

import fastlr
from cases import optimizer
from fastlr.pack import pack, pack_like
from fastlr.warmup import warmup


def test_packed_step_equals_separate_arrays():
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    flat, views = pack(params)
    gflat, gviews = pack(grads)
    assert all(np.shares_memory(v, flat) for v in views)
    separate = [p.copy() for p in params]
    opt1, opt2 = fastlr.Adam(separate, lr=0.1), fastlr.Adam(flat, lr=0.1)
    for _ in range(3):
        opt1.step(grads)
        opt2.step(gflat)
    for a, v in zip(separate, views):
        assert a.tobytes() == v.tobytes()


def test_pack_like_and_errors():
    flat, views = pack_like([np.ones(3), np.ones((2, 2))])
    assert flat.shape == (7,) and not flat.any() and views[1].shape == (2, 2)
    with pytest.raises(TypeError, match=r"arrays\[1\]: expected dtype float64"):
        pack([np.ones(3), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        pack([])


def test_warmup_readies_every_kernel():
    from fastlr.kernels import cpu
    count = warmup(dtypes=("float32",))
    kernels = list(cpu.KERNELS.values()) + list(cpu.TABLE_KERNELS.values())
    assert count == len(kernels)
    for k in kernels:   # compiled (or loaded) for float32 arrays
        assert any("float32" in str(sig) for sig in k.signatures), k


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "NAdam", "Lion"])
def test_step_allocates_nothing_proportional_to_the_buffer(name):
    """No temporaries of the buffer's size inside a step (states exist after the first step)."""
    import tracemalloc
    n = 1 << 20
    w, g = np.zeros(n, np.float32), np.ones(n, np.float32)
    opt = optimizer(fastlr, name)(w)
    opt.step(g)
    tracemalloc.start()
    opt.step(g)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.01 * w.nbytes, peak
