"""Dense optimizer-step benchmark: fastlr vs the bandwidth ceiling, torch.optim and NumPy.

    fastlr bench [--device cpu|gpu] [--algos adam,sgd] [--sizes 4K,1M,16M]
                 [--dtype float32|float64] [--threads N] [--repeat R]
                 [--json FILE] [--plot FILE.png] [--extras] [--quick]

Everything is measured in one process, implementations interleaved repeat by repeat so
machine noise hits them alike. Per algorithm and size:

- ``ceiling``: ``fastlr.kernels.stream`` kernel with the algorithm's reads and writes and
  trivial math (no optimizer can move its bytes faster);
- ``fastlr``: the fastlr optimizer class, default hyperparameters (SGD: momentum=0.9);
- ``torch``: the fastest of torch.optim's fused / foreach / for-loop implementations
  (which one is reported), when torch is importable;
- ``numpy``: the update written in NumPy as in textbooks (CPU only).

GB/s = bytes per parameter (docs: DESIGN.md, e.g. Adam 28 B in float32) x size / time.
Extras (``--extras``; on by default unless ``--quick``): per-step time at 4K params,
200 arrays totalling N params vs one flat buffer, and ``import fastlr`` + first step in a
fresh process.
"""
import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# name: (fastlr class, fastlr/torch kwargs beyond defaults, torch class or None, state arrays,
#        torch implementations to try)
ALGOS = {
    "sgd": ("SGD", {"lr": 1e-3, "momentum": 0.9}, "SGD", 1, ("fused", "foreach", "forloop")),
    "adagrad": ("Adagrad", {}, "Adagrad", 1, ("fused", "foreach", "forloop")),
    "rmsprop": ("RMSprop", {}, "RMSprop", 1, ("foreach", "forloop")),
    "adadelta": ("Adadelta", {}, "Adadelta", 2, ("foreach", "forloop")),
    "adam": ("Adam", {}, "Adam", 2, ("fused", "foreach", "forloop")),
    "adamw": ("AdamW", {}, "AdamW", 2, ("fused", "foreach", "forloop")),
    "adamax": ("Adamax", {}, "Adamax", 2, ("foreach", "forloop")),
    "nadam": ("NAdam", {}, "NAdam", 2, ("foreach", "forloop")),
    "radam": ("RAdam", {}, "RAdam", 2, ("foreach", "forloop")),
    "lion": ("Lion", {}, None, 1, ()),
    # issue 14: against torch.optim (ASGD, Rprop), timm.optim 1.0.31 and schedulefree 1.4.1
    "asgd": ("ASGD", {}, "ASGD", 1, ("foreach", "forloop")),
    "rprop": ("Rprop", {}, "Rprop", 2, ("foreach", "forloop")),
    "adopt": ("Adopt", {}, "Adopt", 2, ("foreach", "forloop")),
    "adan": ("Adan", {}, "Adan", 4, ("foreach", "forloop")),
    "sgdsf": ("SGDScheduleFree", {}, "SGDScheduleFree", 1, ("foreach", "forloop")),
    "adamwsf": ("AdamWScheduleFree", {}, "AdamWScheduleFree", 2, ("foreach", "forloop")),
    "radamsf": ("RAdamScheduleFree", {}, "RAdamScheduleFree", 2, ("foreach", "forloop")),
    "lamb": ("Lamb", {}, "Lamb", 2, ("foreach", "forloop")),
    "lars": ("Lars", {"momentum": 0.9, "weight_decay": 1e-4}, "Lars", 1, ("foreach", "forloop")),
    "mars": ("Mars", {}, "Mars", 3, ("plain",)),
}
# Two passes over memory (fastlr.twopass): a read-only pass (per-tensor norms), then the update.
TWO_PASS = {"lamb", "lars", "mars"}
TIMM = {"Adan": "adan", "Adopt": "adopt", "Lamb": "lamb", "Lars": "lars", "Mars": "mars"}

