"""``make gpu-check``: the checks to run first on a real GPU, one JSON report (docs/GPU.md).

    python -m fastlr.gpucheck [--out DIR] [--only a,b] [--skip a,b] [--budget S] [--tiny] [--list]

Runs each check of ``fastlr.gpuchecks.CHECKS`` in order, each in a process of its own with
its own time limit, so a check that fails, hangs or takes the CUDA context down with it
(an illegal address, a broken graph capture) cannot stop the others. The run as a whole
stays within ``--budget`` seconds: a check gets what is left of it at most, and the checks
that no time is left for are reported as not run. The report, ``DIR/gpu-report.json``
(DIR: --out, else $OUT, else ./gpu-report), is rewritten after every check, so a run cut
short still leaves the results so far. The closing line counts the checks:
``gpu-check: N passed, M failed, K skipped``.

A check is a function returning a dict of results (``"ok": False`` marks a failure,
``"summary"`` is the line printed for it) or raising ``Skip`` (it cannot run here: no GPU,
no torch). ``--tiny`` asks the checks for the smallest sizes (tests, the simulator).
"""
import argparse
import importlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

REGISTRY = "fastlr.gpuchecks"
DEFAULT_BUDGET_S = 420   # 8 minutes less the venv set-up of `make gpu-check`, less a margin
REPORT_NAME = "gpu-report.json"


class Skip(Exception):
    """Raised by a check that cannot run here (no GPU, a library missing); not a failure."""


class Check:
    """One check: a function(ctx) -> dict, its time limit, and what it checks (its docstring)."""

    def __init__(self, fn, limit_s):
        self.name, self.fn, self.limit_s = fn.__name__, fn, limit_s
        self.about = (fn.__doc__ or "").strip().split("\n")[0]


def check(registry, limit_s):
    """Decorator: add the function to the list `registry` as a Check with this time limit."""
    def add(fn):
        registry.append(Check(fn, limit_s))
        return fn
    return add


class Context:
    """What a check is given: ``tiny`` (smallest sizes) and ``workdir`` (a scratch folder of its own)."""

    def __init__(self, tiny, workdir):
        self.tiny, self.workdir = tiny, workdir


def load_registry(source):
    """The CHECKS list of a module name, or of a .py file (tests use their own)."""
    if source.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_gpucheck_registry", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(source)
    return module.CHECKS


# ---------------------------------------------------------------- in the child process
def run_child(name, result_path, registry, tiny):
    """Run one check here and write {"status", "result" | "error"} to result_path."""
    checks = {c.name: c for c in load_registry(registry)}
    workdir = tempfile.mkdtemp(prefix=f"gpucheck-{name}-")
    try:
        result = checks[name].fn(Context(tiny, workdir))
        status = "fail" if result.get("ok") is False else "pass"
        out = {"status": status, "result": result}
    except Skip as exc:
        out = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:   # the check's own error is its result
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1, default=_jsonable)


def _jsonable(x):
    """numpy scalars and arrays as Python values, anything else as its repr."""
    return x.tolist() if hasattr(x, "tolist") else repr(x)


# ---------------------------------------------------------------- in the parent
def run_one(chk, limit_s, registry, tiny, env=None):
    """Run `chk` in a child process, killed (with its own children) after limit_s seconds."""
    fd, result_path = tempfile.mkstemp(suffix=".json", prefix=f"gpucheck-{chk.name}-")
    os.close(fd)
    cmd = [sys.executable, "-m", "fastlr.gpucheck", "--child", chk.name, "--result", result_path,
           "--registry", registry] + (["--tiny"] if tiny else [])
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    try:
        output, _ = proc.communicate(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    row = {"name": chk.name, "about": chk.about, "seconds": round(time.perf_counter() - t, 2),
           "limit_s": round(limit_s, 1)}
    try:
        with open(result_path) as f:
            row.update(json.load(f))
    except (OSError, ValueError):
        row["status"] = "timeout" if timed_out else "crash"
        row["error"] = (f"killed after {limit_s:.0f} s" if timed_out else
                        f"the check's process ended with code {proc.returncode} and no result")
    finally:
        os.unlink(result_path)
    if row["status"] not in ("pass", "skipped"):
        row["output_tail"] = output[-3000:]
    return row


def line(row):
    """One line per check for people: status, name, time, and its summary or error."""
    what = (row.get("result", {}).get("summary") or row.get("reason") or row.get("error") or "")
    return f"{row['status'].upper():8s} {row['name']:18s} {row.get('seconds', 0):6.1f}s  {what}"


def write_report(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _say(text):
    print(text, flush=True)   # seen as each check ends, even if the run is cut short


def run_checks(checks, out_dir, budget_s, registry=REGISTRY, tiny=False, printer=_say):
    """Run the checks in order within budget_s seconds; return the report (also written to out_dir)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, REPORT_NAME)
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
              "python": sys.executable, "argv": sys.argv[1:], "budget_s": budget_s, "tiny": tiny,
              "checks": []}
    deadline = time.perf_counter() + budget_s
    for chk in checks:
        left = deadline - time.perf_counter()
        if left < 5:
            row = {"name": chk.name, "about": chk.about, "status": "not run",
                   "error": f"no time left of the {budget_s} s budget"}
        else:
            row = run_one(chk, min(chk.limit_s, left), registry, tiny)
        report["checks"].append(row)
        write_report(path, report)
        printer(line(row))
    counts = {s: sum(r["status"] == s for r in report["checks"])
              for s in ("pass", "fail", "error", "timeout", "crash", "skipped", "not run")}
    report["counts"] = counts
    report["seconds"] = round(budget_s - (deadline - time.perf_counter()), 1)
    write_report(path, report)
    failed = len(checks) - counts["pass"] - counts["skipped"]
    printer(f"report: {path}")
    printer(f"gpu-check: {counts['pass']} passed, {failed} failed, {counts['skipped']} skipped")
    return report


def _names(text, known, parser, flag):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        parser.error(f"{flag}: unknown check(s) {bad}; choose from {sorted(known)}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastlr.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder of the report (default: $OUT, else ./gpu-report)")
    parser.add_argument("--only", default="", help="comma-separated checks to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated checks to leave out")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all the checks together (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (tests, the CUDA simulator)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--registry", default=REGISTRY, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.result, args.registry, args.tiny)
        return 0
    if args.budget <= 0:
        parser.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    checks = load_registry(args.registry)
    known = {c.name for c in checks}
    if args.list:
        for c in checks:
            print(f"{c.name:18s} {c.limit_s:5.0f}s  {c.about}")
        return 0
    only = set(_names(args.only, known, parser, "--only")) or known
    skip = set(_names(args.skip, known, parser, "--skip"))
    selected = [c for c in checks if c.name in only and c.name not in skip]
    out_dir = args.out or os.environ.get("OUT") or "gpu-report"
    report = run_checks(selected, out_dir, args.budget, args.registry, args.tiny)
    return 0 if report["counts"]["pass"] + report["counts"]["skipped"] == len(selected) else 1


if __name__ == "__main__":   # through the imported module, whose Skip the checks raise
    from fastlr.gpucheck import main as _main
    sys.exit(_main())
