"""Demo: a NumPy MLP trained on scikit-learn's digits with nine fastlr optimizers (AdamW with 8-bit states too).

    fastlr demo --out demo-out            # or: python -m fastlr.demo --out demo-out

The model (64-64-10, ReLU, softmax cross-entropy) keeps all its weights in ONE flat
float32 buffer; the layers' weight matrices and biases are views of it, and so are the
gradients, so every optimizer updates the whole model with one ``opt.step(grad)``.
Forward and backward passes are plain NumPy.

Prints a table (final train loss, test accuracy, steps/s and seconds of training steps per
optimizer: forward, backward and opt.step, neither evaluation nor compilation) and writes
``<out>/curves.png`` (train loss and test accuracy vs step) and ``<out>/schedules.png``
(each optimizer's learning rate vs step).

The model and training helpers (``load_digits_split``, ``MLP``, ``train``) are reused by
``examples/digits_mlp.py`` and ``examples/optuna_search.py``.
"""
import argparse
import contextlib
import math
import os
import sys
import time

import numpy as np

import fastlr
from fastlr import schedules

__all__ = ["OPTIMIZERS", "load_digits_split", "MLP", "train", "make_optimizers", "run", "format_table", "main"]


OPTIMIZERS = ("SGD", "SGD+Nesterov", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "AdamW-8bit", "Lion")


