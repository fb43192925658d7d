"""Low-precision optimizer states (kernels/quant.py, kernels/lowbit_*.py, fastlr/lowbit.py).

Maps against the peers' (a committed table read from torchao 0.18 / bitsandbytes 0.50.2, and live
when torchao is importable); the nearest code against brute force and against torchao's rounding
rule re-implemented in NumPy; every fused kernel against dequantize -> float64 rule -> quantize;
quantization error against torchao's AdamW8bit (live only); the CUDA kernels under the simulator.
"""
import json
import os

import numpy as np
import pytest
from numba import njit

from fastlr import lowbit
from fastlr.kernels import lowbit_cpu, quant, rules
from fastlr.kernels._codegen import n_states
from lowbit_cases import H, random_states

HERE = os.path.dirname(__file__)
CODEBOOKS = sorted(quant.CODEBOOKS)


def peer_maps():
    with open(os.path.join(HERE, "lowbit_peer_maps.json")) as f:
        maps = json.load(f)["maps"]
    return {(k.split("_")[0], k.endswith("_signed")): np.array([int(h, 16) for h in v], np.uint32).view(np.float32)
            for k, v in maps.items()}


@pytest.mark.parametrize("key", CODEBOOKS)
def test_maps_equal_the_peers_value_for_value(key):
    assert quant.CODEBOOKS[key].qmap.view(np.uint32).tolist() == peer_maps()[key].view(np.uint32).tolist()


def test_maps_equal_live_torchao():
    pytest.importorskip("torchao")
    from torchao.optim import subclass_4bit, subclass_8bit
    live = {("8bit", True): subclass_8bit.get_qmap_signed(), ("8bit", False): subclass_8bit.get_qmap_unsigned(),
            ("4bit", True): subclass_4bit.get_qmap_signed(), ("4bit", False): subclass_4bit.get_qmap_unsigned()}
    for key, values in live.items():
        assert quant.CODEBOOKS[key].qmap.tolist() == np.array(values, np.float32).tolist(), key


# ---------------------------------------------------------------- nearest code
@njit
def encode_all(y, table, lo_bits, hi_bits, shift, half):
    out = np.empty(y.size, np.int64)
    for i in range(y.size):
        out[i] = lowbit_cpu.Q.encode(y[i], table, lo_bits, hi_bits, shift, half)
    return out


