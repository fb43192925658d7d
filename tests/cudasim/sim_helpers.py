"""Small helpers of the simulator tests."""
import numpy as np


def host(x):
    """A host NumPy copy of a numba device array (or of a host array or a number)."""
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)