NUMPY_ALGOS = ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax", "nadam", "radam", "lion")
QUICK_SIZES = [1 << 12, 1 << 14]
DEFAULT_SIZES = [1 << 12, 1 << 20, 1 << 22, 1 << 24]


def bytes_per_param(algo, itemsize):
    """(k + 2) reads and (k + 1) writes of `itemsize` bytes, k = number of state arrays (two-pass algorithms:
    (k + 2) more reads, the first pass)."""
    k = ALGOS[algo][3]
    return (2 * k + 3 + (k + 2 if algo in TWO_PASS else 0)) * itemsize


def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], None)
    return int(float(text[:-1]) * mult) if mult else int(text)


def _sizes_arg(text):
    """--sizes: comma-separated sizes >= 1 (4K, 1M, 0.5M, 64, ...)."""
    try:
        sizes = [parse_size(s) for s in text.split(",")]
    except (ValueError, OverflowError):
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= 1 such as 4K,1M,16M, got {text!r}")
    return sizes


def fmt_size(n):
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else str(n)


# ----------------------------------------------------------------------------- NumPy textbook

def numpy_step(algo, p, g, state, t, dtype):
    """One step written as in textbooks: whole-array NumPy expressions with temporaries."""
    kw = ALGOS[algo][1]
    if algo == "sgd":
        buf = state.setdefault("buf", np.zeros_like(p))
        buf *= 0.9
        buf += g
        p -= kw["lr"] * buf
    elif algo == "adagrad":
        s = state.setdefault("sum", np.zeros_like(p))
        s += g * g
        p -= 1e-2 * g / (np.sqrt(s) + 1e-10)
    elif algo == "rmsprop":
        s = state.setdefault("sq", np.zeros_like(p))
        s[:] = 0.99 * s + 0.01 * g * g
        p -= 1e-2 * g / (np.sqrt(s) + 1e-8)
    elif algo == "adadelta":
        s = state.setdefault("sq", np.zeros_like(p))
        d = state.setdefault("acc", np.zeros_like(p))
        s[:] = 0.9 * s + 0.1 * g * g
        delta = np.sqrt(d + 1e-6) / np.sqrt(s + 1e-6) * g
        d[:] = 0.9 * d + 0.1 * delta * delta
        p -= delta
    elif algo in ("adam", "adamw", "nadam", "radam"):
        b1, b2, lr = 0.9, 0.999, (2e-3 if algo == "nadam" else 1e-3)
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        if algo == "adamw":
            p *= 1 - lr * 1e-2
        m[:] = b1 * m + (1 - b1) * g
        v[:] = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        if algo == "nadam":
            mhat = b1 * mhat + (1 - b1) * g / (1 - b1 ** t)
        p -= lr * mhat / (np.sqrt(vhat) + 1e-8)
    elif algo == "adamax":
        m = state.setdefault("m", np.zeros_like(p))
        u = state.setdefault("u", np.zeros_like(p))
        m[:] = 0.9 * m + 0.1 * g
        u[:] = np.maximum(0.999 * u, np.abs(g) + 1e-8)
        p -= 2e-3 / (1 - 0.9 ** t) * m / u
    elif algo == "lion":
        m = state.setdefault("m", np.zeros_like(p))
        p -= 1e-4 * np.sign(0.9 * m + 0.1 * g)
        m[:] = 0.99 * m + 0.01 * g
    else:
        raise ValueError(algo)


# ----------------------------------------------------------------------------- implementations

class Case:
    """One implementation of one algorithm at one size: `step()` runs one update."""

    def __init__(self, name, step, sync=None, detail=""):
        self.name, self.step, self.sync, self.detail = name, step, sync, detail
        self.samples = []   # seconds per step

    def timed(self, number):
        t = time.perf_counter()
        for _ in range(number):
            self.step()
        if self.sync is not None:
            self.sync()
        self.samples.append((time.perf_counter() - t) / number)


