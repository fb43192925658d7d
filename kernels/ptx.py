"""Compile every CUDA kernel to PTX for one compute capability, with no GPU: ``make ptx-check``.

The CUDA simulator that runs the GPU tests on machines without a GPU interprets Python, so
it accepts kernels the real compiler rejects (a typing error, such as a tuple of mixed
float32/float64 indexed at run time). Here each kernel goes through numba-cuda's real
compiler (NVVM, from NVIDIA's pip wheels: the ``ptx`` extra) with the argument types its
launches have, for an H100/H200 (cc 9.0) by default; ``ptxas`` then reports its registers
and spills.

Registering kernels: every module of this package whose source mentions ``cuda.jit`` (and
each of ``OTHER_MODULES``) must define ``ptx_cases()``, yielding ``(label, kernel, args)``: a
``cuda.jit`` kernel and example arguments with the types of a real launch (NumPy arrays stand for device arrays; Python
floats are float64, NumPy scalars keep their dtype). A kernel that such a module holds
(directly or in a dict/tuple) and that no case compiles is reported as a failure, so a new
kernel cannot be forgotten. The prepare kernels of capturable steps are built per optimizer
class by ``fastlr.capturable``; their cases are here (``prepare_cases``).

    python -m fastlr.kernels.ptx [--cc 9.0] [-k SUBSTRING] [--json FILE] [--no-ptxas]
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

FLOATS = (np.float32, np.float64)
# Modules outside this package with CUDA kernels and a ptx_cases() (the GPU check's own kernels).
OTHER_MODULES = ("fastlr.gpuchecks",)


def kernel_modules():
    """Names of the modules that define CUDA kernels: this package's whose source says cuda.jit,
    and OTHER_MODULES."""
    package = importlib.import_module(__package__)
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{__package__}.{info.name}"
        if info.name != "ptx":
            with open(importlib.util.find_spec(name).origin) as f:
                if "cuda.jit" in f.read():
                    names.append(name)
    return names + list(OTHER_MODULES)


def is_kernel(obj):
    """A numba-cuda kernel (not a device function)."""
    from numba.cuda.dispatcher import CUDADispatcher
    return isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")


def held_kernels(module):
    """{name: kernel} for the kernels `module` holds at top level or inside its dicts/tuples/lists."""
    found = {}

    def visit(name, obj, depth):
        if is_kernel(obj):
            found.setdefault(id(obj), (name, obj))
        elif depth < 2 and isinstance(obj, dict):
            for key, value in obj.items():
                visit(f"{name}[{key!r}]", value, depth + 1)
        elif depth < 2 and isinstance(obj, (tuple, list)):
            for j, value in enumerate(obj):
                visit(f"{name}[{j}]", value, depth + 1)
    for name, obj in vars(module).items():
        if not isinstance(obj, types.ModuleType):
            visit(f"{module.__name__}.{name}", obj, 0)
    return dict(found.values())


def cases():
    """(cases, uncovered): every (label, kernel, args) to compile, and the names of the kernels
    held by a kernel module that no case compiles (or of a module without ptx_cases)."""
    modules = [importlib.import_module(name) for name in kernel_modules()]
    found, uncovered = [], []
    for module in modules:
        provider = getattr(module, "ptx_cases", None)
        if provider is None:
            uncovered.append(f"{module.__name__}: defines CUDA kernels but no ptx_cases()")
            continue
        found += [(f"{module.__name__.rsplit('.', 1)[-1]}: {label}", k, args) for label, k, args in provider()]
    found += list(prepare_cases())
    compiled = {id(k) for _, k, _ in found}
    for module in modules:   # after every provider ran: some build kernels on first use
        uncovered += [f"{name}: no ptx case" for name, k in held_kernels(module).items() if id(k) not in compiled]
    return found, uncovered


def prepare_cases():
    """The prepare kernel of every algorithm (fastlr.specs), built as ``fastlr.capturable`` builds and
    launches it: float32/float64 params x float32/float64 device lr."""
    from .. import capturable, specs
    from ._codegen import scalar_names

    for name, spec in specs.SPECS.items():
        if spec.group_updates or not spec.lazy_rows:   # capturable refused (issue 14: host-side schedules)
            continue
        group = {**spec.constants, **spec.defaults, **spec.group_defaults(spec.defaults)}
        pstate = {"step": 0, **spec.scalar_state}
        kernel, names, consts = capturable.prepare(spec, group, pstate)
        n_h = len(scalar_names(spec.rule(group)))
        for p_dtype in FLOATS:
            for lr_dtype in FLOATS:
                args = (np.zeros(1), np.zeros(1, lr_dtype), *[np.zeros(1) for _ in names],
                        np.zeros(n_h, p_dtype), *consts)
                yield (f"capturable: prepare {name}, {p_dtype.__name__} params, {lr_dtype.__name__} lr",
                       kernel, args)


@contextlib.contextmanager
def assumed_device(cc):
    """numba-cuda compiles device functions for "the current device": make it report `cc`
    (there is no driver to ask on a machine without a GPU)."""
    from numba.cuda import compiler, dispatcher
    fake = types.SimpleNamespace(compute_capability=cc)
    saved = {m: m.get_current_device for m in (compiler, dispatcher)}
    for m in saved:
        m.get_current_device = lambda: fake
    try:
        yield
    finally:
        for m, fn in saved.items():
            m.get_current_device = fn


def compile_case(kernel, args, cc):
    """PTX of `kernel` for the types of `args`, with the kernel's own fastmath/lineinfo options."""
    from numba import cuda, typeof
    options = {k: kernel.targetoptions[k] for k in ("fastmath", "lineinfo") if kernel.targetoptions.get(k)}
    ptx, _ = cuda.compile_ptx(kernel.py_func, tuple(typeof(a) for a in args), cc=cc, **options)
    return ptx


