"""Plot every learning-rate schedule of fastlr.schedules to one PNG.

    python examples/schedule_gallery.py [--out schedule_gallery.png] [--steps 1000] [--quick]

Each panel is ``schedule(t)`` for t = 0 .. steps-1 with illustrative arguments (written
in the panel's title). ``ReduceLROnPlateau`` is not a pure schedule: its panels feed it a
synthetic validation loss that plateaus, once with a float lr and once wrapping a cosine
schedule (its ``ScaledSchedule``). Any name of ``fastlr.schedules.__all__`` without a
panel here is listed at the end, so new schedules do not go unnoticed.
"""
import argparse
import math

import numpy as np

import fastlr
from fastlr import schedules as S


def gallery(T):
    """{name: (title, schedule or callable t -> lr over range(T))}."""
    W = T // 10
    g = {
        "constant_schedule": ("constant_schedule(0.1)", S.constant_schedule(0.1)),
        "polynomial_schedule": ("polynomial_schedule(0.1, 0.001, power=2, T)",
                                S.polynomial_schedule(0.1, 0.001, 2, T)),
        "linear_schedule": ("linear_schedule(0.1, 0.0, T, begin=T/10)", S.linear_schedule(0.1, 0.0, T - W, W)),
        "exponential_decay": ("exponential_decay(0.1, T/10, 0.7) + staircase",
                              S.exponential_decay(0.1, W, 0.7),
                              S.exponential_decay(0.1, W, 0.7, staircase=True)),
        "cosine_decay_schedule": ("cosine_decay_schedule(0.1, T, alpha=0.1)",
                                  S.cosine_decay_schedule(0.1, T, alpha=0.1)),
        "warmup_constant_schedule": ("warmup_constant_schedule(0, 0.1, T/10)",
                                     S.warmup_constant_schedule(0.0, 0.1, W)),
        "warmup_cosine_decay_schedule": ("warmup_cosine_decay_schedule(0, 0.1, T/10, T, 1e-3)",
                                         S.warmup_cosine_decay_schedule(0.0, 0.1, W, T, end_value=1e-3)),
        "warmup_exponential_decay_schedule": (
            "warmup_exponential_decay_schedule(0, 0.1, T/10, T/10, 0.6)",
            S.warmup_exponential_decay_schedule(0.0, 0.1, W, W, 0.6)),
        "piecewise_constant_schedule": ("piecewise_constant_schedule(0.1, {T/2: 0.1, 3T/4: 0.1})",
                                        S.piecewise_constant_schedule(0.1, {T // 2: 0.1, 3 * T // 4: 0.1})),
        "piecewise_interpolate_schedule": (
            "piecewise_interpolate_schedule('cosine' / 'linear', 0.1, {T/4: 0.5, 3T/4: 0.1})",
            S.piecewise_interpolate_schedule("cosine", 0.1, {T // 4: 0.5, 3 * T // 4: 0.1}),
            S.piecewise_interpolate_schedule("linear", 0.1, {T // 4: 0.5, 3 * T // 4: 0.1})),
        "linear_onecycle_schedule": ("linear_onecycle_schedule(T, 0.1)", S.linear_onecycle_schedule(T, 0.1)),
        "cosine_onecycle_schedule": ("cosine_onecycle_schedule(T, 0.1)", S.cosine_onecycle_schedule(T, 0.1)),
        "sgdr_schedule": ("sgdr_schedule(3 x warmup cosine, peaks 0.1, 0.07, 0.05)",
                          S.sgdr_schedule([dict(init_value=0.0, peak_value=p, warmup_steps=max(T // 30, 1),
                                                decay_steps=T // 3) for p in (0.1, 0.07, 0.05)])),
        "join_schedules": ("join_schedules([linear 0->0.1, cosine 0.1], [T/5])",
                           S.join_schedules([S.linear_schedule(0.0, 0.1, T // 5),
                                             S.cosine_decay_schedule(0.1, T - T // 5)], [T // 5])),
        "step_lr": ("step_lr(0.1, T/4, gamma=0.5)", S.step_lr(0.1, T // 4, gamma=0.5)),
        "multistep_lr": ("multistep_lr(0.1, [T/2, 3T/4, 9T/10], 0.3)",
                         S.multistep_lr(0.1, [T // 2, 3 * T // 4, 9 * T // 10], 0.3)),
        "cosine_annealing_warm_restarts": ("cosine_annealing_warm_restarts(0.1, T/7, T_mult=2)",
                                           S.cosine_annealing_warm_restarts(0.1, max(T // 7, 1), T_mult=2)),
        "ReduceLROnPlateau": ("ReduceLROnPlateau(factor=0.5, patience=T/20), float lr", _plateau(T, False)),
        "ScaledSchedule": ("ReduceLROnPlateau over cosine_decay (ScaledSchedule)", _plateau(T, True)),
    }
    return g


def _val_loss(T):
    """A synthetic validation loss: falls, then plateaus in stages (with noise)."""
    rng = np.random.default_rng(0)
    t = np.arange(T)
    return np.maximum(1.0 - t / (0.3 * T), 0.3 - 0.1 * (t > 0.6 * T)) + 0.002 * rng.standard_normal(T)


def _plateau(T, with_schedule):
    """lr per step of a fastlr.SGD driven by ReduceLROnPlateau on the synthetic loss."""
    w = np.zeros(1, np.float32)
    lr = S.cosine_decay_schedule(0.1, T, alpha=0.05) if with_schedule else 0.1
    opt = fastlr.SGD(w, lr=lr)
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=max(T // 20, 1))
    out = []
    for t, metric in enumerate(_val_loss(T)):
        g = opt.param_groups[0]["lr"]
        out.append(g(t) if callable(g) else g)
        opt.step(np.zeros_like(w))
        sched.step(float(metric))
    return lambda t: out[t]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="schedule_gallery.png")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="200 steps, low dpi (for tests)")
    args = p.parse_args(argv)
    T = 200 if args.quick else args.steps
    if T < 40:
        p.error("--steps: at least 40")
    panels = gallery(T)
    from matplotlib.figure import Figure
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.7 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    t = np.arange(T)
    for ax, (title, *fns) in zip(axes, panels.values()):
        for i, f in enumerate(fns):
            ax.plot(t, [f(int(s)) for s in t], lw=1.5, ls="-" if i == 0 else "--")
        ax.set_title(title, fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"fastlr.schedules: lr(t) for t = 0 .. {T - 1}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=60 if args.quick else 100)
    missing = [n for n in S.__all__ if n not in panels]
    print(f"plotted {len(panels)} schedules to {args.out}")
    if missing:
        print("no panel yet for: " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