def _data(n, dtype, seed, xp=np):
    rng = np.random.default_rng(seed)
    p = (rng.standard_normal(n) * 0.1).astype(dtype)
    g = (rng.standard_normal(n) * 1e-3).astype(dtype)
    return xp.asarray(p), xp.asarray(g)


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def ceiling_case(algo, n, dtype, gpu):
    k = ALGOS[algo][3]
    if gpu:
        from numba import cuda

        from .kernels.stream import CUDA_STREAM
        arrs = [cuda.to_device(np.full(n, 0.5, dtype)) for _ in range(k + 2)]
        kern = CUDA_STREAM(k)
        threads = 256
        sms = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)   # the simulator has none
        blocks = max(1, min(sms * 32, (n + threads - 1) // threads))
        a, b = dtype(1e-3), dtype(0.5)
        return Case("ceiling", lambda: kern[blocks, threads](*arrs, a, b), cuda.synchronize,
                    f"stream kernel, {k + 2} reads {k + 1} writes")
    from ._launch import SERIAL_BELOW
    from .kernels.stream import STREAM, STREAM_READ, STREAM_READ_SERIAL, STREAM_SERIAL
    arrs = [np.full(n, 0.5, dtype) for _ in range(k + 2)]
    serial = n < SERIAL_BELOW   # as fastlr's own dispatch does
    kern, a, b = (STREAM_SERIAL if serial else STREAM)[k], dtype(1e-3), dtype(0.5)
    if algo in TWO_PASS:   # the two-pass ceiling: a read-only pass, then the stream pass
        read = (STREAM_READ_SERIAL if serial else STREAM_READ)[k]
        return Case("ceiling", lambda: (read(*arrs, a, b), kern(*arrs, a, b)), None,
                    f"read pass + stream kernel{' (serial)' if serial else ''}, {2 * k + 4} reads {k + 1} writes")
    return Case("ceiling", lambda: kern(*arrs, a, b), None,
                f"stream kernel{' (serial)' if serial else ''}, {k + 2} reads {k + 1} writes")


def fastlr_case(algo, n, dtype, gpu, n_buffers=1, packed=False):
    import fastlr
    cls, kw = getattr(fastlr, ALGOS[algo][0]), ALGOS[algo][1]
    sync = None
    if gpu:
        from numba import cuda
        sync = cuda.synchronize
        try:
            import cupy as xp
        except ImportError:
            xp = None
    p, g = _data(n, dtype, 0)
    if n_buffers > 1:
        cuts = np.linspace(0, n, n_buffers + 1).astype(int)
        p = [p[a:b].copy() for a, b in zip(cuts[:-1], cuts[1:])]
        g = [g[a:b].copy() for a, b in zip(cuts[:-1], cuts[1:])]
    if packed:  # the user's arrays moved into one buffer with views (fastlr.pack): one launch
        p, _ = fastlr.pack(p)
        g, _ = fastlr.pack(g)
    if gpu:
        to = (lambda x: xp.asarray(x)) if xp is not None else cuda.to_device
        p = [to(x) for x in p] if isinstance(p, list) else to(p)
        g = [to(x) for x in g] if isinstance(g, list) else to(g)
    opt = cls(p, **kw)
    if hasattr(opt, "train"):   # schedule-free
        opt.train()
    detail = f"fastlr.{ALGOS[algo][0]}" + (f", {n_buffers} arrays" if n_buffers > 1 else "") + \
        (" packed" if packed else "")
    return Case("fastlr", lambda: opt.step(g), sync, detail)


def torch_cases(algo, n, dtype, gpu, n_buffers=1, impls=None):
    torch = _torch()
    tname = ALGOS[algo][2]
    ref = _reference_class(tname) if torch is not None and tname is not None else None
    if ref is None:
        return []
    device = "cuda" if gpu else "cpu"
    cases = []
    for impl in impls or ALGOS[algo][4]:
        if gpu and not torch.cuda.is_available():
            return []   # CPU-only torch build
        p, g = _data(n, dtype, 0)
        if n_buffers > 1:
            cuts = np.linspace(0, n, n_buffers + 1).astype(int)
            ps = [torch.tensor(p[a:b], device=device, requires_grad=True) for a, b in zip(cuts[:-1], cuts[1:])]
            for t, (a, b) in zip(ps, zip(cuts[:-1], cuts[1:])):
                t.grad = torch.tensor(g[a:b], device=device)
        else:
            ps = [torch.tensor(p, device=device, requires_grad=True)]
            ps[0].grad = torch.tensor(g, device=device)
        flag = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False},
                "plain": {}}[impl]
        try:
            opt = ref(ps, **ALGOS[algo][1], **flag)
            if hasattr(opt, "train"):   # schedule-free
                opt.train()
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue   # e.g. no fused kernel for this device
        sync = torch.cuda.synchronize if gpu else None
        cases.append(Case(f"torch-{impl}", opt.step, sync, f"{ref.__module__.split('.')[0]}.{tname}({impl})"))
    return cases


