"""Shared by the timing probes: the median of `repeat` timed calls."""
import statistics
import time


def median_s(f, repeat):
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def interleaved_steps(opts, repeat):
    """Median seconds of one step() of each optimizer, the optimizers taking turns (noise hits them alike)."""
    times = [[] for _ in opts]
    for _ in range(repeat):
        for o, ts in zip(opts, times):
            t = time.perf_counter()
            o.step()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]
