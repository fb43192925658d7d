"""The checks of ``make gpu-check`` (run by ``fastlr.gpucheck``), most important first.

They follow docs/GPU.md's table "What to check first on a real GPU": correctness first
(the gpu-marked tests, CUDA graph capture of every algorithm, stream ordering, bf16/fp16
conversions, errors for arrays on the wrong device, kernel cache reuse), then speed
(bandwidth against torch fused and a copy, launch overhead, ``fastlr bench --quick``,
mixed precision, sparse rows). Speed is measured and compared with its goal; a goal missed
is reported in the results, not as a failure. Each check raises ``Skip`` where it cannot
run (no GPU, no torch); ``bf16_decode`` also runs under the CUDA simulator.
"""
import functools
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from numba import cuda  # a module global: the CUDA simulator swaps it inside the kernels below

from .gpucheck import Skip, check

CHECKS = []

# Hyperparameters beyond the defaults where the default leaves a code path out.
EXTRA = {"SGD": {"momentum": 0.9}}


# ---------------------------------------------------------------- what is here
def _cuda():
    """numba.cuda with a device to run on (the simulator's counts), else Skip."""
    try:
        ok = cuda.is_available()
    except Exception as exc:   # a broken driver install is "no GPU" here
        raise Skip(f"numba.cuda unusable: {exc}") from exc
    if not ok:
        raise Skip("no CUDA GPU (numba.cuda.is_available() is False)")
    return cuda


def _real_gpu():
    cuda = _cuda()
    from numba import config
    if config.ENABLE_CUDASIM:
        raise Skip("needs a real GPU, not the CUDA simulator")
    return cuda


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise Skip("torch is not installed") from exc
    return torch


def _torch_cuda():
    _real_gpu()
    torch = _torch()
    if not torch.cuda.is_available():
        raise Skip("torch has no CUDA here")
    return torch


def _algorithms():
    """Names of fastlr's optimizer classes (fastlr.optim.__all__ less the base class)."""
    from . import optim
    return [n for n in optim.__all__ if n != "Optimizer" and isinstance(getattr(optim, n), type)
            and issubclass(getattr(optim, n), optim.Optimizer)]


def _err(exc):
    return f"{type(exc).__name__}: {exc}"[:600]