def torchao_rule(y, qmap):
    """torchao's quantize_8bit/4bit_with_qmap in NumPy float32: binary search, then round up when
    the residual reaches half the gap."""
    y, qmap = y.astype(np.float32), qmap.astype(np.float32)
    n = qmap.size
    codes = np.where(y >= qmap[n // 2], n // 2, 0)
    step = n // 4
    while step >= 1:
        codes += np.where(y >= qmap[codes + step], step, 0)
        step //= 2
    up = np.minimum(codes + 1, n - 1)
    lo, hi = qmap[codes], qmap[up]
    return np.where((y - lo).astype(np.float32) >= ((hi - lo) * np.float32(0.5)).astype(np.float32), up, codes)


def sweep(cb):
    """Float32 values over [-1.5, 1.5]: a strided walk over all bit patterns, every float within 3
    ulps of each map value and each boundary, and the special values (every float32 in [-1, 1]:
    tests/lowbit_exhaustive.py)."""
    walk = np.arange(0, 0x3FC00000, 9973, dtype=np.uint32).view(np.float32)
    near = np.concatenate([cb.qmap, cb.bounds]).view(np.int32)
    near = (near[:, None] + np.arange(-3, 4)).ravel().view(np.float32)
    special = np.array([0.0, 1.0, 2.0, np.inf, 1e-30, 1e-45, 5e-8], np.float32)
    y = np.concatenate([walk, near, special])
    y = y[~np.isnan(y)]  # NaN gets some valid code (the kernels never see one unless the states are NaN)
    return np.concatenate([y, -y])


@pytest.mark.parametrize("key", CODEBOOKS)
def test_nearest_code_exact(key):
    cb = quant.CODEBOOKS[key]
    y = sweep(cb)
    got = encode_all(y, cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half)
    np.testing.assert_array_equal(got, torchao_rule(y, cb.qmap))
    nan = encode_all(np.array([np.nan, -np.nan], np.float32), cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half)
    assert np.all((0 <= nan) & (nan < cb.qmap.size))
    # brute force: the nearest map value in exact arithmetic, ties toward the larger code
    finite = np.isfinite(y)
    y64, q64 = y[finite].astype(np.float64), cb.qmap.astype(np.float64)
    above = np.minimum(np.searchsorted(q64, y64), q64.size - 1)   # the two neighbours of y in the map
    below = np.maximum(above - 1, 0)
    brute = np.where(np.abs(y64 - q64[above]) <= np.abs(y64 - q64[below]), above, below)
    differ = y[finite][got[finite] != brute]
    # torchao's float32 residual test moves 2 boundaries of the signed 8-bit map by one ulp
    assert differ.size <= (4 if key == ("8bit", True) else 0), differ
    assert np.all(np.isin(differ, [np.float32(x) for x in (1.9e-6, -1.9e-6, 1.9000001e-6, -1.9000001e-6)]))


def test_nearest_code_equals_live_torchao():
    pytest.importorskip("torchao")
    import torch
    from torchao.optim.quant_utils import (
        quantize_4bit_with_qmap,
        quantize_8bit_with_qmap,
    )
    for key in CODEBOOKS:
        cb = quant.CODEBOOKS[key]
        y = sweep(cb)
        y = y[np.abs(y) <= 1]
        fn = quantize_8bit_with_qmap if key[0] == "8bit" else quantize_4bit_with_qmap
        ref = fn(torch.from_numpy(y), torch.from_numpy(cb.qmap)).numpy()
        np.testing.assert_array_equal(encode_all(y, cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half), ref)


@pytest.mark.skipif(not lowbit_cpu.VBMI, reason="the CPU has no AVX-512 VBMI")
def test_byte_permute_decode_equals_the_map():
    @njit
    def decode(codes, out, planes, absmax):
        return lowbit_cpu.decode_64(codes, out, planes, absmax)
    codes = np.concatenate([np.arange(256), np.random.default_rng(0).integers(0, 256, 100)])
    for key, cb in quant.CODEBOOKS.items():
        codes_k = (codes % cb.qmap.size).astype(np.uint8)
        out = np.full(codes.size, np.nan, np.float32)
        planes = getattr(lowbit_cpu, f"PLANES_{key[0]}_{'s' if key[1] else 'u'}")
        assert decode(codes_k, out, planes, np.float32(0.75)) == 320  # whole groups of 64 only
        np.testing.assert_array_equal(out[:320], cb.qmap[codes_k[:320]] * np.float32(0.75))
        assert np.isnan(out[320:]).all()


@pytest.mark.skipif(not lowbit_cpu.VBMI, reason="the CPU has no AVX-512 VBMI")
@pytest.mark.parametrize("key", CODEBOOKS)
def test_byte_permute_encode_equals_encode(key):
    """ENCODE_* (the kernels' encoders where the CPU has VBMI) gives quant.encode's code for every
    value of the sweep, NaN and inf included (every float32 bit pattern: tests/lowbit_exhaustive.py),
    and only for whole groups of 64."""
    tag = f"{key[0]}_{'s' if key[1] else 'u'}"
    intrinsic = getattr(lowbit_cpu, f"ENCODE_{tag}")

    @njit
    def encode(y, codes, tables, absmax):
        return intrinsic(y, codes, absmax, tables)
    cb = quant.CODEBOOKS[key]
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 3.0, -3.0, 0.0, -0.0], np.float32)
    y = np.concatenate([sweep(cb), special])
    tables = getattr(lowbit_cpu, f"ENCODER_{tag}")
    for absmax in (np.float32(1.0), np.float32(0.37)):
        codes = np.full(y.size + 5, 255 - cb.zero_code, np.uint8)
        n = encode(y, codes[:y.size], tables, absmax)
        assert n == y.size // 64 * 64
        ref = encode_all(y[:n] / absmax, cb.table, cb.lo_bits, cb.hi_bits, cb.shift, cb.half)
        np.testing.assert_array_equal(codes[:n], ref)
        assert (codes[n:] == 255 - cb.zero_code).all()


