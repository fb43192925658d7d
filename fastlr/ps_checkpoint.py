"""Checkpoint files of the parameter server (fastlr.ps): no pickle, atomic, checksummed.

A checkpoint named `stem` in a folder is two files:

* ``<stem>.<token>.npz``: every array, saved with NumPy (object arrays refused) and read
  back with ``allow_pickle=False``, so a crafted file cannot run code when loaded;
* ``<stem>.json``: the manifest. Its first line is ``fastlr-ps-checkpoint/1 sha256=<hex>``,
  the checksum of the rest of the file, which is JSON: the caller's metadata, the nested
  structure of the saved values (dicts, lists, tuples, scalars; arrays appear as references
  to npz entries) and the npz file's name, size and sha256.

Writes are atomic: each file goes to a temporary name, is fsynced, renamed into place, and
the folder is fsynced; the manifest is replaced last, so a crash or a failed write (disk
full) leaves the previous checkpoint whole. Temporary files of a failed write are removed
before the error is raised. Loading verifies both checksums first: a truncated or altered
file is a CheckpointError that names it.
"""
import hashlib
import json
import os
import uuid

import numpy as np

__all__ = [
    "CheckpointError",
    "checkpoint_files",
    "read_checkpoint",
    "read_json",
    "read_manifest",
    "write_checkpoint",
    "write_json",
]

FORMAT = "fastlr-ps-checkpoint/1"
_UNSAVED = object()   # a value that has no file form (a callable lr): left out, the live object keeps its own


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a file is missing, corrupt or not a fastlr checkpoint."""


# ---------------------------------------------------------------- nested values <-> JSON + arrays
def encode(value, arrays):
    """`value` as JSON-ready data; arrays (and NumPy scalars) are moved into `arrays` (name -> array)."""
    if isinstance(value, (np.ndarray, np.generic)):
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise CheckpointError(f"cannot save an array of dtype {a.dtype} without pickle")
        key = f"a{len(arrays)}"
        arrays[key] = a
        return {"$array": key, "scalar": isinstance(value, np.generic)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, arrays) for k, v in value.items()}
        return {"$dict": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode(v, arrays) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, arrays) for v in value]}
    return {"$unsaved": type(value).__name__}


def decode(data, arrays):
    """The inverse of encode; arrays: name -> array (from the npz file)."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    if "$array" in data:
        a = arrays[data["$array"]]
        return a[()] if data.get("scalar") else a
    if "$tuple" in data:
        return tuple(decode(v, arrays) for v in data["$tuple"])
    if "$unsaved" in data:
        return _UNSAVED
    pairs = data["$dict"] if "$dict" in data else data.items()
    out = {}
    for k, v in pairs:
        v = decode(v, arrays)
        if v is not _UNSAVED:
            out[_hashable(decode(k, arrays))] = v
    return out


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# ---------------------------------------------------------------- atomic files
def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_atomic(path, write, placed=None):
    """write(file) into a temporary file, fsync it, rename it over `path`, fsync the folder.
    On any failure the temporary file is removed and the error propagates; `placed` (a list)
    gets `path` appended once the rename is done."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if placed is not None:
            placed.append(path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))


def _manifest_bytes(body):
    text = json.dumps(body, sort_keys=True, allow_nan=True).encode()
    return f"{FORMAT} sha256={hashlib.sha256(text).hexdigest()}\n".encode() + text


def write_json(path, body, placed=None):
    """Write `body` (JSON-ready) to `path` atomically, with a checksum line."""
    data = _manifest_bytes(body)
    _write_atomic(path, lambda f: f.write(data), placed)


def read_json(path):
    """The body written by write_json, checksum verified; CheckpointError names the file if it is not sound."""
    try:
        with open(path, "rb") as f:
            head, _, text = f.read().partition(b"\n")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from e
    fmt, _, digest = head.decode("ascii", "replace").partition(" sha256=")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not a fastlr parameter-server checkpoint (expected a first line "
                              f"{FORMAT!r} sha256=...)")
    if hashlib.sha256(text).hexdigest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (the file is truncated or corrupt)")
    try:
        return json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e


def checkpoint_files(directory, stem):
    """Files of checkpoint `stem` in `directory`: the manifest, data files and leftover temporary files."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n == f"{stem}.json" or (n.startswith(f"{stem}.") and
                                                              n.endswith((".npz", ".tmp"))))


def write_checkpoint(directory, stem, meta, tree):
    """Save `tree` (nested dicts/lists/tuples of scalars and arrays) with the JSON-ready `meta`
    as checkpoint `stem`, replacing the previous one atomically. Raises CheckpointError, with
    nothing of this write left behind, if any step fails."""
    arrays = {}
    data = encode(tree, arrays)
    npz = f"{stem}.{uuid.uuid4().hex[:12]}.npz"
    npz_path, placed = os.path.join(directory, npz), []
    try:
        _write_atomic(npz_path, lambda f: np.savez(f, **arrays))
        digest, size = _sha256(npz_path), os.path.getsize(npz_path)
        write_json(os.path.join(directory, f"{stem}.json"),
                   {"meta": meta, "tree": data, "files": {npz: {"sha256": digest, "bytes": size}}}, placed)
    except BaseException as e:
        if not placed:  # the manifest still names the previous data file: this one is garbage
            try:
                os.unlink(npz_path)
            except FileNotFoundError:
                pass
        if isinstance(e, (OSError, ValueError)):
            raise CheckpointError(f"checkpoint {os.path.join(directory, stem)}: write failed ({e}); "
                                  f"the previous checkpoint is intact") from e
        raise
    for name in checkpoint_files(directory, stem):  # the previous data file, leftovers of crashed writes
        if name not in (npz, f"{stem}.json"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return size


def read_manifest(directory, stem):
    """The manifest of checkpoint `stem` (meta, tree, files), checksum verified; arrays not loaded."""
    body = read_json(os.path.join(directory, f"{stem}.json"))
    if not isinstance(body, dict) or not {"meta", "tree", "files"} <= body.keys():
        raise CheckpointError(f"{os.path.join(directory, stem)}.json: not a checkpoint manifest")
    return body


def read_checkpoint(directory, stem):
    """(meta, tree) of checkpoint `stem`: every file's checksum verified, arrays loaded without pickle."""
    body = read_manifest(directory, stem)
    arrays = {}
    for name, info in body["files"].items():
        path = os.path.join(directory, name)
        if os.path.basename(name) != name or not name.endswith(".npz"):
            raise CheckpointError(f"{directory}/{stem}.json: names an unexpected file {name!r}")
        try:
            ok = os.path.getsize(path) == info["bytes"] and _sha256(path) == info["sha256"]
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (named by {stem}.json)") from None
        if not ok:
            raise CheckpointError(f"{path}: checksum mismatch (the file is truncated or corrupt)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays.update({key: npz[key] for key in npz.files})
        except Exception as e:   # object arrays (pickles) are refused here, as are damaged zips
            raise CheckpointError(f"{path}: cannot be loaded without pickle ({e})") from e
    try:
        return body["meta"], decode(body["tree"], arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/{stem}.json: does not match its data file ({e!r})") from e
