"""The PTX check's own logic (fastlr.kernels.ptx), without NVVM: every CUDA kernel has a case,
a forgotten kernel is reported, failures are counted and do not stop the other cases.
Compiling the cases needs NVIDIA's compiler wheels: `make ptx-check` does that."""
import json
import sys
import types

import numpy as np
import pytest
from numba import config, cuda, typeof

from fastlr.kernels import ptx

pytestmark = pytest.mark.skipif(config.ENABLE_CUDASIM, reason="the simulator has no real kernels")


def test_every_kernel_has_a_case_with_typeable_args():
    found, uncovered = ptx.cases()
    assert uncovered == []
    labels = [label for label, _, _ in found]
    assert len(labels) == len(set(labels))
    for label, kernel, args in found:
        assert ptx.is_kernel(kernel), label
        assert all(typeof(a) is not None for a in args), label
    # each kernel module is represented, and capturable prepare kernels for both lr dtypes
    for name in ptx.kernel_modules():
        assert any(label.startswith(name.rsplit(".", 1)[-1] + ":") for label in labels), name
    assert {label.rsplit(", ", 1)[-1] for label in labels if label.startswith("capturable")} == \
        {"float32 lr", "float64 lr"}


def _kernel_module(name, with_cases):
    module = types.ModuleType(name)

    def forgotten(x):
        x[0] = 1.0
    module.KERNELS = {"forgotten": cuda.jit(forgotten)}
    if with_cases:
        module.ptx_cases = lambda: iter(())
    return module


@pytest.mark.parametrize("with_cases", [True, False])
def test_a_forgotten_kernel_is_reported(monkeypatch, with_cases):
    name = "fastlr.kernels._fake_cuda"
    monkeypatch.setitem(sys.modules, name, _kernel_module(name, with_cases))
    monkeypatch.setattr(ptx, "kernel_modules", lambda: [name])
    monkeypatch.setattr(ptx, "prepare_cases", lambda: iter(()))
    _, uncovered = ptx.cases()
    assert "KERNELS['forgotten']: no ptx case" in uncovered[-1]
    assert len(uncovered) == 1 if with_cases else "defines CUDA kernels but no ptx_cases()" in uncovered[0]


def test_failures_are_reported_and_do_not_stop_the_others(monkeypatch, tmp_path, capsys):
    def compile_case(kernel, args, cc):
        if args[0].dtype == np.float32:
            raise TypeError("no float32 here\nsecond line")
        return "// ptx"
    monkeypatch.setattr(ptx, "compile_case", compile_case)
    out = tmp_path / "ptx.json"
    assert ptx.main(["-k", "sumsq", "--no-ptxas", "--cc", "8.0", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    results = report["results"]
    failed = [r for r in results if not r["ok"]]
    assert report["cc"] == [8, 0] and results and failed and len(failed) < len(results)
    assert all("TypeError: no float32 here" in r["error"] for r in failed)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"ptx-check: {len(results) - len(failed)} passed, {len(failed)} failed"


def test_assumed_device_is_undone():
    from numba.cuda import compiler, dispatcher
    before = dispatcher.get_current_device
    with ptx.assumed_device((9, 0)):
        assert compiler.get_current_device().compute_capability == (9, 0)
    assert dispatcher.get_current_device is before


def test_bad_cc_is_refused(capsys):
    with pytest.raises(SystemExit):
        ptx.main(["--cc", "sm90"])
    assert "--cc: expected MAJOR.MINOR" in capsys.readouterr().err
