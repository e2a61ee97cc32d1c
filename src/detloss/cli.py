"""``detloss``: train, compare runs, or inspect a criterion's report.

    detloss train [--config run.yaml] [key.sub=value ...]   # train on the built-in shapes by default
    detloss val RUN_DIR [eval.tta=d4] [eval.key=value ...]  # evaluate a finished run again (TTA, NMS, conf)
    detloss compare RUN_A RUN_B [RUN ...]                   # overlay runs: figure and table
    detloss polygons RUN_DIR [--conf 0.25] [--tol 1] [--plot 4]  # per-class polygon IoU, redundant vertices
    detloss doctor [--config run.yaml] [key.sub=value ...] [--steps 50] [--json out.json] [--run RUN]
    detloss report [--preset ultralytics] [--normalizer cls=mean] [--polygons 8] [--bg max]
    detloss                                                 # same as `detloss report`

``report`` prints a criterion's loss report on a synthetic batch with each term's gradient norm,
so one choice at a time can be tried and measured.

``doctor`` trains the configured run (default: the shapes polygon detector) for ``--steps`` steps with
gradient accounting on the head outputs every ``--every`` steps, or reads a finished run folder with
``--run``; prints each term's value, normalizer, weight, gradient norm, share and dead fraction, the
shares over the steps, and the findings with their fixes (GRAD_DOMINANCE, GRAD_STARVED, DEAD_GRADIENT,
NONFINITE, NORMALIZER_SKEW, DETECTION_COLLAPSE, PLATEAU). Exit code 1 when a finding is an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


from detloss.criteria.dense import CLS_LOSSES, POLYGON_LOSSES, BackgroundPenalty, DenseCriterion
from detloss.data.synthetic import random_feats, random_targets
from detloss.diagnose.gradients import term_grad_norms
from detloss.core.report import LossReport


def _pairs(items: Sequence[str], kind: type, what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what} expects TERM=VALUE, got {item!r}")
        out[key] = kind(value)
    return out


def report_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detloss", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command")
    report_parser(sub.add_parser("report", help="a criterion's report on a synthetic batch"))
    train = sub.add_parser("train", help="train the small detector (torchrun for several processes)")
    train.add_argument("--config", default=None, help="YAML file (default: the built-in shapes run)")
    train.add_argument("--resume", default=None, help="checkpoint to continue from (e.g. RUN/last.pt)")
    train.add_argument(
        "--allow-change", action="append", default=[], metavar="FIELD",
        help="with --resume: a config field (or section) this run changes on purpose, e.g. optim.lr",
    )  # fmt: skip
    train.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. optim.lr=0.01 loss.weights.cls=1")
    doctor = sub.add_parser("doctor", help="a few training steps with gradient accounting, and the findings")
    doctor.add_argument("--config", default=None, help="YAML file (default: the built-in shapes run)")
    doctor.add_argument("--steps", type=int, default=50, help="training steps to run (default 50)")
    doctor.add_argument("--every", type=int, default=None, help="account every N steps (default: steps // 5)")
    doctor.add_argument("--json", default=None, metavar="OUT.json", help="write the account and the findings")
    doctor.add_argument("--run", default=None, metavar="RUN_DIR", help="diagnose a finished run's logs instead")
    doctor.add_argument("--out", default=None, help="folder for the doctor's files (default: OUT_DIR/doctor)")
    doctor.add_argument("--no-eval", action="store_true", help="skip the detections-per-image evaluations")
    doctor.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. loss.weights.cls=0.1")
    data = sub.add_parser("data", help="write a benchmark dataset folder")
    data.add_argument("dataset", choices=["neon-trees"], help="neon-trees: NEON aerial tree crowns (deepforest wheel)")
    data.add_argument("out", metavar="DIR", help="folder to write (train/ and val/)")
    data.add_argument("--wheel", default=None, help="a downloaded deepforest-2.1.0 wheel (default: pip download it)")
    polygons = sub.add_parser("polygons", help="polygon quality of a finished run: per-class IoU, redundant vertices")
    polygons.add_argument("run", metavar="RUN_DIR", help="a dense run with a polygon branch (config.yaml, last.pt)")
    polygons.add_argument("--conf", type=float, default=None, help="score threshold (default: the run's eval.conf)")
    polygons.add_argument("--tol", type=float, default=1.0, help="px: coincident / collinear vertices (default 1)")
    polygons.add_argument("--worst", type=int, default=3, help="worst cases listed per class (default 3)")
    polygons.add_argument("--plot", type=int, default=4, metavar="N", help="plot the N worst per class (0: no plot)")
    val = sub.add_parser("val", help="evaluate a finished run's checkpoint again, e.g. eval.tta=d4")
    val.add_argument("run", metavar="RUN_DIR", help="a run folder (config.yaml, last.pt)")
    val.add_argument("overrides", nargs="*", metavar="eval.key=value", help="eval.*, device or threads")
    val.add_argument("--checkpoint", default="last.pt", help="file in RUN_DIR (default last.pt)")
    val.add_argument(
        "--errors",
        action="store_true",
        help="also count the false positives by kind (duplicate, wrong class, "
        "localization, background) and the missed objects, at eval.conf",
    )
    compare = sub.add_parser("compare", help="overlay two runs or more")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two runs or more")
    compare.add_argument("--out", default=None, help="folder for the figure (default: the first run)")
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
    norms = dict(zip(report, term_grad_norms(report, feats).tolist(), strict=True))
    return report, norms


def print_report(args: argparse.Namespace) -> int:
    report, norms = demo(args)
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


def train(args: argparse.Namespace) -> int:
    try:
        from detloss.train.config import load_config
        from detloss.train.build import build_trainer
    except ImportError as err:
        raise SystemExit(f"detloss train needs the train extra: pip install 'detloss[train]' ({err})") from err

    config = load_config(args.config, args.overrides)
    trainer = build_trainer(config, resume=args.resume, allow_changes=tuple(args.allow_change))
    metrics = trainer.fit()
    if trainer.dist.is_main:
        print(f"\nrun folder: {trainer.out}")
        print(metrics_table(metrics))
        if config.doctor is not None:
            from detloss.train.doctor import read_run

            print("\n" + read_run(trainer.out, config.doctor).summary())
    return 0


def doctor(args: argparse.Namespace) -> int:
    """``detloss doctor``: exit code 1 if a finding is an error, else 0."""
    from pathlib import Path

    from detloss.train.doctor import read_run, run_doctor
    from detloss.train.config import load_config

    if args.run is not None:
        run = Path(args.run)
        saved = run / "config.yaml"
        config = load_config(saved if saved.is_file() else args.config, args.overrides)
        result = read_run(run, config.doctor)
    else:
        config = load_config(args.config, args.overrides)
        out = args.out or str(Path(config.out_dir) / "doctor")
        result = run_doctor(config.model_copy(update={"out_dir": out}), args.steps, args.every, not args.no_eval)
    print(result.summary())
    print(f"\nfiles: {result.out}")
    if args.json:
        print(f"json: {result.write_json(args.json)}")
    return result.exit_code()


def metrics_table(metrics: dict[str, float]) -> str:
    rows = [f"{'metric':<20} {'value':>10}"]
    rows += [f"{k:<20} {v:>10.4f}" for k, v in metrics.items()]
    return "\n".join(rows)


def compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detloss.train.plots import compare_runs

    runs = [Path(r) for r in args.runs]
    figure, table = compare_runs(runs, Path(args.out) if args.out else runs[0])
    print(table)
    print(f"\nfigure: {figure}")
    return 0


def val(args: argparse.Namespace) -> int:
    from detloss.train.validate import validate_run

    print(metrics_table(validate_run(args.run, args.overrides, args.checkpoint, errors=args.errors)))
    return 0


def polygons(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detloss.train.polygon_report import plot_worst, run_polygon_report

    quality, preds, gts = run_polygon_report(args.run, conf=args.conf, tol=args.tol)
    print(quality.table(worst=args.worst))
    if args.plot:
        print(f"\nfigure: {plot_worst(quality, preds, gts, Path(args.run) / 'polygons.png', args.plot)}")
    return 0


def data(args: argparse.Namespace) -> int:
    from detloss.data.neon_trees import write_neon_trees

    for split, folder in write_neon_trees(args.out, args.wheel).items():
        print(f"{split}: {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["report", *argv]
    args = parser().parse_args(argv)
    commands = {
        "report": print_report, "train": train, "compare": compare, "doctor": doctor, "data": data,
        "polygons": polygons, "val": val,
    }  # fmt: skip
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"detloss: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