# ---------------------------------------------------------------- data
def load_digits_split(test_size=0.25, seed=0, dtype=np.float32):
    """scikit-learn's bundled 8x8 digits: (X_train, y_train, X_test, y_test).

    Stratified split with a fixed seed; features standardized with the training set's
    mean and standard deviation (constant pixels are left at 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(d.data, d.target, test_size=test_size,
                                              random_state=seed, stratify=d.target)
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    return (X_tr.astype(dtype), y_tr.astype(np.int64), X_te.astype(dtype), y_te.astype(np.int64))


# ---------------------------------------------------------------- model
class MLP:
    """A ReLU MLP whose weights live in one flat buffer ``self.params``.

    ``self.layers`` is a list of ``(W, b)`` views of ``params``; ``self.grad`` is a flat
    buffer of the same size with the same views (``self.grad_layers``). ``loss_and_grad``
    fills ``self.grad`` and returns the mean cross-entropy, so a training step is::

        loss = model.loss_and_grad(X, y)
        opt.step(model.grad)               # opt = fastlr.Adam(model.params, ...)
    """

    def __init__(self, sizes=(64, 64, 10), seed=0, dtype=np.float32):
        self.sizes = tuple(int(s) for s in sizes)
        shapes = [((a, b), (b,)) for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        n = sum(a * b + b for (a, b), _ in shapes)
        self.params = np.zeros(n, dtype)
        self.grad = np.zeros(n, dtype)
        self.layers = self._views(self.params, shapes)
        self.grad_layers = self._views(self.grad, shapes)
        rng = np.random.default_rng(seed)
        for W, _ in self.layers:                       # He initialisation, zero biases
            W[...] = rng.standard_normal(W.shape) * math.sqrt(2.0 / W.shape[0])

    @staticmethod
    def _views(flat, shapes):
        views, at = [], 0
        for wshape, bshape in shapes:
            k = wshape[0] * wshape[1]
            W = flat[at:at + k].reshape(wshape)
            at += k
            b = flat[at:at + bshape[0]]
            at += bshape[0]
            views.append((W, b))
        return views

    def logits(self, X):
        h = X
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h

    def predict(self, X):
        return self.logits(X).argmax(1)

    def accuracy(self, X, y):
        return float((self.predict(X) == y).mean())

    def loss(self, X, y):
        z = self.logits(X).astype(np.float64)
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    def loss_and_grad(self, X, y):
        """Mean softmax cross-entropy on (X, y); writes its gradient into ``self.grad``."""
        acts = [X]
        h = X
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        z = h - h.max(1, keepdims=True)
        e = np.exp(z)
        s = e.sum(1, keepdims=True)
        rows = np.arange(len(y))
        loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
        delta = e / s
        delta[rows, y] -= 1
        delta /= len(y)
        for i in range(len(self.layers) - 1, -1, -1):
            W, _ = self.layers[i]
            gW, gb = self.grad_layers[i]
            np.matmul(acts[i].T, delta, out=gW)
            np.sum(delta, axis=0, out=gb)
            if i:
                delta = (delta @ W.T) * (acts[i] > 0)
        return loss


# ---------------------------------------------------------------- training
def train(model, opt, data, epochs=20, batch_size=64, seed=0, eval_every=None, progress=None):
    """Mini-batch training of ``model`` with ``opt`` (built over ``model.params``).

    data: (X_train, y_train, X_test, y_test). Every ``eval_every`` steps (default: twice
    per epoch) and at the end, records the full training loss and the test accuracy.
    progress: optional tqdm bar, advanced by one per step. Returns a dict with
    ``steps``, ``train_loss`` and ``test_acc`` (lists, one entry per evaluation),
    ``final_train_loss``, ``test_accuracy``, ``seconds`` (wall time, evaluations included),
    ``step_seconds`` and ``steps_per_s`` (training steps only: forward, backward, opt.step)."""
    X_tr, y_tr, X_te, y_te = data
    n = len(X_tr)
    per_epoch = math.ceil(n / batch_size)
    eval_every = eval_every or max(1, per_epoch // 2)
    rng = np.random.default_rng(seed)
    hist = {"steps": [], "train_loss": [], "test_acc": []}

    def evaluate(step):
        hist["steps"].append(step)
        hist["train_loss"].append(model.loss(X_tr, y_tr))
        hist["test_acc"].append(model.accuracy(X_te, y_te))

    step, busy, t_start = 0, 0.0, time.perf_counter()
    with _one_blas_thread():
        evaluate(0)
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                t = time.perf_counter()
                model.loss_and_grad(X_tr[idx], y_tr[idx])
                opt.step(model.grad)
                busy += time.perf_counter() - t
                step += 1
                if progress is not None:
                    progress.update(1)
                if step % eval_every == 0:
                    evaluate(step)
        if hist["steps"][-1] != step:
            evaluate(step)
    hist.update(final_train_loss=hist["train_loss"][-1], test_accuracy=hist["test_acc"][-1],
                seconds=time.perf_counter() - t_start, step_seconds=busy,
                steps_per_s=step / busy if busy else float("nan"), total_steps=step)
    return hist


def _one_blas_thread():
    """The MLP's matmuls are small (at most 1347 x 64 x 64): one BLAS thread runs them without fighting
    numba's threads for the cores (measured on 2 busy cores: the whole demo 18-20 s -> 8.5 s)."""
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn, which the demo needs
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def make_optimizers(total_steps):
    """{name: (optimizer factory params -> optimizer, lr schedule)} for the demo."""
    T = max(int(total_steps), 2)
    W = max(T // 20, 1)                      # warmup: 5% of the run
    S = {
        "SGD": schedules.step_lr(0.2, step_size=math.ceil(T / 3), gamma=0.3),
        "SGD+Nesterov": schedules.cosine_decay_schedule(0.05, T, alpha=0.01),
        "Adagrad": schedules.cosine_decay_schedule(0.05, T, alpha=0.1),
        "RMSprop": schedules.warmup_cosine_decay_schedule(0.0, 2e-3, W, T, end_value=1e-5),
        "Adadelta": schedules.constant_schedule(1.0),
        "Adam": schedules.warmup_cosine_decay_schedule(0.0, 3e-3, W, T, end_value=1e-5),
        "AdamW": schedules.warmup_cosine_decay_schedule(0.0, 3e-3, W, T, end_value=1e-5),
        "AdamW-8bit": schedules.warmup_cosine_decay_schedule(0.0, 3e-3, W, T, end_value=1e-5),
        "Lion": schedules.warmup_cosine_decay_schedule(0.0, 1e-3, W, T, end_value=1e-6),
    }
    LABELS = {
        "SGD": "step_lr(0.2, T/3, 0.3)", "SGD+Nesterov": "cosine_decay(0.05)",
        "Adagrad": "cosine_decay(0.05, alpha=0.1)", "RMSprop": "warmup_cosine_decay(2e-3)",
        "Adadelta": "constant(1.0)", "Adam": "warmup_cosine_decay(3e-3)",
        "AdamW": "warmup_cosine_decay(3e-3)", "AdamW-8bit": "warmup_cosine_decay(3e-3)",
        "Lion": "warmup_cosine_decay(1e-3)",
    }
    F = {
        "SGD": lambda p, lr: fastlr.SGD(p, lr=lr),
        "SGD+Nesterov": lambda p, lr: fastlr.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        "Adagrad": lambda p, lr: fastlr.Adagrad(p, lr=lr),
        "RMSprop": lambda p, lr: fastlr.RMSprop(p, lr=lr),
        "Adadelta": lambda p, lr: fastlr.Adadelta(p, lr=lr),
        "Adam": lambda p, lr: fastlr.Adam(p, lr=lr),
        "AdamW": lambda p, lr: fastlr.AdamW(p, lr=lr, weight_decay=1e-2),
        # the same with 8-bit block-wise states (the model's 4810 params: one buffer, >= state_min_size)
        "AdamW-8bit": lambda p, lr: fastlr.AdamW(p, lr=lr, weight_decay=1e-2, state_precision="8bit"),
        "Lion": lambda p, lr: fastlr.Lion(p, lr=lr, weight_decay=1e-2),
    }
    for name, sched in S.items():   # a readable label for the schedules plot
        sched.label = LABELS[name]
    return {name: (F[name], S[name]) for name in S}


def run(epochs=20, batch_size=64, seed=0, names=None, quick=False, progress=True):
    """Train one fresh MLP (same initial weights) per optimizer. Returns (results, total_steps)
    with results {name: history from ``train`` plus "schedule"}."""
    data = load_digits_split(seed=seed)
    if quick:
        X_tr, y_tr, X_te, y_te = data
        data = (X_tr[:256], y_tr[:256], X_te, y_te)
    per_epoch = math.ceil(len(data[0]) / batch_size)
    total = per_epoch * epochs
    opts = make_optimizers(total)
    names = list(names or opts)
    unknown = [n for n in names if n not in opts]
    if unknown:
        raise ValueError(f"optimizers: unknown {unknown}; choose from {list(opts)}")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total * len(names), unit="step", desc="fastlr demo", file=sys.stderr,
                   dynamic_ncols=True)
    results = {}
    try:
        for name in names:
            factory, sched = opts[name]
            scratch = np.zeros(MLP(seed=seed).params.size, np.float32)
            factory(scratch, sched).step(np.zeros_like(scratch))   # load compiled kernels, untimed
            if bar is not None:
                bar.set_postfix_str(name)
            model = MLP(seed=seed)
            opt = factory(model.params, sched)
            hist = train(model, opt, data, epochs=epochs, batch_size=batch_size, seed=seed,
                         progress=bar)
            hist["schedule"] = sched
            results[name] = hist
    finally:
        if bar is not None:
            bar.close()
    return results, total


