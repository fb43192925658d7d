"""A sharded parameter server on Ray (extra ``distributed``): fastlr optimizers behind actors.

Every buffer (dense, or a 2-D embedding table) is split by row range over ``num_shards``
Ray actors; each shard holds its rows and one fastlr optimizer per buffer. Workers push
dense gradients (``push``) or gradient rows (``push_rows(name, ids, rows)``, duplicates
summed, lazy updates as ``step_rows``) and read back with ``pull`` / ``pull_rows``.

Modes:
* ``"sync"``: each shard waits for one push per worker (``num_workers`` of them) for a
  buffer, averages the gradients in worker order and takes one optimizer step; a worker's
  ``pull`` waits until the rounds it pushed to are applied (at most ``timeout`` seconds, then
  a TimeoutError names the workers still missing). K workers each on their own batch thus
  train exactly as one process on the union of the batches (mean loss).
* ``"async"``: every push is applied at once as its own step; pulls never wait for others.

Guarantees (docs/RELIABILITY.md, "Parameter server"):
* Exactly once: pushes travel as numbered messages per (client, shard); a shard drops a number
  it already holds (Ray retrying a call after a restart) and refuses one that skips numbers
  (it lost messages when it restarted from its checkpoint); the client then resends, from the
  messages it keeps until a checkpoint holds them. Sync rounds stay aligned across restarts.
* Checkpoints (``checkpoint_dir``): pickle-free (.npz read with ``allow_pickle=False`` + a JSON
  manifest), atomic, checksummed (fastlr.ps_checkpoint); taken every ``checkpoint_every``
  optimizer steps of a shard, before the push that finds one due is applied, so a failed
  write (disk full) refuses that push, unapplied, with the error. ``resume=True`` restores a
  whole server; an existing checkpoint is never overwritten unless ``overwrite=True``.
* Ray started here listens on 127.0.0.1 only (``init_ray``); ``address=`` joins a cluster as is.

Throughput: a client coalesces its pushes per shard into one message of up to
``batch_bytes`` (sent at the latest ``batch_delay`` seconds after its first push), copied once
into a staging buffer and once into Ray's object store, which the shard reads zero-copy.

    ps = ParameterServer({"emb": np.zeros((10**6, 64), np.float32)}, "Adam", lr=1e-3,
                         num_shards=2, mode="async")
    ps.push_rows("emb", ids, grad_rows)
    rows = ps.pull_rows("emb", ids)

Modules: this one (server, init_ray), fastlr.ps_client (Client), fastlr.ps_shard (the shard
actor), fastlr.ps_checkpoint (checkpoint files). Ray is imported by them only when used, and
started on the fly (``init_ray``: a local instance with ``num_cpus``) unless it is already
running or ``address`` names a cluster to join.
"""
import collections
import functools
import os

import numpy as np

from .ps_checkpoint import (
    CheckpointError,
    read_json,
    read_manifest,
    write_checkpoint,
    write_json,
)
from .ps_client import Client
from .ps_shard import Shard, shard_stem

__all__ = ["CheckpointError", "Client", "ParameterServer", "init_ray"]

SERVER_FILE = "server.json"


def init_ray(num_cpus=None, **kwargs):
    """Start a local Ray whose servers all listen on 127.0.0.1 (not on every interface, as a plain
    ``ray.init()`` does); `kwargs` go to ``ray.init``. Returns what ``ray.init`` returns.

    Ray binds its gRPC servers and agents to the node address, which it replaces with the
    machine's network address unless clustering is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0);
    this sets that for the start, asks for the node address 127.0.0.1, and checks the result.
    """
    import ray
    try:   # ray reads the variable when imported; new processes read it from the environment
        from ray._private import ray_constants
    except ImportError:   # another Ray layout: the environment alone, and the check below
        ray_constants = None
    env = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ctx = ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                       **{"include_dashboard": False, **kwargs})
    finally:
        if flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"init_ray: Ray came up on {address}, not on 127.0.0.1; stopped it")
    return ctx


