"""Cost of a training step on images read from disk versus the same batches held in memory (CPU).

    PYTHONPATH=src python benchmarks/pipeline.py [--images 64] [--size 512] [--batch 8] [--threads 1]

Writes a YOLO folder of ``--images`` PNG images of ``--size`` x ``--size`` (blocky noise plus 1-6 filled
rectangles, each a labelled box) into a temporary folder, then trains the default detector
(``model.width=24``, ``image_size=--size``) once per row, ``disk, cache=<none|ram|disk>, workers=<0|2>``:
epoch 0 only loads its batches (plus one step): it warms up the caches, the workers and the allocator;
epoch 1 is timed. Each of its steps is the trainer's own loop, ``Trainer.batches`` (decode, letterbox,
``data.hflip=0.5``, collate) then ``train_step``, immediately followed by a second ``train_step`` on the
same batch, now in memory: the paired reference. Pairing in time keeps the comparison fair on a shared
machine, where other processes change the step time by tens of percent from one minute to the next.

Columns (medians over the timed steps): ``load ms`` waiting for the batch, ``step ms`` its ``train_step``,
``in-memory step ms`` the reference, ``ratio`` = (load + step) / reference. Target: ratio <= 1.2.
With workers, background loading also runs during the reference step, so part of its CPU cost lands on
both sides; the ``workers=0`` rows have no such overlap.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_dataset(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(2, n // 16))):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            img = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture: PNG does not compress it away
            img = (img // 2 + rng.integers(0, 128, img.shape, dtype=np.uint8)).astype(np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 7))):
                w, h = rng.integers(size // 16, size // 4, 2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                cls = int(rng.integers(0, 3))
                img[y : y + h, x : x + w] = (255 * (cls == 0), 255 * (cls == 1), 255 * (cls == 2))
                lines.append(f"{cls} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i:04d}.png")
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")


def run(root: Path, args, workers: int = 0, cache: str | None = None) -> dict[str, float]:
    """Medians over the second epoch's steps: ``load`` and ``step`` ms, the in-memory ``ref`` ms and ``ratio``."""
    from detloss.train.config import load_config
    from detloss.train.trainer import Trainer

    overrides = [
        f"out_dir={root / 'run'}", "data.kind=yolo", f"data.root={root}", "data.num_classes=3",
        f"data.image_size={args.size}", f"batch_size={args.batch}", "epochs=2", f"threads={args.threads}",
        "eval.plots=false", f"data.workers={workers}", "doctor=null",
    ]
    if cache is not None:
        overrides += [f"data.cache={cache}", f"data.cache_dir={root / f'cache{workers}'}"]
    trainer = Trainer(load_config(None, overrides))
    for i, (images, targets) in enumerate(trainer.batches(0)):  # warm-up: caches, workers, allocator
        if i == 0:
            trainer.train_step(images, targets)
    rows: dict[str, list[float]] = {"load": [], "step": [], "ref": [], "ratio": []}
    it = trainer.batches(1)
    while True:
        t0 = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        trainer.train_step(images, targets)
        t2 = time.perf_counter()
        trainer.train_step(images, targets)  # the same batch again, already in memory: the paired reference
        t3 = time.perf_counter()
        for key, value in (("load", t1 - t0), ("step", t2 - t1), ("ref", t3 - t2), ("ratio", (t2 - t0) / (t3 - t2))):
            rows[key].append(value)
    return {k: statistics.median(v) * (1 if k == "ratio" else 1000) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.images, args.size)
        print(f"{args.images} PNG {args.size}x{args.size}, batch {args.batch}, threads {args.threads}, "
              f"torch {torch.__version__}")
        print(f"| {'rows':<32} | load ms | step ms | in-memory step ms | ratio |")
        print(f"|{'-' * 34}|--------:|--------:|------------------:|------:|")
        for cache in (None, "ram", "disk"):
            for workers in (0, 2):
                r = run(root, args, workers, cache)
                name = f"disk, cache={cache or 'none'}, workers={workers}"
                print(f"| {name:<32} | {r['load']:7.1f} | {r['step']:7.1f} | {r['ref']:17.1f} | {r['ratio']:5.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
