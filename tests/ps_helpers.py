"""Shared by the parameter-server tests: the single-process reference of synchronous training, and
running worker loops in threads."""
import threading

import numpy as np

import fastlr
from fastlr.sparse import step_rows


def sync_adam_reference(w0, e0, targets, ids, row_grad, lr):
    """What K workers in sync mode must produce: per round r, one Adam step of w with the mean of
    (w - targets[k]) and one step_rows of e with every worker's rows row_grad(e[ids[r][k]], r, k) / K,
    in worker order. Returns (w, e)."""
    K = len(targets)
    w, e = w0.copy(), e0.copy()
    ow, oe = fastlr.Adam(w, lr=lr), fastlr.Adam(e, lr=lr)
    for r, round_ids in enumerate(ids):
        g = w - targets[0]
        for k in range(1, K):
            g += w - targets[k]
        rows = np.concatenate([row_grad(e[round_ids[k]], r, k) for k in range(K)])
        ow.step(g * (1.0 / K))
        step_rows(oe, None, np.concatenate(round_ids), rows * (1.0 / K))
    return w, e


def in_threads(worker, n, timeout=60):
    """worker(k) for k in range(n), each in a thread of its own; raises the first error any of them met."""
    errors = []

    def run(k):
        try:
            worker(k)
        except Exception as e:  # noqa: BLE001 (raised below, in the caller's thread)
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
