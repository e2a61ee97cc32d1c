"""``detloss``: print a criterion's loss report on a synthetic batch, with each term's gradient norm.

Try one choice at a time and see what it does to the numbers, e.g.::

    detloss                                   # defaults
    detloss --preset ultralytics              # the numbers ultralytics 8.x gives
    detloss --normalizer cls=mean             # report 000's "fix"
    detloss --polygons 8 --bg                 # polygon branch and background penalty
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from detloss.criteria.dense import CLS_LOSSES, POLYGON_LOSSES, BackgroundPenalty, DenseCriterion
from detloss.data.synthetic import random_feats, random_targets
from detloss.report import LossReport


def _pairs(items: Sequence[str], kind: type, what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what} expects TERM=VALUE, got {item!r}")
        out[key] = kind(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detloss", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--classes", type=int, default=80, help="number of classes (default 80)")
    p.add_argument("--image-size", type=int, default=640, help="square image side in pixels (default 640)")
    p.add_argument("--objects", type=int, default=8, help="objects per image (default 8)")
    p.add_argument("--reg-max", type=int, default=16, help="DFL bins per side (default 16)")
    p.add_argument("--preset", choices=["ultralytics"], default=None)
    p.add_argument("--normalizer", action="append", default=[], metavar="TERM=NAME", help="e.g. cls=mean")
    p.add_argument("--weight", action="append", default=[], metavar="TERM=GAIN", help="e.g. cls=0.5")
    p.add_argument("--cls-loss", choices=sorted(CLS_LOSSES), default="bce")
    p.add_argument("--polygons", type=int, default=0, metavar="K", help="add a K-vertex polygon branch")
    p.add_argument("--polygon-loss", choices=POLYGON_LOSSES, default="mgiou")
    p.add_argument("--bg", choices=["max", "focal"], default=None, help="add a background penalty term")
    p.add_argument("--seed", type=int, default=0)
    return p


def demo(args: argparse.Namespace) -> tuple[LossReport, dict[str, float]]:
    """The criterion's report on a synthetic batch and each term's gradient norm w.r.t. the head outputs."""
    strides = (8, 16, 32)
    crit = DenseCriterion(
        args.classes,
        strides,
        args.reg_max,
        preset=args.preset,
        weights=_pairs(args.weight, float, "weight"),
        normalizers=_pairs(args.normalizer, str, "normalizer"),
        cls_loss=args.cls_loss,
        num_vertices=args.polygons,
        polygon_loss=args.polygon_loss,
        background=BackgroundPenalty(kind=args.bg) if args.bg else None,
    )
    feats = random_feats(args.batch, crit.num_channels, args.image_size, strides, seed=args.seed)
    targets = random_targets(args.batch, args.classes, args.objects, num_vertices=args.polygons, seed=args.seed)
    report = crit(feats, targets)
    norms = {}
    for name, term in report.items():
        grads = torch.autograd.grad(term.value, feats, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))))
    return report, norms


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report, norms = demo(args)
    except ValueError as err:
        print(f"detloss: {err}", file=sys.stderr)
        return 2
    print(
        f"DenseCriterion on a synthetic batch: {args.batch} images of {args.image_size} px, "
        f"{args.classes} classes, {args.objects} objects per image" + (f", preset={args.preset}" if args.preset else "")
    )
    print(report.table())
    total = sum(norms.values()) or 1.0
    print("\ngradient norm w.r.t. the head outputs, per term:")
    for name, n in norms.items():
        print(f"  {name:<6} {n:12.5g}  ({100 * n / total:5.1f}% of the sum)")
    if report.scale != 1:
        print(f"\ntotal = {report.scale} x sum of terms (the preset's batch-size factor)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