class ParameterServer:
    """Shard `params` (name -> NumPy array) over Ray actors, each buffer with its own `optimizer`.

    optimizer: a fastlr optimizer name ("Adam", "RowWiseAdagrad", ...), class, or a callable
        ``make(array) -> optimizer``; ``**optimizer_kwargs`` go to the class.
    mode: "sync" (``num_workers`` pushes averaged per step) or "async".
    checkpoint_dir: a folder every shard can reach. The initial values go there first; each
        shard saves itself once ``checkpoint_every`` optimizer steps (default 100) have passed,
        checked before each message it takes (a message holds up to batch_bytes of one client's
        pushes), and on checkpoint(). A shard that dies is restarted by Ray (``max_restarts``,
        default 3 with checkpoint_dir, else 0; -1: always) from its checkpoint, and clients resend
        what it lacks.
    resume: restore every shard (rows, optimizer states, sync rounds, message numbers) from
        checkpoint_dir; `params` may then be None (the layout is read back) or must match it.
        Without resume, a folder that holds a checkpoint is an error unless ``overwrite=True``.
    timeout: seconds a call waits for a sync round or a shard's reply before a TimeoutError.
    batch_bytes, batch_delay: a client's pushes to one shard are coalesced up to this many bytes,
        sent at the latest batch_delay seconds after the first (0: every push sent at once).
    address: join this Ray cluster; otherwise a running Ray is used, or a local one is started
        by init_ray (127.0.0.1 only) with ``num_cpus`` CPUs (and ``ray_init`` passed on).
    threads_per_shard: numba threads of each shard process (None: numba's default). Default 1: shards
        share the machine with workers and each other, and a parallel kernel on busy cores can run
        several times slower than a serial one (docs/PERFORMANCE.md, "Parameter server").

    Workers use ``client(worker)`` (or the same methods here, with ``worker=``): push,
    push_rows, pull, pull_rows, flush, wait.
    """

    def __init__(self, params=None, optimizer="Adam", *, num_shards=2, mode="sync", num_workers=1,
                 checkpoint_dir=None, checkpoint_every=None, resume=False, overwrite=False, max_restarts=None,
                 timeout=120.0, batch_bytes=16 << 20, batch_delay=0.005, address=None, num_cpus=2,
                 threads_per_shard=1, ray_init=None, **optimizer_kwargs):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode: expected 'sync' or 'async', got {mode!r}")
        for name, value in (("num_shards", num_shards), ("num_workers", num_workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or
                                             not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every: expected an integer >= 1 or None, got {checkpoint_every!r}")
        for name, value in (("timeout", timeout), ("batch_delay", batch_delay), ("batch_bytes", batch_bytes)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if (resume or overwrite) and checkpoint_dir is None:
            raise ValueError("resume/overwrite: need checkpoint_dir")
        if resume and overwrite:
            raise ValueError("resume and overwrite: choose one")
        directory = os.path.abspath(checkpoint_dir) if checkpoint_dir is not None else None
        if resume:
            layout, params = self._saved_layout(directory, params, num_shards, mode, num_workers)
        else:
            layout = self._layout(params, num_shards)
        make = _optimizer_factory(optimizer, optimizer_kwargs)
        for lay in layout.values():  # bad options fail here, not in an actor
            make(np.zeros((2,) + lay.shape[1:], lay.dtype))
        if directory is not None and not resume:
            self._claim(directory, overwrite)
            self._write_initial(directory, params, layout, num_shards, mode, num_workers, optimizer)

        import ray
        self._owns_ray = False
        if not ray.is_initialized():
            if address is not None:
                ray.init(address=address, **(ray_init or {}))
            else:
                init_ray(num_cpus=num_cpus, **(ray_init or {}))
                self._owns_ray = True
        if max_restarts is None:
            max_restarts = 3 if directory else 0
        options = {"max_restarts": max_restarts, "max_task_retries": -1 if max_restarts else 0, "num_cpus": 0}
        if threads_per_shard is not None:
            options["runtime_env"] = {"env_vars": {"NUMBA_NUM_THREADS": str(threads_per_shard)}}
        actor = ray.remote(Shard).options(**options)
        every = (checkpoint_every or 100) if directory else None
        self.shards = []
        for k in range(num_shards):
            slices = None
            if directory is None:   # with checkpoints, a (re)started shard reads its rows from there
                slices = {name: np.ascontiguousarray(a[lay.bounds[k]:lay.bounds[k + 1]])
                          for name, a in params.items() if (lay := layout[name]).bounds[k + 1] > lay.bounds[k]}
            self.shards.append(actor.remote(k, slices, make, mode, num_workers, directory, every, timeout))
        self.layout, self.mode, self.num_workers = layout, mode, num_workers
        self.checkpoint_dir, self.timeout = directory, timeout
        self._client_options = {"batch_bytes": int(batch_bytes), "batch_delay": float(batch_delay),
                                "timeout": timeout, "replay": directory is not None}
        self._clients = {}
        try:
            ray.get([s.info.remote() for s in self.shards], timeout=max(timeout, 120))  # up, optimizers built
        except Exception:
            self.shutdown()
            raise

    # ------------------------------------------------------------ construction helpers
    @staticmethod
    def _layout(params, num_shards):
        if not isinstance(params, dict) or not params:
            raise TypeError("params: expected a non-empty dict of name -> NumPy array")
        layout = {}
        for name, a in params.items():
            if not isinstance(name, str):
                raise TypeError(f"params: expected str names, got {name!r}")
            if not isinstance(a, np.ndarray) or a.ndim < 1 or a.dtype not in (np.float32, np.float64):
                raise TypeError(f"params[{name!r}]: expected a float32/float64 NumPy array with at least 1 "
                                f"dimension, got {type(a).__name__} {getattr(a, 'dtype', '')}")
            bounds = [k * a.shape[0] // num_shards for k in range(num_shards + 1)]
            layout[name] = _Layout(tuple(a.shape), a.dtype, bounds)
        return layout

    @staticmethod
    def _claim(directory, overwrite):
        """Make sure starting afresh in `directory` destroys no checkpoint silently."""
        os.makedirs(directory, exist_ok=True)
        ours = [n for n in os.listdir(directory)
                if n.startswith((SERVER_FILE, "shard-")) and n.endswith((".json", ".npz", ".tmp", ".pkl"))]
        if ours and not overwrite:
            raise FileExistsError(f"checkpoint_dir: {directory} already holds a parameter-server checkpoint "
                                  f"({', '.join(sorted(ours)[:4])}{', ...' if len(ours) > 4 else ''}); pass "
                                  f"resume=True to continue from it or overwrite=True to start afresh")
        for n in ours:
            os.unlink(os.path.join(directory, n))

    @staticmethod
    def _write_initial(directory, params, layout, num_shards, mode, num_workers, optimizer):
        """The initial rows of every shard, then server.json (the layout) last: a folder with a
        server.json holds a complete checkpoint."""
        for k in range(num_shards):
            slices = {name: np.ascontiguousarray(a[lay.bounds[k]:lay.bounds[k + 1]])
                      for name, a in params.items() if (lay := layout[name]).bounds[k + 1] > lay.bounds[k]}
            tree = {"params": slices, "optim": None, "seq": {}, "rounds": dict.fromkeys(slices, 0),
                    "queues": {name: {w: [] for w in range(num_workers)} for name in slices}}
            write_checkpoint(directory, shard_stem(k), {"index": k, "steps": 0, "mode": mode,
                                                        "num_workers": num_workers}, tree)
        write_json(os.path.join(directory, SERVER_FILE), {
            "num_shards": num_shards, "mode": mode, "num_workers": num_workers,
            "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer)),
            "layout": {name: {"shape": list(lay.shape), "dtype": lay.dtype.str, "bounds": lay.bounds}
                       for name, lay in layout.items()}})

    @staticmethod
    def _saved_layout(directory, params, num_shards, mode, num_workers):
        """The layout in checkpoint_dir, checked against what the caller asks for."""
        server = os.path.join(directory, SERVER_FILE)
        if not os.path.exists(server):
            legacy = [n for n in os.listdir(directory) if n.endswith(".pkl")] if os.path.isdir(directory) else []
            hint = f" (pickle checkpoints such as {legacy[0]} are never loaded)" if legacy else ""
            raise FileNotFoundError(f"checkpoint_dir: no parameter-server checkpoint in {directory}{hint}")
        saved = read_json(server)
        for what, want, got in (("num_shards", num_shards, saved["num_shards"]), ("mode", mode, saved["mode"]),
                                ("num_workers", num_workers, saved["num_workers"])):
            if want != got:
                raise ValueError(f"{what}: the checkpoint in {directory} was made with {what}={got!r}, got {want!r}")
        layout = {name: _Layout(tuple(v["shape"]), np.dtype(v["dtype"]), list(v["bounds"]))
                  for name, v in saved["layout"].items()}
        if params is not None:
            given = ParameterServer._layout(params, num_shards)
            if {n: (v.shape, v.dtype) for n, v in given.items()} != {n: (v.shape, v.dtype) for n, v in layout.items()}:
                raise ValueError(f"params: expected the buffers saved in {directory}: "
                                 f"{ {n: (v.shape, str(v.dtype)) for n, v in layout.items()} }")
        if mode == "sync":   # every shard must be at the same round, none mid-round
            metas = [read_manifest(directory, shard_stem(k))["meta"] for k in range(num_shards)]
            rounds = {name: {m["index"]: m["rounds"][name] for m in metas if name in m.get("rounds", {})}
                      for name in layout}
            queued = [m["index"] for m in metas if any(any(q.values()) for q in m.get("queued", {}).values())]
            split = [name for name, r in rounds.items() if len(set(r.values())) > 1]
            if split or queued:
                raise ValueError(f"resume: the shards in {directory} were saved at different sync rounds "
                                 f"({ {n: rounds[n] for n in split} }) or mid-round (shards {queued}); sync mode "
                                 f"resumes from a checkpoint() taken between rounds")
        return layout, None

    # ------------------------------------------------------------ the driver's own clients
    def client(self, worker=0):
        """The handle worker `worker` pushes and pulls through (sync mode: 0 <= worker < num_workers); picklable."""
        if worker not in self._clients:
            self._clients[worker] = Client(self.shards, self.layout, self.mode, self.num_workers, worker,
                                           **self._client_options)
        return self._clients[worker]

    def push(self, name, grad, worker=0, wait=False):
        """Client.push as worker `worker`."""
        self.client(worker).push(name, grad, wait=wait)

    def push_rows(self, name, ids, rows, worker=0, wait=False):
        """Client.push_rows as worker `worker`."""
        self.client(worker).push_rows(name, ids, rows, wait=wait)

    def pull(self, name, worker=0):
        """Client.pull as worker `worker`."""
        return self.client(worker).pull(name)

    def pull_rows(self, name, ids, worker=0):
        """Client.pull_rows as worker `worker`."""
        return self.client(worker).pull_rows(name, ids)

    def wait(self, durable=False):
        """Client.wait for every client this server made (``client(worker)``)."""
        for c in self._clients.values():
            c.wait(durable)

    def checkpoint(self):
        """Save every shard now (after this server's own clients' pushes are taken); returns each
        shard's step count. A failed write raises CheckpointError; the previous files stay."""
        import ray
        self.wait()
        return ray.get([s.checkpoint.remote() for s in self.shards], timeout=self.timeout)

    def info(self):
        """Per shard (after pushes in flight are taken): index, steps, process id, the step it was
        restored from (None), whether Ray restarted it, sync rounds per buffer."""
        import ray
        self.wait()
        return ray.get([s.info.remote() for s in self.shards], timeout=self.timeout)

    def shutdown(self):
        """Stop the shard actors (and the local Ray, if this server started it); checkpoints stay."""
        import ray
        for c in self._clients.values():
            c.close()
        for s in self.shards:
            ray.kill(s, no_restart=True)
        self.shards = []
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


class _Layout(collections.namedtuple("_Layout", "shape dtype bounds")):
    """A buffer's shape, dtype and row bounds: shard k holds rows bounds[k]:bounds[k + 1]."""

    def shards(self):
        return [k for k in range(len(self.bounds) - 1) if self.bounds[k + 1] > self.bounds[k]]


def _optimizer_factory(optimizer, kwargs):
    """A picklable make(array) -> fastlr optimizer."""
    if isinstance(optimizer, str):
        import fastlr

        from . import sparse
        cls = getattr(fastlr, optimizer, None) or getattr(sparse, optimizer, None)
        if not (isinstance(cls, type) and issubclass(cls, fastlr.Optimizer)):
            raise ValueError(f"optimizer: no fastlr optimizer named {optimizer!r}")
        return functools.partial(cls, **kwargs)
    if isinstance(optimizer, type):
        return functools.partial(optimizer, **kwargs)
    if callable(optimizer) and not kwargs:
        return optimizer
    raise TypeError("optimizer: expected a fastlr optimizer name or class (options as keyword arguments), "
                    f"or a callable make(array) -> optimizer without them; got {optimizer!r}")

