"""fastlr.torch under torch.distributed on CPU (gloo): ZeroRedundancyOptimizer with bucket views,
DDP with gradient_as_bucket_view, FSDP2 (fully_shard, DTensor params, fused global-norm clipping
across the mesh). Each run trains a twin with torch.optim.AdamW and compares the weights."""
import os
import socket
import tempfile

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import torch.multiprocessing as mp  # noqa: E402

STEPS = 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _batch(rank, step):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def _train(model, opt, rank, clip=None):
    for step in range(STEPS):
        opt.zero_grad()
        x, y = _batch(rank, step)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if clip is not None:
            clip(model)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank, world, port, mode, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import fastlr.torch as ft
        results = {}
        for impl in ("torch", "fastlr"):
            model = _model()
            if mode == "ddp":
                from torch.nn.parallel import DistributedDataParallel as DDP
                model = DDP(model, gradient_as_bucket_view=True)
                cls = torch.optim.AdamW if impl == "torch" else ft.AdamW
                opt = cls(model.parameters(), lr=1e-2) if impl == "fastlr" else cls(model.parameters(), lr=1e-2,
                                                                                     foreach=False)
                results[impl] = _train(model, opt, rank)
            elif mode == "zero":
                from torch.distributed.optim import ZeroRedundancyOptimizer
                cls = torch.optim.AdamW if impl == "torch" else ft.AdamW
                opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls,
                                              parameters_as_bucket_view=True, lr=1e-2)
                results[impl] = _train(model, opt, rank)
            elif mode == "fsdp":
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import fully_shard
                mesh = init_device_mesh("cpu", (world,))
                for layer in (model[0], model[2]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(model, mesh=mesh)
                if impl == "torch":
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
                    clip = lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.2)  # noqa: E731
                else:
                    opt, clip = ft.AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.2), None
                params = _train(model, opt, rank, clip)
                results[impl] = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in params]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _run(mode, world):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pt")
        mp.spawn(_worker, args=(world, _free_port(), mode, out), nprocs=world, join=True)
        results = torch.load(out)
    for a, b in zip(results["torch"], results["fastlr"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_zero_redundancy_optimizer_with_bucket_views():
    _run("zero", 1)


def test_ddp_gradient_as_bucket_view_two_processes():
    _run("ddp", 2)


def test_fsdp2_two_processes_with_global_norm_clipping():
    _run("fsdp", 2)
