"""fastlr.gpucheck (make gpu-check) without a GPU: each check isolated in its own process (one
that fails, raises, crashes or hangs does not stop the others), the time budget, the report,
the command line; every real check skips cleanly here; bf16_decode runs under the simulator."""
import json
import os
import subprocess
import sys

import pytest

from fastlr import gpucheck, gpuchecks

HERE = os.path.dirname(__file__)
FAKES = os.path.join(HERE, "gpucheck_fakes.py")


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastlr.gpucheck", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _report(out):
    with open(os.path.join(out, gpucheck.REPORT_NAME)) as f:
        return json.load(f)


def test_each_outcome_is_isolated_and_reported(tmp_path):
    proc = _run("--registry", FAKES, "--out", str(tmp_path), "--tiny")
    assert proc.returncode == 1
    report = _report(tmp_path)
    status = {r["name"]: r["status"] for r in report["checks"]}
    assert status == {"passes": "pass", "fails": "fail", "raises": "error", "crashes": "crash",
                      "hangs": "timeout", "skips": "skipped", "last": "pass"}
    rows = {r["name"]: r for r in report["checks"]}
    assert rows["passes"]["result"] == {"value": 1.5, "tiny": True, "workdir_exists": True, "summary": "fine"}
    assert "RuntimeError: broken check" in rows["raises"]["error"] and "traceback" in rows["raises"]
    assert "last words" in rows["crashes"]["output_tail"]
    assert rows["hangs"]["seconds"] < 30
    assert report["counts"]["pass"] == 2 and report["counts"]["skipped"] == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "gpu-check: 2 passed, 4 failed, 1 skipped"
    assert any(line.startswith("FAIL") and "wrong numbers" in line for line in lines)


def test_out_of_budget_checks_are_not_run(tmp_path):
    proc = _run("--registry", FAKES, "--only", "hangs,passes,last", "--budget", "6", "--out", str(tmp_path))
    rows = _report(tmp_path)["checks"]
    assert [r["name"] for r in rows] == ["passes", "hangs", "last"]   # registry order
    assert rows[0]["status"] == "pass" and rows[1]["status"] == "timeout"
    assert rows[2]["status"] == "not run" and "budget" in rows[2]["error"]   # < 5 s were left
    assert proc.returncode == 1 and proc.stdout.strip().endswith("1 passed, 2 failed, 0 skipped")


def test_report_goes_to_OUT_when_no_out_is_given(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = _run("--registry", FAKES, "--only", "passes", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _report(tmp_path)["checks"][0]["result"]["value"] == 1.5


@pytest.mark.parametrize("args, message", [
    (["--only", "nope"], "--only: unknown check(s) ['nope']"),
    (["--skip", "environment,nope"], "--skip: unknown check(s) ['nope']"),
    (["--budget", "0"], "--budget: expected a positive number"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gpucheck.main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_list_names_every_check(capsys):
    assert gpucheck.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [c.name for c in gpuchecks.CHECKS]


def test_every_check_skips_cleanly_without_a_gpu(tmp_path):
    """In this process (no GPU here): the checks import, and each one either skips or passes."""
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present: make gpu-check runs the checks")
    ctx = gpucheck.Context(tiny=True, workdir=str(tmp_path))
    outcomes = {}
    for chk in gpuchecks.CHECKS:
        try:
            result = chk.fn(ctx)
            outcomes[chk.name] = "fail" if result.get("ok") is False else "pass"
        except gpucheck.Skip:
            outcomes[chk.name] = "skipped"
    assert outcomes.pop("environment") == "pass"
    assert set(outcomes.values()) == {"skipped"}


def test_bf16_decode_under_the_simulator(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = _run("--only", "bf16_decode", "--tiny", "--out", str(tmp_path), env=env)
    row = _report(tmp_path)["checks"][0]
    assert row["status"] == "pass", row
    assert row["result"]["bf16"]["decoded"] > 1000 and row["result"]["fp16"]["encode_mismatches"] == 0
    assert proc.returncode == 0
