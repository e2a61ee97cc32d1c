"""Read a COCO-format detection / instance-segmentation annotation file.

What is read, per annotation:

* ``bbox`` ``[x, y, w, h]`` in pixels -> the box ``xyxy`` (always from this field);
* ``segmentation`` as a list of flat polygons ``[[x1, y1, x2, y2, ...], ...]`` -> the polygon of the part
  with the largest area (shoelace), fitted into ``K = num_vertices`` slots like YOLO segments
  (:func:`detloss.data.yolo.fit_polygon`: kept when it has at most ``K`` points, else its convex hull,
  else ``K`` hull vertices spread evenly) and oriented with a positive shoelace area (clockwise as
  drawn on the image);
* ``segmentation`` as RLE (a dict) -> **box only**: the polygon is the box rectangle and
  ``is_polygon`` is False; one ``UserWarning`` per file counts such annotations. The same happens, with
  the same warning, to a polygon of zero area;
* no or empty ``segmentation`` -> box only (no warning);
* ``iscrowd: 1`` -> skipped; a box of zero width or height -> skipped (one warning per file counts them).

Categories are mapped to contiguous labels ``0..C-1`` in increasing category-id order
(``category_ids``, ``cat_id_to_label``, ``class_names``). Images are listed in increasing image-id
order, with or without annotations, and read from ``image_dir / file_name`` when an item is requested
(``.npy`` or, with Pillow, PNG / JPEG: :func:`detloss.data.yolo.load_image`).

Malformed files raise ``ValueError`` naming the file and the offending image / category /
annotation id (or its position when the id itself is missing) and the field.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detloss.data.yolo import _area2, fit_polygon, load_image

__all__ = ["CocoDataset"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class CocoDataset(torch.utils.data.Dataset):
    """A COCO JSON file plus its image folder as a dataset of samples in pixel coordinates.

    Args:
        image_dir: folder the images' ``file_name`` are relative to.
        annotation_json: the COCO annotation file.
        num_vertices: ``K`` polygon slots (>= 4, so a box rectangle fits).

    ``dataset[i]`` is a dict: ``image (3, H, W)`` float32 in ``[0, 1]``, ``labels (n,)`` contiguous class
    ids, ``boxes (n, 4)`` pixel ``xyxy``, ``polygons (n, K, 2)`` pixel, ``polygon_counts (n,)``,
    ``is_polygon (n,)`` bool, ``image_id`` (int) and ``path`` (str).

    Attributes:
        category_ids: sorted COCO category ids; ``label -> category_ids[label]``.
        cat_id_to_label: COCO category id -> contiguous label.
        class_names: category names in label order.
        image_ids: image ids in dataset order.
    """

    def __init__(self, image_dir: str | Path, annotation_json: str | Path, num_vertices: int = 8) -> None:
        if num_vertices < 4:
            raise ValueError(f"num_vertices must be >= 4 (a box becomes a rectangle), got {num_vertices}")
        self.image_dir = Path(image_dir)
        self.annotation_json = Path(annotation_json)
        self.num_vertices = int(num_vertices)
        src = self.annotation_json
        try:
            with open(src, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: not valid JSON ({e})") from None

        if not isinstance(data, dict):
            raise ValueError(f"{src}: the top level must be an object with 'images' and 'categories'")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{src}: field {key!r} must be a list")
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            raise ValueError(f"{src}: field 'annotations' must be a list")

        # categories
        names: dict[int, str] = {}
        for pos, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise ValueError(f"{src}: category #{pos}: field 'id' must be an integer")
            if cat["id"] in names:
                raise ValueError(f"{src}: category id {cat['id']}: duplicate id")
            names[cat["id"]] = str(cat.get("name", cat["id"]))
        self.category_ids: list[int] = sorted(names)
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        self.class_names: list[str] = [names[c] for c in self.category_ids]

        # images
        self.images: dict[int, dict[str, Any]] = {}
        for pos, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                raise ValueError(f"{src}: image #{pos}: field 'id' must be an integer")
            iid = img["id"]
            if iid in self.images:
                raise ValueError(f"{src}: image id {iid}: duplicate id")
            if not isinstance(img.get("file_name"), str):
                raise ValueError(f"{src}: image id {iid}: field 'file_name' must be a string")
            for key in ("width", "height"):
                if not _is_int(img.get(key)) or img[key] <= 0:
                    raise ValueError(f"{src}: image id {iid}: field {key!r} must be a positive integer")
            self.images[iid] = {"file_name": img["file_name"], "width": img["width"], "height": img["height"]}
        self.image_ids: list[int] = sorted(self.images)

        # annotations
        per_image: dict[int, list[tuple[int, list[float], list[tuple[float, float]], bool]]] = {
            i: [] for i in self.image_ids
        }
        rle: list[Any] = []
        degenerate: list[Any] = []
        empty_box: list[Any] = []
        seen: set[int] = set()
        for pos, ann in enumerate(anns):
            if not isinstance(ann, dict):
                raise ValueError(f"{src}: annotation #{pos}: must be an object")
            if not _is_int(ann.get("id")):
                raise ValueError(f"{src}: annotation #{pos}: field 'id' must be an integer")
            aid = ann["id"]
            where = f"{src}: annotation id {aid}"
            if aid in seen:
                raise ValueError(f"{where}: duplicate id")
            seen.add(aid)
            if ann.get("image_id") not in self.images:
                raise ValueError(f"{where}: field 'image_id' ({ann.get('image_id')!r}) names no image in 'images'")
            if ann.get("category_id") not in self.cat_id_to_label:
                raise ValueError(
                    f"{where}: field 'category_id' ({ann.get('category_id')!r}) names no category in 'categories'"
                )
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1) or isinstance(crowd, bool):
                raise ValueError(f"{where}: field 'iscrowd' must be 0 or 1, got {crowd!r}")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise ValueError(f"{where}: field 'bbox' must be a list of 4 finite numbers [x, y, w, h], got {bbox!r}")
            if bbox[2] < 0 or bbox[3] < 0:
                raise ValueError(f"{where}: field 'bbox' has a negative width or height: {bbox!r}")
            seg = ann.get("segmentation")
            polygon = self._polygon(seg, where)
            if crowd == 1:
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w == 0 or h == 0:
                empty_box.append(aid)
                continue
            box = [x, y, x + w, y + h]
            is_poly = True
            if polygon is None:
                if isinstance(seg, dict):
                    rle.append(aid)
                is_poly = False
            elif len(polygon) < 3 or _area2(polygon) <= 0:
                degenerate.append(aid)
                is_poly = False
            if not is_poly:
                polygon = [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]
            per_image[ann["image_id"]].append((self.cat_id_to_label[ann["category_id"]], box, polygon, is_poly))

        if rle or degenerate:
            warnings.warn(
                f"{src}: {len(rle)} annotation(s) with RLE segmentation (ids {rle[:5]}{'...' if len(rle) > 5 else ''})"
                f" and {len(degenerate)} with a zero-area polygon (ids {degenerate[:5]}) are read as boxes only:"
                " their polygon is the box rectangle and is_polygon is False",
                UserWarning,
                stacklevel=2,
            )
        if empty_box:
            warnings.warn(
                f"{src}: {len(empty_box)} annotation(s) with a zero-width or zero-height bbox skipped "
                f"(ids {empty_box[:5]})",
                UserWarning,
                stacklevel=2,
            )
        self.targets = [self._tensors(per_image[i]) for i in self.image_ids]

    def _polygon(self, seg: Any, where: str) -> list[tuple[float, float]] | None:
        """The fitted largest part of a polygon segmentation, or None (no polygon / RLE)."""
        if seg is None or seg == [] or isinstance(seg, dict):
            if isinstance(seg, dict) and ("counts" not in seg or "size" not in seg):
                raise ValueError(f"{where}: field 'segmentation' is a dict but not RLE (needs 'counts' and 'size')")
            return None
        if not isinstance(seg, list) or not all(isinstance(part, list) for part in seg):
            raise ValueError(f"{where}: field 'segmentation' must be a list of flat [x1, y1, x2, y2, ...] lists or RLE")
        best: list[tuple[float, float]] | None = None
        best_area = -1.0
        for j, part in enumerate(seg):
            if not all(_is_number(v) for v in part):
                raise ValueError(f"{where}: field 'segmentation' part {j} holds a value that is not a finite number")
            if len(part) % 2 or len(part) < 6:
                raise ValueError(
                    f"{where}: field 'segmentation' part {j} has {len(part)} values; needs an even count >= 6"
                )
            pts = [(float(part[i]), float(part[i + 1])) for i in range(0, len(part), 2)]
            area = abs(_area2(pts))
            if area > best_area:
                best, best_area = pts, area
        return None if best is None else fit_polygon(best, self.num_vertices)

    def _tensors(self, objs: list[tuple[int, list[float], list[tuple[float, float]], bool]]) -> dict[str, Tensor]:
        n, k = len(objs), self.num_vertices
        polygons = torch.zeros(n, k, 2, dtype=torch.float32)
        counts = torch.zeros(n, dtype=torch.long)
        for i, (_, _, poly, _) in enumerate(objs):
            polygons[i, : len(poly)] = torch.tensor(poly, dtype=torch.float32)
            counts[i] = len(poly)
        return {
            "labels": torch.tensor([o[0] for o in objs], dtype=torch.long),
            "boxes": torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(n, 4),
            "polygons": polygons,
            "polygon_counts": counts,
            "is_polygon": torch.tensor([o[3] for o in objs], dtype=torch.bool),
        }

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    #: the decoder (``path -> (3, H, W)``); :func:`detloss.data.cache.cache_images` swaps in a cache
    load_image = staticmethod(load_image)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        iid = self.image_ids[index]
        info = self.images[iid]
        path = self.image_dir / info["file_name"]
        image = self.load_image(path)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: image is {image.shape[-2]}x{image.shape[-1]} (HxW) but {self.annotation_json} says "
                f"{info['height']}x{info['width']} for image id {iid}"
            )
        t = self.targets[index]
        return {
            "image": image,
            **{key: v.clone() for key, v in t.items()},
            "image_id": iid,
            "path": str(path),
        }
