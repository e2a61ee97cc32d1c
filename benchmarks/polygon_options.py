"""Ablation of the polygon options on the default run (``detloss train``: 256 px shapes, 8 epochs, seed 0).

    PYTHONPATH=src python benchmarks/polygon_options.py [--epochs 8] [--threads 1] [--only NAME ...]
        [--out runs/polygon_options]

Each row is one full training run (minutes each on CPU; not part of the test suite) with the default
config plus the row's overrides, the same seed and length; the table gives box and polygon AP (exact
convex IoU of the predicted vertices' hull), then polygon AP50 per class (one column per class name),
and the wall time of the run.
``--from-runs`` prints the table from finished run folders without training.

Rows (the options of the polygon loss, each on and off):

* ``mgiou``         MGIoU alone (``loss.polygon_corner=false``): the default before the corner term;
* ``mgiou+``        MGIoU plus its convexity penalty (``loss.polygon_loss=mgiou+``, weight 0.1);
* ``corner 7.5``    MGIoU plus the corner term (``loss.polygon_corner=true``, gain 7.5, beta 0.05): the default;
* ``corner+ 7.5``   the corner term with ``mgiou+``;
* ``corner 15``     the corner term at gain 15.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROWS: dict[str, list[str]] = {
    "mgiou": ["loss.polygon_corner=false"],
    "mgiou+": ["loss.polygon_corner=false", "loss.polygon_loss=mgiou+"],
    "corner 7.5": ["loss.polygon_corner=true", "loss.weights.corner=7.5"],
    "corner+ 7.5": ["loss.polygon_corner=true", "loss.weights.corner=7.5", "loss.polygon_loss=mgiou+"],
    "corner 15": ["loss.polygon_corner=true", "loss.weights.corner=15"],
}
COLUMNS = ("map", "map50", "map75", "poly_map", "poly_map50", "poly_map75")


def last_metrics(run: Path) -> dict[str, float]:
    from detloss.train.logs import read_csv

    rows = [r for r in read_csv(run / "epochs.csv") if "val/poly_map" in r]
    return {k[len("val/") :]: v for k, v in rows[-1].items() if k.startswith("val/")}


def table(results: dict[str, tuple[dict[str, float], float]]) -> str:
    classes = sorted({k.split("/", 1)[1] for m, _ in results.values() for k in m if k.startswith("poly_map50/")})
    head = f"{'option':<12}" + "".join(f"{c:>11}" for c in COLUMNS)
    head += "".join(f"{c:>{len(c) + 2}}" for c in classes) + f"{'wall s':>9}"
    rows = [head]
    for name, (m, seconds) in results.items():
        row = f"{name:<12}" + "".join(f"{m.get(c, float('nan')):>11.3f}" for c in COLUMNS)
        row += "".join(f"{m.get('poly_map50/' + c, float('nan')):>{len(c) + 2}.3f}" for c in classes)
        rows.append(row + f"{seconds:>9.0f}")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, choices=list(ROWS))
    p.add_argument("--out", default="runs/polygon_options")
    p.add_argument("--from-runs", action="store_true", help="only print the table of finished runs in --out")
    args = p.parse_args()

    from detloss.train.build import build_trainer
    from detloss.train.config import load_config

    results = {}
    for name in args.only or list(ROWS):
        run = Path(args.out) / name.replace(" ", "_").replace("+", "plus").replace(".", "_")
        if not args.from_runs:
            overrides = [f"out_dir={run}", f"epochs={args.epochs}", f"threads={args.threads}", "eval.plots=false"]
            start = time.perf_counter()
            build_trainer(load_config(None, overrides + ROWS[name])).fit()
            seconds = time.perf_counter() - start
            (run / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
        elif not (run / "wall_seconds.txt").is_file():  # written when a run has finished
            continue
        wall = run / "wall_seconds.txt"
        seconds = float(wall.read_text()) if wall.is_file() else float("nan")
        results[name] = (last_metrics(run), seconds)
        print(f"\n{name}: done in {seconds:.0f} s", flush=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
