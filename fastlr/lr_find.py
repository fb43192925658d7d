"""Learning-rate range test (Smith 2015, fastai's lr_find).

    result = fastlr.lr_find(opt, grad_fn)     # grad_fn() -> (loss, grads)
    result.suggestion, result.plot("lr.png")

The optimizer runs ``num_steps`` steps with an exponentially increasing learning rate,
written to every param group's ``"lr"``. The loss is smoothed (exponential moving
average with bias correction) and the run stops early once it diverges. Params and
optimizer state (states, step counts, hyperparameters, lr schedules) are restored
afterwards, also when grad_fn raises.
"""
import copy
import math
from dataclasses import dataclass, field

import numpy as np

from ._arrays import copy_into, library, to_numpy

__all__ = ["lr_find", "LRFindResult"]


@dataclass
class LRFindResult:
    """lrs[i] is the lr of step i; losses[i] the smoothed loss seen at that step.

    suggestion: the lr where the smoothed loss falls fastest against log(lr)
    (None with fewer than 2 points). diverged: the run stopped early because the smoothed
    loss exceeded diverge_threshold x its best (or was not finite).
    """

    lrs: list
    losses: list
    suggestion: float = None
    diverged: bool = False
    raw_losses: list = field(default_factory=list, repr=False)

    def plot(self, path=None, ax=None):
        """Smoothed loss against lr (log scale), the suggestion marked; saved to ``path``.

        matplotlib is imported here; without ``ax`` a standalone Figure is used. Returns the axes.
        """
        fig = None
        if ax is None:  # a bare Figure: leaves the user's pyplot backend and state alone
            from matplotlib.figure import Figure
            fig = Figure(figsize=(6, 4))
            ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if self.suggestion is not None:
            i = int(np.argmin(np.abs(np.asarray(self.lrs) - self.suggestion)))
            ax.plot([self.suggestion], [self.losses[i]], "ro", label=f"suggestion {self.suggestion:.2e}")
            ax.legend()
        if path is not None:
            (fig or ax.figure).savefig(path)
        return ax


def _copy(p):
    lib = library(p)
    if lib == "numpy":
        return p.copy()
    if lib == "torch":
        return p.detach().clone()
    if lib == "cupy":
        return p.copy()
    return to_numpy(p).copy()


def _restore(p, saved):
    if library(p) == "torch":
        import torch
        with torch.no_grad():
            p.copy_(saved)
    else:
        copy_into(p, saved)


def suggest_lr(lrs, losses, skip_start=10, skip_end=5):
    """The lr at the steepest descent of loss against log(lr) (None with fewer than 2 points).

    As fastai does, the first ``skip_start`` and last ``skip_end`` points are left out when
    enough remain: the smoothed loss is noisiest there (few samples averaged; divergence).
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) < 2:
        return None
    slope = np.gradient(losses, np.log(lrs))
    lo, hi = (skip_start, len(lrs) - skip_end) if len(lrs) - skip_start - skip_end >= 2 else (0, len(lrs))
    return float(lrs[lo + int(np.argmin(slope[lo:hi]))])


def lr_find(optimizer, grad_fn, start_lr=1e-7, end_lr=10.0, num_steps=100, smooth=0.98,
            diverge_threshold=4.0):
    """Run the learning-rate range test on ``optimizer``; return an ``LRFindResult``.

    grad_fn() returns ``(loss, grads)`` for the current params (grads as ``opt.step``
    takes them). Step i uses ``lr_i = start_lr * (end_lr / start_lr)^(i / (num_steps - 1))``
    in every group. The recorded loss is ``avg_i / (1 - smooth^(i+1))`` with
    ``avg_i = smooth avg_{i-1} + (1 - smooth) loss_i``; the run stops (without recording
    that step) once it is not finite or exceeds ``diverge_threshold`` times the best so far.
    Afterwards every param and the optimizer's state dict are as they were before.
    """
    start_lr, end_lr = float(start_lr), float(end_lr)
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ValueError(f"start_lr: expected a finite value > 0, got {start_lr!r}")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ValueError(f"end_lr: expected a finite value > start_lr ({start_lr}), got {end_lr!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
        raise ValueError(f"num_steps: expected an integer >= 2, got {num_steps!r}")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth: expected a value in [0, 1), got {smooth!r}")
    if not diverge_threshold > 1.0:
        raise ValueError(f"diverge_threshold: expected a value > 1, got {diverge_threshold!r}")
    if not callable(grad_fn):
        raise TypeError(f"grad_fn: expected a callable returning (loss, grads), got {grad_fn!r}")
    from tqdm.auto import tqdm

    num_steps = int(num_steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_state = optimizer.state_dict()
    from .optim import Optimizer
    if not isinstance(optimizer, Optimizer):  # e.g. torch's state_dict holds live references
        saved_state = copy.deepcopy(saved_state)
    saved_params = [_copy(p) for p in params]
    ratio = end_lr / start_lr
    lrs, losses, raw = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    try:
        for i in tqdm(range(num_steps), desc="lr_find", disable=None, leave=False):
            lr = start_lr * ratio ** (i / (num_steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, grads = grad_fn()
            loss = float(loss)
            avg = smooth * avg + (1.0 - smooth) * loss
            smoothed = avg / (1.0 - smooth ** (i + 1))
            if not math.isfinite(smoothed) or (i > 0 and smoothed > diverge_threshold * best):
                diverged = True
                break
            lrs.append(lr)
            losses.append(smoothed)
            raw.append(loss)
            best = min(best, smoothed)
            optimizer.step(grads)
    finally:
        for p, s in zip(params, saved_params):
            _restore(p, s)
        optimizer.load_state_dict(saved_state)
    return LRFindResult(lrs, losses, suggest_lr(lrs, losses), diverged, raw)
