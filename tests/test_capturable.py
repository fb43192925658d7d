"""capturable=True: device-side step counts and lr, checked under the CUDA simulator, and real
CUDA-graph capture and replay on a GPU (skipped without one)."""
import numpy as np
import pytest

import fastlr
from cases import ALL, case_id
from conftest import run_under_simulator


@pytest.fixture(scope="module")
def sim():
    return run_under_simulator("capturable_sim_check.py")


def test_every_option_combination_equals_eager_steps_bit_for_bit(sim):
    checked = {(r["name"], r["hp"]) for r in sim["results"]}
    assert checked >= {(name, repr(hp)) for name, hp in ALL}
    for r in sim["results"]:
        where = f"{r['name']} {r['hp']} {r['dtype']}"
        assert r["params_equal"] and r["states_equal"], where
        assert r["err"] < (1e-5 if r["dtype"] == "float32" else 1e-12), where
        assert r["step"] == r["steps"] and r["step_on_device"] == "FakeCUDAArray", where


def test_lr_read_from_device_memory(sim):
    assert sim["lr_array_ok"], "a device lr array updated in place between steps"
    assert sim["float_lr_ok"], "a float lr changed between steps"
    assert sim["clip_ok"], "clip_value with capturable steps"


def test_state_dict_round_trip_between_capturable_and_eager(sim):
    assert sim["resume_ok"]


@pytest.mark.parametrize("case, match", [
    ("cpu", "params\\[0\\]: on the cpu"), ("max_grad_norm", "max_grad_norm"), ("grad_scale", "grad_scale"),
    ("schedule", "schedule"), ("schedule_later", "schedule"), ("lr_shape", "one-element"),
    ("step_rows", "step_rows")])
def test_refused_options_say_why(sim, case, match):
    import re
    assert sim["errors"][case] is not None and re.search(match, sim["errors"][case]), sim["errors"][case]


def test_cpu_params_refused_without_simulator():
    with pytest.raises(ValueError, match="capturable=True needs CUDA arrays"):
        fastlr.SGD(np.ones(3, np.float32), capturable=True)
    with pytest.raises(TypeError, match="capturable"):
        fastlr.SGD(np.ones(3, np.float32), capturable=1)


def test_cases_cover_every_algorithm():
    assert {case_id(n, hp).split("-")[0] for n, hp in ALL} == set(fastlr.optim.__all__) - {"Optimizer"}


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "SGD", "Lion"])
def test_cuda_graph_replay_equals_eager_steps(name):
    torch = _torch_cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    p0 = torch.randn(1 << 16, device="cuda", generator=gen)
    grads = [torch.randn(1 << 16, device="cuda", generator=gen) for _ in range(8)]
    extra = {"momentum": 0.9} if name == "SGD" else {}
    eager_p = p0.clone()
    eager = getattr(fastlr, name)(eager_p, lr=1e-2, **extra)
    for g in grads:
        eager.step(g)

    p = p0.clone()
    g_static = torch.empty_like(p)
    lr = torch.full((1,), 1e-2, dtype=torch.float64, device="cuda")
    opt = getattr(fastlr, name)(p, lr=lr, capturable=True, **extra)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up steps compile kernels and allocate device scalars
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
    assert float(opt.state[0]["step"].item()) == len(grads)
    torch.testing.assert_close(p, eager_p, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graph_replay_reads_lr_changed_in_place():
    torch = _torch_cuda()
    p = torch.zeros(1000, device="cuda")
    g = torch.ones(1000, device="cuda")
    lr = torch.full((1,), 0.5, dtype=torch.float64, device="cuda")
    opt = fastlr.SGD(p, lr=lr, capturable=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step(g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step(g)
    lr.fill_(0.25)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(p, torch.full_like(p, -0.75))
