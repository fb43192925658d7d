"""A sharded parameter server on Ray (extra ``distributed``): fastlr optimizers behind actors.

Every buffer (dense, or a 2-D embedding table) is split by row range over ``num_shards``
Ray actors; each shard holds its rows and one fastlr optimizer per buffer. Workers push
dense gradients (``push``) or gradient rows (``push_rows(name, ids, rows)``, duplicates
summed, lazy updates as ``step_rows``) and read back with ``pull`` / ``pull_rows``. NumPy
arrays travel through Ray's object store (read zero-copy by the receiving process).

Modes:
* ``"sync"``: each shard waits for one push per worker (``num_workers`` of them) for a
  buffer, averages the gradients in worker order and takes one optimizer step; a worker's
  ``pull`` waits until the round it pushed to is applied. K workers each on their own
  batch thus train exactly as one process on the union of the batches (mean loss).
* ``"async"``: every push is applied at once as its own step; pulls never wait.

Durability: with ``checkpoint_dir`` (a folder every shard can reach), each shard saves its
params, optimizer states and step count atomically (temporary file, fsync, rename) every
``checkpoint_every`` steps and on ``checkpoint()``; the initial values are written there
first (a new server starts afresh, overwriting what the folder held). A shard actor that
dies is restarted by Ray (``max_restarts``) from its last checkpoint; calls in flight are
retried on the new actor (updates applied after the checkpoint are lost, as in any
checkpoint-restart scheme) and training continues.

    ps = ParameterServer({"emb": np.zeros((10**6, 64), np.float32)}, "Adam", lr=1e-3,
                         num_shards=2, mode="async")
    ps.push_rows("emb", ids, grad_rows)
    rows = ps.pull_rows("emb", ids)

Ray is imported only here, and started on the fly (a local instance with ``num_cpus``)
unless it is already running or ``address`` names a cluster to join.
"""
import collections
import functools
import os

import numpy as np

__all__ = ["ParameterServer", "Client"]


class ParameterServer:
    """Shard `params` (name -> NumPy array) over Ray actors, each buffer with its own `optimizer`.

    optimizer: a fastlr optimizer name ("Adam", "RowWiseAdagrad", ...), class, or a callable
        ``make(array) -> optimizer``; ``**optimizer_kwargs`` go to the class.
    mode: "sync" (``num_workers`` pushes averaged per step) or "async".
    checkpoint_dir, checkpoint_every: where and how often (in steps of a shard) shards save
        themselves; checkpoint() saves on request. max_restarts: Ray restarts of a dead shard
        (default 3 with checkpoint_dir, else 0: without checkpoints a restart would start over).
    address: join this Ray cluster; otherwise a running Ray is used, or a local one is started
        with ``num_cpus`` CPUs (and ``ray_init`` passed to ``ray.init``).
    threads_per_shard: numba threads of each shard process (None: numba's default; 1 by
        default, as shards share the machine with workers and other shards).

    Workers use ``client(worker)`` (or the same methods here, with ``worker=``): push,
    push_rows, pull, pull_rows, wait.
    """

    def __init__(self, params, optimizer="Adam", *, num_shards=2, mode="sync", num_workers=1,
                 checkpoint_dir=None, checkpoint_every=None, max_restarts=None, address=None, num_cpus=2,
                 threads_per_shard=1, ray_init=None, **optimizer_kwargs):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode: expected 'sync' or 'async', got {mode!r}")
        for name, value in (("num_shards", num_shards), ("num_workers", num_workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every: expected an integer >= 1 or None, got {checkpoint_every!r}")
        if not isinstance(params, dict) or not params:
            raise TypeError("params: expected a non-empty dict of name -> NumPy array")
        layout = {}
        for name, a in params.items():
            if not isinstance(a, np.ndarray) or a.ndim < 1 or a.dtype not in (np.float32, np.float64):
                raise TypeError(f"params[{name!r}]: expected a float32/float64 NumPy array with at least 1 "
                                f"dimension, got {type(a).__name__} {getattr(a, 'dtype', '')}")
            bounds = [k * a.shape[0] // num_shards for k in range(num_shards + 1)]
            layout[name] = _Layout(tuple(a.shape), a.dtype, bounds)
        make = _optimizer_factory(optimizer, optimizer_kwargs)
        for a in params.values():  # bad options fail here, not in an actor
            make(np.zeros((2,) + a.shape[1:], a.dtype))
        import ray
        self._owns_ray = False
        if not ray.is_initialized():
            if address is not None:
                ray.init(address=address, **(ray_init or {}))
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **(ray_init or {}))
                self._owns_ray = True
        if checkpoint_dir is not None:
            checkpoint_dir = os.path.abspath(checkpoint_dir)
            os.makedirs(checkpoint_dir, exist_ok=True)
        if max_restarts is None:
            max_restarts = 3 if checkpoint_dir else 0
        options = dict(max_restarts=max_restarts, max_task_retries=-1 if max_restarts else 0)
        if threads_per_shard is not None:
            options["runtime_env"] = {"env_vars": {"NUMBA_NUM_THREADS": str(threads_per_shard)}}
        actor = ray.remote(_Shard).options(**options)
        self.shards = []
        for k in range(num_shards):
            slices = {name: np.ascontiguousarray(a[lay.bounds[k]:lay.bounds[k + 1]])
                      for name, a in params.items() if (lay := layout[name]).bounds[k + 1] > lay.bounds[k]}
            path = None
            if checkpoint_dir:  # the initial rows go to the checkpoint: a restart never needs them as arguments
                path = os.path.join(checkpoint_dir, f"shard-{k}.pkl")
                _save(path, {"steps": 0, "params": slices, "optim": None})
                slices = None
            self.shards.append(actor.remote(k, slices, make, mode, num_workers, path, checkpoint_every))
        self.layout, self.mode, self.num_workers = layout, mode, num_workers
        self.checkpoint_dir = checkpoint_dir
        self._clients = {}
        ray.get([s.info.remote() for s in self.shards])  # up, with their optimizers built

    def client(self, worker=0):
        """The handle worker `worker` pushes and pulls through (sync mode: 0 <= worker < num_workers); picklable."""
        if worker not in self._clients:
            self._clients[worker] = Client(self.shards, self.layout, self.mode, self.num_workers, worker)
        return self._clients[worker]

    def push(self, name, grad, worker=0):
        """Client.push as worker `worker`."""
        self.client(worker).push(name, grad)

    def push_rows(self, name, ids, rows, worker=0):
        """Client.push_rows as worker `worker`."""
        self.client(worker).push_rows(name, ids, rows)

    def pull(self, name, worker=0):
        """Client.pull as worker `worker`."""
        return self.client(worker).pull(name)

    def pull_rows(self, name, ids, worker=0):
        """Client.pull_rows as worker `worker`."""
        return self.client(worker).pull_rows(name, ids)

    def wait(self):
        """Block until every push made through this server's clients is taken by its shard."""
        for c in self._clients.values():
            c.wait()

    def checkpoint(self):
        """Save every shard now (atomically); returns each shard's step count."""
        import ray
        self.wait()
        return ray.get([s.checkpoint.remote() for s in self.shards])

    def info(self):
        """Per shard (after pushes in flight are taken): index, steps, process id, the step it was
        restored from (None) and whether Ray restarted it."""
        import ray
        self.wait()
        return ray.get([s.info.remote() for s in self.shards])

    def shutdown(self):
        """Stop the shard actors (and the local Ray, if this server started it)."""
        import ray
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


class Client:
    """A worker's handle on the server: push, push_rows, pull, pull_rows. Picklable (send it to
    Ray tasks or actors). Pushes are asynchronous, at most `max_inflight` per client in flight;
    wait() blocks until all are taken. Arguments are checked here, before anything is sent."""

    def __init__(self, shards, layout, mode, num_workers, worker, max_inflight=8):
        top = num_workers if mode == "sync" else None  # sync rounds count pushes per worker id
        if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0 or (top and worker >= top):
            raise ValueError(f"worker: expected an integer in [0, {top or 'inf'}), got {worker!r}")
        self.shards, self.layout, self.mode, self.worker = shards, layout, mode, worker
        self.max_inflight = max_inflight
        self._inflight = collections.deque()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_inflight"] = collections.deque()
        return state

    def _buffer(self, name):
        try:
            return self.layout[name]
        except KeyError:
            raise KeyError(f"name: no buffer {name!r} on this server (it has {sorted(self.layout)})") from None

    def _send(self, refs):
        import ray
        self._inflight.extend(refs)
        while len(self._inflight) > self.max_inflight:
            ray.get(self._inflight.popleft())

    def wait(self):
        import ray
        while self._inflight:
            ray.get(self._inflight.popleft())

    def push(self, name, grad):
        """The gradient of a whole buffer (its shape and dtype)."""
        lay = self._buffer(name)
        grad = np.asarray(grad)
        if grad.shape != lay.shape or grad.dtype != lay.dtype:
            raise ValueError(f"grad: expected shape {lay.shape} and dtype {lay.dtype} (as {name!r}), got "
                             f"{grad.shape} {grad.dtype}")
        b = lay.bounds
        self._send([self.shards[k].push.remote(name, np.ascontiguousarray(grad[b[k]:b[k + 1]]), self.worker)
                    for k in lay.shards()])

    def push_rows(self, name, ids, rows):
        """Gradient rows of a 2-D buffer: rows[j] for row ids[j] (duplicates are summed)."""
        lay = self._buffer(name)
        ids, parts = self._split(name, lay, ids)
        rows = np.asarray(rows)
        if rows.shape != (ids.size, lay.shape[1]) or rows.dtype != lay.dtype:
            raise ValueError(f"rows: expected shape ({ids.size}, {lay.shape[1]}) and dtype {lay.dtype} (one row "
                             f"of {name!r} per id), got {rows.shape} {rows.dtype}")
        refs = []
        for k, (sel, local) in parts.items():
            if local.size or self.mode == "sync":  # in sync mode every shard counts this worker's push
                refs.append(self.shards[k].push_rows.remote(name, local, np.ascontiguousarray(rows[sel]),
                                                            self.worker))
        self._send(refs)

    def pull(self, name):
        """The whole buffer (in sync mode: after the round of this worker's last push is applied)."""
        import ray
        lay = self._buffer(name)
        self.wait()
        return np.concatenate(ray.get([self.shards[k].pull.remote(name, self.worker) for k in lay.shards()]))

    def pull_rows(self, name, ids):
        """Rows ids of a 2-D buffer, as an array (len(ids), dim)."""
        import ray
        lay = self._buffer(name)
        ids, parts = self._split(name, lay, ids)
        self.wait()
        out = np.empty((ids.size,) + lay.shape[1:], lay.dtype)
        keys = [k for k, (_, local) in parts.items() if local.size]
        for k, got in zip(keys, ray.get([self.shards[k].pull_rows.remote(name, parts[k][1], self.worker)
                                         for k in keys])):
            out[parts[k][0]] = got
        return out

    def _split(self, name, lay, ids):
        """(ids, {shard: (positions in ids, shard-local ids)}) for every shard of the buffer."""
        if len(lay.shape) != 2:
            raise ValueError(f"name: {name!r} has shape {lay.shape}; row access needs a 2-D table")
        ids = np.asarray(ids)
        if ids.size == 0 and ids.ndim == 1:
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"ids: expected a 1-D array of integer row ids, got {ids.dtype} of shape {ids.shape}")
        n = lay.shape[0]
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if bad.size:
            raise IndexError(f"ids[{bad[0]}]: row id {ids[bad[0]]} is out of range for {name!r} with {n} rows")
        shard = np.searchsorted(lay.bounds, ids, side="right") - 1
        parts = {}
        for k in lay.shards():
            sel = np.flatnonzero(shard == k)
            parts[k] = (sel, ids[sel].astype(np.int64) - lay.bounds[k])
        return ids, parts


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


def _save(path, state):
    """Write state atomically: a temporary file, fsync, rename over `path`, fsync the folder."""
    from ray import cloudpickle
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        cloudpickle.dump(state, f, protocol=5)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


class _Shard:
    """One Ray actor: rows of every buffer, an optimizer for each, sync rounds, checkpoints."""

    def __init__(self, index, slices, make, mode, num_workers, path, every):
        import asyncio
        self.index, self.mode, self.num_workers, self.path, self.every = index, mode, num_workers, path, every
        if path is not None:
            from ray import cloudpickle
            with open(path, "rb") as f:
                saved = cloudpickle.load(f)
            self.params, self.steps = saved["params"], saved["steps"]
        else:  # own, writeable copies of the initial rows (object-store arrays are read-only)
            self.params, self.steps = {name: np.array(a) for name, a in slices.items()}, 0
        self.restarted = _reconstructed()
        self.restored_from = self.steps if self.restarted else None
        self.opts = {name: make(p) for name, p in self.params.items()}
        if path is not None and saved["optim"] is not None:
            for name, opt in self.opts.items():
                opt.load_state_dict(saved["optim"][name])
        # sync rounds, counted from this actor's start: a restart loses only unapplied pushes
        self.rounds = dict.fromkeys(self.params, 0)
        self.pushed = {name: collections.Counter() for name in self.params}
        self.pending = {name: {} for name in self.params}
        self.cond = asyncio.Condition()

    # ------------------------------------------------------------ updates
    async def push(self, name, grad, worker):
        await self._submit(name, worker, ("dense", grad))

    async def push_rows(self, name, ids, rows, worker):
        await self._submit(name, worker, ("rows", ids, rows))

    async def _submit(self, name, worker, item):
        if self.mode == "async":
            self._apply(name, [item], 1.0)
            return
        async with self.cond:
            # one push per worker per round: a second one waits for the next round
            await self.cond.wait_for(lambda: worker not in self.pending[name])
            self.pending[name][worker] = item
            self.pushed[name][worker] += 1
            if len(self.pending[name]) == self.num_workers:
                pending, self.pending[name] = self.pending[name], {}
                try:
                    self._apply(name, [pending[w] for w in sorted(pending)], 1.0 / self.num_workers)
                finally:
                    self.rounds[name] += 1
                    self.cond.notify_all()

    def _apply(self, name, items, scale):
        """One optimizer step with the sum of the items' gradients times scale."""
        from .sparse import step_rows
        kinds = {item[0] for item in items}
        if len(kinds) > 1:
            raise ValueError(f"{name!r}: push and push_rows mixed in one synchronous round")
        opt = self.opts[name]
        if "dense" in kinds:
            total = np.array(items[0][1])
            for item in items[1:]:
                total += item[1]
            if scale != 1.0:
                total *= scale
            opt.step(total)
        else:
            ids = np.concatenate([item[1] for item in items])
            rows = np.concatenate([item[2] for item in items])
            if scale != 1.0:
                rows = rows * rows.dtype.type(scale)
            step_rows(opt, None, ids, rows)
        self.steps += 1
        if self.every and self.path and self.steps % self.every == 0:
            self._save()

    # ------------------------------------------------------------ reads
    async def _applied(self, name, worker):
        """In sync mode: until the rounds of all of this worker's pushes are applied."""
        if self.mode == "sync":
            async with self.cond:
                await self.cond.wait_for(lambda: self.rounds[name] >= self.pushed[name][worker])

    async def pull(self, name, worker):
        await self._applied(name, worker)
        return self.params[name].copy()  # a snapshot: later steps must not change what is returned

    async def pull_rows(self, name, ids, worker):
        await self._applied(name, worker)
        return self.params[name][ids]

    # ------------------------------------------------------------ durability
    def _save(self):
        _save(self.path, {"steps": self.steps, "params": self.params,
                          "optim": {name: opt.state_dict() for name, opt in self.opts.items()}})

    async def checkpoint(self):
        if not self.path:
            raise ValueError("checkpoint: the server was made without checkpoint_dir")
        self._save()
        return self.steps

    async def info(self):
        return {"index": self.index, "steps": self.steps, "pid": os.getpid(), "restored_from": self.restored_from,
                "restarted": self.restarted}


def _reconstructed():
    """Whether Ray restarted this actor (rather than creating it)."""
    import warnings

    import ray
    with warnings.catch_warnings():  # ray 2.60 warns from inside its own property
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed
