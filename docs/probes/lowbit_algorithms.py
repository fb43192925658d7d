"""Low-precision states of Adopt, Adan and Rprop against fp32 states (docs/PERFORMANCE.md, "Low-precision states
of the algorithms of issue 14"): the problems of tests/test_lowbit_algorithms.py, plus the digits MLP, with the
precisions fastlr refuses (state_precision.PRECISION_LIMITS) let through, to show why they are refused.

    .venv/bin/python docs/probes/lowbit_algorithms.py
"""
import os
import sys

import numpy as np
from tqdm import tqdm

import fastlr
from fastlr import demo, state_precision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from test_lowbit_algorithms import least_squares, noisy_quadratic  # noqa: E402

PRECISIONS = ("fp32", "bf16", "8bit", "4bit")


def digits_accuracy(name, precision, data):
    model = demo.MLP(seed=0)
    opt = getattr(fastlr, name)(model.params, state_precision=precision)
    return 100 * demo.train(model, opt, data, epochs=20, seed=0)["test_accuracy"]


def main():
    state_precision.PRECISION_LIMITS.clear()   # measure what is refused too
    rows = []
    runs = ("AdamW", "Adopt", "Adan")
    with tqdm(total=len(runs) * 4 + 4 + 2 * 4, desc="lowbit algorithms") as bar:
        for name in runs:
            base = noisy_quadratic(name, "fp32")[0]
            ratios = []
            for p in PRECISIONS:
                ratios.append(noisy_quadratic(name, p)[0] / base)
                bar.update()
            rows.append(f"| noisy quadratic, {name}: final loss / fp32's ({base:.4g}) | "
                        + " | ".join(f"{r:.3f}" for r in ratios) + " |")
        losses = []
        for p in PRECISIONS:
            losses.append(least_squares(p))
            bar.update()
        rows.append("| least squares, Rprop full batch: loss after 50 / 300 steps | "
                    + " | ".join(f"{a:.4g} / {b:.4g}" for a, b in losses) + " |")
        data = demo.load_digits_split(seed=0)
        for name in ("Adopt", "Adan"):
            acc = []
            for p in PRECISIONS:
                acc.append(digits_accuracy(name, p, data))
                bar.update()
            rows.append(f"| digits MLP, {name} (defaults), 20 epochs: test accuracy % | "
                        + " | ".join(f"{a:.2f}" for a in acc) + " |")
    print("| run | " + " | ".join(PRECISIONS) + " |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"(numpy {np.__version__}; load: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
