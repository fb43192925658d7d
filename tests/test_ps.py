"""The Ray parameter server (fastlr.ps): synchronous rounds equal single-process training,
asynchronous pushes, argument checks, atomic checkpoints, a killed shard restarted from its
checkpoint, and the recommender example. One local Ray (2 CPUs) for the whole module."""
import importlib.util
import os
import sys
import time

import numpy as np
import pytest

import fastlr
from fastlr.sparse import step_rows

ray = pytest.importorskip("ray")
from fastlr.ps import ParameterServer  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "recommender_ps.py")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_sync_rounds_equal_single_process_training():
    """3 workers, each with its own targets and ids: averaged per round on 2 shards, the result is
    single-process Adam on the mean gradient (same sums in the same order: the same bits)."""
    K, rounds = 3, 5
    rng = np.random.default_rng(0)
    w0, e0 = rng.standard_normal(11), rng.standard_normal((9, 4))
    targets = [rng.standard_normal(11) for _ in range(K)]
    batches = [[(rng.integers(0, 9, 6), rng.standard_normal((6, 4))) for _ in range(K)] for _ in range(rounds)]

    ps = ParameterServer({"w": w0, "emb": e0}, "Adam", lr=0.05, num_shards=2, mode="sync", num_workers=K)
    try:
        for r in range(rounds):
            for k in range(K):   # each worker pulls the params of the last round, then pushes
                w = ps.pull("w", worker=k)
                ids, rows = batches[r][k]
                e = ps.pull_rows("emb", ids, worker=k)
                ps.push("w", w - targets[k], worker=k)              # gradient of |w - target|^2 / 2
                ps.push_rows("emb", ids, rows * e, worker=k)
        got_w, got_e = ps.pull("w", worker=0), ps.pull("emb", worker=0)
        with pytest.raises(ValueError, match=r"worker: expected an integer in \[0, 3\), got 3"):
            ps.client(3)
        assert [s["steps"] for s in ps.info()] == [2 * rounds, 2 * rounds]
    finally:
        ps.shutdown()

    w, e = w0.copy(), e0.copy()
    ow, oe = fastlr.Adam(w, lr=0.05), fastlr.Adam(e, lr=0.05)
    for r in range(rounds):
        g = w - targets[0]
        for k in range(1, K):
            g += w - targets[k]
        ow.step(g * (1.0 / K))
        ids = np.concatenate([b[0] for b in batches[r]])
        rows = np.concatenate([b[1] * e[b[0]] for b in batches[r]])
        step_rows(oe, None, ids, rows * (1.0 / K))
    np.testing.assert_allclose(got_w, w, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(got_e, e, rtol=1e-14, atol=1e-15)
    assert not np.allclose(e, e0)


def test_async_pushes_and_argument_checks():
    table = np.zeros((10, 3), np.float32)
    ps = ParameterServer({"emb": table, "bias": np.zeros(5, np.float32)}, "SGD", lr=1.0, num_shards=3,
                         mode="async")
    try:
        ps.push_rows("emb", [9, 0, 9, 4], np.ones((4, 3), np.float32))
        ps.push_rows("emb", np.array([4]), np.full((1, 3), 2.0, np.float32))
        ps.push("bias", np.arange(5, dtype=np.float32))
        got = ps.pull_rows("emb", [9, 4, 0, 1])
        assert got[:, 0].tolist() == [-2.0, -3.0, -1.0, 0.0]
        assert ps.pull("bias").tolist() == [0.0, -1.0, -2.0, -3.0, -4.0]
        with pytest.raises(IndexError, match=r"ids\[1\]: row id 10 is out of range for 'emb' with 10 rows"):
            ps.push_rows("emb", [0, 10], np.ones((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"rows: expected shape \(2, 3\) and dtype float32"):
            ps.push_rows("emb", [0, 1], np.ones((2, 4), np.float32))
        with pytest.raises(TypeError, match="ids: expected a 1-D array of integer row ids"):
            ps.pull_rows("emb", [0.5])
        with pytest.raises(ValueError, match="row access needs a 2-D table"):
            ps.pull_rows("bias", [0])
        with pytest.raises(ValueError, match=r"grad: expected shape \(5,\)"):
            ps.push("bias", np.zeros(4, np.float32))
        with pytest.raises(KeyError, match="no buffer 'nope'"):
            ps.pull("nope")
        with pytest.raises(ValueError, match=r"worker: expected an integer in \[0, inf\), got -1"):
            ps.client(-1)
        assert ps.pull_rows("emb", [9, 4, 0, 1]).tobytes() == got.tobytes()  # nothing changed
    finally:
        ps.shutdown()
    with pytest.raises(ValueError, match="mode: expected 'sync' or 'async'"):
        ParameterServer({"a": table}, mode="eventual")
    with pytest.raises(ValueError, match="optimizer: no fastlr optimizer named 'Adamm'"):
        ParameterServer({"a": table}, "Adamm")


def test_checkpoint_and_killed_shard_restart(tmp_path):
    """A shard killed after a checkpoint comes back (Ray restart) with the checkpoint's rows, state and
    step count; the other shard keeps everything; pushes to the restarted shard work again."""
    ps = ParameterServer({"emb": np.zeros((8, 2))}, "Adam", lr=0.1, num_shards=2, mode="async",
                         checkpoint_dir=tmp_path, checkpoint_every=1000)
    try:
        everywhere = np.arange(8)
        ps.push_rows("emb", everywhere, np.ones((8, 2)))
        assert ps.checkpoint() == [1, 1]
        assert sorted(os.listdir(tmp_path)) == ["shard-0.pkl", "shard-1.pkl"]   # renamed into place
        saved = ps.pull("emb")
        ps.push_rows("emb", everywhere, np.ones((8, 2)))       # not checkpointed
        after = ps.pull("emb")
        pid = ps.info()[0]["pid"]
        ray.kill(ps.shards[0], no_restart=False)
        for _ in range(200):       # the kill is asynchronous: wait for the new process
            info = ps.info()
            if info[0]["pid"] != pid:
                break
            time.sleep(0.05)
        assert info[0]["restarted"] and info[0]["restored_from"] == 1 and info[0]["pid"] != pid
        assert not info[1]["restarted"] and info[1]["steps"] == 2
        now = ps.pull("emb")
        assert now[:4].tobytes() == saved[:4].tobytes()       # shard 0 rows 0-3: back at the checkpoint
        assert now[4:].tobytes() == after[4:].tobytes()
        ps.push_rows("emb", everywhere, np.ones((8, 2)))       # training goes on, from step 2 on shard 0
        assert [s["steps"] for s in ps.info()] == [2, 3]
        assert (ps.pull("emb") < now).all()
    finally:
        ps.shutdown()


def test_recommender_example_trains_and_survives_a_killed_shard(tmp_path):
    spec = importlib.util.spec_from_file_location("recommender_ps", EXAMPLE)
    example = sys.modules["recommender_ps"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(["--users", "300", "--items", "200", "--ratings", "12000", "--epochs", "3",
                            "--batch", "256", "--dim", "8", "--kill-shard-at", "2", "--checkpoint-every", "10",
                            "--checkpoint-dir", str(tmp_path)])
    first, last = history[0]["test_mse"], history[-1]["test_mse"]
    assert last < 0.6 * first, history
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    assert [s["index"] for s in history[-1]["restarted"]] == [0]
