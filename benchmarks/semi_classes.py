"""Which class cue a trained shapes model gets wrong: its detections on the unlabelled images, matched to
the hidden labels at IoU >= 0.5 whatever their class, as a confusion of colour (warm / cool) and shape
(triangle / quadrilateral / 5-8 sides), on the weak view and on the student's photometric strong view,
and class accuracy per score band.

    PYTHONPATH=src python benchmarks/semi_classes.py RUN_DIR [--weights ema|model|teacher] [--images 400]
                                                     [--fraction 0.1] [--tta]

``RUN_DIR`` is a finished ``detloss train`` run on the shapes data (its ``config.yaml`` and ``last.pt``);
``--weights`` picks the checkpoint's EMA (default when present), raw student or teacher weights;
``--fraction`` the ``data.labelled_fraction`` whose unlabelled images are checked (default: the run's; set it
for a run trained on every image, so that it is checked on the same images as a 10% run).
Labels are ``2 * shape_group + colour_group`` (:mod:`detloss.data.shapes`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from detloss.data.collate import collate
from detloss.evaluate.coco import coco_box_iou
from detloss.evaluate.decode import decode_dense
from detloss.ops.head_layout import HeadLayout
from detloss.semi.augment import strong_photometric
from detloss.semi.tta import ensemble_class_scores
from detloss.train.build import build_trainer
from detloss.train.config import StrongAugConfig, load_config
from detloss.train.data import load_sample


def matched(model, cfg, num_classes, samples, images, conf, tta=False):
    """``(score, true label, predicted label, top-1)`` of each detection whose box overlaps a hidden box >= 0.5
    (top-1: the best-scored such detection of its hidden box)
    (``tta``: class scores averaged over the D4 views, :func:`~detloss.semi.tta.ensemble_class_scores`)."""
    loss = cfg.loss
    with torch.no_grad():
        if tta:
            layout = HeadLayout(loss.reg_max, num_classes, loss.num_vertices, loss.objectness)
            feats = ensemble_class_scores(model, images, layout)
        else:
            feats = [f.float() for f in model(images)]
    dets = decode_dense(
        feats, model.strides, num_classes, loss.reg_max, loss.num_vertices, conf, 0.6, 50, objectness=loss.objectness
    )
    rows = []
    for d, s in zip(dets, samples, strict=True):
        if len(d["boxes"]) and len(s["boxes"]):
            best, j = coco_box_iou(d["boxes"].double(), s["boxes"].double()).max(1)
            seen = set()  # detections come sorted by score: the first one on an object is its top-1
            for k in range(len(best)):
                if best[k] >= 0.5:
                    rows.append((float(d["scores"][k]), int(s["labels"][j[k]]), int(d["labels"][k]), int(j[k]) not in seen))
                    seen.add(int(j[k]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--weights", choices=["ema", "model", "teacher"], default=None)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--fraction", type=float, default=None)
    parser.add_argument("--tta", action="store_true", help="also the weak view with D4-averaged class scores")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"out_dir={args.run / 'class_check'}"]
    overrides += [] if args.fraction is None else [f"data.labelled_fraction={args.fraction}"]
    cfg = load_config(str(args.run / "config.yaml"), overrides)
    trainer = build_trainer(cfg)
    state = torch.load(args.run / "last.pt", weights_only=False)
    key = args.weights or ("ema" if state.get("ema") is not None else "model")
    weights = state[key]["module"] if isinstance(state[key], dict) and "module" in state[key] else state[key]
    model = trainer.model
    model.load_state_dict(weights)
    model.eval()
    images_set = trainer.unlabelled_set
    if not images_set:
        raise ValueError("the run has no unlabelled images: pass --fraction below 1")
    strong = (cfg.semi.strong if cfg.semi is not None else StrongAugConfig()).model_dump()
    for view in ("weak", "strong") + (("weak D4",) if args.tta else ()):
        rows = []
        for start in range(0, min(args.images, len(images_set)), 16):
            stop = min(start + 16, args.images, len(images_set))
            samples = [load_sample(images_set, i, 0, 1, False) for i in range(start, stop)]
            images, _ = collate(samples)
            if view == "strong":
                images = strong_photometric(images, torch.Generator().manual_seed(start), **strong)
            rows += matched(model, cfg, trainer.num_classes, samples, images, 0.1, tta=view == "weak D4")
        t = torch.tensor([(r[1], r[2]) for r in rows])
        scores = torch.tensor([r[0] for r in rows])
        colour = (t[:, 0] % 2 == t[:, 1] % 2).float().mean()
        shape = (t[:, 0] // 2 == t[:, 1] // 2).float().mean()
        both = (t[:, 0] == t[:, 1]).float()
        print(f"{key} weights, {view} view: {len(rows)} matched detections (score >= 0.1); class accuracy "
              f"{both.mean():.3f}, colour {colour:.3f}, shape {shape:.3f} (chance 0.5 / 0.33)")  # fmt: skip
        top = torch.tensor([r[3] for r in rows])
        print(f"   top-1 per object: {int(top.sum())} objects, class accuracy {both[top].mean():.3f}, "
              f"shape {(t[top, 0] // 2 == t[top, 1] // 2).float().mean():.3f}")  # fmt: skip
        if view != "strong":
            for lo, hi in ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01)):
                band = (scores >= lo) & (scores < hi)
                if band.any():
                    print(f"   score [{lo}, {min(hi, 1.0)}): {int(band.sum())} detections, class accuracy "
                          f"{both[band].mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
