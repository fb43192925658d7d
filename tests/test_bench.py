"""fastlr.bench (quick mode), the asv benchmark modules on tiny sizes, and the stream kernels."""
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastlr import bench
from fastlr.kernels.stream import STREAM, STREAM_SERIAL, bytes_per_param

ASV = Path(__file__).resolve().parents[1] / "asv_bench"


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("kernels", [STREAM, STREAM_SERIAL], ids=["parallel", "serial"])
def test_stream_kernel_math(kernels, k):
    n = 1000
    rng = np.random.default_rng(k)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    states = [rng.standard_normal(n).astype(np.float32) for _ in range(k)]
    p0, s0 = p.copy(), [s.copy() for s in states]
    kernels[k](p, g, *states, np.float32(0.5), np.float32(0.25))
    np.testing.assert_allclose(p, p0 - 0.5 * g, rtol=1e-6)
    for s, before in zip(states, s0):
        np.testing.assert_allclose(s, 0.25 * before + g, rtol=1e-6)


def test_bytes_per_param_matches_design():
    # DESIGN.md: Adam 28 B/param in float32, SGD+momentum 20, Lion 20, AMSGrad 36.
    assert bench.bytes_per_param("adam", 4) == 28 == bytes_per_param(2, 4)
    assert bench.bytes_per_param("sgd", 4) == 20
    assert bench.bytes_per_param("lion", 4) == 20
    assert bytes_per_param(3, 4) == 36
    assert bench.bytes_per_param("adam", 8) == 56


def test_parse_size():
    assert bench.parse_size("4K") == 4096
    assert bench.parse_size("1M") == 1 << 20
    assert bench.parse_size("123") == 123


def test_quick_bench_writes_json_and_png(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # main() sets it otherwise; keep the session clean
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert bench.main(["--quick", "--algos", "adam,sgd,lion", "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    impls = {r["impl"] for r in data["rows"]}
    assert {"ceiling", "fastlr", "numpy"} <= impls
    for r in data["rows"]:
        assert r["time_s"] > 0 and r["gbps"] > 0 and r["min_s"] <= r["time_s"] <= r["max_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fastlr" in capsys.readouterr().out


def test_unknown_algo_is_an_error(capsys):
    assert bench.main(["--quick", "--algos", "nope"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err


def test_gpu_without_gpu_says_so(capsys, monkeypatch):
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main(["--quick", "--device", "gpu"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.fixture
def asv_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(ASV))
    yield lambda name: importlib.import_module(f"benchmarks.{name}")
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]


def test_asv_config_is_valid():
    text = "\n".join(line for line in (ASV / "asv.conf.json").read_text().splitlines()
                     if not line.strip().startswith("//"))
    conf = json.loads(text)
    assert conf["repo"] == ".." and conf["benchmark_dir"] == "benchmarks"


def test_asv_optimizer_benchmark_tiny(asv_modules):
    mod = asv_modules("optimizers")
    b = mod.OptimizerStep()
    for algo in mod.ALGOS:
        b.setup(algo, 256, "float32")
        b.time_step(algo, 256, "float32")
    b.setup("adam", 512, "float64")
    assert b.track_gbps("adam", 512, "float64") > 0
    with pytest.raises(NotImplementedError):
        b.setup("adam", 1 << 26, "float64")


def test_asv_overhead_benchmarks_tiny(asv_modules):
    mod = asv_modules("overhead")
    s = mod.SmallStep()
    s.setup(256)
    s.time_step(256)
    m = mod.ManyBuffers()
    m.setup(4000, 20)
    m.time_step(4000, 20)


def test_asv_timeraw_snippets_run_in_a_fresh_interpreter(asv_modules):
    """asv runs each timeraw_* method's code in a new interpreter: each must run there as written."""
    bench_import = asv_modules("overhead").Import()
    snippets = {name: getattr(bench_import, name)() for name in dir(bench_import) if name.startswith("timeraw_")}
    assert snippets
    for name, code in snippets.items():
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr}"
    assert 0 < bench_import.track_import_s() < 60


def test_gpu_path_under_cuda_simulator(tmp_path):
    """--device gpu end to end on numba's CUDA simulator (no GPU needed; tiny size)."""
    out = tmp_path / "g.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    subprocess.run([sys.executable, "-m", "fastlr.bench", "--device", "gpu", "--quick", "--algos", "adam",
                    "--sizes", "64", "--repeat", "1", "--min-time", "0", "--json", str(out)],
                   env=env, check=True, capture_output=True, timeout=120)
    impls = {r["impl"] for r in json.loads(out.read_text())["rows"]}
    assert {"ceiling", "fastlr"} <= impls and "numpy" not in impls


def test_peak_memory_probe_reports_the_buffers_it_allocates():
    """The 64M peak-memory probe of `fastlr bench`, on a small buffer (the ratio is only
    meaningful at size; here it checks the probe runs and accounts for the buffers)."""
    from fastlr import bench
    out = bench.peak_memory_in_fresh_process(n=1 << 22, impls=("fastlr",))["fastlr"]
    assert out["expected_bytes"] == 4 * 4 * (1 << 22)
    assert 0.9 < out["ratio"] < 1.5


def test_asv_engine_benchmarks_tiny(asv_modules):
    mod = asv_modules("engine")
    s = mod.SeparateArrays()
    s.setup(4000, 20)
    s.time_step(4000, 20)
    assert s.track_gbps(4000, 20) > 0
    o = mod.StepOverhead()
    o.setup(20)
    o.time_step(20)
    pytest.importorskip("torch")
    t = mod.TorchModel()
    for impl in mod.TorchModel.params[1]:
        t.setup("gpt2-tiny", impl)
        t.time_step("gpt2-tiny", impl)


def test_bench_engine_quick(tmp_path, capsys):
    from fastlr import bench_engine
    out, png = tmp_path / "e.json", tmp_path / "e.png"
    assert bench_engine.main(["--quick", "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    counts = [k for k in res["numpy_arrays"]["results"] if k.startswith("fastlr-")]
    assert len(counts) >= 2 and res["overhead"]["results"]["step"]["time_s"] > 0
    assert png.stat().st_size > 0 and "fastlr vs torch fused" in capsys.readouterr().out


def test_asv_lowbit_benchmarks_tiny(asv_modules):
    mod = asv_modules("lowbit")
    b = mod.LowPrecisionStep()
    for precision in mod.PRECISIONS:
        b.setup("AdamW", precision, 5000)
        b.time_step("AdamW", precision, 5000)
    assert b.track_state_bytes_per_param("AdamW", "4bit", 5000) <= 1.1
    s = mod.LowPrecisionStateDict()
    s.setup(5000)
    s.time_state_dict_dequantize(5000)
    s.time_load_fp32_into_8bit(5000)


def test_cli_bench_state_precision(tmp_path, capsys):
    from fastlr.cli import main
    out = tmp_path / "lowbit.json"
    assert main(["bench", "--state-precision", "8bit", "--size", "8K", "--repeat", "1", "--no-peers",
                 "--json", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ceiling (stream, 28 B)", "fastlr fp32", "fastlr 8bit"}
    assert rows["fastlr 8bit"]["bytes_per_param"] < rows["fastlr fp32"]["bytes_per_param"]
    assert "fastlr 8bit" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--state-precision", "int8"])
