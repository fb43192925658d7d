"""Engine benchmark: many separate arrays in one step, per-step overhead, and fastlr.torch on
GPT-2-shaped models, each side by side with the machine's ceiling and torch in one process.

    python -m fastlr.bench_engine [--threads 2] [--repeat 9] [--json FILE] [--plot FILE.png] [--quick]

Cases (float32, Adam/AdamW: 28 bytes per param per step):

- ``numpy-arrays``: fastlr.Adam over 1, 200 and 2000 separate NumPy arrays of 4M params in all
  (one segment-table kernel call per step) against one flat buffer and the stream ceiling.
- ``overhead``: fastlr.Adam over 200 arrays of 64 params: the whole step, the table kernel called
  directly on the same arrays, and the difference (the Python cost of reading and checking what
  the caller holds); a 4K single-array step.
- ``torch-models``: fastlr.torch.AdamW vs torch.optim.AdamW (fused and foreach) over the params
  of a GPT-2-shaped model, with fresh gradient tensors every step (as after the default
  ``zero_grad()``), and the stream ceiling over the same number of params.

Implementations are interleaved repeat by repeat; medians are reported with min-max.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

BYTES_ADAM = 28   # float32: p, g, m, v read; p, m, v written


def gpt2_shapes(d, layers, vocab, ctx):
    """Param shapes of a GPT-2 (token and position embeddings, per layer: 2 layer norms, qkv and
    output projections, the MLP; final layer norm)."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


MODELS = {
    "gpt2-24M": dict(d=512, layers=6, vocab=8192, ctx=1024),   # 23.6M params in 76 tensors
    "gpt2-tiny": dict(d=64, layers=2, vocab=1000, ctx=128),     # 0.17M params in 28 tensors
}


class Case:
    def __init__(self, name, step, detail=""):
        self.name, self.step, self.detail, self.samples = name, step, detail, []


def measure(cases, repeat, min_time):
    numbers = []
    for c in cases:
        c.step()
        t = time.perf_counter()
        c.step()
        one = max(time.perf_counter() - t, 1e-7)
        numbers.append(max(1, min(20_000, int(min_time / one))))
    for _ in range(repeat):
        for c, number in zip(cases, numbers):
            t = time.perf_counter()
            for _ in range(number):
                c.step()
            c.samples.append((time.perf_counter() - t) / number)
    return {c.name: {"time_s": statistics.median(c.samples), "min_s": min(c.samples), "max_s": max(c.samples),
                     "detail": c.detail} for c in cases}


def _ceiling(n):
    from ._launch import SERIAL_BELOW
    from .kernels.stream import STREAM, STREAM_SERIAL
    arrs = [np.full(n, 0.5, np.float32) for _ in range(4)]
    kernel = (STREAM_SERIAL if n < SERIAL_BELOW else STREAM)[2]
    a, b = np.float32(1e-3), np.float32(0.5)
    return Case("ceiling", lambda: kernel(*arrs, a, b), "stream kernel, 4 reads 3 writes")


def _arrays(sizes, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in sizes]


def numpy_arrays(total, counts, repeat, min_time):
    import fastlr
    cases = [_ceiling(total)]
    for count in counts:
        sizes = np.diff(np.linspace(0, total, count + 1).astype(int))
        ps, gs = _arrays(sizes, 0), _arrays(sizes, 1)
        opt = fastlr.Adam(ps if count > 1 else ps[0])
        cases.append(Case(f"fastlr-{count}", (lambda o, g: lambda: o.step(g))(opt, gs if count > 1 else gs[0]),
                          f"fastlr.Adam, {count} array(s)"))
    res = measure(cases, repeat, min_time)
    flat = res["fastlr-1"]["time_s"]
    for r in res.values():
        r["gbps"] = BYTES_ADAM * total / r["time_s"] / 1e9
        r["vs_flat"] = flat / r["time_s"]
        r["vs_ceiling"] = res["ceiling"]["time_s"] / r["time_s"]
    return {"total": total, "results": res}


def overhead(repeat, min_time, n_arrays=200, size=64):
    import fastlr

    from .kernels import cpu
    ps, gs = _arrays([size] * n_arrays, 0), _arrays([size] * n_arrays, 1)
    opt = fastlr.Adam(ps)
    opt.step(gs)
    unit = opt._engine._plans[0].units[0]
    htab = np.array([opt._engine._plans[0].uniform(2)], np.float64)
    kernel = cpu.TABLE_KERNELS["adam_serial"]
    c = (1.0, -np.inf, np.inf)
    one, one_g = _arrays([4096], 2)[0], _arrays([4096], 3)[0]
    single = fastlr.Adam(one)
    cases = [Case("step", lambda: opt.step(gs), f"fastlr.Adam step, {n_arrays} arrays of {size}"),
             Case("kernel", lambda: kernel(unit.ptrs, unit.work, unit.hzero, htab, c, unit.like),
                  "the table kernel alone on the same arrays"),
             Case("step-4K", lambda: single.step(one_g), "fastlr.Adam step, one 4K array")]
    res = measure(cases, repeat, min_time)
    return {"n_arrays": n_arrays, "size": size, "results": res,
            "python_us": (res["step"]["time_s"] - res["kernel"]["time_s"]) * 1e6,
            "step_4k_us": res["step-4K"]["time_s"] * 1e6}


