"""The ``fastlr`` command.

    fastlr demo [--out DIR] [--epochs N] [--quick]     # digits MLP with 9 optimizers (fastlr.demo)
    fastlr bench [ARGS...]                             # dense update benchmark (fastlr.bench)
    fastlr bench --sparse [--rows N --dim D ...]       # sparse row updates (fastlr.bench_sparse)
    fastlr bench --engine [--threads 2 ...]            # many arrays, overhead, fastlr.torch on GPT-2 shapes
                                                       # (fastlr.bench_engine)
    fastlr bench --dtype bf16|fp16 [-n N --algorithm Adam --device cpu]
                                                       # mixed precision (fastlr.mixed.bench)
    fastlr bench --state-precision 8bit[,4bit,bf16] [--algorithm AdamW --size 16M ...]
                                                       # low-precision states (fastlr.bench_lowbit)
"""
import argparse
import importlib
import sys

__all__ = ["main"]


def _demo(rest):
    from . import demo
    return demo.main(rest)


def _positive_int(text):
    """argparse type: an integer >= 1 (a count or a size), else a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _print_table(rows, columns):
    """rows: list of dicts; columns: [(key, header, format)]."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([(fmt.format(r[k]) if r.get(k) is not None else "-") for k, _, fmt in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _bench_sparse(rest):
    from . import bench_sparse
    p = argparse.ArgumentParser(prog="fastlr bench --sparse",
                                description="Sparse row updates per second (fastlr.bench_sparse).")
    p.add_argument("--rows", type=_positive_int, default=1_000_000)
    p.add_argument("--dim", type=_positive_int, default=64)
    p.add_argument("--batch", type=_positive_int, default=4096)
    p.add_argument("--batches", type=_positive_int, default=50)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--repeat", type=_positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="leave out the torch cases")
    p.add_argument("--server", action="store_true", help="add the Ray parameter-server cases")
    args = p.parse_args(rest)
    rows = bench_sparse.run_sparse_bench(rows=args.rows, dim=args.dim, batch=args.batch,
                                         batches=args.batches, zipf=args.zipf, repeat=args.repeat,
                                         torch=not args.no_torch, server=args.server, seed=args.seed)
    print(bench_sparse.format_rows(rows))
    return 0


def _bench_mixed(fmt, rest):
    from . import mixed
    p = argparse.ArgumentParser(prog=f"fastlr bench --dtype {fmt}",
                                description="fp32 vs 16-bit (master weights / stochastic rounding) "
                                            "step time of fastlr.torch optimizers (fastlr.mixed.bench).")
    p.add_argument("-n", "--n", type=_positive_int, default=1 << 22, help="number of parameters (default 2^22)")
    p.add_argument("--algorithm", default="Adam")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=_positive_int, default=10)
    args = p.parse_args(rest)
    try:
        rows = mixed.bench(args.n, args.algorithm, args.device, repeat=args.repeat, fmt=fmt)
    except ImportError as e:
        print(f"fastlr bench --dtype {fmt}: needs torch (pip install 'fastlr[torch]'): {e}", file=sys.stderr)
        return 2
    print(f"{args.algorithm}, {args.n:,} params, device {args.device}")
    rows = [{**r, "ms": 1e3 * r["seconds"]} for r in rows]
    _print_table(rows, [("mode", "mode", "{}"), ("ms", "ms/step", "{:.3f}"),
                        ("bytes_per_param", "bytes/param", "{}"), ("GB/s", "GB/s", "{:.1f}")])
    return 0


def _bench(rest):
    pre = argparse.ArgumentParser(prog="fastlr bench", add_help=False)
    pre.add_argument("--sparse", action="store_true")
    pre.add_argument("--engine", action="store_true")
    pre.add_argument("--dtype")
    pre.add_argument("--state-precision")
    known, rest = pre.parse_known_args(rest)
    mixed = known.dtype if known.dtype in ("bf16", "fp16") else None
    if known.dtype is not None and mixed is None:   # the dense benchmark's own --dtype float32|float64
        rest = ["--dtype", known.dtype, *rest]
    if sum(map(bool, (known.sparse, known.engine, mixed, known.state_precision))) > 1:
        print("fastlr bench: --sparse, --engine, --dtype and --state-precision cannot be combined",
              file=sys.stderr)
        return 2
    if known.engine:
        from . import bench_engine
        return bench_engine.main(rest)
    if known.state_precision:
        from . import bench_lowbit
        return bench_lowbit.main(["--precisions", known.state_precision, *rest])
    if known.sparse:
        return _bench_sparse(rest)
    if mixed:
        return _bench_mixed(mixed, rest)
    try:
        bench = importlib.import_module("fastlr.bench")
    except ModuleNotFoundError as e:
        if e.name != "fastlr.bench":
            raise
        if {"-h", "--help"} & set(rest):
            print(__doc__.strip())
            return 0
        print("fastlr bench: the dense benchmark module fastlr.bench is not available in this "
              "installation (try `fastlr bench --sparse` or `fastlr bench --dtype bf16`)", file=sys.stderr)
        return 2
    return bench.main(rest)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="fastlr",
        description="fastlr: optimizer update rules over flat NumPy / torch / CuPy buffers.",
        epilog="`fastlr demo --help` and `fastlr bench --help` list each command's options.")
    sub = p.add_subparsers(dest="command", metavar="{demo,bench}")
    sub.add_parser("demo", add_help=False,
                   help="train a NumPy MLP on digits with 9 optimizers; plots in --out (default demo-out)")
    sub.add_parser("bench", add_help=False,
                   help="benchmarks: dense (default), --sparse, --engine, --dtype bf16|fp16 or "
                        "--state-precision 8bit|4bit|bf16")
    args, rest = p.parse_known_args(argv[:1])
    rest += argv[1:]
    if args.command is None:
        p.print_help()
        return 2 if argv else 0
    if args.command == "demo":
        code = _demo(rest)
    else:
        code = _bench(rest)
    return code if isinstance(code, int) else 0   # a sub-main may return results instead of a status


if __name__ == "__main__":
    sys.exit(main())