# ---------------------------------------------------------------- fused step vs reference
C = (0.5, -3.0, 3.0)  # conditioning: scale and clip, so the fused condition runs too


def test_every_rule_with_low_bit_kernels_has_a_case():
    assert sorted(H) == sorted(quant.STATEFUL_RULES)
    assert set(quant.STATEFUL_RULES) <= {r for r in rules.ELEMENT_RULES if n_states(r)}


def reference_codes(x, cb, block):
    """Block absmax and codes of float64 states x by the reference rule (torchao's, in NumPy)."""
    x32 = x.astype(np.float32)
    pad = -x32.size % block
    absmax = np.abs(np.pad(x32, (0, pad))).reshape(-1, block).max(axis=1)
    absmax = np.maximum(absmax, np.float32(quant.ABSMAX_FLOOR))
    y = x32 / np.repeat(absmax, block)[:x.size]
    return absmax, torchao_rule(y, cb.qmap), y


def unpack(codes, size, precision):
    if precision == "8bit":
        return codes.astype(np.int64)
    return np.stack([codes >> 4, codes & 15], axis=1).ravel()[:size].astype(np.int64)


# 8-bit: every rule; 4-bit (only the nibble handling differs): two and three states
FUSED_CASES = [(rule, "8bit") for rule in sorted(H)] + \
    [(rule, "4bit") for rule in ("adam", "rmsprop_centered_momentum")]


@pytest.mark.parametrize("rule,precision", FUSED_CASES)
def test_fused_step_equals_dequantize_rule_quantize(rule, precision):
    rng = np.random.default_rng(abs(hash(rule)) % 2**32)
    size = 3 * quant.BLOCK_SIZE[precision] + 77  # a short last block, odd for the nibbles
    p = rng.standard_normal(size).astype(np.float32)
    g = rng.standard_normal(size).astype(np.float32)
    states = [lowbit.quantize(x, precision, s) for x, s in zip(random_states(rule, size, rng), quant.state_signs(rule))]
    before = [lowbit.dequantize(s).astype(np.float64) for s in states]

    ref_rule = np.vectorize(getattr(rules, rule), excluded={"h"})
    c64 = np.clip(g.astype(np.float64) * C[0], C[1], C[2])
    out = ref_rule(p.astype(np.float64), c64, *before, h=H[rule])
    lowbit.step(rule, p, g, states, H[rule], C)

    np.testing.assert_allclose(p, out[0], rtol=2e-5, atol=1e-6)
    for s, ref in zip(states, out[1:]):
        absmax, codes, y = reference_codes(ref, s.codebook, quant.BLOCK_SIZE[precision])
        np.testing.assert_allclose(s.absmax, absmax, rtol=1e-5)
        got = unpack(s.codes, size, precision)
        # float32 kernel vs float64 reference: a code may differ only next to a boundary
        close = np.min(np.abs(y[:, None] - s.codebook.bounds[None, :]), axis=1) <= 1e-5 * np.abs(y) + 1e-12
        assert np.array_equal(got[~close], codes[~close])
        assert np.all(np.abs(got - codes) <= 1)
        if precision == "4bit" and size % 2:
            assert s.codes[-1] & 15 == 0  # the unused low nibble of an odd last block


