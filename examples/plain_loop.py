"""detloss in a plain PyTorch training loop: your model, a detloss criterion, the doctor.

    python examples/plain_loop.py [--steps 60]

A tiny two-level anchor-free detector (yours would be bigger) trains on detloss's synthetic shapes with
``DenseCriterion``; every ``--every`` steps ``Doctor.observe`` measures each loss term's gradient w.r.t.
the head outputs, before ``backward()`` while the graph is alive. At the end it prints the gradient
shares and the doctor's findings. Nothing here uses detloss's trainer or config.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from detloss.criteria import DenseCriterion, Targets
from detloss.data.shapes import ShapesDataset
from detloss.diagnose.doctor import Doctor, findings_table, shares_table

IMAGE, STRIDES, REG_MAX = 64, (8, 16), 8


class TinyDetector(nn.Module):
    """Two levels (strides 8 and 16), each ``4 * reg_max`` box channels then ``C`` class channels."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.SiLU())

        self.stem = nn.Sequential(block(3, width), block(width, width), block(width, width))  # stride 8
        self.down = block(width, width)  # stride 16
        out = 4 * REG_MAX + num_classes
        self.heads = nn.ModuleList([nn.Conv2d(width, out, 1), nn.Conv2d(width, out, 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.stem(x)
        p4 = self.down(p3)
        return [self.heads[0](p3), self.heads[1](p4)]


def batches(data: ShapesDataset, batch_size: int, steps: int):
    """``(images (B, 3, H, W), Targets)`` from per-image pixel boxes and labels, cycling over ``data``."""
    cached = [data[i] for i in range(len(data))]  # generated once: the shapes are drawn on the CPU
    for step in range(steps):
        items = [cached[(step * batch_size + i) % len(cached)] for i in range(batch_size)]
        images = torch.stack([it["image"] for it in items])
        targets = Targets.from_per_image([{"boxes": it["boxes"], "labels": it["labels"]} for it in items], (IMAGE, IMAGE))
        yield images, targets


def train(steps: int = 60, every: int = 10, batch_size: int = 8, seed: int = 0) -> tuple[list[float], Doctor]:
    """Train; return each step's total loss and the doctor."""
    torch.manual_seed(seed)
    data = ShapesDataset(32, image_size=IMAGE, max_objects=3, seed=seed)
    model = TinyDetector(data.num_classes)
    criterion = DenseCriterion(data.num_classes, STRIDES, REG_MAX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    doctor = Doctor(every_steps=every)
    totals = []
    for step, (images, targets) in enumerate(batches(data, batch_size, steps)):
        feats = model(images)
        report = criterion(feats, targets)
        if doctor.due(step):  # before backward: the graph is alive
            doctor.observe(step, report, wrt=feats)
        optimizer.zero_grad()
        report.total.backward()
        optimizer.step()
        totals.append(float(report.total.detach()))
    return totals, doctor


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    a = p.parse_args(argv)
    totals, doctor = train(a.steps, a.every)
    print(f"total loss: step 0 {totals[0]:.3f} -> step {len(totals) - 1} {totals[-1]:.3f}")
    print("gradient share per term:\n" + shares_table(doctor.measurements))
    print(findings_table(doctor.findings()))


if __name__ == "__main__":
    main()
