"""Cost of a training step on images read from disk versus the same batches held in memory (CPU).

    PYTHONPATH=src python benchmarks/pipeline.py [--images 64] [--size 512] [--batch 8] [--threads 1] [--rounds 2]

Writes a YOLO folder of ``--images`` PNG images of ``--size`` x ``--size`` (smooth noise plus 1-6 filled
rectangles, each a labelled box) into a temporary folder, then trains the default detector
(``model.width=24``, ``image_size=--size``) and times the second epoch of each row (epoch 0 only loads,
plus one step: it warms up the caches, the workers and the allocator). Rows:

* ``in-memory``: the second epoch's batches collated beforehand; only ``train_step`` is timed;
* ``disk, cache=<none|ram|disk>, workers=<0|2>``: the trainer's own loop: ``Trainer.batches`` (decode,
  letterbox, ``data.hflip=0.5``, collate) then ``train_step``.

``load ms`` is the median time spent waiting for the next batch, ``step ms`` the median time in
``train_step``, ``ratio`` their sum over the in-memory row's. Each row runs ``--rounds`` times (rows in
alternating order) and keeps its fastest round: on a shared machine the other load only adds time.
Target: ratio <= 1.2. Every row starts from the same seed, so it trains on the same batches.
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


def run(root: Path, args, workers: int = 0, cache: str | None = None, in_memory: bool = False) -> tuple[float, float]:
    """``(load ms, step ms)``: the medians over the second epoch's steps."""
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
    loads, steps = [], []
    it = iter(list(trainer.batches(1))) if in_memory else trainer.batches(1)
    while True:
        t0 = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        trainer.train_step(images, targets)
        loads.append(0.0 if in_memory else t1 - t0)
        steps.append(time.perf_counter() - t1)
    return 1000 * statistics.median(loads), 1000 * statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.images, args.size)
        names = ["in-memory"] + [f"disk, cache={c or 'none'}, workers={w}" for c in (None, "ram", "disk") for w in (0, 2)]
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.rounds):  # rows alternate, so a busy spell on a shared machine hits them alike
            for name in names if r % 2 == 0 else names[::-1]:
                if name == "in-memory":
                    got = run(root, args, in_memory=True)
                else:
                    c, w = name.split("cache=")[1].split(", workers=")
                    got = run(root, args, int(w), None if c == "none" else c)
                if name not in best or sum(got) < sum(best[name]):
                    best[name] = got
        rows = [(name, best[name]) for name in names]
        base = sum(rows[0][1])
        print(f"{args.images} PNG {args.size}x{args.size}, batch {args.batch}, threads {args.threads}, "
              f"best of {args.rounds} rounds, torch {torch.__version__}")
        print(f"| {'rows':<32} | load ms | step ms | total ms | ratio |")
        print(f"|{'-' * 34}|--------:|--------:|---------:|------:|")
        for name, (load, step) in rows:
            print(f"| {name:<32} | {load:7.1f} | {step:7.1f} | {load + step:8.1f} | {(load + step) / base:5.2f} |")


if __name__ == "__main__":
    main()
