"""Sparse-update benchmark: rows updated per second on a large embedding table.

Same batches, same process, side by side: fastlr ``step_rows`` (lazy Adam, row-wise
Adagrad, SGD), torch.optim.SparseAdam, torch's sparse Adagrad and an ``index_add_`` SGD
baseline; optionally the parameter server (``fastlr.ps``) with 1, 2 and 4 workers on 1 and 2
shards, side by side with in-process step_rows. Ids are drawn from a Zipf(s) law truncated to
the table (id k with probability ~ (k+1)^-s).

    python -m fastlr.bench_sparse                      # step_rows vs torch
    python -m fastlr.bench_sparse --server --json ps.json --plot ps.png
"""
import os
import time

import numpy as np

__all__ = ["format_rows", "format_server_rows", "plot_server_rows", "run_server_bench", "run_sparse_bench",
           "sparse_cases", "zipf_batches", "zipf_ids"]


def zipf_ids(n_rows, size, s=1.1, rng=None):
    """`size` row ids in [0, n_rows), P(k) proportional to (k + 1)^-s (truncated Zipf)."""
    rng = np.random.default_rng(rng)
    cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n_rows - 1).astype(np.int64)


def zipf_batches(n_rows, dim, batch, n_batches, zipf=1.1, seed=0):
    """(list of n_batches id arrays, a few float32 gradient-row arrays (batch, dim) to cycle through)."""
    rng = np.random.default_rng(seed)
    ids = zipf_ids(n_rows, batch * n_batches, zipf, rng).reshape(n_batches, batch)
    grads = [rng.standard_normal((batch, dim)).astype(np.float32) for _ in range(min(n_batches, 8))]
    return list(ids), grads


def _pass_seconds(step, n_batches):
    t = time.perf_counter()
    for i in range(n_batches):
        step(i)
    return time.perf_counter() - t


def _fastlr_case(make_optimizer):
    def setup(table, ids, grads):
        from .sparse import step_rows
        opt = make_optimizer(table)
        return lambda i: step_rows(opt, None, ids[i], grads[i % len(grads)])
    return setup


def _torch_sparse_case(make_optimizer):
    def setup(table, ids, grads):
        import torch
        w = torch.nn.Parameter(torch.from_numpy(table))
        opt = make_optimizer([w])
        tids, tgrads = [torch.from_numpy(b)[None] for b in ids], [torch.from_numpy(g) for g in grads]

        def step(i):
            w.grad = torch.sparse_coo_tensor(tids[i], tgrads[i % len(tgrads)], table.shape, check_invariants=False)
            opt.step()
        return step
    return setup


def _index_add_case(table, ids, grads):
    import torch
    w = torch.from_numpy(table)
    tids, tgrads = [torch.from_numpy(b) for b in ids], [torch.from_numpy(g) for g in grads]
    return lambda i: w.index_add_(0, tids[i], tgrads[i % len(tgrads)], alpha=-1e-2)


def sparse_cases(with_torch=True):
    """(name, setup(table, ids, grads) -> step(i)) for every case."""
    import fastlr

    from .sparse import RowWiseAdagrad
    cases = [("fastlr step_rows Adam (lazy)", _fastlr_case(lambda t: fastlr.Adam(t, lr=1e-3))),
             ("fastlr step_rows Adagrad", _fastlr_case(lambda t: fastlr.Adagrad(t, lr=1e-2))),
             ("fastlr step_rows RowWiseAdagrad", _fastlr_case(lambda t: RowWiseAdagrad(t, lr=1e-2))),
             ("fastlr step_rows SGD", _fastlr_case(lambda t: fastlr.SGD(t, lr=1e-2)))]
    if with_torch:
        import torch
        cases += [("torch.optim.SparseAdam", _torch_sparse_case(lambda p: torch.optim.SparseAdam(p, lr=1e-3))),
                  ("torch Adagrad (sparse grad)", _torch_sparse_case(lambda p: torch.optim.Adagrad(p, lr=1e-2))),
                  ("torch index_add_ SGD", _index_add_case)]
    return cases


