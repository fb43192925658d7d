"""Benchmark low-precision optimizer states: one flat buffer on the CPU, same process.

    python -m fastlr.bench_lowbit [--algorithm AdamW] [--precisions fp32,bf16,8bit,4bit] [--size 16M]
                                  [--threads 2] [--repeat 7] [--png out.png] [--json out.json]
    fastlr bench --state-precision 8bit[,4bit,bf16] [same options]

Cases, interleaved round after round (one step each, the median reported): the stream kernel
with fp32 Adam's traffic (the bandwidth ceiling), ``fastlr.<algorithm>(p, state_precision=...)``
for each precision (fp32 always: the baseline), and for Adam/AdamW, where importable, torch's
fused AdamW, torchao's ``AdamW8bit`` / ``AdamW4bit`` and bitsandbytes' ``AdamW8bit``. For each:
ms per step, the ratio to fastlr fp32, the bytes each param moves (what the kernel must read and
write; the peers move more) and the fraction of the ceiling's bandwidth those bytes reach.
"""
import argparse
import json
import math
import time

import numpy as np

from . import lowbit
from .kernels import quant, rules

ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
PRECISIONS = ("fp32", "bf16", "8bit", "4bit")


def bytes_per_param(precision, n_states=2):
    """Bytes one Adam step must move per param: p read and written, g read, each state read and
    written (codes, plus one float32 absmax per block)."""
    per_state = {"fp32": 4.0, "bf16": 2.0, "8bit": 1.0, "4bit": 0.5}[precision]
    if precision in quant.BLOCK_SIZE:
        per_state += 4.0 / quant.BLOCK_SIZE[precision]
    return 12 + 2 * n_states * per_state


def fastlr_cases(p0, g, algorithm="AdamW", precisions=PRECISIONS):
    """``fastlr.<algorithm>`` with each state precision on private copies of p0: name -> (step, bytes/param)."""
    import fastlr
    cls = getattr(fastlr, algorithm)
    kw = ADAM if algorithm in ("Adam", "AdamW") else {}
    n_states = len(cls.spec.states({**cls.spec.constants, **cls.spec.defaults, **kw}))
    cases = {}
    for precision in dict.fromkeys(("fp32", *precisions)):
        opt = cls(p0.copy(), state_precision=precision, **kw)
        cases[f"fastlr {precision}"] = (lambda opt=opt: opt.step(g), bytes_per_param(precision, n_states))
    return cases


def ceiling_case(n):
    from .kernels.stream import STREAM
    arrays = [np.full(n, 0.5, np.float32) for _ in range(4)]
    return {"ceiling (stream, 28 B)": (lambda: STREAM[2](*arrays, np.float32(1e-3), np.float32(0.5)), 28.0)}


def peer_cases(p0, g):
    """torch fused AdamW, torchao AdamW8bit/4bit and bitsandbytes AdamW8bit, where importable.
    Their bytes/param are what the same step must move; they move more (unfused passes)."""
    try:
        import torch
    except ImportError:
        return {}
    makers = {"torch fused AdamW (fp32)": (lambda ps: torch.optim.AdamW(ps, fused=True, **ADAM), "fp32")}
    try:
        from torchao.optim import AdamW4bit, AdamW8bit
        makers["torchao AdamW8bit"] = (lambda ps: AdamW8bit(ps, **ADAM), "8bit")
        makers["torchao AdamW4bit"] = (lambda ps: AdamW4bit(ps, **ADAM), "4bit")
    except ImportError:
        pass
    try:
        import bitsandbytes as bnb
        makers["bitsandbytes AdamW8bit"] = (lambda ps: bnb.optim.AdamW8bit(ps, **ADAM), "8bit")
    except ImportError:
        pass
    cases = {}
    for name, (make, precision) in makers.items():
        w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        w.grad = torch.from_numpy(g)
        try:
            opt = make([w])
            opt.step()  # allocates states (and compiles, for torchao)
        except Exception as e:  # noqa: BLE001  (a peer that cannot run here is reported, not fatal)
            print(f"skipping {name}: {type(e).__name__}: {e}")
            continue
        cases[name] = (opt.step, bytes_per_param(precision))
    return cases


