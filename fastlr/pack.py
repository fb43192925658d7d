"""Pack many arrays into one contiguous buffer, as apex and DeepSpeed do.

    flat, (w1, b1, w2, b2) = fastlr.pack([w1, b1, w2, b2])   # copies, then views into flat
    opt = fastlr.Adam(flat)
    grads_flat, grad_views = fastlr.pack([gw1, gb1, gw2, gb2])  # or write grads into views of one buffer

Not needed for speed: an optimizer over separate arrays updates all of them in one kernel call
over a table of their addresses (docs/PERFORMANCE.md: 200 arrays run at the flat buffer's speed).
Packing remains useful to hand other code one buffer (e.g. one all-reduce of the gradients).
"""
import numpy as np

from ._arrays import Buffer

__all__ = ["pack", "pack_like"]


def pack(arrays):
    """(flat, views): a new contiguous 1-D buffer holding copies of `arrays`, and one view of
    it per array, shaped as that array. All arrays must be NumPy arrays of one float dtype."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("arrays: expected at least one array")
    flat, views = pack_like(arrays)
    for view, a in zip(views, arrays):
        view[...] = a
    return flat, views


def pack_like(arrays):
    """(flat, views) as ``pack`` but zero-filled: e.g. a gradient buffer matching packed params."""
    bufs = [Buffer(f"arrays[{i}]", a, writeable=False) for i, a in enumerate(arrays)]
    for i, b in enumerate(bufs):
        if b.lib != "numpy":
            raise TypeError(f"arrays[{i}]: pack works on NumPy arrays, got {b.lib}")
        if b.dtype != bufs[0].dtype:
            raise TypeError(f"arrays[{i}]: expected dtype {bufs[0].dtype} (as arrays[0]), got {b.dtype}")
    sizes = [int(np.prod(b.shape)) for b in bufs]
    flat = np.zeros(sum(sizes), dtype=bufs[0].dtype)
    offsets = np.cumsum([0] + sizes)
    views = [flat[o:o + n].reshape(b.shape) for o, n, b in zip(offsets, sizes, bufs)]
    return flat, views