def torch_models(names, repeat, min_time):
    import torch

    import fastlr.torch as ft
    out = {}
    for name in names:
        shapes = gpt2_shapes(**MODELS[name])
        total = sum(int(np.prod(s)) for s in shapes)
        gen = torch.Generator().manual_seed(0)
        cases = [_ceiling(total)]
        for impl in ("fastlr", "fused", "foreach"):
            params = [(torch.randn(s, generator=gen) * 0.02).requires_grad_() for s in shapes]
            pools = [[torch.randn(s, generator=gen) * 1e-3 for s in shapes] for _ in range(2)]
            if impl == "fastlr":
                opt = ft.AdamW(params, lr=1e-3)
            else:
                opt = torch.optim.AdamW(params, lr=1e-3, **{impl: True})
            turn = [0]

            def step(opt=opt, params=params, pools=pools, turn=turn):
                turn[0] ^= 1
                for p, g in zip(params, pools[turn[0]]):   # fresh grad tensors, as after zero_grad()
                    p.grad = g
                opt.step()
            cases.append(Case(impl, step, "fastlr.torch.AdamW" if impl == "fastlr" else f"torch AdamW ({impl})"))
        res = measure(cases, repeat, min_time)
        for r in res.values():
            r["gbps"] = BYTES_ADAM * total / r["time_s"] / 1e9
            r["vs_ceiling"] = res["ceiling"]["time_s"] / r["time_s"]
        best = min(("fused", "foreach"), key=lambda k: res[k]["time_s"])
        out[name] = {"params": total, "tensors": len(shapes), "results": res,
                     "speedup_vs_fused": res["fused"]["time_s"] / res["fastlr"]["time_s"],
                     "speedup_vs_best_torch": res[best]["time_s"] / res["fastlr"]["time_s"]}
    return out


def fmt_time(s):
    return f"{s * 1e6:.1f}us" if s < 1e-3 else f"{s * 1e3:.2f}ms"


def report(res):
    lines = []
    na = res.get("numpy_arrays")
    if na:
        lines.append(f"NumPy Adam, {na['total'] / 1e6:.1f}M params in separate arrays (one table call per step):")
        for name, r in na["results"].items():
            lines.append(f"  {name:<12}{fmt_time(r['time_s']):>10} ({fmt_time(r['min_s'])}-{fmt_time(r['max_s'])})"
                         f"{r['gbps']:8.1f} GB/s  /ceiling {r['vs_ceiling']:.2f}  /flat {r['vs_flat']:.2f}")
    ov = res.get("overhead")
    if ov:
        r = ov["results"]
        lines.append(f"Overhead: {ov['n_arrays']} arrays x {ov['size']}: step {fmt_time(r['step']['time_s'])}, "
                     f"kernel alone {fmt_time(r['kernel']['time_s'])}, Python {ov['python_us']:.1f} us; "
                     f"one 4K array: {ov['step_4k_us']:.1f} us per step")
    for name, m in res.get("torch_models", {}).items():
        lines.append(f"fastlr.torch.AdamW, {name} ({m['params'] / 1e6:.2f}M params, {m['tensors']} tensors), fresh "
                     f"grads every step:")
        for impl, r in m["results"].items():
            lines.append(f"  {impl:<10}{fmt_time(r['time_s']):>10} ({fmt_time(r['min_s'])}-{fmt_time(r['max_s'])})"
                         f"{r['gbps']:8.1f} GB/s  /ceiling {r['vs_ceiling']:.2f}")
        lines.append(f"  fastlr vs torch fused {m['speedup_vs_fused']:.2f}x, vs torch's best "
                     f"{m['speedup_vs_best_torch']:.2f}x")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("numpy_arrays", "NumPy Adam, 4M params")] + [(k, k) for k in res.get("torch_models", {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        block = res["numpy_arrays"]["results"] if key == "numpy_arrays" else res["torch_models"][key]["results"]
        names = list(block)
        ax.bar(names, [block[n]["gbps"] for n in names], color=["k"] + [f"C{i}" for i in range(len(names) - 1)])
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("GB/s")
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastlr.bench_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--min-time", type=float, default=0.1)
    p.add_argument("--total", default="4M", help="params in all for the NumPy many-arrays case")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ",".join(MODELS))
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (for tests)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see fastlr.bench: numba's and torch's pools
    from .bench import parse_size
    total = 1 << 14 if args.quick else parse_size(args.total)
    repeat, min_time = (2, 0.002) if args.quick else (args.repeat, args.min_time)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    try:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    from tqdm.auto import tqdm
    jobs = ["numpy_arrays", "overhead"] + (["torch_models"] if torch is not None else [])
    res = {"meta": {"command": "python -m fastlr.bench_engine " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "load": os.getloadavg(), "torch": getattr(torch, "__version__", None)}}
    for job in tqdm(jobs, desc="fastlr bench_engine", file=sys.stderr):
        if job == "numpy_arrays":
            res[job] = numpy_arrays(total, (1, 200, 2000) if not args.quick else (1, 20), repeat, min_time)
        elif job == "overhead":
            res[job] = overhead(repeat, min_time, n_arrays=200 if not args.quick else 20)
        else:
            names = [n.strip() for n in args.models.split(",") if n.strip()]
            res[job] = torch_models(names if not args.quick else ["gpt2-tiny"], repeat, min_time)
    res["meta"]["load_after"] = os.getloadavg()
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.plot:
        plot(res, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