def _reference_class(name):
    """The reference implementation of an algorithm: torch.optim's, timm's (its optimizer modules only: timm's
    package imports torchvision) or schedulefree's; None when it is not installed."""
    import types
    torch = _torch()
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)
    try:
        if name in TIMM:
            if "timm.optim" not in sys.modules:
                spec = importlib.util.find_spec("timm")
                if spec is None:
                    return None
                for pkg, path in (("timm", spec.submodule_search_locations[0]),
                                  ("timm.optim", spec.submodule_search_locations[0] + "/optim")):
                    sys.modules[pkg] = types.ModuleType(pkg)
                    sys.modules[pkg].__path__ = [path]
            return getattr(importlib.import_module(f"timm.optim.{TIMM[name]}"), name)
        return getattr(importlib.import_module("schedulefree"), name)
    except ImportError:
        return None


def numpy_case(algo, n, dtype):
    p, g = _data(n, dtype, 0)
    state, t = {}, [0]

    def step():
        t[0] += 1
        numpy_step(algo, p, g, state, t[0], dtype)
    return Case("numpy", step, None, "NumPy textbook")


# ----------------------------------------------------------------------------- measurement

def measure(cases, repeat, min_time):
    """Warm up, choose steps per sample so a sample lasts ~min_time, then interleave repeats."""
    numbers = []
    for c in cases:
        c.step()                       # compile / allocate state
        if c.sync:
            c.sync()
        t = time.perf_counter()
        c.step()
        if c.sync:
            c.sync()
        one = max(time.perf_counter() - t, 1e-7)
        numbers.append(max(1, min(10_000, int(min_time / one))))
    for _ in range(repeat):
        for c, number in zip(cases, numbers):
            c.timed(number)
    return cases


def summarize(c):
    s = sorted(c.samples)
    return {"impl": c.name, "detail": c.detail, "time_s": statistics.median(s), "min_s": s[0], "max_s": s[-1],
            "repeats": len(s)}


def bench_one(algo, n, dtype, gpu, repeat, min_time, with_numpy=True):
    cases = [ceiling_case(algo, n, dtype, gpu), fastlr_case(algo, n, dtype, gpu)]
    cases += torch_cases(algo, n, dtype, gpu)
    if with_numpy and not gpu and algo in NUMPY_ALGOS:
        cases.append(numpy_case(algo, n, dtype))
    measure(cases, repeat, min_time)
    rows = [summarize(c) for c in cases]
    nbytes = bytes_per_param(algo, np.dtype(dtype).itemsize) * n
    torch_rows = [r for r in rows if r["impl"].startswith("torch")]
    best_torch = min(torch_rows, key=lambda r: r["time_s"]) if torch_rows else None
    out = [r for r in rows if not r["impl"].startswith("torch")]
    if best_torch:
        best_torch = dict(best_torch, impl="torch", variant=best_torch["impl"][6:],
                          others={r["impl"][6:]: r["time_s"] for r in torch_rows})
        out.insert(2, best_torch)
    t = {r["impl"]: r["time_s"] for r in out}
    for r in out:
        r.update(algo=algo, size=n, bytes=nbytes, gbps=nbytes / r["time_s"] / 1e9,
                 vs_ceiling=t["ceiling"] / r["time_s"],
                 speedup_vs_torch=t["torch"] / r["time_s"] if "torch" in t else None,
                 speedup_vs_numpy=t["numpy"] / r["time_s"] if "numpy" in t else None)
    return out


