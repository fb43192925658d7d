"""A registry of fake checks for test_gpucheck.py: one of each outcome, run by fastlr.gpucheck."""
import os
import time

from fastlr.gpucheck import Skip, check

CHECKS = []


@check(CHECKS, limit_s=30)
def passes(ctx):
    """Returns results."""
    return {"value": 1.5, "tiny": ctx.tiny, "workdir_exists": os.path.isdir(ctx.workdir), "summary": "fine"}


@check(CHECKS, limit_s=30)
def fails(ctx):
    """Returns ok False."""
    return {"ok": False, "summary": "wrong numbers"}


@check(CHECKS, limit_s=30)
def raises(ctx):
    """Raises."""
    raise RuntimeError("broken check")


@check(CHECKS, limit_s=30)
def crashes(ctx):
    """Ends its process without a result, as a crashed CUDA context can."""
    print("last words")
    os._exit(3)


@check(CHECKS, limit_s=1.5)
def hangs(ctx):
    """Outlives its time limit."""
    time.sleep(60)


@check(CHECKS, limit_s=30)
def skips(ctx):
    """Cannot run here."""
    raise Skip("no GPU here")


@check(CHECKS, limit_s=30)
def last(ctx):
    """Runs after all the others."""
    return {"summary": "still ran"}
