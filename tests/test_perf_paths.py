"""The tuned CPU paths give the same numbers: serial and parallel kernels, one flat buffer
and many arrays, the stream ceiling kernels. Tiny sizes only."""
import numpy as np
import pytest

from fastlr import _launch, optim

CLASSES = [getattr(optim, n) for n in optim.__all__ if n != "Optimizer"]


def _run(cls, shapes, dtype, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = cls(params)
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


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_many_arrays_equal_one_flat_buffer(cls):
    """An elementwise rule over 3 arrays gives the same values as over their concatenation
    (global-norm clipping aside, which is off by default)."""
    shapes = [(7,), (30,), (5, 4)]
    many = _run(cls, shapes, np.float32)
    rng = np.random.default_rng(0)
    flat = np.concatenate([rng.standard_normal(s).astype(np.float32).ravel() for s in shapes])
    opt = cls(flat)
    for _ in range(3):
        opt.step(np.concatenate([rng.standard_normal(s).astype(np.float32).ravel()
                                 for s in shapes]))
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in many]), flat)
