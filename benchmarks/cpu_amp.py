"""Training-step time on CPU in float32 and with bf16 autocast (``optim.cpu_amp``).

    PYTHONPATH=src python benchmarks/cpu_amp.py [--size 320] [--batch 16] [--steps 8] [--threads 2]

Trains the default detector (``model.width=24``, ``loss.reg_max=8``, boxes only) on the shapes data at
``--size`` px, as ``configs/neon_trees.yaml`` trains its tiles. Both trainers step alternately on the same
in-memory batches, so a busy machine slows both alike. Columns (medians over ``--steps`` steps after two
warm-up steps): ``step ms`` of ``Trainer.train_step`` (forward, loss, backward, clip, AdamW, EMA) and its
ratio to float32. The speed-up needs native bf16 in the CPU (AVX512-BF16 or AMX); without it bf16 is
emulated and slower, which the first line tells.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    from detloss.train.config import load_config
    from detloss.train.trainer import Trainer, native_cpu_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, native CPU bf16: {native_cpu_bf16()}")
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for amp in (False, True):
            overrides = [
                f"out_dir={tmp}/{amp}",
                f"data.image_size={args.size}",
                f"batch_size={args.batch}",
                f"data.train_images={args.batch}",
                "data.val_images=1",
                "loss.reg_max=8",
                "loss.num_vertices=0",
                f"threads={args.threads}",
                f"optim.cpu_amp={amp}",
                "doctor=null",
            ]
            trainers[amp] = Trainer(load_config(None, overrides))
        images, targets = next(trainers[False].batches(0))
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.steps + 2):
            for amp, trainer in trainers.items():
                t0 = time.perf_counter()
                trainer.train_step(images, targets)
                if i >= 2:
                    times[amp].append(time.perf_counter() - t0)
    base = statistics.median(times[False])
    print(f"| {args.batch} x {args.size}px | step ms | ratio |")
    print("|---|--:|--:|")
    for amp, label in ((False, "float32"), (True, "bf16 autocast (optim.cpu_amp)")):
        t = statistics.median(times[amp])
        print(f"| {label} | {1000 * t:.0f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
