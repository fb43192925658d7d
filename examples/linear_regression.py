"""Linear regression on NumPy data with SGD + momentum and with Adam.

    python examples/linear_regression.py [--steps 300] [--quick]

Fits w in y = X w + noise by mini-batch gradient descent on the mean squared error,
with ``fastlr.SGD(momentum=0.9)`` and ``fastlr.Adam`` (both with a cosine-decayed lr),
and compares each with the least-squares solution from ``np.linalg.lstsq``.
"""
import argparse

import numpy as np

import fastlr
from fastlr import schedules


def make_data(n=4096, d=32, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    y = X @ w_true + noise * rng.standard_normal(n).astype(np.float32)
    return X, y


def mse(X, y, w):
    r = X.astype(np.float64) @ w - y
    return float(r @ r / len(y))


def fit(X, y, make_optimizer, steps, batch_size=128, seed=0):
    """Mini-batch gradient descent on 0.5 * mean((X w - y)^2); returns w and the loss curve."""
    rng = np.random.default_rng(seed)
    w = np.zeros(X.shape[1], np.float32)
    grad = np.empty_like(w)
    opt = make_optimizer(w)
    curve = []
    for _ in range(steps):
        idx = rng.integers(0, len(y), batch_size)
        Xb, yb = X[idx], y[idx]
        r = Xb @ w - yb
        np.matmul(Xb.T, r, out=grad)
        grad /= batch_size
        opt.step(grad)
        curve.append(mse(X, y, w))
    return w, curve


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="small run (100 steps), for tests")
    args = p.parse_args(argv)
    steps = 100 if args.quick else args.steps

    X, y = make_data()
    w_ls = np.linalg.lstsq(X.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    best = mse(X, y, w_ls)
    optimizers = {
        "SGD momentum=0.9": lambda w: fastlr.SGD(w, lr=schedules.cosine_decay_schedule(0.05, steps, alpha=0.01),
                                                 momentum=0.9),
        "Adam": lambda w: fastlr.Adam(w, lr=schedules.cosine_decay_schedule(0.1, steps, alpha=0.01)),
    }
    print(f"least squares: mse {best:.5f}")
    results = {}
    for name, make in optimizers.items():
        w, curve = fit(X, y, make, steps)
        err = float(np.linalg.norm(w - w_ls) / np.linalg.norm(w_ls))
        results[name] = {"mse": curve[-1], "excess": curve[-1] - best, "rel_error": err, "curve": curve}
        print(f"{name:<17} mse {curve[-1]:.5f} (+{curve[-1] - best:.1e} over least squares), "
              f"|w - w_ls| / |w_ls| = {err:.1e} after {steps} steps")
    return results


if __name__ == "__main__":
    main()