def run_sparse_bench(rows=1_000_000, dim=64, batch=4096, batches=50, zipf=1.1, repeat=5, torch=True,
                     server=False, workers=(1, 2, 4), seed=0):
    """Rows updated per second: list of dicts {case, ids_per_s, unique_rows_per_s, us_per_batch,
    vs_sparse_adam, ...}.

    Every case updates its own copy of a (rows x dim) float32 table with the same `batches`
    batches of `batch` Zipf(`zipf`) ids. After one untimed pass each (compiles, and touches every
    row the batches name: first touches of a fresh table's pages cost more than the updates),
    the cases take turns for `repeat` timed passes, so each round sees the same machine load:
    ids_per_s is the median over rounds, vs_sparse_adam the median of the per-round ratios.
    torch=False leaves out the torch cases; server=True adds the parameter server
    (run_server_bench) with each number of `workers`.
    """
    ids, grads = zipf_batches(rows, dim, batch, batches, zipf, seed)
    unique = float(np.mean([np.unique(b).size for b in ids]))
    rng = np.random.default_rng(seed + 1)
    init = (0.01 * rng.standard_normal((rows, dim))).astype(np.float32)
    steps = {}
    for name, setup in sparse_cases(torch):
        steps[name] = setup(init.copy(), ids, grads)
        _pass_seconds(steps[name], batches)
    seconds = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            seconds[name].append(_pass_seconds(step, batches))
    ref = seconds.get("torch.optim.SparseAdam")
    out = []
    for name, t in seconds.items():
        rate = batches * batch / float(np.median(t))
        out.append({"case": name, "ids_per_s": rate, "unique_rows_per_s": rate * unique / batch,
                    "us_per_batch": batch / rate * 1e6,
                    "vs_sparse_adam": float(np.median(np.divide(ref, t))) if ref else None,
                    "rows": rows, "dim": dim, "batch": batch, "unique_per_batch": unique, "zipf": zipf})
    if server:
        out += run_server_bench(rows=rows, dim=dim, batch=batch, zipf=zipf, workers=workers, repeat=repeat, seed=seed)
    return out