def format_table(results):
    """One row per optimizer; steps/s and "step s" count training steps only (forward, backward,
    opt.step), not the evaluations, nor compilation (kernels are loaded before the timing)."""
    lines = [f"{'optimizer':<14} {'train loss':>10} {'test acc':>9} {'steps/s':>9} {'step s':>7}"]
    for name, r in results.items():
        lines.append(f"{name:<14} {r['final_train_loss']:>10.4f} {100 * r['test_accuracy']:>8.2f}% "
                     f"{r['steps_per_s']:>9.0f} {r['step_seconds']:>7.2f}")
    lines.append("(steps/s, step s: forward + backward + opt.step only; no evaluation, no compilation)")
    return "\n".join(lines)


def plot_curves(results, path, dpi=120):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    for name, r in results.items():
        ax1.plot(r["steps"], r["train_loss"], label=name)
        ax2.plot(r["steps"], [100 * a for a in r["test_acc"]], label=name)
    ax1.set(xlabel="step", ylabel="train loss (full set)", yscale="log", title="Training loss")
    low = min(80.0, min(100 * r["test_accuracy"] for r in results.values()) - 5)
    ax2.set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy (digits, 25% held out)",
            ylim=(max(low, 0.0), 100))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8, ncol=2)
    fig.suptitle("fastlr: 64-64-10 NumPy MLP on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def _schedule_name(sched):
    """'warmup_cosine_decay_schedule' for the schedule that function built (its repr is the call)."""
    built = getattr(sched, "built_as", None)
    return built.split("(", 1)[0] if built else getattr(sched, "__name__", type(sched).__name__)


def plot_schedules(results, total, path, dpi=120):
    from matplotlib.figure import Figure
    names = list(results)
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    t = np.arange(total)
    for ax, name in zip(axes, names):
        sched = results[name]["schedule"]
        ax.plot(t, [sched(int(i)) for i in t])
        kind = getattr(sched, "label", None) or _schedule_name(sched)
        ax.set_title(f"{name}: {kind}", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle("learning rate vs step (fastlr.schedules)")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastlr demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per optimizer (default 20; 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizers", default=None,
                   help=f"comma-separated subset, e.g. Adam,Lion (default: all {len(OPTIMIZERS)}: "
                        f"{','.join(OPTIMIZERS)})")
    p.add_argument("--quick", action="store_true", help="tiny run (256 training images, 1 epoch), for tests")
    p.add_argument("--dpi", type=int, default=120, help="resolution of the PNGs (default 120)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 20)
    if epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    names = [s.strip() for s in args.optimizers.split(",")] if args.optimizers else None
    try:   # before training: a bad --out is a usage error, not a traceback after a minute's work
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise NotADirectoryError(f"{args.out!r} is not a directory")
        os.makedirs(args.out, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise PermissionError(f"{args.out!r} is not writable")
    except OSError as e:
        p.error(f"--out: cannot write to {args.out!r}: {e}")
    t0 = time.perf_counter()
    try:
        results, total = run(epochs=epochs, batch_size=args.batch_size, seed=args.seed, names=names,
                             quick=args.quick, progress=not args.no_progress)
    except ValueError as e:
        p.error(str(e))
    print(format_table(results))
    curves, scheds = os.path.join(args.out, "curves.png"), os.path.join(args.out, "schedules.png")
    plot_curves(results, curves, dpi=args.dpi)
    plot_schedules(results, total, scheds, dpi=args.dpi)
    print(f"wrote {curves} and {scheds} ({time.perf_counter() - t0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