def run(n=1 << 24, threads=2, repeat=7, peers=True, progress=True, algorithm="AdamW", precisions=PRECISIONS):
    """Rows of {case, ms, vs_fp32, bytes_per_param, gbps, of_ceiling}: medians over ``repeat`` rounds."""
    import numba
    numba.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    p0 = (0.1 * rng.standard_normal(n)).astype(np.float32)
    g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    peers = peers and algorithm in ("Adam", "AdamW")
    cases = {**ceiling_case(n), **fastlr_cases(p0, g, algorithm, precisions), **(peer_cases(p0, g) if peers else {})}
    for step, _ in cases.values():
        step()  # warm-up: compile, fault in pages
    samples = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    rounds = range(repeat)
    if progress:
        from tqdm import tqdm
        rounds = tqdm(rounds, desc=f"low-bit {algorithm}, {n} params", unit="round")
    for _ in rounds:
        for name, (step, _) in cases.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            samples[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    ceiling_gbps = 28.0 * n / np.median(samples["ceiling (stream, 28 B)"]) / 1e9
    fp32 = np.median(samples["fastlr fp32"])
    rows = []
    for name, (_, bpp) in cases.items():
        s = float(np.median(samples[name]))
        gbps = bpp * n / s / 1e9
        rows.append({"case": name, "ms": 1e3 * s, "vs_fp32": fp32 / s, "bytes_per_param": bpp, "gbps": gbps,
                     "of_ceiling": gbps / ceiling_gbps, "cpu_ms": 1e3 * float(np.median(cpu[name]))})
    return rows


def compute_cost(n=1 << 16, reps=200):
    """ns per param of one step on ONE thread with everything in cache (the kernels' arithmetic
    and lookups, no memory traffic): fastlr's fp32, bf16, 8-bit and 4-bit Adam kernels, launched
    through ``lowbit.launcher`` (no per-step checks), best of 5."""
    rng = np.random.default_rng(1)
    p = (0.1 * rng.standard_normal(n)).astype(np.float32)
    g = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    h = rules.adam_scalars(1, ADAM["lr"], ADAM["betas"], ADAM["eps"], ADAM["weight_decay"], False, True)
    out = {}
    for precision in ("fp32", "bf16", "8bit", "4bit"):
        run = lowbit.launcher("adam", p, g, lowbit.new_states("adam", p, precision), serial=True)
        run(h)
        out[f"fastlr {precision}"] = 1e9 * min(_timed(lambda run=run: run(h), reps) for _ in range(5)) / reps / n
    return out


def _timed(step, reps):
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return time.perf_counter() - t


def format_table(rows):
    header = (f"{'case':28s} {'ms/step':>8s} {'x fp32':>7s} {'B/param':>8s} {'GB/s':>6s} {'of ceiling':>10s} "
              f"{'CPU ms':>8s}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['case']:28s} {r['ms']:8.2f} {r['vs_fp32']:7.3f} {r['bytes_per_param']:8.3f} "
                     f"{r['gbps']:6.1f} {r['of_ceiling']:10.2f} {r['cpu_ms']:8.2f}")
    return "\n".join(lines)


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5))
    names = [r["case"] for r in rows][::-1]
    colors = ["0.5" if n.startswith("ceiling") else "C0" if n.startswith("fastlr") else "C1" for n in names]
    ax1.barh(names, [r["ms"] for r in rows][::-1], color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("ms per step (log)")
    ax2.barh(names, [r["of_ceiling"] for r in rows][::-1], color=colors)
    ax2.set_xlabel("fraction of the stream ceiling (its own bytes/param)")
    ax2.set_yticks([])
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastlr.bench_lowbit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithm", default="AdamW", help="a fastlr optimizer (default AdamW; peers for Adam/AdamW)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated state precisions (fp32 is always run: the baseline)")
    ap.add_argument("--size", default="16M", help="params, e.g. 4M, 16M (default 16M = 2**24)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-peers", action="store_true", help="fastlr only")
    ap.add_argument("--png", help="write a bar chart here")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    size = args.size.upper()
    n = int(float(size.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1))
    if n < 1 or not math.isfinite(n):
        ap.error("--size must be a positive number of params")
    import fastlr
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    bad = [x for x in precisions if x not in PRECISIONS]
    if bad or not hasattr(fastlr, args.algorithm) or not isinstance(getattr(fastlr, args.algorithm), type):
        ap.error(f"--precisions: choose from {PRECISIONS}; --algorithm: a fastlr optimizer "
                 f"(got {bad or args.algorithm})")
    rows = run(n, args.threads, args.repeat, peers=not args.no_peers, algorithm=args.algorithm,
               precisions=precisions)
    print(format_table(rows))
    cost = compute_cost()
    print("in-cache compute, one thread, ns/param: " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
    if args.png:
        plot(rows, args.png, f"{args.algorithm}, {n} params, CPU, {args.threads} threads, median of {args.repeat}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "algorithm": args.algorithm, "threads": args.threads, "repeat": args.repeat,
                       "rows": rows, "in_cache_ns_per_param": cost}, f, indent=1)
    return 0


if __name__ == "__main__":
    main()
