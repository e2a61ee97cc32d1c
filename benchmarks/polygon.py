"""Forward+backward time of ``mgiou_loss`` versus exact ``1 - polygon_giou`` on random convex polygons.

    python benchmarks/polygon.py [--n 100000] [--k 8] [--repeats 3] [--device cpu]

Prints a plain table (method, N, K, fwd+bwd ms, ratio to MGIoU), best of ``--repeats`` interleaved
runs after a warm-up. Target: MGIoU at least 10x faster.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from detloss.functional.polygon import mgiou_loss
from detloss.ops.polygon import polygon_giou


def random_convex(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, k, 2)`` convex polygons: sorted random angles on a randomly scaled, rotated, shifted ellipse."""
    angle = torch.rand(n, k, generator=generator).mul(2 * math.pi).sort(1).values
    pts = torch.stack([angle.cos(), angle.sin()], dim=-1) * (0.3 + 1.7 * torch.rand(n, 1, 2, generator=generator))
    theta = torch.rand(n, generator=generator) * math.pi
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()], -1), torch.stack([theta.sin(), theta.cos()], -1)], -2)
    return pts @ rot.transpose(1, 2) + torch.rand(n, 1, 2, generator=generator) * 2 - 1


def fwd_bwd_ms(fn, pred: torch.Tensor, target: torch.Tensor) -> float:
    """Wall-clock ms of ``fn(pred, target).sum().backward()`` on a fresh leaf copy of ``pred``."""
    p = pred.detach().clone().requires_grad_(True)
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(p, target).sum().backward()
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of polygon pairs")
    parser.add_argument("--k", type=int, default=8, help="vertices per polygon")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    pred = random_convex(args.n, args.k, gen).to(args.device)
    target = random_convex(args.n, args.k, gen).to(args.device)
    methods = {
        "mgiou_loss": lambda p, t: mgiou_loss(p, t),
        "1 - polygon_giou": lambda p, t: 1.0 - polygon_giou(p, t),
    }
    for fn in methods.values():  # warm-up
        fwd_bwd_ms(fn, pred, target)
    times = dict.fromkeys(methods, math.inf)
    for _ in range(args.repeats):  # interleaved, best of repeats: both see the same machine load
        for name, fn in methods.items():
            times[name] = min(times[name], fwd_bwd_ms(fn, pred, target))
    base = times["mgiou_loss"]
    print(f"device: {args.device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'method':<18} {'N':>8} {'K':>3} {'fwd+bwd ms':>11} {'ratio':>7}")
    for name, ms in times.items():
        print(f"{name:<18} {args.n:>8} {args.k:>3} {ms:>11.1f} {ms / base:>6.1f}x")


if __name__ == "__main__":
    main()
