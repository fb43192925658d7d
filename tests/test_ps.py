"""The Ray parameter server (fastlr.ps): synchronous rounds equal single-process training,
asynchronous pushes, argument checks, a killed shard that loses nothing, resume and no silent
overwrite, a failed checkpoint write refused cleanly, sync timeouts, loopback-only Ray, and the
recommender example. One local Ray (2 CPUs, started by fastlr) for the whole module."""
import importlib.util
import os
import resource
import sys
import time

import numpy as np
import pytest

import fastlr
from fastlr.sparse import step_rows
from ps_helpers import sync_adam_reference

ray = pytest.importorskip("ray")
from fastlr.ps import CheckpointError, ParameterServer, init_ray  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "recommender_ps.py")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    init_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_started_by_fastlr_listens_on_loopback_only():
    """Every listening socket of this process and its descendants (GCS, raylet, agents, workers)."""
    import psutil  # shipped inside ray
    ps = ParameterServer({"a": np.zeros(4)}, "SGD", lr=1.0, num_shards=1, mode="async")   # a worker is up
    try:
        listeners = []
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                listeners += [(proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                pass
        assert len({name for name, _, _ in listeners}) >= 3, listeners   # gcs_server, raylet, workers...
        open_ = [x for x in listeners if x[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
        assert not open_, f"listening beyond loopback: {open_}"
    finally:
        ps.shutdown()


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

    w, e = sync_adam_reference(w0, e0, targets, [[b[0] for b in round_] for round_ in batches],
                               lambda rows, r, k: batches[r][k][1] * rows, lr=0.05)
    np.testing.assert_allclose(got_w, w, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(got_e, e, rtol=1e-14, atol=1e-15)
    assert not np.allclose(e, e0)


def test_async_pushes_and_argument_checks():
    table = np.zeros((10, 3), np.float32)
    ps = ParameterServer({"emb": table, "bias": np.zeros(5, np.float32)}, "SGD", lr=1.0, num_shards=3,
                         mode="async")
    try:
        grad = np.ones((4, 3), np.float32)
        ps.push_rows("emb", [9, 0, 9, 4], grad)
        grad[:] = 100.0   # the caller may reuse its arrays at once: pushes are staged as copies
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
    with pytest.raises(ValueError, match="resume/overwrite: need checkpoint_dir"):
        ParameterServer({"a": table}, resume=True)


def _adam_reference(e0, pushes):
    e = e0.copy()
    opt = fastlr.Adam(e, lr=0.1)
    for ids, rows in pushes:
        step_rows(opt, None, ids, rows)
    return e


def _wait_restarted(ps, k, pid):
    for _ in range(400):   # the kill is asynchronous: wait for the new process
        info = ps.info()
        if info[k]["pid"] != pid:
            return info
        time.sleep(0.05)
    raise AssertionError("the shard was not restarted")


def test_killed_shard_loses_nothing_and_applies_nothing_twice(tmp_path):
    """Shard 0 killed between checkpoints: Ray restarts it from its checkpoint, the client resends what the
    checkpoint lacks, retried calls are dropped as duplicates: the table is single-process Adam, bit for bit."""
    rng = np.random.default_rng(1)
    e0 = rng.standard_normal((8, 2))
    # rows on both shards in every push: each push is one Adam step of each shard, as of the whole table
    pushes = [(rng.permutation(np.r_[rng.integers(0, 4, 3), rng.integers(4, 8, 2)]), rng.standard_normal((5, 2)))
              for _ in range(12)]
    ps = ParameterServer({"emb": e0}, "Adam", lr=0.1, num_shards=2, mode="async", checkpoint_dir=tmp_path,
                         checkpoint_every=3, batch_bytes=0)   # every push its own message
    try:
        for ids, rows in pushes[:7]:
            ps.push_rows("emb", ids, rows)
        pid = ps.info()[0]["pid"]
        ray.kill(ps.shards[0], no_restart=False)
        for ids, rows in pushes[7:]:
            ps.push_rows("emb", ids, rows)
        got = ps.pull("emb")
        info = _wait_restarted(ps, 0, pid)
        # saved every 3 steps; the kill lands (asynchronously) after push 7, before push 12
        assert info[0]["restarted"] and info[0]["restored_from"] in (6, 9) and not info[1]["restarted"]
        assert [s["steps"] for s in info] == [len(pushes)] * 2
        assert got.tobytes() == _adam_reference(e0, pushes).tobytes()
    finally:
        ps.shutdown()


def test_resume_restores_the_whole_server_and_nothing_is_overwritten_silently(tmp_path):
    rng = np.random.default_rng(2)
    e0 = rng.standard_normal((10, 3))
    pushes = [(np.r_[rng.integers(0, 5, 3), rng.integers(5, 10, 3)], rng.standard_normal((6, 3))) for _ in range(8)]
    ps = ParameterServer({"emb": e0}, "Adam", lr=0.1, num_shards=2, mode="async", checkpoint_dir=tmp_path)
    for ids, rows in pushes[:5]:
        ps.push_rows("emb", ids, rows)
    assert ps.checkpoint() == [5, 5]
    ps.shutdown()
    files = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    assert "server.json" in files and not any(n.endswith((".tmp", ".pkl")) for n in files)

    with pytest.raises(FileExistsError, match="already holds a parameter-server checkpoint.*resume=True"):
        ParameterServer({"emb": e0}, "Adam", lr=0.1, num_shards=2, mode="async", checkpoint_dir=tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == files   # untouched
    with pytest.raises(ValueError, match="num_shards: the checkpoint .* was made with num_shards=2, got 3"):
        ParameterServer(None, "Adam", lr=0.1, num_shards=3, mode="async", checkpoint_dir=tmp_path, resume=True)

    ps = ParameterServer(None, "Adam", lr=0.1, num_shards=2, mode="async", checkpoint_dir=tmp_path, resume=True)
    try:
        assert [s["restored_from"] for s in ps.info()] == [5, 5]
        for ids, rows in pushes[5:]:   # optimizer states and step counts went on from the checkpoint
            ps.push_rows("emb", ids, rows)
        assert ps.pull("emb").tobytes() == _adam_reference(e0, pushes).tobytes()
    finally:
        ps.shutdown()

    ps = ParameterServer({"emb": e0}, "Adam", lr=0.1, num_shards=2, mode="async", checkpoint_dir=tmp_path,
                         overwrite=True)
    try:
        assert ps.pull("emb").tobytes() == e0.tobytes()
    finally:
        ps.shutdown()


def test_sync_resume_needs_a_checkpoint_between_rounds(tmp_path):
    """A sync server checkpointed between rounds resumes its rounds exactly; one saved mid-round is refused."""
    w0, targets = np.zeros(5), [np.arange(5.0), -np.arange(5.0) + 1]

    def round_(ps):
        for k in (0, 1):
            ps.push("w", ps.pull("w", worker=k) - targets[k], worker=k)
    kw = {"num_shards": 2, "mode": "sync", "num_workers": 2, "checkpoint_dir": tmp_path}
    ps = ParameterServer({"w": w0}, "Adam", lr=0.1, **kw)
    round_(ps)
    ps.checkpoint()
    ps.shutdown()
    ps = ParameterServer(None, "Adam", lr=0.1, resume=True, **kw)
    try:
        round_(ps)
        got = ps.pull("w", worker=0)
        ps.push("w", got, worker=0)   # half a round
        ps.checkpoint()
    finally:
        ps.shutdown()
    w, _ = sync_adam_reference(w0, np.zeros((1, 1)), targets, [[np.zeros(0, int)] * 2] * 2,
                               lambda rows, r, k: rows, lr=0.1)
    assert got.tobytes() == w.tobytes()
    with pytest.raises(ValueError, match=r"saved at different sync rounds .* or mid-round \(shards \[0, 1\]\)"):
        ParameterServer(None, "Adam", lr=0.1, resume=True, **kw)


def test_resume_refuses_damaged_or_pickled_checkpoints(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "shard-0.pkl").write_bytes(b"\x80\x05crafted")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints such as shard-0.pkl are never loaded"):
        ParameterServer(None, num_shards=1, mode="async", checkpoint_dir=tmp_path / "old", resume=True)
    with pytest.raises(FileExistsError):   # nor silently replaced
        ParameterServer({"a": np.zeros(3)}, num_shards=1, mode="async", checkpoint_dir=tmp_path / "old")

    ParameterServer({"a": np.zeros(3)}, "SGD", lr=1.0, num_shards=1, mode="async",
                    checkpoint_dir=tmp_path / "new").shutdown()
    npz = next((tmp_path / "new").glob("shard-0.*.npz"))
    npz.write_bytes(npz.read_bytes()[:-7])
    with pytest.raises(Exception, match=f"{npz.name}: checksum mismatch"):
        ParameterServer(None, "SGD", lr=1.0, num_shards=1, mode="async", checkpoint_dir=tmp_path / "new",
                        resume=True, max_restarts=0, timeout=60)


def test_failed_checkpoint_write_refuses_the_push_cleanly(tmp_path):
    """The shard process may not write files over 1 MB (RLIMIT_FSIZE, as a full disk: the write fails with
    EFBIG). The push that finds a checkpoint due gets the error, is not applied, leaves no file behind;
    checkpoint() too. Once writes work again, training goes on from the intact previous checkpoint."""
    e0 = np.zeros((8192, 32))   # 2 MB; Adam keeps two more: the checkpoint is 6 MB
    ps = ParameterServer({"emb": e0}, "Adam", lr=0.1, num_shards=1, mode="async", checkpoint_dir=tmp_path,
                         checkpoint_every=1, batch_bytes=0)
    try:
        ids, rows = np.arange(4), np.ones((4, 32))
        ps.push_rows("emb", ids, rows, wait=True)
        ps.push_rows("emb", ids, rows, wait=True)     # saves the state after push 1 first
        before, files = ps.pull_rows("emb", ids), sorted(os.listdir(tmp_path))
        pid = ps.info()[0]["pid"]
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1 << 20, hard))
        try:
            with pytest.raises(CheckpointError, match="1 push.*of 'emb' to shard 0 .* refused, not applied.*"
                                                      "could not write its checkpoint.*File too large"):
                ps.push_rows("emb", ids, 2 * rows, wait=True)
            with pytest.raises(CheckpointError, match="File too large"):
                ps.checkpoint()
            assert ps.pull_rows("emb", ids).tobytes() == before.tobytes()
            assert sorted(os.listdir(tmp_path)) == files
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        ps.push_rows("emb", ids, rows, wait=True)
        assert ps.info()[0]["steps"] == 3
    finally:
        ps.shutdown()
    e = e0.copy()
    opt = fastlr.Adam(e, lr=0.1)
    for _ in range(2):
        step_rows(opt, None, ids, rows)
    ps = ParameterServer(None, "Adam", lr=0.1, num_shards=1, mode="async", checkpoint_dir=tmp_path, resume=True)
    try:
        assert ps.info()[0]["restored_from"] == 2   # the save before push 3; push 3 itself is not saved
        ps.push_rows("emb", ids, rows)
        step_rows(opt, None, ids, rows)
        assert ps.pull_rows("emb", ids).tobytes() == e[:4].tobytes()
    finally:
        ps.shutdown()


def test_sync_pull_times_out_with_a_clear_error():
    ps = ParameterServer({"w": np.zeros(4)}, "SGD", lr=1.0, num_shards=2, mode="sync", num_workers=2, timeout=3.0)
    try:
        for worker in (0, 1):   # one whole round first: the shards' first step loads its kernel
            ps.push("w", np.ones(4), worker=worker)
        assert ps.pull("w", worker=1).tolist() == [-1.0] * 4
        ps.push("w", np.ones(4), worker=0)
        t = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"pull 'w': shard \d waited 3.0 s for sync round 1; no push yet "
                                               r"from workers \[1\]"):
            ps.pull("w", worker=0)
        assert time.perf_counter() - t < 30
        ps.push("w", np.ones(4), worker=1)
        assert ps.pull("w", worker=0).tolist() == [-2.0] * 4
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