def run_server_bench(rows=1_000_000, dim=64, batch=4096, zipf=1.1, workers=(1, 2, 4), shards=(1, 2), seconds=3.0,
                     warm_seconds=3.0, repeat=3, inprocess=True, seed=0, progress=True, **server_kwargs):
    """Parameter-server updates per second (asynchronous mode, lazy Adam) for every number of
    `shards` x `workers`, side by side with in-process ``step_rows`` on the same batches.

    Workers are Ray actors that push_rows pre-drawn Zipf batches as fast as the server takes them.
    Each server first takes `warm_seconds` of pushes untimed (kernels compiled, the table's pages
    touched); so does the in-process table (one pass over its batches). Then, `repeat` rounds of:
    `seconds` of in-process step_rows in this process (the server idle), `seconds` of the server
    (this process idle). ids_per_s is the median over rounds, vs_step_rows the median of the
    per-round ratios. Where the time goes: apply_share (fraction of the wall time each shard
    spends in optimizer steps, mean over shards), and the workers' stage/send/wait shares.
    One dict per (shards, workers); `server_kwargs` go to ParameterServer.
    """
    import ray

    from .ps import ParameterServer
    shards = (shards,) if isinstance(shards, int) else tuple(shards)
    rng = np.random.default_rng(seed)
    init = (0.01 * rng.standard_normal((rows, dim))).astype(np.float32)
    local = _local_rate(init, dim, batch, zipf, seed) if inprocess else None
    bar = _progress(len(shards) * (1 + len(workers) * repeat), progress, "parameter server")
    out = []
    for n_shards in shards:
        ps = ParameterServer({"emb": init}, optimizer="Adam", lr=1e-3, num_shards=n_shards, mode="async",
                             **server_kwargs)
        try:
            pusher = ray.remote(num_cpus=0)(_Pusher)
            warm = pusher.remote(ps.client(0), rows, dim, batch, zipf, seed)
            ray.get(warm.run.remote(warm_seconds))
            ray.kill(warm)
            bar.update()
            for k in workers:
                actors = [pusher.remote(ps.client(w), rows, dim, batch, zipf, seed + w) for w in range(k)]
                ray.get([a.ready.remote() for a in actors])
                rates, ratios, shares = [], [], []
                for _ in range(repeat):
                    ref = local(seconds) if local else None
                    before = {s["index"]: s["apply_seconds"] for s in ps.info()}
                    t = time.perf_counter()
                    done = ray.get([a.run.remote(seconds) for a in actors])
                    elapsed = time.perf_counter() - t
                    after = ps.info()
                    rates.append(sum(n for n, _ in done) * batch / elapsed)
                    ratios.append(rates[-1] / ref if ref else float("nan"))
                    shares.append((float(np.mean([(s["apply_seconds"] - before[s["index"]]) / elapsed
                                                  for s in after])), _merge([st for _, st in done])))
                    bar.update()
                apply_share = float(np.median([a for a, _ in shares]))
                client = {key: float(np.median([c[key] for _, c in shares])) for key in shares[0][1]}
                out.append({"case": f"fastlr.ps push_rows Adam, {k} worker(s), {n_shards} shard(s)",
                            "ids_per_s": float(np.median(rates)), "vs_step_rows": float(np.median(ratios)),
                            "step_rows_ids_per_s": float(np.median(rates) / np.median(ratios)) if local else None,
                            "apply_share": apply_share, **{f"worker_{key}_share": v for key, v in client.items()},
                            "workers": k, "shards": n_shards, "rows": rows, "dim": dim, "batch": batch,
                            "zipf": zipf})
                for a in actors:
                    ray.kill(a)
        finally:
            ps.shutdown()
    bar.close()
    return out


def _local_rate(init, dim, batch, zipf, seed):
    """seconds -> in-process step_rows ids/s (lazy Adam) on its own warmed copy of the table: the better
    of numba's default thread count and 1 thread, each run for half the time (on a loaded machine a
    parallel kernel can fall far below a serial one)."""
    import numba

    import fastlr

    from .sparse import step_rows
    ids, grads = zipf_batches(len(init), dim, batch, 50, zipf, seed)
    opt = fastlr.Adam(init.copy(), lr=1e-3)
    def step(i):
        step_rows(opt, None, ids[i % len(ids)], grads[i % len(grads)])
    _pass_seconds(step, len(ids))
    default = numba.get_num_threads()

    def rate(seconds):
        best = 0.0
        for threads in sorted({default, 1}, reverse=True):
            numba.set_num_threads(threads)
            n, end, t = 0, time.perf_counter() + seconds / 2, time.perf_counter()
            while time.perf_counter() < end:
                step(n)
                n += 1
            best = max(best, n * batch / (time.perf_counter() - t))
        numba.set_num_threads(default)
        return best
    return rate


def _merge(stats):
    """Workers' client time shares (stage, send, wait), averaged."""
    return {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}


def _progress(total, show, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not show, desc=desc, leave=False)


class _Pusher:
    """A benchmark worker: pushes pre-drawn batches of rows as fast as the server takes them."""

    def __init__(self, client, rows, dim, batch, zipf, seed):
        rng = np.random.default_rng(seed)
        self.client = client
        self.ids = zipf_ids(rows, batch * 8, zipf, rng).reshape(8, batch)
        self.grads = rng.standard_normal((8, batch, dim)).astype(np.float32)

    def ready(self):
        return True

    def run(self, seconds):
        """(pushes made, {stage, send, wait}: shares of the wall time in the client)."""
        self.client.stats(reset=True)
        n, t = 0, time.perf_counter()
        end = t + seconds
        while time.perf_counter() < end:
            self.client.push_rows("emb", self.ids[n % 8], self.grads[n % 8])
            n += 1
        self.client.wait()
        wall = time.perf_counter() - t
        return n, {key: v / wall for key, v in self.client.stats().items()}


