"""The demo (fastlr.demo / `fastlr demo`), the CLI and the example scripts, in their --quick forms."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    path = Path(path)
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_mlp_gradient_matches_finite_differences():
    from fastlr.demo import MLP
    model = MLP(sizes=(5, 7, 4), seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 4, 6)
    loss = model.loss_and_grad(X, y)
    assert loss == pytest.approx(model.loss(X, y))
    num = np.empty_like(model.grad)
    for i in range(model.params.size):
        old = model.params[i]
        model.params[i] = old + 1e-6
        up = model.loss(X, y)
        model.params[i] = old - 1e-6
        num[i] = (up - model.loss(X, y)) / 2e-6
        model.params[i] = old
    np.testing.assert_allclose(model.grad, num, atol=1e-7)
    # the layers are views of the one flat buffer
    assert all(np.shares_memory(W, model.params) and np.shares_memory(b, model.params)
               for W, b in model.layers)


def test_demo_quick(tmp_path, capsys):
    from fastlr import demo
    assert demo.main(["--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "optimizer" in out and "test acc" in out and "steps/s" in out
    for name in demo.OPTIMIZERS:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert _is_png(tmp_path / "curves.png") and _is_png(tmp_path / "schedules.png")


def test_cli_demo_quick(tmp_path, capsys):
    from fastlr.cli import main
    assert main(["demo", "--quick", "--optimizers", "Adam,Lion", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Adam" in out and "Lion" in out and "SGD" not in out
    assert _is_png(tmp_path / "curves.png") and _is_png(tmp_path / "schedules.png")


def test_cli_usage_errors(capsys):
    from fastlr.cli import main
    assert main([]) == 0                       # help
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["demo", "--optimizers", "Adamm", "--quick"])
    assert "unknown" in capsys.readouterr().err


def test_cli_help_texts_are_complete(capsys):
    """`fastlr --help` names bench's modes; `fastlr bench --help` documents each; demo's help counts its choices."""
    from fastlr import demo
    from fastlr.cli import main
    with pytest.raises(SystemExit):
        main(["-h"])
    top = capsys.readouterr().out
    modes = ["--sparse", "--engine", "--dtype bf16|fp16", "--state-precision"]
    assert all(m in " ".join(top.split()) for m in modes), top
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    bench_help = capsys.readouterr().out
    assert all(m in bench_help for m in modes), bench_help
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo_help = " ".join(capsys.readouterr().out.split())
    n = len(demo.make_optimizers(10))
    assert n == len(demo.OPTIMIZERS) and f"all {n}" in demo_help, demo_help


@pytest.mark.parametrize("argv,flag", [
    (["--sizes", "abc", "--quick"], "--sizes"), (["--sizes", "0", "--quick"], "--sizes"),
    (["--sizes", "4K,-1", "--quick"], "--sizes"), (["--sparse", "--rows", "0"], "--rows"),
    (["--dtype", "bf16", "-n", "x"], "-n/--n")])
def test_cli_bench_bad_arguments_are_usage_errors(argv, flag, capsys):
    from fastlr.cli import main
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2 and f"argument {flag}: expected" in capsys.readouterr().err


def test_cli_demo_unwritable_out_is_a_usage_error(tmp_path, capsys):
    from fastlr.cli import main
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--quick", "--no-progress", "--out", str(out)])
        assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_cli_bench_dense_dtype_reaches_the_dense_benchmark(tmp_path):
    """--dtype float64 is the dense benchmark's own option (bf16|fp16 pick the mixed-precision one)."""
    import json

    from fastlr.cli import main
    out = tmp_path / "b.json"
    assert main(["bench", "--dtype", "float64", "--quick", "--algos", "sgd", "--sizes", "64", "--repeat", "1",
                 "--min-time", "0", "--no-numpy", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["dtype"] == "float64"


def test_cli_bench_sparse(capsys):
    from fastlr.cli import main
    assert main(["bench", "--sparse", "--rows", "2000", "--dim", "8", "--batch", "64", "--batches", "2",
                 "--repeat", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "M ids/s" in out and "step_rows" in out


def test_cli_bench_bf16(capsys):
    pytest.importorskip("torch")
    from fastlr.cli import main
    assert main(["bench", "--dtype", "bf16", "-n", "4096", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "bf16_master" in out and "bf16_sr" in out and "GB/s" in out


def _script_cases():
    cases = [("linear_regression.py", [], None), ("digits_mlp.py", [], None),
             ("schedule_gallery.py", ["--out", "gallery.png"], "gallery.png"),
             ("lr_range_test.py", ["--out", "lr.png"], "lr.png"),
             ("optuna_search.py", [], None)]
    out = []
    for script, args, png in cases:
        marks = []
        if script == "optuna_search.py" and importlib.util.find_spec("optuna") is None:
            marks.append(pytest.mark.skip(reason="optuna is not installed"))
        out.append(pytest.param(script, args, png, marks=marks, id=script))
    return out


@pytest.mark.parametrize("script,args,png", _script_cases())
def test_example_script_quick(script, args, png, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip()
    if png:
        assert _is_png(tmp_path / png)


def test_demo_adam_reaches_95_percent():
    """The issue's bar: Adam on the held-out digits split, full demo settings."""
    from fastlr import demo
    results, _ = demo.run(names=["Adam"], progress=False)
    assert results["Adam"]["test_accuracy"] >= 0.95