def test_bf16_states_round_to_nearest_even_and_stochastically():
    """The bf16 kernel computes in float32 exactly as the float32 kernel does from the decoded
    states, then rounds: to nearest even, or to one of the two neighbours (stochastic)."""
    rng = np.random.default_rng(3)
    size = 1000
    p, g = rng.standard_normal((2, size)).astype(np.float32)
    states = [lowbit.to_bf16(x) for x in random_states("adam", size, rng)]
    fp32 = [lowbit.dequantize(s) for s in states]
    sr = [s.copy() for s in states]
    p32, p_sr = p.copy(), p.copy()
    lowbit.step("adam", p32, g, fp32, H["adam"])
    lowbit.step("adam", p, g, states, H["adam"])
    lowbit.step("adam", p_sr, g, sr, H["adam"], r=(7, 0))
    np.testing.assert_array_equal(p, p32)
    for nearest, stochastic, exact in zip(states, sr, fp32):
        np.testing.assert_array_equal(nearest, lowbit.to_bf16(exact))
        down = (exact.view(np.uint32) >> 16).astype(np.uint16)  # positive and negative: toward zero
        assert np.all((stochastic == down) | (stochastic == down + 1))
        # up with probability (dropped 16 bits) / 2**16: unbiased
        expected = np.mean((exact.view(np.uint32) & 0xFFFF) / 65536.0)
        assert abs(np.mean(stochastic == down + 1) - expected) < 0.05


def test_quantize_dequantize_round_trip_error_is_half_a_gap():
    rng = np.random.default_rng(1)
    for (precision, signed), cb in quant.CODEBOOKS.items():
        x = rng.standard_normal(1001).astype(np.float32) ** 3
        x = x if signed else np.abs(x)
        q = lowbit.quantize(x, precision, signed)
        back = lowbit.dequantize(q)
        block = quant.BLOCK_SIZE[precision]
        scale = np.repeat(q.absmax, block)[:x.size]
        # half the widest gap, or the distance from the ends: -1 (signed maps lack it), 0 (4-bit unsigned)
        bound = max(np.diff(cb.qmap).max() / 2, 1 + cb.qmap[0] if signed else cb.qmap[0])
        assert np.all(np.abs(back - x) <= bound * scale * (1 + 1e-5)), (precision, signed)
        assert lowbit.quantize(back, precision, signed).codes.tobytes() == q.codes.tobytes()  # codes are fixed points


@pytest.mark.parametrize("precision,limit", [("8bit", 2.07), ("4bit", 1.07), ("bf16", 4.0)])
def test_state_bytes_per_param(precision, limit):
    p = np.zeros(1 << 20, np.float32)
    assert lowbit.state_bytes(lowbit.new_states("adam", p, precision)) / p.size <= limit
    small = np.zeros(quant.MIN_SIZE - 1, np.float32)
    assert all(s.dtype == np.float32 for s in lowbit.new_states("adam", small, precision))


def test_bad_input_raises_before_writing():
    p = np.ones(5000, np.float32)
    g = np.ones(5000, np.float32)
    states = lowbit.new_states("adam", p, "8bit")
    snapshot = [(s.codes.copy(), s.absmax.copy()) for s in states]
    h = H["adam"]
    bad = [
        {"rule": "adamw"}, {"g": np.ones(4999, np.float32)}, {"p": p.astype(np.float16)},
        {"states": states[:1]}, {"states": states[::-1]}, {"h": h[:-1]}, {"c": (1.0,)},
        {"states": [states[0], np.zeros(5000, np.float32)]},
        {"states": [states[0]._replace(absmax=np.zeros(3, np.float32)), states[1]]},
    ]
    for change in bad:
        args = {"rule": "adam", "p": p, "g": g, "states": states, "h": h, "c": lowbit.NO_CONDITIONING} | change
        with pytest.raises((ValueError, TypeError)):
            lowbit.step(**args)
    assert np.all(p == 1)
    assert all(s.codes.tobytes() == c.tobytes() and s.absmax.tobytes() == a.tobytes()
               for s, (c, a) in zip(states, snapshot))
    with pytest.raises(ValueError, match="precision"):
        lowbit.new_states("adam", p, "int8")


