"""fastlr.torch under torch.distributed on CPU (gloo): ZeroRedundancyOptimizer with bucket views,
DDP with gradient_as_bucket_view, FSDP2 (fully_shard, DTensor params, fused global-norm clipping
across the mesh). For every algorithm torch.optim has, each run trains a twin with torch.optim
(foreach=False) in the same processes and compares the weights."""
import os
import socket
import tempfile

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import torch.multiprocessing as mp  # noqa: E402

from cases import CASES  # noqa: E402

STEPS = 6
# every algorithm torch.optim has (the others have no torch.optim twin), with most options on
ALGOS = [n for n in CASES if hasattr(torch.optim, n)]
# torch.optim.Rprop itself raises on DTensor params (aten.index_put_ cannot keep Shard placements):
# there is no reference to compare with under FSDP2
TORCH_FAILS_ON_DTENSOR = {"Rprop"}
HP = {n: CASES[n][-1] for n in ALGOS}


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


def _make(impl, name, params, **kw):
    import fastlr.torch as ft
    if impl == "fastlr":
        return getattr(ft, name)(params, **HP[name], **kw)
    return getattr(torch.optim, name)(params, foreach=False, **HP[name])


def _one(mode, impl, name, rank, world):
    """Final weights of one run: `impl` ("torch" or "fastlr") `name` under `mode`."""
    model = _model()
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, gradient_as_bucket_view=True)
        return _train(model, _make(impl, name, model.parameters()), rank)
    if mode == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        import fastlr.torch as ft
        cls = getattr(ft, name) if impl == "fastlr" else getattr(torch.optim, name)
        kw = {} if impl == "fastlr" else {"foreach": False}
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, parameters_as_bucket_view=True,
                                      **HP[name], **kw)
        return _train(model, opt, rank)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if impl == "torch":
        opt, clip = _make(impl, name, model.parameters()), \
            (lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.2))
    else:   # fastlr's fused clipping: the global norm over every rank's shard
        opt, clip = _make(impl, name, model.parameters(), max_grad_norm=0.2), None
    params = _train(model, opt, rank, clip)
    return [p.full_tensor() if hasattr(p, "full_tensor") else p for p in params]


def _worker(rank, world, port, mode, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: {impl: _one(mode, impl, name, rank, world) for impl in ("torch", "fastlr")}
                   for name in ALGOS if not (mode == "fsdp" and name in TORCH_FAILS_ON_DTENSOR)}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _run(mode, world):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.pt")
        mp.spawn(_worker, args=(world, _free_port(), mode, out), nprocs=world, join=True)
        results = torch.load(out)
    assert set(results) == set(ALGOS) - (TORCH_FAILS_ON_DTENSOR if mode == "fsdp" else set())
    for name, res in results.items():
        for a, b in zip(res["torch"], res["fastlr"]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_zero_redundancy_optimizer_with_bucket_views():
    _run("zero", 1)


def test_ddp_gradient_as_bucket_view_two_processes():
    _run("ddp", 2)


def test_fsdp2_two_processes_with_global_norm_clipping():
    _run("fsdp", 2)
