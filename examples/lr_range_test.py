"""Learning-rate range test (fastlr.lr_find) on the digits MLP, then training with its suggestion.

    python examples/lr_range_test.py [--out lr_range_test.png] [--num-steps 100] [--quick]

For Adam and for SGD with Nesterov momentum: ``lr_find`` raises the lr exponentially from
``--start-lr`` to ``--end-lr`` over mini-batches, records the smoothed loss, stops once it
diverges, restores params and optimizer state, and suggests the lr of steepest descent.
Each optimizer is then trained for ``--epochs`` with a warmup-cosine schedule peaking at
the suggestion. Both loss-vs-lr curves are saved to one PNG. The range test uses larger
mini-batches (``--find-batch-size``, 256) than training: with noisy small-batch losses the
first few points can look like the steepest descent.
"""
import argparse
import math

import numpy as np

import fastlr
from fastlr import schedules
from fastlr.demo import MLP, load_digits_split, train
from fastlr.lr_find import lr_find


def minibatch_grads(model, X, y, batch_size, rng):
    """grad_fn() for lr_find: (loss, grad) of `model` on a fresh random mini-batch each call."""
    def grad_fn():
        idx = rng.choice(len(X), min(batch_size, len(X)), replace=False)
        return model.loss_and_grad(X[idx], y[idx]), model.grad
    return grad_fn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="lr_range_test.png")
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10, help="training epochs with the suggested lr")
    p.add_argument("--batch-size", type=int, default=64, help="training mini-batch size")
    p.add_argument("--find-batch-size", type=int, default=256,
                   help="mini-batch size during the range test (larger = less noisy curve; default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="30 lr steps, 1 epoch (for tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_steps, args.epochs = 30, 1

    data = load_digits_split(seed=args.seed)
    X_tr, y_tr = data[0], data[1]
    candidates = {
        "Adam": lambda w, lr: fastlr.Adam(w, lr=lr),
        "SGD+Nesterov": lambda w, lr: fastlr.SGD(w, lr=lr, momentum=0.9, nesterov=True),
    }
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6 * len(candidates), 4))
    axes = fig.subplots(1, len(candidates))
    total = math.ceil(len(X_tr) / args.batch_size) * args.epochs
    for ax, (name, make) in zip(np.atleast_1d(axes), candidates.items()):
        model = MLP(seed=args.seed)
        opt = make(model.params, 1e-3)
        grad_fn = minibatch_grads(model, X_tr, y_tr, args.find_batch_size, np.random.default_rng(args.seed))
        before = model.params.copy()
        res = lr_find(opt, grad_fn, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.num_steps)
        assert np.array_equal(model.params, before), "lr_find restores the params"
        res.plot(ax=ax)
        ax.set_title(f"{name}: lr range test ({len(res.lrs)} steps{', diverged' if res.diverged else ''})")
        lr = res.suggestion
        print(f"{name:<13} tried lr {res.lrs[0]:.1e} .. {res.lrs[-1]:.1e} ({len(res.lrs)} steps, "
              f"diverged: {res.diverged}); suggestion: {lr:.3g}")
        if lr is None:
            continue
        sched = schedules.warmup_cosine_decay_schedule(0.0, lr, max(total // 20, 1), max(total, 2),
                                                       end_value=lr * 1e-3)
        opt = make(model.params, sched)
        hist = train(model, opt, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
        print(f"{'':<13} trained {args.epochs} epoch(s) with warmup cosine to {lr:.3g}: train loss "
              f"{hist['final_train_loss']:.4f}, test accuracy {100 * hist['test_accuracy']:.2f}%")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