# ---------------------------------------------------------------- against torchao's AdamW8bit
def torchao_states(m0, v0, g, precision, lr, betas, eps, wd):
    """(start, after step 2) of torchao's AdamW8bit/4bit states, dequantized: live where torchao is
    installed, else its algorithm in NumPy with the committed peer maps (dequantize,
    float32 update, block absmax, torchao's rounding rule)."""
    try:
        import torch
        from torchao.optim import AdamW4bit, AdamW8bit
    except ImportError:
        maps, block = peer_maps(), quant.BLOCK_SIZE[precision]

        def roundtrip(x, signed):
            absmax, _, y = reference_codes(x.astype(np.float64), quant.CODEBOOKS[precision, signed], block)
            return maps[precision, signed][torchao_rule(y, maps[precision, signed])] * np.repeat(absmax, block)[:x.size]
        start = [roundtrip(m0, True), roundtrip(v0, False)]
        b1, b2 = np.float32(betas[0]), np.float32(betas[1])
        new = [start[0] + (1 - b1) * (g - start[0]), b2 * start[1] + (1 - b2) * g * g]
        return [x.astype(np.float64) for x in start], [roundtrip(new[0], True), roundtrip(new[1], False)]
    from torchao.optim.adam import single_param_adam
    # torchao's step function, run eagerly (its optimizer compiles it: ~30 s here, the same arithmetic)
    w = torch.nn.Parameter(torch.zeros(m0.size))
    opt = (AdamW8bit if precision == "8bit" else AdamW4bit)([w], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    m, v = opt._new_buffer(w, True), opt._new_buffer(w, False)
    m.copy_(torch.from_numpy(m0))
    v.copy_(torch.from_numpy(v0))
    start = [x.dequantize().numpy().astype(np.float64) for x in (m, v)]
    with torch.no_grad():
        single_param_adam(w.detach(), torch.from_numpy(g), torch.tensor(2.0), m, v, None, torch.tensor(lr), *betas, wd,
                          eps, True, False)
    return start, [x.dequantize().numpy() for x in (m, v)]


@pytest.mark.parametrize("precision", ["8bit", "4bit"])
def test_quantization_error_no_worse_than_torchao(precision):
    """One AdamW step from the same float32 states and grads: the dequantized new states' error
    against a float64 step from the same (dequantized) start is no worse than torchao's."""
    rng = np.random.default_rng(0)
    n = 8 * 1024
    p0, g = rng.standard_normal((2, n)).astype(np.float32)
    m0, v0 = (0.1 * rng.standard_normal(n)).astype(np.float32), rng.uniform(0, 1e-2, n).astype(np.float32) ** 2
    lr, betas, eps, wd = 1e-3, (0.9, 0.999), 1e-8, 0.01
    start, theirs = torchao_states(m0, v0, g, precision, lr, betas, eps, wd)

    states = [lowbit.quantize(m0, precision, True), lowbit.quantize(v0, precision, False)]
    for a, s in zip(start, states):
        np.testing.assert_array_equal(a, lowbit.dequantize(s))  # the same quantized start
    lowbit.step("adam", p0.copy(), g, states, rules.adam_scalars(2, lr, betas, eps, wd, False, True))
    ref = [start[0] + (1 - betas[0]) * (g - start[0]), betas[1] * start[1] + (1 - betas[1]) * g.astype(np.float64) ** 2]
    for ours, theirs_, exact in zip(states, theirs, ref):
        err_ours = np.linalg.norm(lowbit.dequantize(ours) - exact)
        err_theirs = np.linalg.norm(theirs_ - exact)
        assert err_ours <= err_theirs * 1.001 + 1e-12, (err_ours, err_theirs)