# ---------------------------------------------------------------- timing
def _event_seconds(torch, fn, number):
    """Seconds per call of fn over `number` calls, by CUDA events on torch's current stream."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(number):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / number


def _interleaved(torch, impls, number, repeat):
    """{name: median seconds per call}: implementations timed in turn, repeat after repeat."""
    for fn in impls.values():   # compile, allocate state
        fn()
    torch.cuda.synchronize()
    samples = {name: [] for name in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            samples[name].append(_event_seconds(torch, fn, number))
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------- the checks, in order
@check(CHECKS, limit_s=60)
def environment(ctx):
    """Versions, the GPU and its driver; numpy must be < 2.5 (numba-cuda 0.30 breaks on 2.5)."""
    info = {"python": sys.version.split()[0], "executable": sys.executable, "numpy": np.__version__,
            "numpy_file": np.__file__}
    for name in ("numba", "numba-cuda", "llvmlite", "torch", "cupy-cuda13x", "cupy-cuda12x", "cuda-bindings"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    try:
        cuda = _real_gpu()
        dev = cuda.get_current_device()
        info.update(gpu=dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name),
                    compute_capability=list(dev.compute_capability), sms=dev.MULTIPROCESSOR_COUNT,
                    driver=".".join(map(str, _driver_version())))
    except Skip as exc:
        info["gpu"] = None
        info["no_gpu"] = str(exc)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,"
                              "clocks.max.memory", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    major_minor = tuple(int(x) for x in np.__version__.split(".")[:2])
    info["ok"] = major_minor < (2, 5)
    info["summary"] = (f"{info['gpu'] or 'no GPU'}"
                       + (f" cc {info['compute_capability']}, {info['sms']} SMs, driver {info['driver']}"
                          if info["gpu"] else "")
                       + f"; numpy {np.__version__}, numba {info['numba']}, numba-cuda {info['numba-cuda']}, "
                       f"torch {info['torch']}")
    return info


def _driver_version():
    try:
        from numba.cuda.cudadrv.driver import driver
        return driver.get_version()
    except Exception:   # noqa: BLE001 - informative only
        return ("?",)


@check(CHECKS, limit_s=180)
def pytest_gpu(ctx):
    """The gpu-marked tests: pytest -m gpu over tests/."""
    _real_gpu()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tests = os.path.join(root, "tests")
    if not os.path.isdir(tests):
        raise Skip(f"no tests/ beside the package ({root}): run from a source checkout")
    xml = os.path.join(ctx.workdir, "junit.xml")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", f"--junitxml={xml}", tests],
                          cwd=root, capture_output=True, text=True)
    if not os.path.exists(xml):
        return {"ok": False, "returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-3000:],
                "summary": f"pytest ended with code {proc.returncode} and no report"}
    res = _junit_counts(xml)
    res.update(ok=res["failed"] == 0 and res["errors"] == 0 and res["passed"] > 0, returncode=proc.returncode,
               output_tail=proc.stdout[-2000:],
               summary=f"{res['passed']} passed, {res['failed']} failed, {res['errors']} errors, "
                       f"{res['skipped']} skipped")
    return res


def _junit_counts(path):
    """Counts and the failing tests (name: first line of the message) of a pytest junit XML file."""
    import xml.etree.ElementTree as ET
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    problems = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
        counts[kind] += 1
        if kind != "skipped":
            problems[name] = (outcome.get("message") or "").split("\n")[0][:300]
    return dict(counts, problems=problems)


@check(CHECKS, limit_s=150)
def graph_capture(ctx):
    """Every algorithm x float32/float64 device lr: 3 warm-up steps on a side stream, one captured
    step replayed 5 times = 8 eager steps (rtol 1e-6)."""
    torch = _torch_cuda()
    n = 1 << 12 if ctx.tiny else 1 << 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    p0 = torch.randn(n, device="cuda", generator=gen)
    grads = [torch.randn(n, device="cuda", generator=gen) for _ in range(8)]
    cases, failed = {}, []
    for name in _algorithms():
        for lr_dtype in (torch.float32, torch.float64):
            key = f"{name}, {str(lr_dtype).split('.')[-1]} lr"
            try:
                cases[key] = captured_vs_eager(torch, name, lr_dtype, p0, grads)
            except Exception as exc:   # one algorithm's failure is a result; the others go on
                cases[key] = {"ok": False, "error": _err(exc)}
            if not cases[key]["ok"]:
                failed.append(key)
    return {"ok": not failed, "cases": cases, "failed": failed,
            "summary": f"{len(cases) - len(failed)}/{len(cases)} replay = eager" +
                       (f"; failed: {', '.join(failed)}" if failed else "")}


def captured_vs_eager(torch, name, lr_dtype, p0, grads):
    """fastlr.<name> with capturable=True, captured in a CUDA graph after 3 warm-up steps on a side stream and
    replayed for the other grads, against eager steps from p0: {"ok", "max_abs_diff", "step"}."""
    import fastlr
    cls, extra = getattr(fastlr, name), EXTRA.get(name, {})
    lr = torch.full((1,), 1e-2, dtype=lr_dtype, device="cuda")
    eager_p = p0.clone()
    eager = cls(eager_p, lr=float(lr.item()), **extra)
    for g in grads:
        eager.step(g)
    p, g_static = p0.clone(), torch.empty_like(p0)
    opt = cls(p, lr=lr, capturable=True, **extra)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up: compiles kernels, allocates device scalars
        for g in grads[:3]:
            g_static.copy_(g)
            opt.step(g_static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step(g_static)
    for g in grads[3:]:
        g_static.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    step = _step_count(torch, opt)
    diff = float((p - eager_p).abs().max())
    close = bool(torch.allclose(p, eager_p, rtol=1e-6, atol=1e-6))
    return {"ok": close and step == len(grads), "max_abs_diff": diff, "step": step}


def _step_count(torch, opt):
    """The step count of an optimizer's (first) param, a host number or a device scalar."""
    return float(torch.as_tensor(next(iter(opt.state.values()))["step"]).item())


