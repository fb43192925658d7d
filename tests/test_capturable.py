"""capturable=True: what needs no device, and real CUDA-graph capture and replay on a GPU (skipped
without one). The device-side step counts and lr are checked on the CUDA simulator by
tests/cudasim/test_sim_capturable.py."""
import numpy as np
import pytest

import fastlr
from cases import ALL, case_id
from fastlr.specs import SPECS


def test_cpu_params_refused_without_simulator():
    with pytest.raises(ValueError, match="capturable=True needs CUDA arrays"):
        fastlr.SGD(np.ones(3, np.float32), capturable=True)
    with pytest.raises(TypeError, match="capturable"):
        fastlr.SGD(np.ones(3, np.float32), capturable=1)


def test_cases_cover_every_algorithm():
    matrix_only = {n for n, spec in SPECS.items() if spec.launch is not None}   # tests/test_muon.py, ...
    assert {case_id(n, hp).split("-")[0] for n, hp in ALL} == set(fastlr.optim.__all__) - {"Optimizer"} - matrix_only


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "SGD", "Lion"])
def test_cuda_graph_replay_equals_eager_steps(name):
    """The capture-and-replay check of `make gpu-check` (fastlr.gpuchecks), float64 and float32 device lr."""
    from fastlr.gpuchecks import captured_vs_eager
    torch = _torch_cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    p0 = torch.randn(1 << 16, device="cuda", generator=gen)
    grads = [torch.randn(1 << 16, device="cuda", generator=gen) for _ in range(8)]
    for lr_dtype in (torch.float64, torch.float32):
        result = captured_vs_eager(torch, name, lr_dtype, p0, grads)
        assert result["ok"], result


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
