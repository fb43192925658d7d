"""A matrix-factorization recommender trained by workers against a sharded fastlr parameter server.

Synthetic data: user and item ids drawn from Zipf laws (a few very active users, a few
blockbuster items), ratings = <true user factors, true item factors> + noise. The user and
item embedding tables live on the server (``fastlr.ps``, Ray actors, lazy Adam via
``step_rows``); each worker owns a slice of the ratings, and per batch pulls the rows it
needs (``pull_rows``), computes the gradient of the squared error plus L2, and pushes
gradient rows (``push_rows``; repeated ids are summed on the server). Prints the training
loss and held-out MSE per epoch, and rows updated per second.

    python examples/recommender_ps.py                                   # 4 workers, 2 shards
    python examples/recommender_ps.py --users 400 --items 300 --ratings 20000 --epochs 3
    python examples/recommender_ps.py --kill-shard-at 2                 # a shard dies mid-epoch 2

A killed shard is restarted by Ray from its last checkpoint; the workers resend the pushes that
checkpoint lacks, and Ray's retries of calls the shard had already taken are dropped, so every
push is applied exactly once (docs/RELIABILITY.md).

Needs ``pip install fastlr[distributed]`` (Ray); starts a local Ray unless --address is given.
"""
import argparse
import tempfile
import time

import numpy as np


def make_data(users, items, ratings, rank=8, zipf=1.1, noise=0.1, seed=0):
    """(user ids, item ids, ratings) of `ratings` Zipf-distributed (user, item) pairs."""
    rng = np.random.default_rng(seed)

    def zipf_ids(n, size):  # P(k) ~ (k + 1)^-zipf, over a random permutation of the ids
        cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -zipf)
        return rng.permutation(n)[np.searchsorted(cdf / cdf[-1], rng.random(size))]

    true_u = rng.standard_normal((users, rank)) / rank ** 0.25
    true_i = rng.standard_normal((items, rank)) / rank ** 0.25
    u, i = zipf_ids(users, ratings), zipf_ids(items, ratings)
    r = np.einsum("nk,nk->n", true_u[u], true_i[i]) + noise * rng.standard_normal(ratings)
    return u, i, r.astype(np.float32)


class Worker:
    """Trains on its own ratings: pull rows, gradient of mean squared error + L2, push rows."""

    def __init__(self, client, u, i, r, batch, reg):
        self.client, self.u, self.i, self.r, self.batch, self.reg = client, u, i, r, batch, reg

    def epoch(self, seed):
        """One pass over this worker's ratings in a random order: (loss sum, ratings, rows pushed)."""
        order = np.random.default_rng(seed).permutation(self.r.size)
        loss, pushed = 0.0, 0
        for start in range(0, self.r.size - self.batch + 1, self.batch):  # whole batches only (sync rounds)
            b = order[start:start + self.batch]
            u, i, r = self.u[b], self.i[b], self.r[b]
            pu, qi = self.client.pull_rows("users", u), self.client.pull_rows("items", i)
            err = np.einsum("nk,nk->n", pu, qi) - r
            loss += float(err @ err)
            scale = np.float32(2.0 / b.size)
            self.client.push_rows("users", u, scale * (err[:, None] * qi + self.reg * pu))
            self.client.push_rows("items", i, scale * (err[:, None] * pu + self.reg * qi))
            pushed += 2 * b.size
        self.client.wait()
        return loss, self.r.size // self.batch * self.batch, pushed


def test_mse(ps, u, i, r):
    pu, qi = ps.pull_rows("users", u), ps.pull_rows("items", i)
    err = np.einsum("nk,nk->n", pu, qi) - r
    return float(err @ err / r.size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--ratings", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--reg", type=float, default=1e-3)
    ap.add_argument("--mode", choices=["async", "sync"], default="async")
    ap.add_argument("--checkpoint-dir", default=None, help="default: a temporary folder")
    ap.add_argument("--overwrite", action="store_true", help="start afresh in a --checkpoint-dir that holds one")
    ap.add_argument("--checkpoint-every", type=int, default=20, help="shard steps between checkpoints")
    ap.add_argument("--kill-shard-at", type=int, default=None, metavar="EPOCH",
                    help="kill shard 0 during this epoch (Ray restarts it from its last checkpoint)")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local Ray")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import sys

    import ray

    from fastlr.ps import ParameterServer
    if __name__ != "__main__":  # imported (as by the tests): Ray workers cannot import this file by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    u, i, r = make_data(args.users, args.items, args.ratings, seed=args.seed)
    n_test = max(1, r.size // 10)   # the first tenth is held out
    test = slice(0, n_test)
    rng = np.random.default_rng(args.seed + 1)
    tables = {"users": (0.1 * rng.standard_normal((args.users, args.dim))).astype(np.float32),
              "items": (0.1 * rng.standard_normal((args.items, args.dim))).astype(np.float32)}
    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="fastlr-ps-")
    ps = ParameterServer(tables, "Adam", lr=args.lr, num_shards=args.shards, mode=args.mode,
                         num_workers=args.workers, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, overwrite=args.overwrite, address=args.address,
                         num_cpus=args.num_cpus)
    history = []
    try:
        remote = ray.remote(num_cpus=0)(Worker)
        parts = np.array_split(np.arange(n_test, r.size), args.workers)
        workers = [remote.remote(ps.client(k), u[p], i[p], r[p], args.batch, args.reg) for k, p in enumerate(parts)]
        history.append({"epoch": 0, "train_loss": None, "test_mse": test_mse(ps, u[test], i[test], r[test])})
        print(f"epoch 0: held-out MSE {history[0]['test_mse']:.4f}  ({args.workers} workers, {args.shards} shards, "
              f"{args.mode}, {r.size - n_test} training ratings)", flush=True)
        for epoch in range(1, args.epochs + 1):
            t = time.perf_counter()
            runs = [w.epoch.remote(args.seed + 1000 * epoch + k) for k, w in enumerate(workers)]
            if epoch == args.kill_shard_at:  # about a third into the epoch
                time.sleep(history[-1].get("seconds", 1.5) / 3)
                ray.kill(ps.shards[0], no_restart=False)
                print("  killed shard 0", flush=True)
            results = ray.get(runs)
            seconds = time.perf_counter() - t
            loss = sum(x[0] for x in results) / sum(x[1] for x in results)
            rows = sum(x[2] for x in results)
            mse = test_mse(ps, u[test], i[test], r[test])
            history.append({"epoch": epoch, "train_loss": loss, "test_mse": mse, "rows_per_s": rows / seconds,
                            "seconds": seconds})
            print(f"epoch {epoch}: train loss {loss:.4f}  held-out MSE {mse:.4f}  "
                  f"{rows / seconds:,.0f} rows updated/s", flush=True)
        restarted = [s for s in ps.info() if s["restarted"]]
        for s in restarted:
            print(f"shard {s['index']} was restarted from its checkpoint at step {s['restored_from']}")
        history[-1]["restarted"] = restarted
    finally:
        ps.shutdown()
    return history


if __name__ == "__main__":
    main()
