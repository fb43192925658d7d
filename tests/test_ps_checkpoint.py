"""Checkpoint files of the parameter server (fastlr.ps_checkpoint), without Ray: optimizer states
round-trip through state_dict without pickle, corrupt and truncated files are errors that name
the file, a crafted pickle cannot run, a failed write leaves the previous checkpoint whole."""
import os
import pickle

import numpy as np
import pytest

import fastlr
from fastlr.ps_checkpoint import (
    CheckpointError,
    checkpoint_files,
    read_checkpoint,
    read_json,
    write_checkpoint,
)
from fastlr.sparse import RowWiseAdagrad, step_rows


def _trained(cls, **kw):
    table = np.random.default_rng(0).standard_normal((20, 3))
    opt = cls(table, **kw)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        step_rows(opt, None, rng.integers(0, 20, 7), rng.standard_normal((7, 3)))
    return table, opt


@pytest.mark.parametrize("cls, kw", [(fastlr.Adam, {"lr": 0.1, "amsgrad": True, "betas": (0.8, 0.9)}),
                                     (RowWiseAdagrad, {"lr": 0.1}), (fastlr.SGD, {"lr": 0.1, "momentum": 0.9})])
def test_optimizer_state_round_trips_without_pickle(tmp_path, cls, kw):
    """Save state_dict() (nested dicts, int keys, tuples, arrays, scalars), load it into a fresh optimizer:
    the next step equals the original's, bit for bit."""
    table, opt = _trained(cls, **kw)
    write_checkpoint(tmp_path, "s", {"steps": 3}, {"params": {"t": table}, "optim": opt.state_dict()})
    meta, tree = read_checkpoint(tmp_path, "s")
    assert meta == {"steps": 3}
    table2 = tree["params"]["t"].copy()
    opt2 = cls(table2, **kw)
    opt2.load_state_dict(tree["optim"])
    ids, g = np.array([1, 5, 5, 19]), np.ones((4, 3))
    step_rows(opt, None, ids, g)
    step_rows(opt2, None, ids, g)
    assert table2.tobytes() == table.tobytes()
    with np.load(tmp_path / checkpoint_files(tmp_path, "s")[0], allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_callable_lr_is_left_to_the_live_optimizer(tmp_path):
    table = np.zeros((4, 2))
    opt = fastlr.Adam(table, lr=lambda step: 0.1 / (1 + step))
    opt.step(np.ones((4, 2)))
    write_checkpoint(tmp_path, "s", {}, opt.state_dict())
    _, state = read_checkpoint(tmp_path, "s")
    assert "lr" not in state["param_groups"][0]
    fresh = fastlr.Adam(np.zeros((4, 2)), lr=lambda step: 0.1 / (1 + step))
    fresh.load_state_dict(state)
    assert callable(fresh.param_groups[0]["lr"]) and fresh.state[0]["step"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("which", ["npz", "json"])
def test_damaged_files_are_errors_naming_the_file(tmp_path, damage, which):
    write_checkpoint(tmp_path, "shard-0", {"steps": 1}, {"a": np.arange(1000.0)})
    name = next(n for n in checkpoint_files(tmp_path, "shard-0") if n.endswith(which))
    path = tmp_path / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        read_checkpoint(tmp_path, "shard-0")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_cannot_run(tmp_path):
    """Files an attacker controls: a pickle where an old checkpoint was, and an npz holding a pickled
    object array behind a manifest with correct checksums. Loading refuses both; the command never runs."""
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    (tmp_path / "shard-0.pkl").write_bytes(pickle.dumps({"params": payload}))
    write_checkpoint(tmp_path, "shard-0", {"steps": 0}, {"a": np.zeros(3)})
    npz = tmp_path / checkpoint_files(tmp_path, "shard-0")[0]
    np.savez(npz, a0=np.array([payload], dtype=object), allow_pickle=True)   # same name, now a pickle inside
    import hashlib
    import json
    manifest = tmp_path / "shard-0.json"
    head, body = manifest.read_bytes().split(b"\n", 1)
    body = json.loads(body)
    body["files"] = {npz.name: {"sha256": hashlib.sha256(npz.read_bytes()).hexdigest(), "bytes": npz.stat().st_size}}
    text = json.dumps(body, sort_keys=True).encode()
    manifest.write_bytes(head.split(b" ")[0] + f" sha256={hashlib.sha256(text).hexdigest()}\n".encode() + text)
    with pytest.raises(CheckpointError, match=f"{npz.name}: cannot be loaded without pickle"):
        read_checkpoint(tmp_path, "shard-0")
    with pytest.raises(CheckpointError, match="not a fastlr parameter-server checkpoint"):
        read_json(tmp_path / "shard-0.pkl")
    assert not marker.exists()


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(CheckpointError, match="without pickle"):
        write_checkpoint(tmp_path, "s", {}, {"a": np.array([{}], dtype=object)})
    assert checkpoint_files(tmp_path, "s") == []


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_debris(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, "s", {"steps": 1}, {"a": np.ones(10)})
    before = sorted(os.listdir(tmp_path))

    def full(file, **arrays):   # disk full after the first bytes
        file.write(b"PK")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        write_checkpoint(tmp_path, "s", {"steps": 2}, {"a": np.zeros(10)})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    meta, tree = read_checkpoint(tmp_path, "s")
    assert meta["steps"] == 1 and tree["a"].tolist() == [1.0] * 10
    write_checkpoint(tmp_path, "s", {"steps": 3}, {"a": np.zeros(10)})   # the next write replaces it
    assert len(checkpoint_files(tmp_path, "s")) == 2 and read_checkpoint(tmp_path, "s")[0]["steps"] == 3
