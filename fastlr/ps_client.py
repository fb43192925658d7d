"""The client side of the parameter server (fastlr.ps): what a worker pushes and pulls through.

A Client numbers its messages to each shard 1, 2, 3, ... (per client id: every unpickled copy is a
client of its own), stages pushes per shard and sends them as one message when a byte or latency
budget is reached, keeps each message until its shard says a checkpoint holds it (or, without
checkpoints, that it took it), and resends from the point a shard reports after a restart.
Protocol: fastlr.ps_shard; guarantees: docs/RELIABILITY.md.
"""
import collections
import threading
import time
import uuid
import weakref

import numpy as np

from .ps_checkpoint import CheckpointError

__all__ = ["Client"]

_INLINE_BYTES = 100_000   # messages below this go inline with the call (Ray's own threshold)
POLL = 0.002              # seconds between a client's checks for replies while it pushes


class _Link:
    """A client's stream of messages to one shard."""

    def __init__(self, batch_bytes):
        self.sent = 0                          # number of the last message sent
        self.items, self.nbytes, self.since = [], 0, None   # staged, not yet sent
        self.stage = np.empty(batch_bytes + 64, np.uint8) if batch_bytes else None
        self.used = 0                          # bytes of `stage` holding staged items
        self.inflight = collections.deque()    # (seq, reply ref, epoch)
        self.log = collections.OrderedDict()   # seq -> payload, until the shard has it for good
        self.epoch = 0                         # bumped at each resend: replies to older sends are stale
        self.refused = set()                   # messages the shard refused with an error: never resent
        self.dirty = False                     # the shard refused a message: resend before going on

    def take(self, parts):
        """Copies of `parts` in the stage, or None when they do not fit; each part is None (stays None)
        or (array, sel): array[sel] along the first axis, all of it for sel None (gathered straight
        into the stage: no intermediate copy)."""
        spans, end = [], self.used
        for part in parts:
            if part is not None:
                start = -(-end // 64) * 64
                end = start + _nbytes(part)
                spans.append((start, end))
        if self.stage is None or end > self.stage.size:
            return None
        self.used = end
        out, spans = [], iter(spans)
        for part in parts:
            if part is None:
                out.append(None)
                continue
            (a, sel), (start, stop) = part, next(spans)
            shape = a.shape if sel is None else (len(sel),) + a.shape[1:]
            view = self.stage[start:stop].view(a.dtype).reshape(shape)
            if sel is None:
                np.copyto(view, a)
            else:
                np.take(a, sel, axis=0, out=view)
            out.append(view)
        return out


def _nbytes(part):
    a, sel = part
    return a.nbytes if sel is None else len(sel) * (a.nbytes // max(len(a), 1))


class Client:
    """A worker's handle on the server: push, push_rows, pull, pull_rows, flush, wait. Picklable
    (send it to Ray tasks or actors; each copy is a client of its own). Arguments are checked
    here, before anything is staged or sent.

    Pushes are pipelined: staged per shard (copied, so the caller may reuse its arrays at once),
    sent as one message per shard when `batch_bytes` are staged, `batch_delay` seconds after
    the first, or at flush/wait/pull; at most `max_inflight` messages per shard in flight. An
    error of a pipelined push (a shard that could not write its checkpoint refuses the message,
    unapplied) is raised by this client's next call, which then does nothing; the refused
    messages are resent by the call after (``push(..., wait=True)`` raises it in the push itself).
    """

    def __init__(self, shards, layout, mode, num_workers, worker, *, batch_bytes=16 << 20, batch_delay=0.005,
                 timeout=120.0, replay=True, max_inflight=4):
        top = num_workers if mode == "sync" else None  # sync rounds count pushes per worker id
        if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0 or (top and worker >= top):
            raise ValueError(f"worker: expected an integer in [0, {top or 'inf'}), got {worker!r}")
        self.shards, self.layout, self.mode, self.worker = shards, layout, mode, worker
        self.batch_bytes, self.batch_delay, self.timeout = batch_bytes, batch_delay, timeout
        self.replay, self.max_inflight = replay, max_inflight
        self._start()

    def _start(self):
        self.id = uuid.uuid4().hex   # message numbers are per client id: every copy gets its own
        self._lock = threading.RLock()
        self._links = [_Link(self.batch_bytes) for _ in self.shards]
        self._flusher = None
        self._errors = []   # met by the background flusher, raised by the next call
        self._seconds = dict.fromkeys(("stage", "send", "wait"), 0.0)
        self._polled = 0.0   # when _reap last asked Ray which replies are in

    _CONFIG = ("shards", "layout", "mode", "worker", "batch_bytes", "batch_delay", "timeout", "replay",
               "max_inflight")

    def __getstate__(self):
        return {k: self.__dict__[k] for k in self._CONFIG}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._start()

    # ------------------------------------------------------------ public calls
    def push(self, name, grad, wait=False):
        """The gradient of a whole buffer (its shape and dtype). wait: send now and raise any error
        of this push here (else pipelined, see the class)."""
        lay = self._buffer(name)
        grad = np.asarray(grad)
        if grad.shape != lay.shape or grad.dtype != lay.dtype:
            raise ValueError(f"grad: expected shape {lay.shape} and dtype {lay.dtype} (as {name!r}), got "
                             f"{grad.shape} {grad.dtype}")
        b = lay.bounds
        self._push(name, [(k, None, (grad[b[k]:b[k + 1]], None)) for k in lay.shards()], wait)

    def push_rows(self, name, ids, rows, wait=False):
        """Gradient rows of a 2-D buffer: rows[j] for row ids[j] (duplicates are summed)."""
        lay = self._buffer(name)
        ids, parts = self._split(name, lay, ids)
        rows = np.asarray(rows)
        if rows.shape != (ids.size, lay.shape[1]) or rows.dtype != lay.dtype:
            raise ValueError(f"rows: expected shape ({ids.size}, {lay.shape[1]}) and dtype {lay.dtype} (one row "
                             f"of {name!r} per id), got {rows.shape} {rows.dtype}")
        per_shard = []
        for k, (sel, local) in parts.items():
            if local.size or self.mode == "sync":  # in sync mode every shard counts this worker's push
                per_shard.append((k, local, (rows, sel)))
        self._push(name, per_shard, wait)

    def pull(self, name):
        """The whole buffer (in sync mode: after the rounds of this worker's pushes are applied)."""
        lay = self._buffer(name)
        got = self._pull(name, {k: None for k in lay.shards()})
        return np.concatenate([got[k] for k in lay.shards()])

    def pull_rows(self, name, ids):
        """Rows ids of a 2-D buffer, as an array (len(ids), dim)."""
        lay = self._buffer(name)
        ids, parts = self._split(name, lay, ids)
        keys = {k: local for k, (_, local) in parts.items() if local.size}
        got = self._pull(name, keys)
        out = np.empty((ids.size,) + lay.shape[1:], lay.dtype)
        for k in keys:
            sel = parts[k][0]
            out[slice(None) if sel is None else sel] = got[k]
        return out

    def flush(self):
        """Send every staged push now (without waiting for replies)."""
        with self._lock:
            for k in range(len(self._links)):
                self._send(k)

    def wait(self, durable=False):
        """Send what is staged and block until every push is held by its shard (raises their errors).

        With checkpoints, a shard that restarted since it took a push may have lost it: wait() asks
        each shard that has pushes of this client not yet in a checkpoint, and resends what it lacks.
        durable: also make those shards save a checkpoint, so that no later restart can lose them
        (the client keeps nothing to resend after that; end a worker's run with it)."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            while True:
                self._settle()
                if not self.replay:
                    return
                for k, link in enumerate(self._links):
                    if link.log:   # messages no checkpoint holds yet: does the shard still hold them?
                        last, durable_seq, _ = self._get(self.shards[k].last_seq.remote(self.id, durable), k)
                        self._forget(link, durable_seq)
                        link.dirty = last < link.sent
                if not any(link.dirty or (durable and link.log) for link in self._links):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"wait: pushes still not held after {self.timeout} s of resending")

    def stats(self, reset=False):
        """Seconds this client spent staging (copying) pushes, sending messages (into the object store,
        the calls) and waiting for shards' replies; reset: start counting afresh."""
        with self._lock:
            out = dict(self._seconds)
            if reset:
                self._seconds = dict.fromkeys(out, 0.0)
            return out

    def close(self):
        """Stop the background flusher (staged pushes are dropped)."""
        with self._lock:
            self._links = [_Link(0) for _ in self.shards]

    # ------------------------------------------------------------ argument checks
    def _buffer(self, name):
        try:
            return self.layout[name]
        except (KeyError, TypeError):
            raise KeyError(f"name: no buffer {name!r} on this server (it has {sorted(self.layout)})") from None

    def _split(self, name, lay, ids):
        """(ids, {shard: (positions in ids or None for all, shard-local int64 ids)})."""
        if len(lay.shape) != 2:
            raise ValueError(f"name: {name!r} has shape {lay.shape}; row access needs a 2-D table")
        ids = np.asarray(ids)
        if ids.size == 0 and ids.ndim == 1:
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"ids: expected a 1-D array of integer row ids, got {ids.dtype} of shape {ids.shape}")
        n = lay.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = np.flatnonzero((ids < 0) | (ids >= n))[0]
            raise IndexError(f"ids[{bad}]: row id {ids[bad]} is out of range for {name!r} with {n} rows")
        owners = lay.shards()
        if len(owners) == 1:
            local = ids.astype(np.int64, copy=False)
            return ids, {owners[0]: (None, local - lay.bounds[owners[0]] if lay.bounds[owners[0]] else local)}
        shard = np.searchsorted(lay.bounds, ids, side="right") - 1
        parts = {}
        for k in owners:
            sel = np.flatnonzero(shard == k)
            parts[k] = (sel, ids[sel].astype(np.int64) - lay.bounds[k])
        return ids, parts

    # ------------------------------------------------------------ pushes
    def _push(self, name, per_shard, wait):
        with self._lock:
            self._reap(block=False)   # errors of earlier pipelined pushes surface here, before any change
            if wait or any(link.dirty for link in self._links):
                self._settle()        # resend what a shard lost; with wait, this push goes in a message alone
            for k, ids, grad in per_shard:
                self._stage(k, name, ids, grad)
            now = time.monotonic()
            for k, link in enumerate(self._links):
                if link.items and (wait or link.nbytes >= self.batch_bytes or now - link.since >= self.batch_delay):
                    self._send(k)
            if wait:
                self._settle()
            elif any(link.items for link in self._links):
                self._wake_flusher()

    def _stage(self, k, name, ids, grad):
        """Copy one item into shard k's stage (sending the stage first when it is full); an item larger
        than a stage is sent at once, as it is (sending copies it). grad: (array, selected rows or None)."""
        link = self._links[k]
        nbytes = _nbytes(grad) + (0 if ids is None else ids.nbytes)
        if link.items and link.nbytes + nbytes > self.batch_bytes:
            self._send(k)
        t = time.perf_counter()
        copies = link.take([None if ids is None else (ids, None), grad])
        if copies is None:
            a, sel = grad
            copies = [ids, a if sel is None else a[sel]]
        self._seconds["stage"] += time.perf_counter() - t
        if not link.items:
            link.since = time.monotonic()
        link.items.append((name, *copies))
        link.nbytes += nbytes
        if link.stage is None or copies[1].base is not link.stage:
            self._send(k)

    def _send(self, k):
        """Send shard k's staged items as its next message."""
        link = self._links[k]
        if not link.items:
            return
        import ray
        t = time.perf_counter()
        items, nbytes = link.items, link.nbytes
        link.items, link.nbytes, link.used, link.since = [], 0, 0, None
        if nbytes >= _INLINE_BYTES:
            payload = ray.put(items)   # one copy into the object store; the shard reads it in place
        else:  # small: travels inside the call; keep our own copy for resending (the stage is reused)
            payload = items = [(n, None if i is None else i.copy(), g.copy()) for n, i, g in items]
        link.sent += 1
        names = collections.Counter(name for name, _, _ in items)
        link.log[link.sent] = (payload, ", ".join(f"{n} push(es) of {name!r}" for name, n in names.items()))
        link.inflight.append((link.sent, self.shards[k].push.remote(self.id, link.sent, self.worker, payload),
                              link.epoch))
        self._seconds["send"] += time.perf_counter() - t
        while len(link.inflight) > self.max_inflight:
            self._reap_one(k)

    def _reap(self, block):
        """Take the replies that are in (block: all of them; else polled at most every POLL seconds, as
        asking Ray costs about 0.1 ms); raise the first error met."""
        import ray
        error = self._errors.pop(0) if self._errors else None
        ready = None
        if not block:
            now = time.monotonic()
            heads = [link.inflight[0][1] for link in self._links if link.inflight]
            if heads and now >= self._polled + POLL:
                self._polled = now
                ready = set(ray.wait(heads, num_returns=len(heads), timeout=0)[0])
            else:
                ready = set()
        for k, link in enumerate(self._links):
            while link.inflight and (block or link.inflight[0][1] in ready):
                ready = None if block else ready - {link.inflight[0][1]}
                try:
                    self._reap_one(k)
                except Exception as e:  # noqa: BLE001 (raised below, after the other replies)
                    error = error or e
        if error is not None:
            raise error

    def _reap_one(self, k):
        """The reply to shard k's oldest message in flight."""
        import ray
        link = self._links[k]
        seq, ref, epoch = link.inflight.popleft()
        try:
            status, last, durable, _ = self._get(ref, k)
        except ray.exceptions.RayTaskError as e:   # the shard refused the message: nothing of it is applied
            link.refused.add(seq)
            link.dirty = True
            what = f"{link.log[seq][1]} to shard {k} (message {seq} of this client) refused, not applied and dropped"
            cause = getattr(e, "cause", None)
            if isinstance(cause, CheckpointError):
                raise CheckpointError(f"{what}: the shard could not write its checkpoint ({cause})") from e
            try:
                error = type(cause)(f"{what}: {cause}")
            except Exception:  # noqa: BLE001 (an exception type that takes other arguments)
                error = RuntimeError(f"{what}: {cause!r}")
            raise error from e
        except Exception:
            link.dirty = True
            raise
        if status == "gap" and epoch == link.epoch:
            link.dirty = True   # the shard lost messages (restarted) or refused one: resend from `last`
        self._forget(link, durable if self.replay else last)

    def _forget(self, link, upto):
        """Drop logged messages the shard holds for good (checkpointed, or without checkpoints: taken)."""
        while link.log and next(iter(link.log)) <= upto:
            link.log.popitem(last=False)

    def _settle(self):
        """Send everything staged, take every reply, resend what shards lack, until all is taken."""
        deadline = time.monotonic() + self.timeout
        for k in range(len(self._links)):
            self._send(k)
        while True:
            self._reap(block=True)
            dirty = [k for k, link in enumerate(self._links) if link.dirty]
            if not dirty:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"shards {dirty}: pushes still not taken after {self.timeout} s of resending")
            for k in dirty:
                self._resend(k)

    def _resend(self, k):
        """Ask shard k which message of ours it holds last, and send the ones after it again."""
        link = self._links[k]
        link.dirty = False
        last, durable, _ = self._get(self.shards[k].last_seq.remote(self.id), k)
        self._forget(link, durable if self.replay else last)
        if last >= link.sent:
            return
        if link.refused and min(link.refused) <= last:
            raise RuntimeError(f"shard {k}: took message {min(link.refused)}, which it had refused")
        if not link.log or next(iter(link.log)) > last + 1:
            raise RuntimeError(f"shard {k}: holds this client's messages up to {last} of {link.sent}, and "
                               f"messages {last + 1}... are no longer kept here (was its checkpoint removed?)")
        if link.refused:   # drop them; the shard took none after them: number the rest from last + 1
            kept = [v for seq, v in link.log.items() if seq > last and seq not in link.refused]
            for seq in [seq for seq in link.log if seq > last]:
                del link.log[seq]
            link.log.update(zip(range(last + 1, last + 1 + len(kept)), kept))
            link.sent, link.refused = last + len(kept), set()
        link.epoch += 1
        for seq, (payload, _) in link.log.items():
            if seq > last:
                link.inflight.append((seq, self.shards[k].push.remote(self.id, seq, self.worker, payload),
                                      link.epoch))

    def _get(self, ref, k):
        import ray
        t = time.perf_counter()
        try:
            return ray.get(ref, timeout=self.timeout * 1.5 + 10)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"shard {k}: no reply within {self.timeout * 1.5 + 10:.0f} s") from None
        except ray.exceptions.ActorDiedError as e:
            raise RuntimeError(f"shard {k} died and is not restarted any more (give the server a checkpoint_dir "
                               f"and max_restarts): {e}") from e
        finally:
            self._seconds["wait"] += time.perf_counter() - t

    # ------------------------------------------------------------ pulls
    def _pull(self, name, keys):
        """{shard: rows} for shard -> local ids (None: the whole slice), once each shard holds every push of
        this client (and, in sync mode, has applied their rounds)."""
        with self._lock:
            self._settle()
            got, deadline = {}, time.monotonic() + self.timeout
            todo = dict(keys)
            while todo:
                refs = {k: self.shards[k].pull.remote(self.id, self._links[k].sent, self.worker, name, ids)
                        for k, ids in todo.items()}
                for k, ref in refs.items():
                    status, value, extra, _ = self._get(ref, k)
                    if status == "ok":
                        got[k] = value
                        self._forget(self._links[k], extra if self.replay else self._links[k].sent)
                        del todo[k]
                    elif status == "timeout":
                        raise TimeoutError(f"pull {name!r}: shard {k} waited {self.timeout} s for sync round "
                                           f"{value}; no push yet from workers {extra}")
                    else:   # gap: the shard restarted and lacks some of our messages
                        self._links[k].dirty = True
                if todo:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"pull {name!r}: shards {sorted(todo)} still lack this client's pushes")
                    self._settle()
            return got

    # ------------------------------------------------------------ the latency budget
    def _wake_flusher(self):
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=_flush_loop, args=(weakref.ref(self),), daemon=True,
                                             name="fastlr-ps-flusher")
            self._flusher.start()


def _flush_loop(ref):
    """Send a client's staged pushes once they are batch_delay old; ends when nothing is staged."""
    while True:
        client = ref()
        if client is None:
            return
        with client._lock:
            links = [link for link in client._links if link.items]
            if not links:
                client._flusher = None
                return
            oldest = min(link.since for link in links)
            due = oldest + client.batch_delay - time.monotonic()
            if due <= 0:
                try:
                    for k, link in enumerate(client._links):
                        if link.items and time.monotonic() - link.since >= client.batch_delay:
                            client._send(k)
                except Exception as e:  # noqa: BLE001 (raised by the client's next call)
                    client._errors.append(e)
                continue
        del client
        time.sleep(max(due, 1e-4))
