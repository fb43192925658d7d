"""Row-sparse updates: a 1M x 64 float32 table, batches of 4096 Zipf(1.1) ids.

fastlr ``step_rows`` (lazy Adam, Adagrad, row-wise Adagrad, SGD) next to torch.optim.SparseAdam,
torch's sparse Adagrad and an ``index_add_`` SGD baseline on the same batches; and the Ray
parameter server's push rate with 1, 2 and 4 workers. ``track_`` methods report ids/s.
"""
import time

import numpy as np

from fastlr.bench_sparse import run_server_bench, sparse_cases, zipf_batches

ROWS, DIM, BATCH, N_BATCHES = 1_000_000, 64, 4096, 20
CASES = [name for name, _ in sparse_cases(with_torch=True)]


class RowUpdates:
    params = [CASES]
    param_names = ["case"]
    timeout = 600
    number = 1
    repeat = 3

    def setup(self, case):
        self.ids, grads = zipf_batches(ROWS, DIM, BATCH, N_BATCHES, zipf=1.1, seed=0)
        table = (0.01 * np.random.default_rng(1).standard_normal((ROWS, DIM))).astype(np.float32)
        self.step = dict(sparse_cases(with_torch=True))[case](table, self.ids, grads)
        self.time_batches(case)  # compile, and touch every row once (first touches of fresh pages are slow)

    def time_batches(self, case):
        for i in range(N_BATCHES):
            self.step(i)

    def track_ids_per_s(self, case):
        t = time.perf_counter()
        self.time_batches(case)
        return N_BATCHES * BATCH / (time.perf_counter() - t)

    track_ids_per_s.unit = "ids/s"


class ServerPushes:
    """Asynchronous push_rows into 2 shards (lazy Adam) from Ray worker actors."""

    params = [[1, 2, 4]]
    param_names = ["workers"]
    timeout = 600
    number = 1
    repeat = 1

    def track_ids_per_s(self, workers):
        return run_server_bench(rows=ROWS, dim=DIM, batch=BATCH, workers=(workers,), shards=(2,), seconds=3.0,
                                repeat=1, inprocess=False, progress=False)[0]["ids_per_s"]

    track_ids_per_s.unit = "ids/s"
