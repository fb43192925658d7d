"""Shared cases of the low-precision state tests (tests/test_lowbit_*.py, tests/cudasim): per-step
scalars for every stateful element rule, and plausible float states to quantize."""
import numpy as np

from fastlr.kernels import quant, rules

H = {
    "sgd_momentum": rules.sgd_scalars(2, 0.01, 0.9, 0.1, 0.01, True, False),
    "adagrad": rules.adagrad_scalars(2, 0.01, 0.01, 0.01, 1e-10, False),
    "rmsprop": rules.rmsprop_scalars(0.01, 0.99, 1e-8, 0.01, 0.0, False),
    "rmsprop_centered": rules.rmsprop_scalars(0.01, 0.99, 1e-8, 0.0, 0.0, True),
    "rmsprop_momentum": rules.rmsprop_scalars(0.01, 0.99, 1e-8, 0.0, 0.9, False),
    "rmsprop_centered_momentum": rules.rmsprop_scalars(0.01, 0.99, 1e-8, 0.01, 0.9, False),
    "adadelta": rules.adadelta_scalars(1.0, 0.9, 1e-6, 0.01, False),
    "adam": rules.adam_scalars(3, 1e-3, (0.9, 0.999), 1e-8, 0.01, False, True),
    "adam_amsgrad": rules.adam_scalars(3, 1e-3, (0.9, 0.999), 1e-8, 0.0, True, False),
    "adamax": rules.adamax_scalars(3, 2e-3, (0.9, 0.999), 1e-8, 0.01, False),
    "nadam": rules.nadam_scalars(3, 0.7, 2e-3, (0.9, 0.999), 1e-8, 0.0, 0.004, False, False),
    "radam": rules.radam_scalars(10, 1e-3, (0.9, 0.999), 1e-8, 0.01, False, True),
    "lion": rules.lion_scalars(1e-4, (0.9, 0.99), 0.1, False),
    "adopt": rules.adopt_scalars(3, 1e-3, (0.9, 0.9999), 1e-6, 0.333, 0.01, True, False, 1e-3, False, False),
    "adan": rules.adan_scalars(3, 3, 1e-3, (0.98, 0.92, 0.99), 1e-8, 0.02, False, False),
    "rprop": rules.rprop_scalars((0.5, 1.2), (1e-6, 50), False),
}


def random_states(rule, size, rng):
    """Float states of plausible sign and size (second moments positive and above the first's square)."""
    return [rng.uniform(0.5, 1.0, size).astype(np.float32) if not signed
            else (0.1 * rng.standard_normal(size)).astype(np.float32) for signed in quant.state_signs(rule)]