def format_rows(rows):
    """The result rows as an aligned text table."""
    lines = [f"{'case':<48} {'M ids/s':>9} {'us/batch':>9} {'vs SparseAdam':>14}"]
    for r in rows:
        vs, us = r.get("vs_sparse_adam"), r.get("us_per_batch")
        lines.append(f"{r['case']:<48} {r['ids_per_s'] / 1e6:>9.2f} {(f'{us:.0f}' if us else '-'):>9} "
                     f"{(f'{vs:.2f}x' if vs else '-'):>14}")
    return "\n".join(lines)


def format_server_rows(rows):
    """run_server_bench's rows as an aligned text table."""
    lines = [(f"{'shards':>6} {'workers':>7} {'M ids/s':>8} {'in-process':>10} {'ratio':>6} {'shard apply':>11} "
              f"{'worker stage/send/wait':>22}")]
    for r in rows:
        ref = r.get("step_rows_ids_per_s")
        lines.append(f"{r['shards']:>6} {r['workers']:>7} {r['ids_per_s'] / 1e6:>8.2f} "
                     f"{(f'{ref / 1e6:.2f}' if ref else '-'):>10} {r['vs_step_rows']:>6.2f} {r['apply_share']:>11.2f} "
                     f"{r['worker_stage_share']:>8.2f}/{r['worker_send_share']:.2f}/{r['worker_wait_share']:.2f}")
    return "\n".join(lines)


def plot_server_rows(rows, path):
    """A bar chart of run_server_bench's rows (M ids/s per shards x workers, in-process step_rows as a line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{r['shards']} shard{'s' * (r['shards'] > 1)}\n{r['workers']} worker{'s' * (r['workers'] > 1)}"
              for r in rows]
    bars = ax.bar(labels, [r["ids_per_s"] / 1e6 for r in rows], color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['vs_step_rows']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    refs = [r["step_rows_ids_per_s"] / 1e6 for r in rows if r.get("step_rows_ids_per_s")]
    if refs:
        ax.axhline(float(np.median(refs)), color="tab:orange", ls="--", label="in-process step_rows (median)")
        ax.axhline(0.4 * float(np.median(refs)), color="tab:red", ls=":", label="40% of it (target, 1 shard 1 worker)")
        ax.legend(fontsize=8)
    r0 = rows[0]
    ax.set_ylabel("M ids/s")
    ax.set_title(f"fastlr.ps push_rows, async lazy Adam, {r0['rows']:,} x {r0['dim']} fp32, "
                 f"batches of {r0['batch']} Zipf({r0['zipf']}) ids", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m fastlr.bench_sparse", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", action="store_true",
                    help="only the parameter server (run_server_bench), side by side with in-process step_rows")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=3.0, help="per timed window")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-mb", type=float, default=None, help="the clients' batch_bytes, in MiB")
    ap.add_argument("--threads-per-shard", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--plot", default=None, help="write a PNG bar chart here (needs matplotlib)")
    args = ap.parse_args(argv)
    if not args.server:
        print(format_rows(run_sparse_bench()))
        return 0
    from .ps import init_ray
    init_ray(num_cpus=2, log_to_driver=False)
    kwargs = {"threads_per_shard": args.threads_per_shard}
    if args.batch_mb is not None:
        kwargs["batch_bytes"] = int(args.batch_mb * (1 << 20))
    rows = run_server_bench(workers=tuple(args.workers), shards=tuple(args.shards), seconds=args.seconds,
                            repeat=args.repeat, **kwargs)
    print(format_server_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=1)
    if args.plot:
        plot_server_rows(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