def first_step_in_fresh_process(dtype="float32", n=1 << 20):
    """Seconds for `import fastlr`, and for the first Adam step (kernel from numba's cache)."""
    code = ("import time, json; t0 = time.perf_counter(); import fastlr; t1 = time.perf_counter();"
            f"import numpy as np; w = np.zeros({n:d}, '{dtype}'); g = np.ones_like(w); opt = fastlr.Adam(w);"
            "t2 = time.perf_counter(); opt.step(g); t3 = time.perf_counter();"
            "print(json.dumps({'import_s': t1 - t0, 'first_step_s': t3 - t2}))")
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["process_s"] = time.perf_counter() - t
        runs.append(r)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


_PEAK_MEMORY = """
import json, resource, sys
import numpy as np
n, dtype, impl = %d, %r, %r
def peak():  # bytes. Linux: VmHWM of this process's own memory map (ru_maxrss would carry over
    try:       # the parent's peak across fork + exec); elsewhere ru_maxrss (bytes on macOS)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024
if impl == "fastlr":
    import fastlr
    w = np.zeros(4096, dtype); fastlr.Adam(w).step(np.ones_like(w))  # numba and the kernels loaded
    make = lambda w: fastlr.Adam(w)
    step = lambda opt, g: opt.step(g)
else:
    import torch
    w = torch.zeros(4096, dtype=getattr(torch, dtype), requires_grad=True); w.grad = torch.ones_like(w)
    torch.optim.Adam([w], fused=True).step()
    make = lambda w: torch.optim.Adam([w], fused=True)
    def step(opt, g):
        opt.step()
before = peak()
w = np.full(n, 0.5, dtype); g = np.full(n, 0.25, dtype)  # written: every page resident
if impl == "torch":
    w = torch.from_numpy(w).requires_grad_(); w.grad = torch.from_numpy(g)
opt = make(w)
for _ in range(3):
    step(opt, g)
print(json.dumps({"extra_bytes": peak() - before, "expected_bytes": 4 * n * np.dtype(dtype).itemsize}))
"""


def peak_memory_in_fresh_process(dtype="float32", n=1 << 26, impls=("fastlr", "torch")):
    """Peak resident memory added by 3 Adam steps on n params, against params + grads + 2 states."""
    out = {}
    for impl in impls:
        if impl == "torch" and not _have_torch():
            continue
        code = _PEAK_MEMORY % (n, np.dtype(dtype).name, impl)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        r["ratio"] = r["extra_bytes"] / r["expected_bytes"]
        out[impl] = r
    return out


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def extras(dtype, gpu, repeat, min_time, many_n=1 << 22, n_buffers=200):
    res = {}
    small = [fastlr_case("adam", 4096, dtype, gpu)] + torch_cases("adam", 4096, dtype, gpu, impls=("fused",))
    measure(small, max(repeat, 15), min_time)
    res["overhead_4k"] = {c.name: statistics.median(c.samples) for c in small}
    flat = fastlr_case("adam", many_n, dtype, gpu)
    flat.name = "fastlr-flat"
    many = fastlr_case("adam", many_n, dtype, gpu, n_buffers=n_buffers)
    many.name = f"fastlr-{n_buffers}"
    cases = [flat, many]
    if not gpu:
        packed = fastlr_case("adam", many_n, dtype, gpu, n_buffers=n_buffers, packed=True)
        packed.name = f"fastlr-{n_buffers}-packed"
        cases.append(packed)
    for c in torch_cases("adam", many_n, dtype, gpu, impls=("fused",)):
        c.name = "torch-fused-flat"
        cases.append(c)
    for c in torch_cases("adam", many_n, dtype, gpu, n_buffers=n_buffers, impls=("fused",)):
        c.name = f"torch-fused-{n_buffers}"
        cases.append(c)
    measure(cases, repeat, min_time)
    t = {c.name: statistics.median(c.samples) for c in cases}
    res["many_buffers"] = {"size": many_n, "n_buffers": n_buffers, "time_s": t,
                           "fastlr_ratio": t[f"fastlr-{n_buffers}"] / t["fastlr-flat"],
                           "packed_ratio": t.get(f"fastlr-{n_buffers}-packed", math.nan) / t["fastlr-flat"]}
    if not gpu:
        res["fresh_process"] = first_step_in_fresh_process(np.dtype(dtype).name)
        res["peak_memory_64m"] = peak_memory_in_fresh_process(np.dtype(dtype).name)
    return res


