"""Muon: fastlr.torch.Muon vs torch.optim.Muon per step, and where fastlr's time goes (docs/PERFORMANCE.md,
"New algorithms"). CPU, float32 params, one process, the two interleaved; median of `repeat` samples.

    python docs/probes/muon_time.py [repeat]
"""
import sys

import torch
from _timing import interleaved_steps, median_s

import fastlr.torch as ft
from fastlr import muon
from fastlr._launch import NO_CONDITIONING, run
from fastlr.kernels import rules

SHAPES = [(1024, 1024), (4096, 1024), (2048, 2048)]


def parts(param, repeat):
    """Median seconds of fastlr's parts of one step: momentum kernel, Newton-Schulz (bf16), apply kernel,
    Newton-Schulz in float32, on flat views as fastlr.muon.launch runs them."""
    p, g = param.detach(), param.grad
    buf, u, o = torch.zeros_like(p), torch.zeros_like(p), torch.empty_like(p)
    flat = [x.reshape(-1).numpy() for x in (p, g, buf, u, o)]
    h = rules.muon_scalars(1e-3, 0.1, 0.95, True)
    coeffs = (3.4445, -4.775, 2.0315)
    return (median_s(lambda: run("muon_momentum", flat[0], flat[1], flat[2:4], h, NO_CONDITIONING, False), repeat),
            median_s(lambda: muon.newton_schulz(u, coeffs, 5, 1e-7, "bfloat16"), repeat),
            median_s(lambda: run("decay_apply", flat[0], flat[4], [], rules.DecayApplyScalars(h.decay, h.lr),
                                 NO_CONDITIONING, False), repeat),
            median_s(lambda: muon.newton_schulz(u, coeffs, 5, 1e-7, "float32"), repeat))


def main(repeat=7):
    print(f"{'shape':>12} {'torch ms':>9} {'fastlr ms':>9} {'ratio':>6} | fastlr parts, ms: momentum  NS(bf16)  "
          f"apply   NS(fp32)")
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(shape, generator=gen).requires_grad_() for _ in range(2)]
        for p in ps:
            p.grad = torch.randn(shape, generator=gen)
        opts = [torch.optim.Muon([ps[0]]), ft.Muon([ps[1]])]
        for o in opts:
            o.step()
        t_torch, t_fast = interleaved_steps(opts, repeat)
        t_mom, t_ns, t_apply, t_ns32 = parts(ps[1], repeat)
        print(f"{str(shape):>12} {t_torch * 1e3:9.2f} {t_fast * 1e3:9.2f} {t_torch / t_fast:6.2f} | "
              f"{t_mom * 1e3:17.3f} {t_ns * 1e3:9.2f} {t_apply * 1e3:7.3f} {t_ns32 * 1e3:9.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
