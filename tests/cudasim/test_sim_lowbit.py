"""The low-precision state kernels (kernels/lowbit_cuda.py) on numba device arrays against the CPU
kernels (kernels/lowbit_cpu.py): tiny arrays with a short last block, each state precision."""
import numpy as np
import pytest
from numba import cuda

from fastlr import lowbit, specs
from fastlr.kernels import quant
from fastlr.state_precision import unavailable
from lowbit_cases import H, random_states
from sim_helpers import host

C = (0.5, -3.0, 3.0)  # conditioning: scale and clip, so the fused condition runs too


def _on_device(states):
    return [s._replace(codes=cuda.to_device(s.codes), absmax=cuda.to_device(s.absmax))
            if isinstance(s, lowbit.Quantized) else cuda.to_device(s) for s in states]


# a few classic rules, and the rule of every algorithm of issue 14 with low-bit states at each precision it offers
CLASSIC = ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion")
NEW = [(spec.rule({**spec.defaults, **spec.group_defaults(spec.defaults)}), precision)
       for spec in specs.SPECS.values() for precision in ("8bit", "4bit", "bf16")
       if spec.name not in CLASSIC and not unavailable(spec, precision)]
RULES = [(rule, precision) for rule in ("lion", "adam", "adam_amsgrad") for precision in ("8bit", "4bit", "bf16")] + NEW


@pytest.mark.parametrize("rule,precision", RULES, ids=[f"{r}-{p}" for r, p in RULES])
def test_cuda_equals_cpu(rule, precision):
    size = 2 * quant.BLOCK_SIZE.get(precision, 128) + 45
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal((2, size)).astype(np.float32)
    floats = random_states(rule, size, rng)
    if precision == "bf16":
        cpu = [lowbit.to_bf16(x) for x in floats]
    else:
        cpu = [lowbit.quantize(x, precision, s) for x, s in zip(floats, quant.state_signs(rule))]
    gpu = _on_device(cpu)
    dp = cuda.to_device(p)
    lowbit.step(rule, dp, cuda.to_device(g), gpu, H[rule], C)
    lowbit.step(rule, p, g, cpu, H[rule], C)
    np.testing.assert_allclose(host(dp), p, rtol=0, atol=1e-6)
    for a, b in zip(gpu, cpu):
        if precision == "bf16":
            assert np.mean(host(a) != b) <= 0.01
            continue
        np.testing.assert_allclose(host(a.absmax), b.absmax, rtol=1e-6)
        assert np.mean(host(a.codes) != b.codes) <= 0.01  # a float32 tie may fall either way


@pytest.mark.parametrize("name,precision", [("Adam", "8bit"), ("Adam", "bf16"), ("Adan", "8bit")])
def test_optimizer_with_states_on_the_device(name, precision):
    """An optimizer on numba device arrays with low-precision states (made on the device) equals the same
    optimizer on host arrays; the dequantized state dict comes back to the host."""
    import fastlr
    rng = np.random.default_rng(2)
    p, g1, g2 = rng.standard_normal((3, 300)).astype(np.float32)
    dp = cuda.to_device(p)
    dev = getattr(fastlr, name)(dp, lr=1e-2, state_precision=precision, state_min_size=0)
    cpu = getattr(fastlr, name)(p, lr=1e-2, state_precision=precision, state_min_size=0)
    for g in (g1, g2):
        dev.step(cuda.to_device(g))
        cpu.step(g)
    np.testing.assert_allclose(host(dp), p, rtol=0, atol=1e-6)
    assert hasattr(dev.state[0]["exp_avg"], "copy_to_host")
    assert np.mean(host(dev.state[0]["exp_avg"]) != cpu.state[0]["exp_avg"]) <= 0.01
    np.testing.assert_allclose(dev.state_dict(dequantize=True)["state"][0]["exp_avg_sq"],
                               cpu.state_dict(dequantize=True)["state"][0]["exp_avg_sq"], rtol=1e-2, atol=1e-6)
