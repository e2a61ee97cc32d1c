"""Teacher-student against supervised-only training on the shapes data: runs the configs and prints the table.

    PYTHONPATH=src python benchmarks/semi.py [--runs sup semi soft_geo] [--seeds 0 1] [--fractions 0.1 0.05]
                                             [--out runs/semi_bench] [--table-only] [--threads 1]
    PYTHONPATH=src python benchmarks/semi.py --background-ablation [--seeds 0] [--fractions 0.1]

Each (run, labelled fraction, seed) trains ``detloss train --config <config> seed=<s>
data.labelled_fraction=<f> threads=<t> out_dir=<out>/<run>_<f>_s<s>`` one after another (128 px, 40 epochs,
as in the configs), skipping runs whose ``epochs.csv`` already has the last epoch; ``--table-only`` just
reads them. Runs (:data:`RUNS`):

* ``sup``: ``configs/supervised_10pct.yaml`` (the labelled images only); ``sup100``: all images labelled;
  ``sup_obj``: ``sup`` with the objectness branch (``loss.objectness=true``);
* ``semi``: ``configs/semi.yaml``;
* ``soft_geo``: ``configs/semi_soft_geo.yaml`` (geometric strong views + dense soft class targets);
* ``geo``, ``soft``: one of the two; ``cls_geo``: geometric views with hard ``u_cls``;
* ``bg_none``, ``bg_strong``: ``soft_geo`` with the unlabelled background penalty off / at 100;
* ``objectness``: ``configs/semi_objectness.yaml`` (``soft_geo`` with an objectness branch, ``u_obj`` on the
  pseudo-boxes, and no penalty);
* ``poly_geo``: ``soft_geo`` with the teacher's polygons as targets (``u_poly``, ``u_corner``);
* ``sup_d4``, ``semi_d4``, ``soft_geo_d4``: ``sup``, ``semi``, ``soft_geo`` with the labelled images also
  flipped vertically and quarter-turned (``data.vflip``, ``data.rot90``); ``semi_d4_nobg``: ``semi_d4``
  without the unlabelled background penalty; ``semi_d4_w0``: its control, the loop with unlabelled gain 0;
  ``sup_aug``: ``sup_d4`` with HSV jitter; ``sup_d4_e120``: ``sup_d4`` for 120 epochs (a diagnostic).
* 120 epochs, burn-in 60, teacher TTA, hard ``u_cls``: ``tta_d4_e120`` (D4 views); ``scale_d4_e120``: the
  student's unlabelled view also scale-cropped (``semi.geometric.scale_jitter``); ``scale_e120``: the labelled
  images scale-cropped as well (``data.scale_jitter``), ``scale_w05_e120`` / ``scale_w025_e120`` with
  ``semi.unsup_weight`` 0.5 / 0.25 (``scale_w0_e120``: 0, the control), against ``sup_scale_e120`` (their
  supervised-only baseline) and ``sup100_scale_e120`` (all images labelled); ``zoom_e120`` / ``zoom_w05_e120``:
  ``scale_e120`` / ``scale_w05_e120`` with the teacher also looking at the weak view upscaled 1.5x
  (``semi.teacher_zoom``); ``zoom64_e120``: ``zoom_e120`` with 64 unlabelled images a step and no teacher D4;
  ``zoom_cls_e120``: ``u_cls`` alone; ``zoom_wu30_e120``: the gain and penalty ramped over 30 epochs.
* Diagnostics: ``oracle_e120`` / ``oracle64_e120``: ``scale_e120`` with the unlabelled images' hidden labels as
  the pseudo-labels (``semi.oracle``), 16 / 64 unlabelled images a step: the most any teacher could give;
  ``sup100_scale_steps``: all images labelled for the 10% runs' step count (12 epochs of 125 steps); at four
  times the steps, ``sup_scale_e480``, ``scale_w05_e480`` (burn-in 120) and ``sup100_scale_e48``.

``--background-ablation`` runs :data:`BACKGROUND_RUNS`: no penalty / default (``soft_geo``) / strong /
objectness branch, on the same seeds and fractions.

Columns: validation AP50 at the last epoch and the best evaluated epoch, validation precision / recall
(at ``eval.conf``) at the last epoch, the pseudo-labels' class-aware precision / recall and class-agnostic
precision over the last epoch and the fewest pseudo-boxes kept in an epoch after burn-in, and the run's wall
time. On a shared machine the wall times vary by tens of percent.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SOFT_GEO = "configs/semi_soft_geo.yaml"
#: the labelled images also flipped vertically and quarter-turned (with data.hflip: all of D4)
D4_LABELLED = ["data.vflip=0.5", "data.rot90=0.5"]
#: the student's geometric view of the unlabelled images: all of D4 as well
D4_UNLABELLED = ["semi.geometric={hflip: 0.5, vflip: 0.5, rot90: 0.5}"]
#: ... and scale-cropped to 0.5-1.5x (small shapes are the hard ones to classify)
SCALE_UNLABELLED = "semi.geometric={hflip: 0.5, vflip: 0.5, rot90: 0.5, scale_jitter: 0.5}"
SCALE_LABELLED = "data.scale_jitter=0.5"
CLS = "semi.unsup_terms=[box, cls, dfl]"
TTA = "semi.teacher_tta=true"
ZOOM = "semi.teacher_zoom=[1.5]"
ORACLE = "semi.oracle=true"
UNLABELLED_64 = "semi.unlabelled_batch_size=64"
E120 = ["epochs=120", "eval.every_epochs=10"]
#: all 2,000 images labelled: 12 epochs of 125 steps, about the 1,440 steps of E120 at 10% labelled
E12 = ["epochs=12", "eval.every_epochs=4"]
#: four times the steps: 480 epochs at 10% labelled (5,760 steps), 48 with all labelled (6,000)
E480, E48 = ["epochs=480", "eval.every_epochs=40"], ["epochs=48", "eval.every_epochs=8"]
#: teacher-student with scale-crops on both streams (120 epochs, burn-in 60, teacher TTA, hard u_cls)
SCALE_E120 = [*D4_LABELLED, SCALE_LABELLED, *E120, "semi.burn_in=60", SCALE_UNLABELLED, CLS, TTA]
SCALE_E480 = [*D4_LABELLED, SCALE_LABELLED, *E480, "semi.burn_in=120", SCALE_UNLABELLED, CLS, TTA]
#: D4 and HSV jitter (hue +-0.04 turn keeps warm and cool apart) on the labelled images
AUG_LABELLED = [*D4_LABELLED, "data.hsv=[0.04, 0.3, 0.3]"]
#: name -> (config, overrides)
RUNS: dict[str, tuple[str, list[str]]] = {
    "sup": ("configs/supervised_10pct.yaml", []),
    "sup100": ("configs/supervised_10pct.yaml", []),  # labelled_fraction forced to 1 (ALL_LABELLED)
    "sup_obj": ("configs/supervised_10pct.yaml", ["loss.objectness=true"]),
    "semi": ("configs/semi.yaml", []),
    "soft_geo": (SOFT_GEO, []),
    "geo": (SOFT_GEO, ["semi.soft=null"]),
    "soft": (SOFT_GEO, ["semi.geometric={}"]),
    "cls_geo": (SOFT_GEO, ["semi.soft=null", "semi.unsup_terms=[box, cls, dfl]"]),
    "bg_none": (SOFT_GEO, ["semi.background=null"]),
    "bg_strong": (SOFT_GEO, ["semi.background.max_value=100"]),
    "objectness": ("configs/semi_objectness.yaml", []),
    "sup_d4": ("configs/supervised_10pct.yaml", D4_LABELLED),
    "soft_geo_d4": (SOFT_GEO, D4_LABELLED),
    "semi_d4": ("configs/semi.yaml", D4_LABELLED),
    "semi_d4_nobg": ("configs/semi.yaml", [*D4_LABELLED, "semi.background=null"]),
    # the control: the loop with no unlabelled gradient (the teacher is evaluated, as in every semi run)
    "semi_d4_w0": ("configs/semi.yaml", [*D4_LABELLED, "semi.background=null", "semi.unsup_weight=0"]),
    "poly_geo": (SOFT_GEO, ["semi.unsup_terms=[box, dfl, poly, corner]"]),
    "sup_aug": ("configs/supervised_10pct.yaml", AUG_LABELLED),
    "sup_d4_e120": ("configs/supervised_10pct.yaml", [*D4_LABELLED, *E120]),
    # 120 epochs, burn-in 60: the teacher is copied once supervised training has learnt the shapes
    "cls_d4_e120": ("configs/semi.yaml", [*D4_LABELLED, *E120, "semi.burn_in=60", *D4_UNLABELLED, CLS]),
    "semi_d4_e120": ("configs/semi.yaml", [*D4_LABELLED, *E120, "semi.burn_in=60"]),
    "tta_d4_e120": ("configs/semi.yaml", [*D4_LABELLED, *E120, "semi.burn_in=60", *D4_UNLABELLED, CLS, TTA]),
    "soft_geo_aug": (SOFT_GEO, AUG_LABELLED),
    "scale_d4_e120": ("configs/semi.yaml", [*D4_LABELLED, *E120, "semi.burn_in=60", SCALE_UNLABELLED, CLS, TTA]),
    "sup_scale_e120": ("configs/supervised_10pct.yaml", [*D4_LABELLED, SCALE_LABELLED, *E120]),
    "sup100_scale_e120": ("configs/supervised_10pct.yaml", [*D4_LABELLED, SCALE_LABELLED, *E120]),
    # all images labelled, as many steps as the 10% runs
    "sup100_scale_steps": ("configs/supervised_10pct.yaml", [*D4_LABELLED, SCALE_LABELLED, *E12]),
    # four times the steps, where the labelled images and not the steps are the limit; burn-in 120 of 480
    "sup_scale_e480": ("configs/supervised_10pct.yaml", [*D4_LABELLED, SCALE_LABELLED, *E480]),
    "sup100_scale_e48": ("configs/supervised_10pct.yaml", [*D4_LABELLED, SCALE_LABELLED, *E48]),
    "scale_w05_e480": ("configs/semi.yaml", [*SCALE_E480, "semi.unsup_weight=0.5"]),
    "scale_e120": ("configs/semi.yaml", SCALE_E120),
    "scale_w05_e120": ("configs/semi.yaml", [*SCALE_E120, "semi.unsup_weight=0.5"]),
    "scale_w025_e120": ("configs/semi.yaml", [*SCALE_E120, "semi.unsup_weight=0.25"]),
    # the control: the same loop with no unlabelled gradient (its teacher is an EMA of supervised training)
    "scale_w0_e120": ("configs/semi.yaml", [*SCALE_E120, "semi.unsup_weight=0", "semi.background=null"]),
    # the teacher also looks at the weak view upscaled 1.5x (small shapes it misclassifies at 1x)
    "zoom_e120": ("configs/semi.yaml", [*SCALE_E120, ZOOM]),
    "zoom_w05_e120": ("configs/semi.yaml", [*SCALE_E120, ZOOM, "semi.unsup_weight=0.5"]),
    "zoom_cls_e120": ("configs/semi.yaml", [*SCALE_E120, ZOOM, "semi.unsup_terms=[cls]"]),
    # the unlabelled gain and the penalty ramped over 30 epochs instead of 5
    "zoom_wu30_e120": ("configs/semi.yaml", [*SCALE_E120, ZOOM, "semi.unsup_warmup=30", "semi.background.warmup=30"]),
    # diagnostics: the hidden labels as pseudo-labels (precision and recall 1), 16 / 64 unlabelled images a step
    "oracle_e120": ("configs/semi.yaml", [*SCALE_E120, ORACLE]),
    "oracle64_e120": ("configs/semi.yaml", [*SCALE_E120, ORACLE, UNLABELLED_64]),
    # 64 unlabelled images a step, the teacher at 1x and 1.5x without D4 (26 teacher forwards per image are slow)
    "zoom64_e120": ("configs/semi.yaml", [*SCALE_E120, ZOOM, "semi.teacher_tta=false", UNLABELLED_64]),
}
#: runs on all the training images whatever --fractions says (one row per seed)
ALL_LABELLED = {"sup100", "sup100_scale_e120", "sup100_scale_steps", "sup100_scale_e48"}
#: The background ablation: the unlabelled penalty off / default / strong, and the objectness branch instead.
BACKGROUND_RUNS = ["bg_none", "soft_geo", "bg_strong", "objectness"]


def run_dir(out: Path, name: str, fraction: float, seed: int) -> Path:
    return out / f"{name}_{1.0 if name in ALL_LABELLED else fraction:g}_s{seed}"


def train(name: str, fraction: float, seed: int, out: Path, threads: int) -> float | None:
    """Train one run unless its last epoch is already logged; its wall time in seconds (None: skipped)."""
    config, overrides = RUNS[name]
    path = run_dir(out, name, fraction, seed)
    if finished(path):
        return None
    frac = 1.0 if name in ALL_LABELLED else fraction
    cmd = [sys.executable, "-m", "detloss.cli", "train", "--config", str(ROOT / config), *overrides,
           f"seed={seed}", f"data.labelled_fraction={frac}", f"threads={threads}", f"out_dir={path}"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "train.log", "w") as log:  # the progress bars and the final metrics
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    (path / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def read_epochs(path: Path) -> list[dict[str, float]]:
    sys.path.insert(0, str(ROOT / "src"))
    from detloss.train.logs import read_csv

    return read_csv(path / "epochs.csv") if (path / "epochs.csv").exists() else []


def finished(path: Path) -> bool:
    rows = read_epochs(path)
    if not rows or not (path / "config.yaml").exists():
        return False
    import yaml

    return int(rows[-1]["epoch"]) >= int(yaml.safe_load((path / "config.yaml").read_text())["epochs"])


def summary(path: Path) -> dict[str, float]:
    """The table's columns for one run (NaN where absent)."""
    rows = read_epochs(path)
    nan = math.nan
    evaluated = [r for r in rows if math.isfinite(r.get("val/map50", nan))]
    if not evaluated:
        return {}
    last = evaluated[-1]
    semi = [r for r in rows if math.isfinite(r.get("pseudo/kept", nan))]  # epochs with a teacher
    wall = path / "wall_seconds.txt"
    return {
        "ap50": last["val/map50"],
        "best": max(r["val/map50"] for r in evaluated),
        "precision": last.get("val/precision", nan),
        "recall": last.get("val/recall", nan),
        "student": last.get("val/student/map50", nan),
        "pseudo_p": rows[-1].get("pseudo/precision", nan),
        "pseudo_r": rows[-1].get("pseudo/recall", nan),
        "pseudo_box_p": rows[-1].get("pseudo/box_precision", nan),
        "min_kept": min((r["pseudo/kept"] for r in semi), default=nan),
        "wall": float(wall.read_text()) if wall.exists() else nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["sup", "semi", "soft_geo"], choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.05])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "semi_bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--background-ablation", action="store_true", help=f"--runs {' '.join(BACKGROUND_RUNS)}")
    args = parser.parse_args()
    if args.background_ablation:
        args.runs = BACKGROUND_RUNS
    if not args.table_only:
        for fraction in args.fractions:
            for name in args.runs:
                for seed in args.seeds:
                    train(name, fraction, seed, args.out, args.threads)
    header = (f"{'run':<17} {'labelled':>8} {'seed':>4} {'AP50':>6} {'best':>6} {'P':>6} {'R':>6} {'student':>7} "
              f"{'pseudo P':>8} {'pseudo R':>8} {'box P':>6} {'min kept':>8} {'wall s':>7}")  # fmt: skip
    print(header)
    for i, fraction in enumerate(args.fractions):
        for name in args.runs:
            if name in ALL_LABELLED and i > 0:  # one row whatever the fraction
                continue
            for seed in args.seeds:
                s = summary(run_dir(args.out, name, fraction, seed))
                if not s:
                    continue
                frac = 1.0 if name in ALL_LABELLED else fraction
                print(f"{name:<17} {frac:>8g} {seed:>4} {s['ap50']:>6.3f} {s['best']:>6.3f} {s['precision']:>6.3f} "
                      f"{s['recall']:>6.3f} {s['student']:>7.3f} {s['pseudo_p']:>8.2f} {s['pseudo_r']:>8.2f} "
                      f"{s['pseudo_box_p']:>6.2f} {s['min_kept']:>8.0f} {s['wall']:>7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
