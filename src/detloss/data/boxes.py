"""Samples of box-only readers (VOC, box CSV): pixel ``xyxy`` boxes with their rectangles as polygons.

Shared by :mod:`detloss.data.voc` and :mod:`detloss.data.box_csv`, so their samples have the keys and
shapes of :class:`detloss.data.yolo.YoloDataset` samples plus ``ignore (n,)`` bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detloss.data.yolo import load_image

__all__ = ["BoxFileDataset", "box_targets", "box_sample", "class_ids"]


def box_targets(
    boxes: Sequence[Sequence[float]], labels: Sequence[int], ignore: Sequence[bool], num_vertices: int
) -> dict[str, Tensor]:
    """``labels (n,)`` int64, ``boxes (n, 4)`` float32 pixel ``xyxy``, ``polygons (n, K, 2)`` (each box's
    rectangle ``(x1, y1), (x2, y1), (x2, y2), (x1, y2)``: a positive shoelace area, zeros after vertex 4),
    ``polygon_counts (n,)`` (all 4), ``is_polygon (n,)`` (all False) and ``ignore (n,)`` bool.

    >>> t = box_targets([[1.0, 2.0, 5.0, 4.0]], [0], [False], 4)
    >>> t["polygons"][0].tolist()
    [[1.0, 2.0], [5.0, 2.0], [5.0, 4.0], [1.0, 4.0]]
    """
    n = len(labels)
    b = torch.tensor([list(map(float, x)) for x in boxes], dtype=torch.float32).reshape(n, 4)
    polygons = torch.zeros(n, int(num_vertices), 2, dtype=torch.float32)
    polygons[:, :4] = b[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n, 4, 2)
    return {
        "labels": torch.tensor(list(labels), dtype=torch.long),
        "boxes": b,
        "polygons": polygons,
        "polygon_counts": torch.full((n,), 4, dtype=torch.long),
        "is_polygon": torch.zeros(n, dtype=torch.bool),
        "ignore": torch.tensor(list(ignore), dtype=torch.bool),
    }


def box_sample(image_path: Path, targets: dict[str, Tensor], source: str, decode=load_image) -> dict[str, Any]:
    """Load ``image_path`` with ``decode`` and return the sample; a box reaching past the image (``x2 > W`` or
    ``y2 > H``) is a ``ValueError`` naming ``source`` (the annotation file) and the object index."""
    image = decode(image_path)
    h, w = image.shape[-2:]
    b = targets["boxes"]
    bad = ((b[:, 2] > w) | (b[:, 3] > h)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"{source}: object {i} box {[round(v, 3) for v in b[i].tolist()]} reaches past the image "
            f"{image_path} of width {w} and height {h}"
        )
    sample = {k: v.clone() for k, v in targets.items()}
    sample["image"] = image
    sample["path"] = str(image_path)
    return sample


def class_ids(found: Sequence[str], class_names: Sequence[str] | None) -> list[str]:
    """The class names in label order: ``class_names`` when given (must be unique), else the sorted set of
    ``found``."""
    if class_names is None:
        return sorted(set(found))
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    if not names:
        raise ValueError("class_names must name at least one class")
    return names


class BoxFileDataset(torch.utils.data.Dataset):
    """What the box readers share: ``image_paths``, per-item ``targets`` (:func:`box_targets`) and the
    annotation file each item's errors name; ``dataset[i]`` is :func:`box_sample` decoded by ``load_image``.

    Subclasses set the classes with :meth:`_set_classes` and fill the three lists with :meth:`_add`.
    """

    load_image = staticmethod(load_image)  # the decoder; detloss.data.cache swaps in a cached one

    def __init__(self, num_vertices: int) -> None:
        if num_vertices < 4:
            raise ValueError(f"num_vertices must be >= 4 (a box becomes a rectangle), got {num_vertices}")
        self.num_vertices = int(num_vertices)
        self.image_paths: list[Path] = []
        self.targets: list[dict[str, Tensor]] = []
        self._sources: list[str] = []

    def _set_classes(self, found: Sequence[str], class_names: Sequence[str] | None) -> dict[str, int]:
        """Set ``class_names`` and ``num_classes`` (:func:`class_ids`); return name -> id."""
        self.class_names = class_ids(found, class_names)
        self.num_classes = len(self.class_names)
        return {n: i for i, n in enumerate(self.class_names)}

    def _add(self, image: Path, boxes, labels: Sequence[int], ignore: Sequence[bool], source: Path) -> None:
        self.image_paths.append(image)
        self.targets.append(box_targets(boxes, labels, ignore, self.num_vertices))
        self._sources.append(str(source))

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return box_sample(self.image_paths[index], self.targets[index], self._sources[index], self.load_image)
