"""One shard of the parameter server (fastlr.ps): a Ray actor holding row ranges of every buffer.

Protocol (each call says who sends it): a client sends its pushes to a shard as messages
numbered 1, 2, 3, ... per (client, shard). The shard accepts message ``seq`` only when it is
the next one from that client: an older number is a duplicate (a Ray retry of a call whose
effect the shard already holds) and is dropped; a newer one means the shard lost messages
(it was restarted from a checkpoint) and is refused with the last number it holds, so the
client resends from there. Every reply carries ``durable``: the last number from that client
that the shard's newest checkpoint holds, so the client can forget older messages.

A message is a list of items ``(name, ids, grad)`` (ids None for a whole-buffer gradient).
Async mode applies each item at once as its own optimizer step. Sync mode queues items per
(buffer, worker) and applies round r when every worker's r-th item for that buffer is there:
their gradients averaged in worker order, one step. The queues are part of the checkpoint,
so a restarted shard resumes rounds exactly where its checkpoint left them and the clients'
resent messages fill in the rest.

A checkpoint, when due (``every`` optimizer steps since the last one), is written BEFORE the
message that finds it due is applied: if the write fails, that message is refused with the
error and nothing of it is applied.
"""
import asyncio
import collections
import concurrent.futures
import os
import time
import uuid

import numpy as np

from .ps_checkpoint import CheckpointError, read_checkpoint, write_checkpoint

__all__ = ["Shard", "shard_stem"]


def shard_stem(index):
    return f"shard-{index}"


class Shard:
    """One Ray actor (asyncio). Every call's work runs in one apply thread, in the order the calls
    started (the order a caller made them): the event loop meanwhile takes in the next messages,
    which Ray has already fetched and deserialized, so receiving overlaps applying. Sync-mode pulls
    wait on rounds in the event loop, not in the apply thread."""

    def __init__(self, index, slices, make, mode, num_workers, directory, every, timeout):
        self.index, self.mode, self.num_workers = index, mode, num_workers
        self.directory, self.every, self.timeout = directory, every, timeout
        self.incarnation = uuid.uuid4().hex
        self.restarted = _reconstructed()
        optim = None
        if directory is not None:
            meta, tree = read_checkpoint(directory, shard_stem(index))
            if meta.get("index") != index:
                raise CheckpointError(f"{directory}/{shard_stem(index)}.json: holds shard {meta.get('index')}")
            self.params = {name: np.array(a) for name, a in tree["params"].items()}   # own, writeable
            optim, self.steps = tree["optim"], meta["steps"]
            self.seq = dict(tree["seq"])
            self.rounds = dict(tree["rounds"])
            self.queues = {name: {int(w): collections.deque(items) for w, items in q.items()}
                           for name, q in tree["queues"].items()}
            self.restored_from = self.steps
        else:  # own, writeable copies of the initial rows (object-store arrays are read-only)
            self.params = {name: np.array(a) for name, a in slices.items()}
            self.steps, self.seq, self.restored_from = 0, {}, None
            self.rounds = dict.fromkeys(self.params, 0)
            self.queues = {name: {w: collections.deque() for w in range(num_workers)} for name in self.params}
        self.opts = {name: make(p) for name, p in self.params.items()}
        for name, state in (optim or {}).items():
            self.opts[name].load_state_dict(state)
        self.saved_steps = self.steps
        self.apply_seconds = self.save_seconds = 0.0   # where the time goes (info())
        self.durable = dict(self.seq)          # what the newest checkpoint holds, per client
        self.round_done = asyncio.Event()      # set (and replaced) whenever a sync round is applied
        self.loop = None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastlr-shard-apply")

    async def _run(self, fn, *args):
        """fn(*args) in the apply thread, after every call that started before this one."""
        self.loop = asyncio.get_running_loop()
        return await self.loop.run_in_executor(self.pool, fn, *args)

    def _signal(self):   # in the event loop
        self.round_done.set()
        self.round_done = asyncio.Event()

    # ------------------------------------------------------------ updates
    async def push(self, client, seq, worker, items):
        """Take message `seq` of `client`: ("ok" | "dup" | "gap", last seq held, durable seq, incarnation)."""
        return await self._run(self._push, client, seq, worker, items)

    def _push(self, client, seq, worker, items):
        last = self.seq.get(client, 0)
        if seq != last + 1:
            return ("dup" if seq <= last else "gap", last, self.durable.get(client, 0), self.incarnation)
        self._check(items, worker)
        if self.every and self.directory and self.steps - self.saved_steps >= self.every:
            self._save()   # raises before anything of this message is applied
        if self.mode == "async":
            for name, ids, grad in items:
                self._step(name, ids, grad, 1.0)
        else:
            for name, ids, grad in items:
                self.queues[name][worker].append((ids, grad))
            self._rounds({name for name, _, _ in items})
        self.seq[client] = seq
        return ("ok", seq, self.durable.get(client, 0), self.incarnation)

    def _check(self, items, worker):
        """Every item well-formed (the client checks too; this guards the shard's own state)."""
        if self.mode == "sync" and not 0 <= worker < self.num_workers:
            raise ValueError(f"worker: expected an integer in [0, {self.num_workers}), got {worker!r}")
        depth = collections.Counter()
        for name, ids, grad in items:
            p = self.params.get(name)
            if p is None:
                raise KeyError(f"name: shard {self.index} holds no rows of {name!r}")
            want = p.shape if ids is None else (len(ids),) + p.shape[1:]
            if grad.shape != want or grad.dtype != p.dtype:
                raise ValueError(f"{name!r}: expected a gradient of shape {want} and dtype {p.dtype} on shard "
                                 f"{self.index}, got {grad.shape} {grad.dtype}")
            if ids is not None and ids.size and (ids.dtype != np.int64 or ids.min() < 0 or ids.max() >= len(p)):
                raise IndexError(f"{name!r}: row ids out of range for shard {self.index} ({len(p)} rows)")
            if self.mode == "sync":   # a round takes either whole-buffer gradients or rows, not both
                queue = self.queues[name]
                pos = len(queue[worker]) + depth[name]
                depth[name] += 1
                for w, q in queue.items():
                    if w != worker and len(q) > pos and (q[pos][0] is None) != (ids is None):
                        raise ValueError(f"{name!r}: push and push_rows mixed in one synchronous round "
                                         f"(workers {w} and {worker})")

    def _rounds(self, names):
        """Apply every complete sync round of these buffers."""
        applied = False
        for name in sorted(names):
            queue = self.queues[name]
            while all(queue[w] for w in range(self.num_workers)):
                heads = [queue[w].popleft() for w in range(self.num_workers)]
                if heads[0][0] is None:
                    total = np.array(heads[0][1])
                    for _, g in heads[1:]:
                        total += g
                    self._step(name, None, total, 1.0 / self.num_workers)
                else:
                    self._step(name, np.concatenate([h[0] for h in heads]),
                               np.concatenate([h[1] for h in heads]), 1.0 / self.num_workers)
                self.rounds[name] += 1
                applied = True
        if applied and self.loop is not None:
            self.loop.call_soon_threadsafe(self._signal)

    def _step(self, name, ids, grad, scale):
        """One optimizer step of buffer `name` with gradient grad * scale (rows `ids`, or all of it)."""
        from .sparse import step_rows
        t = time.perf_counter()
        opt = self.opts[name]
        if ids is None:
            if scale != 1.0:
                grad = np.multiply(grad, scale, out=grad) if grad.flags.writeable else grad * scale
            opt.step(grad)
        else:
            if scale != 1.0:
                grad = grad * grad.dtype.type(scale)
            step_rows(opt, None, ids, grad)
        self.steps += 1
        self.apply_seconds += time.perf_counter() - t

    # ------------------------------------------------------------ reads
    async def pull(self, client, seq, worker, name, ids):
        """("ok", rows) once message `seq` of `client` is held (sync: and its rounds applied); ("gap", last
        seq held) when the shard lacks messages of that client; ("timeout", round, workers missing) after
        `timeout` seconds of waiting for a sync round."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            round_done = self.round_done   # taken before the check: a round applied after it still wakes us
            reply = await self._run(self._pull, client, seq, worker, name, ids)
            if reply is not None:
                return reply
            try:
                await asyncio.wait_for(round_done.wait(), max(deadline - asyncio.get_running_loop().time(), 0.0))
            except TimeoutError:
                return await self._run(self._missing, name)

    def _pull(self, client, seq, worker, name, ids):
        last = self.seq.get(client, 0)
        if last < seq:
            return ("gap", last, self.durable.get(client, 0), self.incarnation)
        if self.mode == "sync" and self.queues[name][worker]:
            return None   # this worker's pushes wait for other workers' to complete their rounds
        rows = self.params[name].copy() if ids is None else self.params[name][ids]
        return ("ok", rows, self.durable.get(client, 0), self.incarnation)

    def _missing(self, name):
        queue = self.queues[name]
        return ("timeout", self.rounds[name], [w for w in range(self.num_workers) if not queue[w]], self.incarnation)

    async def last_seq(self, client, persist=False):
        """(last seq held, durable seq, incarnation) of `client`; persist: first save a checkpoint if the
        newest one lacks some of the client's messages."""
        return await self._run(self._last_seq, client, persist)

    def _last_seq(self, client, persist):
        if persist and self.directory and self.seq.get(client, 0) > self.durable.get(client, 0):
            self._save()
        return self.seq.get(client, 0), self.durable.get(client, 0), self.incarnation

    # ------------------------------------------------------------ durability
    def _save(self):
        t = time.perf_counter()
        tree = {"params": self.params, "optim": {name: opt.state_dict() for name, opt in self.opts.items()},
                "seq": self.seq, "rounds": self.rounds,
                "queues": {name: {w: list(q) for w, q in queue.items()} for name, queue in self.queues.items()}}
        meta = {"index": self.index, "steps": self.steps, "mode": self.mode, "num_workers": self.num_workers,
                "rounds": self.rounds, "queued": {name: {str(w): len(q) for w, q in queue.items()}
                                                  for name, queue in self.queues.items()}}
        try:
            write_checkpoint(self.directory, shard_stem(self.index), meta, tree)
        finally:
            self.save_seconds += time.perf_counter() - t
        self.saved_steps, self.durable = self.steps, dict(self.seq)

    async def checkpoint(self):
        if not self.directory:
            raise ValueError("checkpoint: the server was made without checkpoint_dir")
        return await self._run(self._checkpoint)

    def _checkpoint(self):
        self._save()
        return self.steps

    async def info(self):
        return await self._run(self._info)

    def _info(self):
        return {"index": self.index, "steps": self.steps, "pid": os.getpid(), "restored_from": self.restored_from,
                "restarted": self.restarted, "incarnation": self.incarnation, "rounds": dict(self.rounds),
                "saved_steps": self.saved_steps, "apply_seconds": self.apply_seconds,
                "save_seconds": self.save_seconds}


def _reconstructed():
    """Whether Ray restarted this actor (rather than creating it)."""
    import warnings

    import ray
    with warnings.catch_warnings():  # ray 2.60 warns from inside its own property
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed
