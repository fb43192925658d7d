"""Row-sparse updates of 2-D tables (embeddings): ``opt.step_rows(indices, grad_rows)``.

Semantics (lazy, as torch.optim.SparseAdam): duplicate ids are summed first (coalesced, in
their original order), then each touched row is updated once by the optimizer's own element
rule; rows not in the batch keep their params AND states (no momentum decay, no weight
decay). Every call is one step of the param: its step count (bias corrections, lr_decay,
schedules ``lr(step)``) advances by one, even for an empty batch, as in torch. SGD momentum
is lazy as TensorFlow's SparseApplyMomentum. Formulas are the dense optimizer's, so
``step_rows(arange(rows), g)`` equals ``step(g)`` bit for bit; torch's SparseAdam differs
from (dense) Adam only in where eps sits: eps / sqrt(1 - beta2^t) there.

Concurrency: ``step_rows`` may be called from many threads on one table. Each call takes
its step number under a per-table lock, then updates its rows stripe by stripe (row ranges)
with the GIL released; stripes are served in step order, so every row sees the calls in the
order of their step numbers and the result equals running the calls one after the other in
that order (the number each call returns). Do not run a dense ``step()`` of the same param
at the same time.
"""
import math
import threading
import weakref

import numpy as np

from . import specs as _specs
from ._arrays import Buffer, check_disjoint, copy_into, full_like, library, same_kind, to_numpy
from ._launch import SERIAL_BELOW, cast, kernel_module, no_conditioning, parallel_guard, sum_of_squares
from .engine import grad_conditioning
from .kernels import rules
from .optim import Optimizer
from .streams import current_stream

__all__ = ["step_rows", "RowWiseAdagrad"]

N_STRIPES = 16

_TABLES = weakref.WeakKeyDictionary()   # optimizer -> {param index: _Table}
_TABLES_LOCK = threading.Lock()


def step_rows(optimizer, param, indices, grad_rows):
    """Update rows ``indices`` of a 2-D param of `optimizer` with ``grad_rows`` (one row each).

    param: the param's index in the optimizer (param-group order), the array itself, or None
        when the optimizer has a single param.
    indices: 1-D integer row ids (NumPy, torch, CuPy, numba device array or a list), in
        [0, rows), duplicates allowed (summed).
    grad_rows: array of shape (len(indices), dim), same dtype and device as the param.

    Everything is validated before anything changes. Returns the param's step number after
    this update (its place in the order concurrent calls are applied), or the current step
    number if the step was skipped for a non-finite gradient (see the optimizer's grad_scale).
    """
    if optimizer.spec.group_updates or not optimizer.spec.lazy_rows or any(
            optimizer.spec.rule({**optimizer.spec.constants, **g}) in rules.TWO_PASS for g in optimizer.param_groups):
        raise NotImplementedError(f"step_rows: not available for {type(optimizer).__name__}: its per-group schedule "
                                  f"or per-tensor norms follow every step of the whole tensor or model, which a lazy "
                                  f"update of some rows of one table cannot")
    table = _table(optimizer, param)
    ids, shown = _host_ids(indices)
    gbuf = _grad_rows(grad_rows, ids.size, table)
    bad, order, starts, rows = kernel_module("sparse_cpu").plan(ids, table.n_rows)
    if bad >= 0:
        raise IndexError(f"indices[{bad}]: row id {shown[bad]} is out of range for a table of "
                         f"{table.n_rows} rows (expected 0 <= id < {table.n_rows})")
    return table.update(optimizer, gbuf, (order, starts, rows), None)


# ---------------------------------------------------------------- validation
def _param_index(optimizer, param):
    arrays = [p for group in optimizer.param_groups for p in group["params"]]
    if param is None:
        if len(arrays) != 1:
            raise ValueError(f"param: the optimizer has {len(arrays)} params; say which table "
                             f"(its index or the array itself)")
        return 0
    if isinstance(param, (int, np.integer)) and not isinstance(param, bool):
        if not 0 <= param < len(arrays):
            raise IndexError(f"param: expected an index in [0, {len(arrays)}), got {param}")
        return int(param)
    for i, p in enumerate(arrays):
        if p is param:
            return i
    raise ValueError("param: this array is not one of the optimizer's params")


def _table(optimizer, param):
    i = _param_index(optimizer, param)
    table = _cached_table(optimizer, i)
    table.refresh(optimizer)
    return table


def _cached_table(optimizer, i):
    tables = _TABLES.get(optimizer)
    if tables is None:
        with _TABLES_LOCK:
            tables = _TABLES.setdefault(optimizer, {})
    table = tables.get(i)
    if table is None:
        with _TABLES_LOCK:
            table = tables.get(i)
            if table is None:
                table = tables[i] = _Table(optimizer, i)
    return table


def _host_ids(indices):
    """(int64 contiguous ids, the ids as given, for messages)."""
    lib = library(indices)
    if lib == "numpy":
        shown = indices
    elif lib == "torch":
        shown = indices.detach().cpu().numpy()
    elif lib is not None:
        shown = to_numpy(indices)
    elif isinstance(indices, (list, tuple, range)):
        shown = np.asarray(indices) if len(indices) else np.empty(0, np.int64)
    else:
        raise TypeError(f"indices: expected an integer array or a list of ints, got {type(indices).__name__}")
    if shown.dtype.kind not in "iu":
        raise TypeError(f"indices: expected integer row ids, got dtype {shown.dtype}")
    if shown.ndim != 1:
        raise ValueError(f"indices: expected a 1-D array of row ids, got shape {tuple(shown.shape)}")
    return np.ascontiguousarray(shown, dtype=np.int64), shown


def _grad_rows(grad_rows, n, table):
    gbuf = Buffer("grad_rows", grad_rows, writeable=False)
    if gbuf.shape != (n, table.dim):
        raise ValueError(f"grad_rows: expected shape ({n}, {table.dim}) (one row of the table's width "
                         f"{table.dim} per index), got {gbuf.shape}")
    if gbuf.dtype != table.buf.dtype:
        raise TypeError(f"grad_rows: expected dtype {table.buf.dtype} (as the table), got {gbuf.dtype}")
    if gbuf.device != table.buf.device:
        raise ValueError(f"grad_rows: expected an array on {table.buf.device} (as the table), got {gbuf.device}")
    return gbuf


# ---------------------------------------------------------------- one table
class _Table:
    """A 2-D param of an optimizer: its lock and stripes. The param and its states are read from the
    optimizer and checked at every call (what the caller holds is the truth)."""

    def __init__(self, optimizer, i):
        self.index = i
        self.lock = threading.Lock()
        self.refresh(optimizer)

    def refresh(self, optimizer):
        """Read the param as it is now (it may have been rebound or reshaped since the last call)."""
        start = 0
        for k, group in enumerate(optimizer.param_groups):
            if self.index < start + len(group["params"]):
                self.group, obj = k, group["params"][self.index - start]
                break
            start += len(group["params"])
        buf = Buffer(f"params[{self.index}]", obj)
        if len(buf.shape) != 2:
            raise ValueError(f"params[{self.index}]: step_rows needs a 2-D table (rows x dim), got shape "
                             f"{buf.shape}")
        if getattr(self, "n_rows", None) != buf.shape[0]:
            self.stripes = _Stripes(buf.shape[0], N_STRIPES)
        self.obj, self.buf = obj, buf
        self.n_rows, self.dim = buf.shape

    def _hyperparameters(self, optimizer, step):
        """The group's hyperparameters for this step (schedule evaluated at the param's step), checked."""
        hp = {k: v for k, v in optimizer.param_groups[self.group].items() if k != "params"}
        if callable(hp["lr"]):
            hp["lr"] = hp["lr"](step)
            if callable(hp["lr"]):
                raise TypeError(f"param_groups[{self.group}]: lr schedule returned a callable")
        cls = type(optimizer)
        cls._check_group(hp, f"param_groups[{self.group}]")
        hp = optimizer._hyperparameters(hp)
        self.names = [(n, init, self.obj) for n, init in cls._state_names(hp)]
        row_names = getattr(cls, "_row_state_names", None)  # states with one value per row
        if row_names is not None:
            self.names += [(n, init, self.obj[:, 0]) for n, init in row_names(hp)]
        return hp

    def _checked_entry(self, optimizer):
        """(the param's state entry, its step count), checked before anything changes; (None, 0) while it
        has none (or an empty one)."""
        if not isinstance(optimizer.state, dict):
            raise TypeError(f"state: expected a dict (param index -> state entries), got "
                            f"{type(optimizer.state).__name__}")
        pstate = optimizer.state.get(self.index)
        if pstate is None or pstate == {}:
            return None, 0
        where = f"state[{self.index}]"
        if not isinstance(pstate, dict):
            raise TypeError(f"{where}: expected a dict of state entries (or no entry), got {type(pstate).__name__}")
        if "step" not in pstate:
            raise ValueError(f"{where}['step']: missing (expected the param's step count); clear the param's "
                             f"state to start again")
        count = _specs.step_count(f"{where}['step']", pstate["step"])
        for n in optimizer.spec.scalar_state:
            _specs.finite(f"{where}[{n!r}]", pstate.get(n))
        return pstate, count

    def _states(self, optimizer, pstate, gbuf):
        """The param's state dict and flat views of its arrays: those that exist checked (kind, shape, no
        memory shared with the table, the gradient rows or each other), then missing ones created."""
        existing = pstate if pstate is not None else {}
        views = {name: self._state_view(existing, name, like) for name, _, like in self.names if name in existing}
        check_disjoint([(f"params[{self.index}]", self.obj)] +
                       [(f"state[{self.index}][{n!r}]", existing[n]) for n in views], [("grad_rows", gbuf.obj)])
        if pstate is None:
            pstate = optimizer.state[self.index] = optimizer._engine.front.new_dict()
            pstate.update({"step": 0, **optimizer.spec.scalar_state})
        for name, init, like in self.names:
            if name not in pstate:
                pstate[name] = full_like(like, init)
                views[name] = self._state_view(pstate, name, like)
        return pstate, [views[name] for name, _, _ in self.names]

    def _state_view(self, pstate, name, like):
        where = f"state[{self.index}][{name!r}]"
        buf = Buffer(where, pstate[name])
        if buf.shape != tuple(like.shape):
            per = "one value per row of" if like is not self.obj else "as"
            raise ValueError(f"{where}: expected shape {tuple(like.shape)} ({per} params[{self.index}]), "
                             f"got {buf.shape}")
        if buf.dtype != self.buf.dtype or buf.device != self.buf.device:
            raise TypeError(f"{where}: expected dtype {self.buf.dtype} on {self.buf.device} (as params[{self.index}]), "
                            f"got {buf.dtype} on {buf.device}")
        return buf.kernel_view()

    def update(self, optimizer, gbuf, plan, c):
        """Apply the planned update; c: (scale, lo, hi) conditioning, or None to derive it here."""
        order, starts, rows = plan
        on_cuda = self.buf.on_cuda
        stream = current_stream(self.obj) if on_cuda else 0
        if c is None:
            c = grad_conditioning(optimizer, lambda: _coalesced_sumsq(gbuf, self.dim, order, starts, stream),
                                  lambda: [(_coalesced_rows(gbuf, self.dim, order, starts), gbuf.dtype)])
        with self.lock:
            pstate, count = self._checked_entry(optimizer)
            hp = self._hyperparameters(optimizer, count)
            if c is None:
                optimizer.last_step_skipped = True
                optimizer.skipped_steps = getattr(optimizer, "skipped_steps", 0) + 1
                return count
            pstate, states = self._states(optimizer, pstate, gbuf)
            trial = dict(pstate, step=count + 1)
            rule, h = type(optimizer)._plan(hp, trial)   # may update scalar states of `trial`
            if rule not in rules.ELEMENT_RULES and rule != "rowwise_adagrad":
                raise NotImplementedError(f"step_rows: {type(optimizer).__name__} with these options runs "
                                          f"rule {rule!r}, which has no row kernel")
            pstate.update(trial)
            optimizer.last_step_skipped = False
            step = pstate["step"]
            dtype = self.buf.dtype
            h = cast(h, dtype)
            c = no_conditioning(dtype) if c == (1.0, -math.inf, math.inf) else cast(c, dtype)
            p, g = self.buf.kernel_view(), gbuf.kernel_view()
            if on_cuda:  # kernels on one stream run in launch order: launching under the lock orders them
                kernel_module("sparse_cuda").launch(rule, p, g, self.dim, order, starts, rows, states, h, c, stream)
                return step
            work = self.stripes.take(rows)
        row_kernel = kernel_module("sparse_cpu").row_kernel

        def launch(lo, hi):
            parallel = (hi - lo) * self.dim >= SERIAL_BELOW
            with parallel_guard(not parallel):
                row_kernel(rule, parallel)(p, g, self.dim, order, starts, rows, lo, hi, *states, h, c)

        self.stripes.run(work, launch)
        return step


class _Stripes:
    """Row ranges updated in ticket order: a call takes a ticket for each stripe it touches
    (under the table lock, so tickets follow step numbers) and may update a stripe only when
    that stripe is serving its ticket. Calls on disjoint stripes, or on the same stripes one
    behind the other, run at the same time; per row, updates keep step order."""

    def __init__(self, n_rows, n):
        self.bounds = np.array([s * n_rows // n for s in range(n + 1)], np.int64)
        self.next = [0] * n
        self.serving = [0] * n
        self.cond = threading.Condition()

    def take(self, rows):
        """[(stripe, ticket, lo, hi)] for the stripes holding rows[lo:hi] (rows sorted ascending)."""
        cuts = np.searchsorted(rows, self.bounds).tolist()
        work = []
        for s, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
            if hi > lo:
                work.append((s, self.next[s], lo, hi))
                self.next[s] += 1
        return work

    def run(self, work, launch):
        """launch(lo, hi) over the work, each stripe in its turn; adjacent ready ranges in one launch
        (all of the work in one launch when no other call holds a stripe)."""
        failed = None
        while work:
            with self.cond:
                while not any(ready := [self.serving[s] == t for s, t, _, _ in work]):
                    self.cond.wait()
            try:
                if failed is None:
                    runs = []   # (lo, hi) of ready items, adjacent ranges merged
                    for (_, _, lo, hi), go in zip(work, ready):
                        if go and runs and runs[-1][1] == lo:
                            runs[-1] = (runs[-1][0], hi)
                        elif go:
                            runs.append((lo, hi))
                    for lo, hi in runs:
                        launch(lo, hi)
            except BaseException as e:  # keep serving the stripes in turn, so no other call waits forever
                failed = e
            with self.cond:
                for item, done in zip(work, ready):
                    if done:
                        self.serving[item[0]] += 1
                self.cond.notify_all()
            work = [item for item, done in zip(work, ready) if not done]
        if failed is not None:
            raise failed


def _sum_of_squares(gbuf):
    return sum_of_squares(gbuf.kernel_view(), gbuf.on_cuda, current_stream(gbuf.obj) if gbuf.on_cuda else 0)


def _coalesced_sumsq(gbuf, dim, order, starts, stream):
    """float64 sum of squares of the coalesced gradient (for max_grad_norm and the non-finite check)."""
    if gbuf.on_cuda:
        return kernel_module("sparse_cuda").coalesced_sumsq(gbuf.kernel_view(), dim, order, starts, stream)
    with parallel_guard():
        return float(kernel_module("sparse_cpu").coalesced_sumsq(gbuf.kernel_view(), dim, order, starts))


def _coalesced_rows(gbuf, dim, order, starts):
    """The coalesced gradient rows on the host, duplicates added in the dtype and order the row kernels use
    (for the rare non-finite checks the sum of squares cannot settle)."""
    g = to_numpy(gbuf.obj).reshape(-1, dim)[order]
    with np.errstate(over="ignore", invalid="ignore"):   # an Inf sum is the answer sought
        return np.add.reduceat(g, starts[:-1], axis=0) if g.shape[0] else g


# ---------------------------------------------------------------- row-wise Adagrad
_ROWWISE_ADAGRAD = _specs.Spec(
    "RowWiseAdagrad", dict(lr=1e-2, eps=1e-10, weight_decay=0, initial_accumulator_value=0, maximize=False),
    ("maximize",), rule=lambda g: "rowwise_adagrad", states=lambda g: (), scalars="rowwise_adagrad_scalars",
    reference="FBGEMM EXACT_ROWWISE_ADAGRAD", summary="Row-wise Adagrad: one accumulator per row of a 2-D table.",
    math="sum[r] <- sum[r] + mean(g[r]^2);  p[r] <- p[r] - lr g[r] / (sqrt(sum[r]) + eps)")


class RowWiseAdagrad(Optimizer, spec=_ROWWISE_ADAGRAD):
    """Row-wise Adagrad for 2-D tables (FBGEMM's EXACT_ROWWISE_ADAGRAD): one accumulator per row.

    For each updated row r with gradient g (coalesced; g <- -g under maximize, + weight_decay * p):
    ``sum[r] += mean(g^2)``, then ``p[r] -= lr * g / (sqrt(sum[r]) + eps)``. The state ``sum`` has
    shape (rows,): 1/dim of Adagrad's memory. ``step_rows(indices, grad_rows)`` updates some rows
    (lazily: other rows and their sums are unchanged); ``step(grads)`` updates every row.
    """

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0, initial_accumulator_value=0, *,
                 maximize=False, **conditioning):
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, maximize=maximize),
                         **conditioning)
        for i, p in enumerate(self._arrays()):
            if len(p.shape) != 2:
                raise ValueError(f"params[{i}]: RowWiseAdagrad needs 2-D tables (rows x dim), got shape "
                                 f"{tuple(p.shape)}")

    @classmethod
    def _row_state_names(cls, group):
        """States with one value per row: ((name, initial value), ...)."""
        return (("sum", group["initial_accumulator_value"]),)

    def _arrays(self):
        return [p for group in self.param_groups for p in group["params"]]

    def step(self, grads=None):
        """Update every row of every param that has a gradient (grads mirror the params, as Optimizer.step)."""
        with self._engine.lock:
            return self._step(grads)

    def _step(self, grads):
        arrays = self._arrays()
        flat = [g for gs in self._grads_per_group(grads) for g in gs]
        gbufs = []
        for i, (p, g) in enumerate(zip(arrays, flat)):
            if g is None:
                gbufs.append(None)
                continue
            gbuf = Buffer(f"grads[{i}]", g, writeable=False)
            same_kind(f"grads[{i}]", gbuf, Buffer(f"params[{i}]", p), f"params[{i}]")
            gbufs.append(gbuf)
        tables = [_table(self, i) for i, g in enumerate(gbufs) if g is not None]
        c = grad_conditioning(self, lambda: sum(_sum_of_squares(g) for g in gbufs if g is not None),
                              lambda: [(g.obj, g.dtype) for g in gbufs if g is not None])
        if c is None:
            self.last_step_skipped = True
            self.skipped_steps += 1
            return False
        for table, gbuf in zip(tables, [g for g in gbufs if g is not None]):
            every = np.arange(table.n_rows, dtype=np.int64)
            table.update(self, gbuf, (every, np.arange(table.n_rows + 1, dtype=np.int64), every), c)
        self._step_count += 1
        return True

    def load_state_dict(self, state_dict):
        """As Optimizer.load_state_dict, with each param's per-row ``sum`` checked and restored."""
        arrays = self._arrays()
        sums = {}
        try:
            index = {key: self._first_index(k) + pos for k, saved in enumerate(state_dict["param_groups"])
                     for pos, key in enumerate(saved["params"])}
            states = dict(state_dict["state"])
        except (KeyError, TypeError):
            index, states = {}, {}  # malformed: the base class says how
        for key, saved in states.items():
            if key not in index:
                continue
            i = index[key]
            if not isinstance(saved, dict) or "sum" not in saved:
                raise ValueError(f"state_dict: state[{key}] lacks ['sum'] (expected by RowWiseAdagrad)")
            ref = Buffer(f"params[{i}]", arrays[i])
            got = Buffer(f"state_dict: state[{key}]['sum']", saved["sum"], writeable=False)
            if got.shape != ref.shape[:1] or got.dtype != ref.dtype:
                raise ValueError(f"state_dict: state[{key}]['sum']: expected shape {ref.shape[:1]} and dtype "
                                 f"{ref.dtype} (one value per row of params[{i}]), got {got.shape} {got.dtype}")
            sums[i] = saved["sum"]
        super().load_state_dict(state_dict)
        for i, saved in sums.items():
            self.state[i]["sum"] = full_like(arrays[i][:, 0], 0.0)
            copy_into(self.state[i]["sum"], saved)