@check(CHECKS, limit_s=60)
def graph_capture_cold(ctx):
    """Capturing a first step (no warm-up) fails loudly, or its replays equal eager steps; the
    optimizer stays usable and its state is never re-zeroed."""
    torch = _torch_cuda()
    import fastlr
    n = 1 << 12
    gen = torch.Generator(device="cuda").manual_seed(1)
    p0, g = torch.randn(n, device="cuda", generator=gen), torch.randn(n, device="cuda", generator=gen)
    ref = p0.clone()
    eager = fastlr.Adam(ref, lr=1e-2)
    for _ in range(3):
        eager.step(g)
    p = p0.clone()
    opt = fastlr.Adam(p, lr=torch.full((1,), 1e-2, dtype=torch.float64, device="cuda"), capturable=True)
    graph, res = torch.cuda.CUDAGraph(), {}
    try:
        with torch.cuda.graph(graph):
            opt.step(g)
        res["capture"] = "captured"
        for _ in range(3):
            graph.replay()
    except Exception as exc:   # the loud failure asked for
        res["capture"] = f"raised {_err(exc)}"
        torch.cuda.synchronize()
        p.copy_(p0)
        opt = fastlr.Adam(p, lr=torch.full((1,), 1e-2, dtype=torch.float64, device="cuda"), capturable=True)
        for _ in range(3):   # the process goes on: a fresh optimizer steps correctly
            opt.step(g)
    torch.cuda.synchronize()
    res["step"] = _step_count(torch, opt)
    res["max_abs_diff"] = float((p - ref).abs().max())
    res["ok"] = bool(torch.allclose(p, ref, rtol=1e-6, atol=1e-6)) and res["step"] == 3
    res["summary"] = f"{res['capture'][:120]}; after 3 steps equal to eager: {res['ok']}"
    return res


@check(CHECKS, limit_s=60)
def stream_ordering(ctx):
    """A grad written on a side stream behind torch.cuda._sleep, stepped under that stream: the step
    waits for it (NumPy-style API, with max_grad_norm, and fastlr.torch)."""
    torch = _torch_cuda()
    import fastlr
    n = 1 << 12 if ctx.tiny else 1 << 20
    side = torch.cuda.Stream()
    cycles = 100_000_000   # ~50 ms at ~2 GHz: far longer than a step

    def trial(make_step, on_side=True):
        p, g = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
        step = make_step(p, g)
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(cycles)
            g.fill_(1.0)
            if on_side:
                step()
        if not on_side:
            step()   # on the default stream, without waiting for `side`: a race, on purpose
        torch.cuda.synchronize()
        return bool((p == -1.0).all())

    def numpy_api(**options):
        def make(p, g):
            opt = fastlr.SGD(p, lr=1.0, **options)
            return lambda: opt.step(g)
        return make

    def torch_api(p, g):
        import fastlr.torch as ft
        p.requires_grad_(True)
        opt = ft.SGD([p], lr=1.0)
        return lambda: (setattr(p, "grad", g), opt.step())

    res = {}
    for name, make in (("fastlr.SGD", numpy_api()), ("fastlr.SGD max_grad_norm", numpy_api(max_grad_norm=1e9)),
                       ("fastlr.torch.SGD", torch_api)):
        try:
            with torch.no_grad():
                res[name] = trial(make)
        except Exception as exc:   # one front end's failure is a result
            res[name] = _err(exc)
    # the control shows the trial can see a race: stepping on another stream reads the stale grad
    res["control (race on purpose) saw the race"] = not trial(numpy_api(), on_side=False)
    ok = all(v is True for k, v in res.items() if not k.startswith("control"))
    return {"ok": ok, "cases": res, "summary": ", ".join(f"{k}: {v}" for k, v in res.items())[:300]}


def _decode_kernels():
    """CUDA kernels applying the mixed kernels' conversions (kernels.rules via kernels.cuda.R)."""
    from .kernels.cuda import R

    @cuda.jit
    def decode_bf16(bits, out):
        for i in range(cuda.grid(1), bits.size, cuda.gridsize(1)):
            out[i] = np.float32(R.bf16_to_float_arith(bits[i]))

    @cuda.jit
    def decode_fp16(bits, out):
        for i in range(cuda.grid(1), bits.size, cuda.gridsize(1)):
            out[i] = np.float32(R.fp16_to_float(bits[i]))

    @cuda.jit
    def encode_bf16(x, out):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            out[i] = R.bits_as_int16(R.float_to_bf16_arith(x[i], -1))

    @cuda.jit
    def encode_fp16(x, out):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            out[i] = R.bits_as_int16(R.float_to_fp16(x[i], -1))
    return {"bf16": (decode_bf16, encode_bf16), "fp16": (decode_fp16, encode_fp16)}


def ptx_cases():
    """The conversion kernels above, for fastlr.kernels.ptx (so make ptx-check compiles them too)."""
    kernels = _decode_kernels()
    for fmt, (decode, encode) in kernels.items():
        yield f"decode {fmt}", decode, (np.zeros(1, np.int16), np.zeros(1, np.float32))
        yield f"encode {fmt}", encode, (np.zeros(1, np.float32), np.zeros(1, np.int16))


def _same_values(a, b):
    """Bit-equal float arrays, any NaN matching any NaN."""
    nan = np.isnan(a) & np.isnan(b)
    return (a.view(np.uint32) == b.view(np.uint32)) | nan


@check(CHECKS, limit_s=90)
def bf16_decode(ctx):
    """All 65536 bf16 and fp16 bit patterns decoded as torch's .view(bfloat16).float(); float32 ->
    bf16/fp16 rounding (to nearest even) as torch's .to(); by the mixed kernels' conversions."""
    _cuda()
    torch = _torch()
    kernels = _decode_kernels()
    bits = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):   # some draws overflow float32: inf is a case too
        x = np.concatenate([rng.standard_normal(1 << 16) * 10.0 ** rng.integers(-40, 39, 1 << 16),
                            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, 65504.0, 65520.0,
                             1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -9, 1.0 + 2.0 ** -11]]).astype(np.float32)
    if ctx.tiny:   # every 61st pattern, and the rounding cases
        bits, x = np.ascontiguousarray(bits[::61]), x[-200:]
    launch = (1, 64) if ctx.tiny else (1024, 256)
    res, ok = {}, True
    for fmt, tdtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        decode, encode = kernels[fmt]
        out = cuda.device_array(bits.size, np.float32)
        decode[launch](cuda.to_device(bits), out)
        ref = torch.from_numpy(bits.copy()).view(tdtype).float().numpy()
        same = _same_values(out.copy_to_host(), ref)
        enc = cuda.device_array(x.size, np.int16)
        encode[launch](cuda.to_device(x), enc)
        ref_enc = torch.from_numpy(x.copy()).to(tdtype).view(torch.int16).numpy()
        ours_enc = enc.copy_to_host()
        back = (torch.from_numpy(ours_enc.copy()).view(tdtype).float().numpy(),
                torch.from_numpy(ref_enc.copy()).view(tdtype).float().numpy())
        enc_same = (ours_enc == ref_enc) | (np.isnan(back[0]) & np.isnan(back[1]))
        res[fmt] = {"decoded": int(bits.size), "decode_mismatches": int((~same).sum()),
                    "decode_first_bad": [int(b) for b in bits[~same][:5]],
                    "encoded": int(x.size), "encode_mismatches": int((~enc_same).sum()),
                    "encode_first_bad": [float(v) for v in x[~enc_same][:5]]}
        ok &= bool(same.all() and enc_same.all())
    return {"ok": ok, **res, "summary": "; ".join(
        f"{f}: {r['decode_mismatches']}/{r['decoded']} decode, {r['encode_mismatches']}/{r['encoded']} "
        f"encode mismatches" for f, r in res.items())}


@check(CHECKS, limit_s=60)
def wrong_device(ctx):
    """Arrays on another device than the params: a clear error naming the argument, before any
    change (with two GPUs: a param on the non-current GPU too)."""
    torch = _torch_cuda()
    import fastlr
    res = {}

    def expect_error(label, param, grad):
        before = param.clone()
        opt = fastlr.Adam(param)
        try:
            opt.step(grad)
            res[label] = {"ok": False, "error": None}
        except (ValueError, TypeError) as exc:
            res[label] = {"ok": "grads[0]" in str(exc) and bool(torch.equal(param, before)), "error": _err(exc)}
        except Exception as exc:   # an error, but not the clear one asked for
            res[label] = {"ok": False, "error": _err(exc)}

    expect_error("CPU grad, CUDA param", torch.zeros(10, device="cuda"), torch.ones(10))
    expect_error("CUDA grad, CPU param", torch.zeros(10), torch.ones(10, device="cuda"))
    if torch.cuda.device_count() > 1:
        expect_error("grad on cuda:1, param on cuda:0", torch.zeros(10, device="cuda:0"),
                     torch.ones(10, device="cuda:1"))
        p, g = torch.zeros(10, device="cuda:1"), torch.ones(10, device="cuda:1")
        try:   # the current device is cuda:0: a correct step or a clear error
            fastlr.SGD(p, lr=1.0).step(g)
            torch.cuda.synchronize(1)
            res["param and grad on cuda:1, current cuda:0"] = {"ok": bool((p == -1).all()), "error": None}
        except (ValueError, TypeError) as exc:
            res["param and grad on cuda:1, current cuda:0"] = {"ok": True, "error": _err(exc)}
        except Exception as exc:
            res["param and grad on cuda:1, current cuda:0"] = {"ok": False, "error": _err(exc)}
    else:
        res["two GPUs"] = {"ok": True, "error": "one GPU here: the cross-GPU cases were not run"}
    ok = all(r["ok"] for r in res.values())
    return {"ok": ok, "cases": res,
            "summary": ", ".join(f"{k}: {'ok' if r['ok'] else 'BAD ' + str(r['error'])[:80]}"
                                 for k, r in res.items())}


_FRESH_PROCESS = """
import json, time
t0 = time.perf_counter()
import numpy as np
from numba import cuda
import fastlr
t1 = time.perf_counter()
p = cuda.to_device(np.zeros(4096, np.float32)); g = cuda.to_device(np.ones(4096, np.float32))
opt = fastlr.Adam(p)
t2 = time.perf_counter(); opt.step(g); cuda.synchronize(); t3 = time.perf_counter()
cap = fastlr.Adam(cuda.to_device(np.zeros(4096, np.float32)), capturable=True)
t4 = time.perf_counter(); cap.step(g); cuda.synchronize(); t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_step_s": t3 - t2, "capturable_first_step_s": t5 - t4}))
"""


@check(CHECKS, limit_s=150)
def cache_reuse(ctx):
    """Kernel cache: a second process's first step (and first capturable step) < 1 s, with a fresh
    NUMBA_CACHE_DIR that the first process fills."""
    _real_gpu()
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(ctx.workdir, "numba-cache"))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"ok": False, "runs": runs, "error": proc.stderr[-2000:],
                    "summary": f"process {len(runs) + 1} failed"}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    second = runs[1]
    ok = second["first_step_s"] < 1.0 and second["capturable_first_step_s"] < 1.0
    return {"ok": ok, "first": runs[0], "second": second,
            "summary": f"first step {runs[0]['first_step_s']:.2f} s then {second['first_step_s']:.3f} s; "
                       f"capturable {runs[0]['capturable_first_step_s']:.2f} s then "
                       f"{second['capturable_first_step_s']:.3f} s (goal < 1 s)"}


@check(CHECKS, limit_s=150)
def bandwidth(ctx):
    """Adam fp32 at 2^26 and 2^28 params: GB/s of fastlr, torch fused, a copy and the stream kernel,
    and a blocks/SM sweep of the kernel (goal: >= 0.9 of copy and >= torch fused)."""
    torch = _torch_cuda()
    sizes = [1 << 16] if ctx.tiny else [1 << 26, 1 << 28]
    res = {}
    for n in sizes:
        res[str(n)] = _bandwidth_at(torch, n, number=2 if ctx.tiny else 10, repeat=3 if ctx.tiny else 7)
        torch.cuda.empty_cache()
    big = res[str(sizes[-1])]
    ok_goal = all(r["goal_met"] for r in res.values())
    return {"sizes": res, "goal_met": ok_goal,
            "summary": "; ".join(f"2^{int(math.log2(int(n)))}: fastlr {r['GB/s']['fastlr']:.0f} GB/s = "
                                 f"{r['fastlr_vs_copy']:.2f} of copy, {r['fastlr_vs_torch_fused']:.2f}x torch fused"
                                 for n, r in res.items()) + f"; best blocks/SM {big['best_blocks_per_sm']}"}


def _bandwidth_at(torch, n, number, repeat):
    from numba import cuda

    import fastlr

    from .kernels import cuda as kernels
    from .kernels.stream import CUDA_STREAM
    nbytes = 28 * n   # Adam fp32: p, g, m, v read; p, m, v written
    gen = torch.Generator(device="cuda").manual_seed(0)
    p = torch.randn(n, device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen) * 1e-3
    fp = p.clone()
    opt = fastlr.Adam(fp)
    tp = p.clone().requires_grad_()
    tp.grad = g.clone()
    topt = torch.optim.Adam([tp], fused=True)
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    arrays = [torch.zeros(n, device="cuda") for _ in range(4)]
    views = [cuda.as_cuda_array(a) for a in arrays]
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    adam = next(args for label, _, args in kernels.ptx_cases() if label == "KERNELS[adam] float32")
    h, c = adam[-2], adam[-1]
    ceiling = CUDA_STREAM(2)
    a, b = np.float32(1e-3), np.float32(0.5)
    default_blocks = kernels.launch_config(n)[0]
    t = _interleaved(torch, {
        "fastlr": lambda: opt.step(g),
        "torch_fused": topt.step,
        "copy": lambda: dst.copy_(src),
        "stream_kernel": lambda: ceiling[default_blocks, 256, stream](*views, a, b),
    }, number, repeat)
    gbs = {k: (8 * n if k == "copy" else nbytes) / v / 1e9 for k, v in t.items()}
    sweep = {}
    full = math.ceil(n / 256)
    for per_sm in (4, 8, 16, 32, "cover"):
        blocks = full if per_sm == "cover" else min(full, per_sm * sms)
        ts = _interleaved(torch, {
            "adam_kernel": functools.partial(kernels.KERNELS["adam"][blocks, 256, stream], *views, h, c),
            "stream_kernel": functools.partial(ceiling[blocks, 256, stream], *views, a, b)}, number, repeat)
        sweep[str(per_sm)] = {"blocks": blocks, **{k: nbytes / v / 1e9 for k, v in ts.items()}}
    best = max(sweep, key=lambda k: sweep[k]["adam_kernel"])
    return {"seconds": t, "GB/s": gbs, "fastlr_vs_copy": gbs["fastlr"] / gbs["copy"],
            "fastlr_vs_torch_fused": t["torch_fused"] / t["fastlr"], "default_blocks": default_blocks,
            "sweep_GB/s": sweep, "best_blocks_per_sm": best,
            "goal_met": gbs["fastlr"] >= 0.9 * gbs["copy"] and t["fastlr"] <= t["torch_fused"]}


@check(CHECKS, limit_s=120)
def launch_overhead(ctx):
    """Per-step time at 4K params, 1 and 100 params, 1000 steps without a sync, vs torch fused (goal
    <= 20 us for one param); and what max_grad_norm adds per param on 200 x 64K."""
    torch = _torch_cuda()
    steps = 20 if ctx.tiny else 1000
    res = {}
    for n_params in (1, 100):
        res[f"{n_params} x 4K"] = _per_step(torch, n_params, 4096, steps, {})
    n_params, size = (4, 4096) if ctx.tiny else (200, 1 << 16)
    norm = {}
    for label, options in (("plain", {}), ("max_grad_norm", {"max_grad_norm": 1.0})):
        norm[label] = _per_step(torch, n_params, size, 5 if ctx.tiny else 50, options, with_torch=not options)
    norm["added_us_per_param"] = (norm["max_grad_norm"]["fastlr"]["total_us"]
                                  - norm["plain"]["fastlr"]["total_us"]) / n_params
    res[f"{n_params} x {size} norm"] = norm
    one = res["1 x 4K"]
    return {**res, "goal_met": one["fastlr"]["total_us"] <= 20.0,
            "summary": f"1 x 4K: fastlr {one['fastlr']['total_us']:.1f} us, torch fused "
                       f"{one.get('torch_fused', {}).get('total_us', float('nan')):.1f} us; 100 x 4K: fastlr "
                       f"{res['100 x 4K']['fastlr']['total_us']:.0f} us, torch fused "
                       f"{res['100 x 4K'].get('torch_fused', {}).get('total_us', float('nan')):.0f} us; "
                       f"max_grad_norm adds {norm['added_us_per_param']:.1f} us/param"}


