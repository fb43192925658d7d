"""Adafactor: fastlr.torch.Adafactor vs torch.optim.Adafactor (for-loop and foreach) per step, and where
fastlr's time goes (docs/PERFORMANCE.md, "New algorithms"). CPU, float32, one process, interleaved, medians.

    python docs/probes/adafactor_time.py [repeat]
"""
import sys

import torch
from _timing import interleaved_steps, median_s

import fastlr.torch as ft
from fastlr._launch import NO_CONDITIONING, run
from fastlr.kernels import rules

SHAPES = [(1024, 1024), (4096, 1024), (4096, 4096)]


def parts(p, g, repeat):
    """Median seconds of the parts of fastlr's step for one matrix: the factored statistics (torch ops), the
    update u = g / sqrt(V) and its norm (torch ops), the fused decay-and-apply kernel."""
    row, col = torch.zeros(p.shape[0], 1), torch.zeros(1, p.shape[1])

    def stats():
        row.lerp_(torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1)), 0.5)
        col.lerp_(torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2)), 0.5)
        return (row @ col).div_(row.mean(dim=-2, keepdim=True).clamp_(min=1e-30))

    var = stats()
    u = var.clamp(min=1e-60).rsqrt_().mul_(g)
    h = rules.DecayApplyScalars(0.999, 1e-3)
    flat_p, flat_u = p.detach().reshape(-1).numpy(), u.reshape(-1).numpy()
    return (median_s(stats, repeat),
            median_s(lambda: (var.clamp(min=1e-60).rsqrt_().mul_(g), u.norm(2).item(), p.norm(2).item()), repeat),
            median_s(lambda: run("decay_apply", flat_p, flat_u, [], h, NO_CONDITIONING, False), repeat))


def main(repeat=7):
    print(f"{'shape':>12} {'torch loop':>10} {'torch foreach':>13} {'fastlr':>8} {'ratio':>6} | fastlr parts, ms: "
          f"statistics  update+norms  apply kernel")
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(shape, generator=gen).requires_grad_() for _ in range(3)]
        g = torch.randn(shape, generator=gen)
        for p in ps:
            p.grad = g.clone()
        opts = [torch.optim.Adafactor([ps[0]], foreach=False), torch.optim.Adafactor([ps[1]], foreach=True),
                ft.Adafactor([ps[2]])]
        for o in opts:
            o.step()
        loop, each, fast = interleaved_steps(opts, repeat)
        st, up, ap = parts(ps[2], g, repeat)
        print(f"{str(shape):>12} {loop * 1e3:10.2f} {each * 1e3:13.2f} {fast * 1e3:8.2f} "
              f"{min(loop, each) / fast:6.2f} | {st * 1e3:17.2f} {up * 1e3:13.2f} {ap * 1e3:13.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