# ----------------------------------------------------------------------------- output

def format_table(rows):
    head = f"{'algo':<9}{'size':>6}  {'impl':<16}{'time/step':>12}{'spread':>18}{'GB/s':>8}" \
           f"{'/ceil':>7}{'vs torch':>9}{'vs numpy':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        impl = r["impl"] + (f" ({r['variant']})" if r.get("variant") else "")
        vt = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        vn = f"{r['speedup_vs_numpy']:.1f}x" if r["speedup_vs_numpy"] else "-"
        spread = f"{fmt_time(r['min_s'])}-{fmt_time(r['max_s'])}"
        lines.append(f"{r['algo']:<9}{fmt_size(r['size']):>6}  {impl:<16}{fmt_time(r['time_s']):>12}{spread:>18}"
                     f"{r['gbps']:>8.1f}{r['vs_ceiling']:>7.2f}{vt:>9}{vn:>9}")
    return "\n".join(lines)


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def format_extras(ex):
    lines = []
    if "overhead_4k" in ex:
        lines.append("per-step time, Adam, 4K params: " +
                     ", ".join(f"{k} {fmt_time(v)}" for k, v in ex["overhead_4k"].items()))
    if "many_buffers" in ex:
        mb = ex["many_buffers"]
        lines.append(f"Adam, {fmt_size(mb['size'])} params in {mb['n_buffers']} arrays vs one flat buffer: " +
                     ", ".join(f"{k} {fmt_time(v)}" for k, v in mb["time_s"].items()) +
                     f"; fastlr ratio {mb['fastlr_ratio']:.2f}, packed with fastlr.pack {mb['packed_ratio']:.2f}")
    if "fresh_process" in ex:
        fp = ex["fresh_process"]
        lines.append(f"fresh process: import fastlr {fp['import_s'] * 1e3:.0f} ms, first Adam step (1M) "
                     f"{fp['first_step_s'] * 1e3:.0f} ms, whole process {fp['process_s']:.2f} s")
    if "peak_memory_64m" in ex:
        lines.append("peak memory added by 3 Adam steps on 64M params, / (params + grads + 2 states): " +
                     ", ".join(f"{k} {v['ratio']:.3f} ({v['extra_bytes'] / 2**20:.0f} MiB)"
                               for k, v in ex["peak_memory_64m"].items()))
    return "\n".join(lines)


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    cols = min(len(algos), 5)
    nrows = math.ceil(len(algos) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False, sharey=True)
    styles = {"ceiling": "k--", "fastlr": "C0o-", "torch": "C1s-", "numpy": "C2^-"}
    for ax, algo in zip(axes.flat, algos):
        for impl, style in styles.items():
            pts = [(r["size"], r["gbps"]) for r in rows if r["algo"] == algo and r["impl"] == impl]
            if pts:
                ax.plot(*zip(*pts), style, label=impl, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_title(algo, fontsize=9)
        ax.set_xlabel("params", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("GB/s")
    for ax in list(axes.flat)[len(algos):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

# The other benchmarks behind `fastlr bench` (fastlr.cli picks one by these options).
OTHER_BENCHMARKS = """\
other benchmarks (each has its own --help, e.g. `fastlr bench --sparse --help`):
  --sparse             sparse row updates per second (fastlr.bench_sparse)
  --engine             many arrays, per-step overhead, fastlr.torch on GPT-2 shapes
                       (fastlr.bench_engine)
  --dtype bf16|fp16    16-bit params: fp32 master weights or stochastic rounding,
                       fastlr.torch optimizers (fastlr.mixed.bench)
  --state-precision 8bit[,4bit,bf16]
                       low-precision optimizer states (fastlr.bench_lowbit)"""


def build_parser():
    p = argparse.ArgumentParser(prog="fastlr bench", description=__doc__.split("\n\n")[0],
                                epilog=OTHER_BENCHMARKS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated, from: " + ",".join(ALGOS))
    p.add_argument("--sizes", type=_sizes_arg, default=None,
                   help="comma-separated sizes >= 1, e.g. 4K,1M,16M (default 4K,1M,4M,16M; --quick: "
                        + ",".join(map(fmt_size, QUICK_SIZES)) + ")")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="params, grads and states (default float32; bf16|fp16: see below)")
    p.add_argument("--threads", type=int, default=None, help="numba and torch thread count")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per implementation (default 7)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.05)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy textbook implementation")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--extras", action="store_true", default=None,
                   help="also per-step overhead, many small arrays, import + first step (default unless --quick)")
    p.add_argument("--no-extras", dest="extras", action="store_false")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (for tests)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    # numba's OpenMP pool and torch's each spin-wait after a parallel region; on a small machine
    # the two pools then steal each other's cores and steps take milliseconds (measured: 4K-param
    # torch fused Adam 5.5 ms instead of 0.1 ms). Passive waiting keeps the comparison fair; it only
    # takes effect if set before the OpenMP runtimes start, i.e. before numba/torch run a kernel.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    algos = [a.strip().lower() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad:
        print(f"fastlr bench: unknown algorithm(s) {bad}; choose from {list(ALGOS)}", file=sys.stderr)
        return 2
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeat = args.repeat or (3 if args.quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.002 if args.quick else 0.05)
    do_extras = (not args.quick) if args.extras is None else args.extras
    dtype = np.dtype(args.dtype).type
    gpu = args.device == "gpu"
    if gpu:
        try:
            from numba import cuda
            ok = cuda.is_available()
        except Exception:   # noqa: BLE001 - any failure to load the CUDA driver means no GPU
            ok = False
        if not ok:
            print("fastlr bench --device gpu: no CUDA GPU is available here (numba.cuda.is_available() is "
                  "False); run on a machine with an NVIDIA GPU, or use --device cpu", file=sys.stderr)
            return 2
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(args.threads)
    try:
        import numba
        threads = numba.get_num_threads()
    except ImportError:
        threads = None
    torch = _torch()
    meta = {"command": "fastlr bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": args.device,
            "dtype": args.dtype, "threads": threads, "repeat": repeat, "numpy": np.__version__,
            "torch": getattr(torch, "__version__", None), "cpu": _cpu_name(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(x, **_):
            return x
    rows = []
    work = [(a, n) for a in algos for n in sizes]
    bar = tqdm(work, desc="fastlr bench", unit="case", file=sys.stderr, disable=None)
    for algo, n in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{algo} {fmt_size(n)}")
        rows += bench_one(algo, n, dtype, gpu, repeat, min_time, with_numpy=not args.no_numpy)
    print(format_table(rows))
    ex = {}
    if do_extras:
        ex = extras(dtype, gpu, repeat, min_time)
        print(format_extras(ex))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "extras": ex}, f, indent=1)
    if args.plot:
        plot(rows, args.plot, f"fastlr bench, {args.device} {args.dtype}, {threads} threads")
    return 0


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