def _per_step(torch, n_params, size, steps, options, with_torch=True):
    """{impl: {"host_us", "total_us"}} per step over `steps` steps with one sync at the end (median of 3)."""
    import fastlr
    gen = torch.Generator(device="cuda").manual_seed(0)
    grads = [torch.randn(size, device="cuda", generator=gen) for _ in range(n_params)]

    def params():
        return [torch.zeros(size, device="cuda", requires_grad=True) for _ in range(n_params)]
    impls = {}
    ps = [p.detach() for p in params()]
    opt = fastlr.Adam(ps, **options)
    impls["fastlr"] = lambda: opt.step(grads)
    try:
        import fastlr.torch as ft
        tps = params()
        for p, g in zip(tps, grads):
            p.grad = g
        topt = ft.Adam(tps, **options)
        impls["fastlr.torch"] = topt.step
    except Exception:   # noqa: BLE001 - the torch front end is measured when it works
        pass
    if with_torch:
        fps = params()
        for p, g in zip(fps, grads):
            p.grad = g
        fopt = torch.optim.Adam(fps, fused=True)
        impls["torch_fused"] = fopt.step
    samples = {k: [] for k in impls}
    for fn in impls.values():
        for _ in range(3):
            fn()
    for _ in range(3):
        for name, fn in impls.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            samples[name].append(((t1 - t0) / steps * 1e6, (time.perf_counter() - t0) / steps * 1e6))
    return {k: {"host_us": statistics.median(s[0] for s in v), "total_us": statistics.median(s[1] for s in v)}
            for k, v in samples.items()}


