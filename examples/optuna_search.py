"""Optuna search over Adam's lr and betas on the digits MLP (fastlr.demo's model).

    python examples/optuna_search.py [--epochs 8] [--trials 12] [--quick]

Two studies of the same objective (validation accuracy after ``--epochs`` epochs of Adam
with a warmup-cosine schedule peaking at ``lr``, on a validation split carved out of the
training set): ``optuna.samplers.GridSampler`` over a small grid of (lr, beta1, beta2), and
``optuna.samplers.RandomSampler`` with log-uniform lr and uniform betas for ``--trials``
trials. The best parameters of each are then scored once on the held-out test set.
"""
import argparse
import math

import numpy as np

import fastlr
from fastlr import schedules
from fastlr.demo import MLP, load_digits_split, train


def fit(params, data, epochs, batch_size=64, seed=0):
    """Train a fresh MLP with Adam(lr schedule peaking at params['lr'], betas); return its history."""
    total = max(math.ceil(len(data[0]) / batch_size) * epochs, 2)
    lr = schedules.warmup_cosine_decay_schedule(0.0, params["lr"], max(total // 20, 1), total,
                                                end_value=params["lr"] * 1e-3)
    model = MLP(seed=seed)
    opt = fastlr.Adam(model.params, lr=lr, betas=(params["beta1"], params["beta2"]))
    return train(model, opt, data, epochs=epochs, batch_size=batch_size, seed=seed, eval_every=10**9)


def main(argv=None):
    import optuna

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--trials", type=int, default=12, help="RandomSampler trials")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny grid, 2 random trials, 1 epoch (for tests)")
    args = p.parse_args(argv)
    grid = {"lr": [1e-3, 3e-3, 1e-2], "beta1": [0.8, 0.9], "beta2": [0.99, 0.999]}
    if args.quick:
        args.epochs, args.trials = 1, 2
        grid = {"lr": [3e-3, 1e-2], "beta1": [0.9], "beta2": [0.999]}
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    X_tr, y_tr, X_te, y_te = load_digits_split(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X_tr))
    n_val = len(X_tr) // 5
    val, fit_idx = order[:n_val], order[n_val:]
    search_data = (X_tr[fit_idx], y_tr[fit_idx], X_tr[val], y_tr[val])      # test set untouched

    def objective(trial):
        params = {"lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
                  "beta1": trial.suggest_float("beta1", 0.8, 0.95),
                  "beta2": trial.suggest_float("beta2", 0.99, 0.9999)}
        hist = fit(params, search_data, args.epochs, seed=args.seed)
        trial.set_user_attr("train_loss", hist["final_train_loss"])
        return hist["test_accuracy"]   # accuracy on search_data's 4th/5th items: the validation split

    n_grid = math.prod(len(v) for v in grid.values())
    studies = {
        f"GridSampler ({n_grid} points)": (optuna.samplers.GridSampler(grid, seed=args.seed), n_grid),
        f"RandomSampler ({args.trials} trials)": (optuna.samplers.RandomSampler(seed=args.seed), args.trials),
    }
    print(f"Adam on the digits MLP, {args.epochs} epoch(s) per trial; "
          f"{len(fit_idx)} train / {n_val} validation / {len(X_te)} test images")
    for name, (sampler, n_trials) in studies.items():
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective, n_trials=n_trials)
        print(f"\n{name}")
        print(f"  {'lr':>9} {'beta1':>6} {'beta2':>7} {'val acc':>8}")
        for t in sorted(study.trials, key=lambda t: -(t.value or 0)):
            print(f"  {t.params['lr']:>9.2e} {t.params['beta1']:>6.3f} {t.params['beta2']:>7.4f} "
                  f"{100 * t.value:>7.2f}%")
        best = study.best_params
        hist = fit(best, (X_tr, y_tr, X_te, y_te), args.epochs, seed=args.seed)
        print(f"  best: lr={best['lr']:.2e} betas=({best['beta1']:.3f}, {best['beta2']:.4f}), "
              f"val acc {100 * study.best_value:.2f}%; retrained on the full training set: "
              f"test accuracy {100 * hist['test_accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
