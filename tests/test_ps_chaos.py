"""Chaos: shards of the parameter server killed at random during training (Ray restarts them from
their checkpoints; clients resend what a checkpoint lacks; Ray's retried calls are dropped).

* async, 3 concurrent clients, SGD lr=1 on integer gradients: the final tables equal the initial
  ones minus the sum of every gradient pushed (exact in any order: the same multiset of applied
  updates), and each shard took exactly one optimizer step per item it was sent;
* sync, 2 workers, Adam, gradients computed from pulled values: the final tables equal
  single-process training bit for bit (every round applied once, in order, with the right pushes).
"""
import numpy as np
import pytest

from ps_helpers import in_threads, sync_adam_reference

ray = pytest.importorskip("ray")
from fastlr.ps import ParameterServer, init_ray  # noqa: E402

ROWS, DIM, N = 40, 3, 7


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    init_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def _kill(ps, rng):
    ray.kill(ps.shards[int(rng.integers(len(ps.shards)))], no_restart=False)


def test_async_training_under_random_shard_kills(tmp_path):
    ps = ParameterServer({"emb": np.zeros((ROWS, DIM)), "w": np.zeros(N)}, "SGD", lr=1.0, num_shards=2,
                         mode="async", checkpoint_dir=tmp_path, checkpoint_every=4, max_restarts=-1,
                         batch_delay=0.002, timeout=60)
    pushed = [[] for _ in range(3)]

    def worker(k):
        rng, client = np.random.default_rng(10 + k), ps.client(k)
        for i in range(120):
            if rng.random() < 0.3:
                g = rng.integers(-3, 4, N).astype(float)
                client.push("w", g)
                pushed[k].append(("w", None, g))
            else:
                ids = rng.integers(0, ROWS, int(rng.integers(1, 6)))
                rows = rng.integers(-3, 4, (ids.size, DIM)).astype(float)
                client.push_rows("emb", ids, rows)
                pushed[k].append(("emb", ids, rows))
            if i % 15 == 14:
                client.wait()
            if k == 0 and i % 20 == 10:   # kills land asynchronously, amid everyone's pushes
                _kill(ps, rng)
        client.wait(durable=True)   # a later kill cannot lose them

    try:
        in_threads(worker, 3)
        emb, w = ps.pull("emb"), ps.pull("w")
        info = ps.info()
    finally:
        ps.shutdown()
    want_emb, want_w, items = np.zeros((ROWS, DIM)), np.zeros(N), [0, 0]
    half = ROWS // 2
    for _name, ids, g in (p for ps_ in pushed for p in ps_):
        if ids is None:
            want_w -= g
            items = [items[0] + 1, items[1] + 1]
        else:
            np.subtract.at(want_emb, ids, g)
            items = [items[0] + int((ids < half).any()), items[1] + int((ids >= half).any())]
    assert sum(s["restarted"] for s in info) >= 1
    assert [s["steps"] for s in info] == items
    assert emb.tobytes() == want_emb.tobytes() and w.tobytes() == want_w.tobytes()


def test_sync_training_under_random_shard_kills(tmp_path):
    K, R = 2, 30
    rng = np.random.default_rng(0)
    e0, w0 = rng.standard_normal((ROWS, DIM)), rng.standard_normal(N)
    targets = [rng.standard_normal(N) for _ in range(K)]
    batches = [[rng.integers(0, ROWS, 5) for _ in range(K)] for _ in range(R)]
    kills = set(rng.choice(np.arange(2, R - 2), 5, replace=False).tolist())
    ps = ParameterServer({"emb": e0, "w": w0}, "Adam", lr=0.05, num_shards=2, mode="sync", num_workers=K,
                         checkpoint_dir=tmp_path, checkpoint_every=3, max_restarts=-1, timeout=60)

    def worker(k):
        client, krng = ps.client(k), np.random.default_rng(100 + k)
        for r in range(R):
            w = client.pull("w")
            ids = batches[r][k]
            e = client.pull_rows("emb", ids)
            if k == 0 and r in kills:
                _kill(ps, krng)
            client.push("w", w - targets[k])
            client.push_rows("emb", ids, e * e - 0.5)
        client.wait(durable=True)

    try:
        in_threads(worker, K)
        got_w, got_e, info = ps.pull("w"), ps.pull("emb"), ps.info()
    finally:
        ps.shutdown()

    w, e = sync_adam_reference(w0, e0, targets, batches, lambda rows, r, k: rows * rows - 0.5, lr=0.05)
    assert sum(s["restarted"] for s in info) >= 1
    assert [s["rounds"] for s in info] == [{"emb": R, "w": R}] * 2
    assert got_w.tobytes() == w.tobytes() and got_e.tobytes() == e.tobytes()
