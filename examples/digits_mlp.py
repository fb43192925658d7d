"""Train the demo's NumPy MLP on scikit-learn digits with one fastlr optimizer.

    python examples/digits_mlp.py --optimizer AdamW --epochs 30 [--lr 3e-3] [--plot mlp.png]

The model, data split and training loop come from ``fastlr.demo`` (``MLP``,
``load_digits_split``, ``train``): all weights in one flat float32 buffer, NumPy forward
and backward, ``opt.step(model.grad)`` per mini-batch. By default the optimizer uses the
demo's schedule; ``--lr`` gives a warmup-cosine schedule peaking at that value instead.
"""
import argparse
import math

import numpy as np

from fastlr import schedules
from fastlr.demo import MLP, OPTIMIZERS, load_digits_split, make_optimizers, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", default="Adam",
                   help="one of " + ", ".join(OPTIMIZERS) + " (default Adam)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden layer sizes (default 64)")
    p.add_argument("--lr", type=float, default=None, help="peak lr of a warmup-cosine schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="save loss / accuracy curves to this PNG")
    p.add_argument("--quick", action="store_true", help="2 epochs (for tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 2

    data = load_digits_split(seed=args.seed)
    total = math.ceil(len(data[0]) / args.batch_size) * args.epochs
    opts = make_optimizers(total)
    if args.optimizer not in opts:
        p.error(f"--optimizer: choose from {', '.join(opts)}")
    factory, sched = opts[args.optimizer]
    if args.lr is not None:
        sched = schedules.warmup_cosine_decay_schedule(0.0, args.lr, max(total // 20, 1), total,
                                                       end_value=args.lr * 1e-3)
    model = MLP(sizes=(data[0].shape[1], *args.hidden, 10), seed=args.seed)
    scratch = model.params.copy()
    factory(scratch, sched).step(np.zeros_like(scratch))   # load the compiled kernels (untimed)
    opt = factory(model.params, sched)
    print(f"{args.optimizer}: MLP {model.sizes}, {model.params.size:,} params in one flat "
          f"{model.params.dtype} buffer, {total} steps")
    hist = train(model, opt, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    for step, loss, acc in zip(hist["steps"], hist["train_loss"], hist["test_acc"]):
        print(f"  step {step:>5}  train loss {loss:.4f}  test acc {100 * acc:.2f}%")
    print(f"final: train loss {hist['final_train_loss']:.4f}, test accuracy "
          f"{100 * hist['test_accuracy']:.2f}%, {hist['steps_per_s']:.0f} steps/s")
    if args.plot:
        from fastlr.demo import plot_curves
        plot_curves({args.optimizer: hist}, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