@check(CHECKS, limit_s=180)
def bench_quick(ctx):
    """fastlr bench --device gpu --quick: every algorithm at 4K and 16K params vs torch."""
    _real_gpu()
    out = os.path.join(ctx.workdir, "bench.json")
    proc = subprocess.run([sys.executable, "-m", "fastlr.cli", "bench", "--device", "gpu", "--quick",
                           "--json", out], capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
        return {"ok": False, "returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-3000:],
                "summary": f"fastlr bench ended with code {proc.returncode}"}
    with open(out) as f:
        data = json.load(f)
    keep = ("algo", "size", "impl", "variant", "time_s", "gbps", "vs_ceiling", "speedup_vs_torch")
    rows = [{k: r.get(k) for k in keep} for r in data["rows"]]
    vs_torch = [r["speedup_vs_torch"] for r in rows if r["impl"] == "fastlr" and r["speedup_vs_torch"]]
    return {"meta": data.get("meta"), "rows": rows, "table": proc.stdout[-6000:],
            "summary": f"{len(rows)} rows; fastlr vs torch: median {statistics.median(vs_torch):.2f}x, "
                       f"min {min(vs_torch):.2f}x" if vs_torch else f"{len(rows)} rows, no torch rows"}


@check(CHECKS, limit_s=90)
def mixed_bandwidth(ctx):
    """Mixed precision (fastlr.mixed.bench, Adam): bf16/fp16 master weights and bf16 stochastic
    rounding, GB/s against float32 (goal >= 0.8)."""
    _torch_cuda()
    from . import mixed
    n = 1 << 12 if ctx.tiny else 1 << 26
    res = {fmt: mixed.bench(n, "Adam", "cuda", repeat=3 if ctx.tiny else 10, fmt=fmt) for fmt in ("bf16", "fp16")}
    ratios = {f"{fmt} {r['mode']}": r["GB/s"] / rows[0]["GB/s"] for fmt, rows in res.items() for r in rows[1:]}
    return {"rows": res, "vs_fp32": ratios, "goal_met": all(v >= 0.8 for v in ratios.values()),
            "summary": ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + " of fp32 GB/s"}


@check(CHECKS, limit_s=150)
def lowbit_states(ctx):
    """Low-precision states on the GPU (fastlr.torch.AdamW, state_precision=): an 8-bit step on CUDA
    equals the CPU's (codes, absmax, params), then ms per step of fp32, bf16, 8-bit and 4-bit states
    against torch fused AdamW, torchao AdamW8bit and bitsandbytes AdamW8bit where installed (issue 13)."""
    torch = _torch_cuda()
    import fastlr.torch as ft
    n = 1 << 16 if ctx.tiny else 1 << 24
    gen = torch.Generator().manual_seed(0)
    p0, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen) * 1e-3
    steps = {}
    for device in ("cpu", "cuda"):
        w = p0.to(device).requires_grad_()
        w.grad = g.to(device)
        opt = ft.AdamW([w], lr=1e-3, state_precision="8bit")
        opt.step()
        opt.step()
        steps[device] = (w.detach().cpu(), {k: v.cpu() for k, v in opt.state[w].items()})
    (pc, sc), (pg, sg) = steps["cpu"], steps["cuda"]
    codes_off = max(float((sc[k] != sg[k]).float().mean()) for k in ("exp_avg", "exp_avg_sq"))
    same = bool(torch.allclose(pc, pg, rtol=0, atol=1e-6)) and codes_off <= 1e-3
    impls, params = {}, {}

    def add(name, make):
        w = p0.to("cuda").requires_grad_()
        w.grad = g.to("cuda")
        try:
            opt = make([w])
            opt.step()
        except Exception as exc:   # a peer that cannot run here is reported, not fatal
            params[name] = _err(exc)
            return
        impls[name] = opt.step
    for precision in ("fp32", "bf16", "8bit", "4bit"):
        add(f"fastlr {precision}", lambda ps, precision=precision: ft.AdamW(ps, lr=1e-3, state_precision=precision))
    add("torch fused AdamW", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))
    try:
        from torchao.optim import AdamW4bit, AdamW8bit
        add("torchao AdamW8bit", lambda ps: AdamW8bit(ps, lr=1e-3))
        add("torchao AdamW4bit", lambda ps: AdamW4bit(ps, lr=1e-3))
    except ImportError:
        params["torchao"] = "not installed"
    try:
        import bitsandbytes as bnb
        add("bitsandbytes AdamW8bit", lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3))
    except ImportError:
        params["bitsandbytes"] = "not installed"
    t = _interleaved(torch, impls, number=2 if ctx.tiny else 10, repeat=3 if ctx.tiny else 7)
    ms = {k: 1e3 * v for k, v in t.items()}
    peers = {k: v / ms["fastlr 8bit"] for k, v in ms.items() if "8bit" in k and not k.startswith("fastlr")}
    return {"ok": same, "cuda_equals_cpu": same, "codes_differing": codes_off, "ms_per_step": ms,
            "peer_ms_over_fastlr_8bit": peers, "not_run": params,
            "summary": f"8-bit CUDA == CPU: {same}; {n} params, ms/step: "
                       + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())}


@check(CHECKS, limit_s=90)
def sparse_latency(ctx):
    """p50/p99 latency of step_rows (Adam, 1M x 64 float32 table on the GPU, 4096 Zipf-like ids)."""
    torch = _torch_cuda()
    import fastlr
    rows, dim, batch, calls = (1000, 16, 64, 20) if ctx.tiny else (1 << 20, 64, 4096, 1000)
    table = torch.zeros(rows, dim, device="cuda")
    opt = fastlr.Adam(table)
    rng = np.random.default_rng(0)
    ids = [np.minimum(rng.zipf(1.1, batch) - 1, rows - 1).astype(np.int64) for _ in range(calls)]
    grads = torch.randn(batch, dim, device="cuda")
    opt.step_rows(ids[0], grads)
    torch.cuda.synchronize()
    lat = []
    for batch_ids in ids:
        t = time.perf_counter()
        opt.step_rows(batch_ids, grads)
        torch.cuda.synchronize()
        lat.append((time.perf_counter() - t) * 1e6)
    p50, p99 = np.percentile(lat, [50, 99])
    return {"calls": calls, "p50_us": p50, "p99_us": p99, "max_us": max(lat),
            "summary": f"step_rows of {batch} ids: p50 {p50:.0f} us, p99 {p99:.0f} us"}