def find_ptxas():
    """ptxas from NVIDIA's wheels (the ptx extra), else from PATH; None when neither has it."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        found = find_nvidia_binary_utility("ptxas")
    except Exception:   # an older cuda-pathfinder, or none
        found = None
    return found or shutil.which("ptxas")


_PTXAS_USE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_stats(ptxas, ptx, cc):
    """{"registers", "spill_bytes"} of the PTX's kernel as ptxas assembles it for sm_<cc>."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas: {out.stderr.strip()[-2000:]}")
    regs = [int(m) for m in _PTXAS_USE.findall(out.stderr)]
    spills = [int(a) + int(b) for a, b in _PTXAS_SPILL.findall(out.stderr)]
    return {"registers": max(regs, default=None), "spill_bytes": sum(spills)}


def _error_text(exc):
    """The exception's type and its last informative lines (numba's messages are long)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: " + " | ".join(lines[:2] + (["..."] + lines[-2:] if len(lines) > 4 else lines[2:]))


def run(selected, cc, ptxas=None, progress=True):
    """One result dict per case: label, ok, seconds, error or registers/spill_bytes."""
    from tqdm import tqdm
    results = []
    with assumed_device(cc):
        for label, kernel, args in tqdm(selected, desc="ptx", unit="kernel", disable=not progress,
                                        mininterval=2):
            t = time.perf_counter()
            row = {"label": label}
            try:
                ptx = compile_case(kernel, args, cc)
                if ptxas:
                    row.update(ptxas_stats(ptxas, ptx, cc))
                row["ok"] = True
            except Exception as exc:   # a failing kernel is the result, the others go on
                row.update(ok=False, error=_error_text(exc))
            row["seconds"] = round(time.perf_counter() - t, 3)
            results.append(row)
    return results


def summary(results, uncovered, cc):
    """Lines for people: failures, the kernels with the most registers, and the closing count."""
    lines = [f"FAILED {r['label']}: {r['error']}" for r in results if not r["ok"]]
    lines += [f"FAILED {u}" for u in uncovered]
    with_regs = sorted((r for r in results if r.get("registers") is not None), key=lambda r: -r["registers"])
    if with_regs:
        spilling = [r for r in with_regs if r["spill_bytes"]]
        lines.append(f"registers (sm_{cc[0]}{cc[1]}): max {with_regs[0]['registers']}, median "
                     f"{with_regs[len(with_regs) // 2]['registers']}; {len(spilling)} kernels spill")
        lines += [f"  {r['registers']:4d} regs {r['spill_bytes']:6d} B spilled  {r['label']}" for r in with_regs[:5]]
    failed = sum(not r["ok"] for r in results) + len(uncovered)
    lines.append(f"ptx-check: {len(results) + len(uncovered) - failed} passed, {failed} failed")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastlr.kernels.ptx", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0)")
    parser.add_argument("-k", dest="pattern", default="", help="only the cases whose label contains this")
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("--no-ptxas", action="store_true", help="skip ptxas (registers and spills)")
    args = parser.parse_args(argv)
    try:
        cc = tuple(int(x) for x in args.cc.split("."))
        assert len(cc) == 2
    except (ValueError, AssertionError):
        parser.error(f"--cc: expected MAJOR.MINOR such as 9.0, got {args.cc!r}")
    from numba import config
    if config.ENABLE_CUDASIM:
        parser.error("NUMBA_ENABLE_CUDASIM is set: the simulator compiles nothing; unset it")
    found, uncovered = cases()
    selected = [c for c in found if args.pattern in c[0]]
    ptxas = None if args.no_ptxas else find_ptxas()
    if not args.no_ptxas and ptxas is None:
        print("ptxas not found (install the ptx extra): no register counts", file=sys.stderr)
    results = run(selected, cc, ptxas)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cc": list(cc), "results": results, "uncovered": uncovered}, f, indent=1)
    print("\n".join(summary(results, uncovered, cc)))
    return 0 if all(r["ok"] for r in results) and not uncovered else 1


if __name__ == "__main__":
    sys.exit(main())
