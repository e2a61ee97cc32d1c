"""A tiny YOLO-format dataset (images + ``labels/*.txt`` + ``data.yaml``) written from detloss's shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detloss.data.shapes import ShapesDataset


def write_yolo_dataset(root: Path, *, train: int = 16, val: int = 4, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``root/images/{train,val}/*.png``, ``root/labels/{train,val}/*.txt`` (``cls cx cy w h``,
    normalized) and ``root/data.yaml``; return the yaml's path."""
    import cv2  # ultralytics' dependency: these tests run where ultralytics is installed

    for split, n in (("train", train), ("val", val)):
        ds = ShapesDataset(n, image_size=image_size, seed=seed, split=split)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            item = ds[i]
            rgb = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), rgb[:, :, ::-1])
            h, w = ds.image_hw
            x0, y0, x1, y1 = item["boxes"].unbind(1)
            rows = [
                f"{int(c)} {(a + b) / 2 / w:.6f} {(p + q) / 2 / h:.6f} {(b - a) / w:.6f} {(q - p) / h:.6f}"
                for c, a, p, b, q in zip(item["labels"].tolist(), x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist())
            ]
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(rows) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(ShapesDataset.class_names))
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml
