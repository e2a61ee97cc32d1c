"""A YOLO folder of shapes images (``.npy``) with polygon labels, written by the harness tests."""

from __future__ import annotations

import numpy as np
import torch

from detloss.data.shapes import ShapesDataset


def write_yolo_split(
    root, split: str, n: int, hw: tuple[int, int] = (96, 80), max_objects: int = 2, seed: int = 3
) -> None:
    """``root/images/<split>/im<i>.npy`` and ``root/labels/<split>/im<i>.txt`` (6-vertex polygons, normalized
    by (width, height)). The default 96 x 80 is not square, so a letterbox has work to do."""
    h, w = hw
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    data = ShapesDataset(n, image_size=hw, max_objects=max_objects, num_vertices=6, seed=seed, split=split)
    for i in range(n):
        s = data[i]
        np.save(root / "images" / split / f"im{i}.npy", s["image"].permute(1, 2, 0).numpy())
        lines = []
        for label, poly, count in zip(s["labels"], s["polygons"], s["polygon_counts"], strict=True):
            xy = poly[: int(count)] / torch.tensor([float(w), float(h)])
            lines.append(" ".join([str(int(label)), *(f"{v:.6f}" for v in xy.flatten().tolist())]))
        (root / "labels" / split / f"im{i}.txt").write_text("\n".join(lines) + "\n")
