"""Read a YOLO-format dataset folder: images plus one ``.txt`` label file per image.

Layout::

    root/images/<split>/<stem>.npy | .png | .jpg | .jpeg
    root/labels/<split>/<stem>.txt

Each non-blank label line is one object, all coordinates normalized to ``[0, 1]`` by the image size:

* ``cls cx cy w h`` -- a box; its polygon is the box rectangle (4 vertices);
* ``cls x1 y1 x2 y2 ... xn yn`` (``n >= 3``) -- a polygon segment; its box is the bounds of all ``n``
  points (taken before any reduction below).

An image without a label file has no objects; a label file without an image (same stem, one of
:data:`IMAGE_SUFFIXES`) is an error, since its objects would be dropped.

Polygons are made to fit ``K = num_vertices`` slots:

* ``n <= K``: the points are kept as given (repeated consecutive points removed);
* ``n > K``: replaced by their convex hull; if the hull still has ``m > K`` vertices, ``K`` of them are
  kept, spread evenly along the hull by index (hull vertices ``floor(i * m / K)``, ``i = 0..K-1``), which
  is a convex polygon inside the hull.

Every polygon is then oriented with a positive shoelace signed area (counter-clockwise in a y-up frame,
clockwise as drawn on the image): the convention of :mod:`detloss.data.shapes`.

Validation: any bad line raises ``ValueError`` naming the file, the line number and the problem
(non-numeric or non-finite value, class that is not an integer in ``[0, num_classes)``, a coordinate
count that is odd or too small, a value or box edge outside ``[0, 1]`` by more than ``tolerance``, a
non-positive box size, a polygon of zero area). Values within ``tolerance`` outside ``[0, 1]`` are
clamped to it. Labels are parsed when the dataset is built, images when an item is read.

Images: ``.npy`` arrays ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with 1, 3 or 4 channels (alpha is
dropped, gray is repeated), ``uint8`` (divided by 255) or floating point in ``[0, 1]``; PNG / JPEG only
when Pillow is installed (imported lazily; the library itself needs only torch and numpy); TIFF (``.tif``,
``.tiff``) likewise, read by Pillow as RGB (8-bit images, as aerial orthophoto crops ship).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IMAGE_SUFFIXES",
    "YoloDataset",
    "convex_hull",
    "fit_polygon",
    "load_image",
    "parse_yolo_labels",
]

IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------
def _numpy():
    try:
        import numpy
    except ImportError as e:  # pragma: no cover - numpy ships with torch installs in practice
        raise ImportError("reading images needs numpy: pip install numpy") from e
    return numpy


def load_image(path: str | Path) -> Tensor:
    """Read an image file as a ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    ``.npy`` needs numpy; ``.png`` / ``.jpg`` / ``.jpeg`` / ``.tif`` / ``.tiff`` need Pillow (an ``ImportError``
    says so).
    Raises ``ValueError`` naming the file for an unsupported suffix, a file the reader cannot decode
    (truncated, corrupt, or not what its suffix says), or a bad shape, dtype or value range.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    np = _numpy()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image type {suffix!r}; expected one of {IMAGE_SUFFIXES}")
    if suffix != ".npy":
        try:
            from PIL import Image
        except ImportError as e:
            raise ImportError(
                f"{path}: reading {suffix} images needs Pillow (pip install pillow), or save them as .npy arrays"
            ) from e
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.array(im.convert("RGB"))  # a writable copy
    except FileNotFoundError:
        raise
    except Exception as err:  # the readers' own errors (OSError, ValueError, EOFError, ...) omit the path
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err

    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: image array must be (H, W), (H, W, C) or (C, H, W), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{path}: image must have 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        img = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not bool(torch.isfinite(img).all()) or float(img.min()) < 0.0 or float(img.max()) > 1.0:
            raise ValueError(f"{path}: floating-point image values must be finite and lie in [0, 1]")
    else:
        raise ValueError(f"{path}: image dtype must be uint8 or floating point, got {arr.dtype}")
    img = img[..., :3] if img.shape[-1] >= 3 else img.expand(-1, -1, 3)
    return img.permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# polygons
# --------------------------------------------------------------------------------------------------
def _area2(pts: Sequence[tuple[float, float]]) -> float:
    """Twice the shoelace signed area."""
    return sum(pts[i - 1][0] * pts[i][1] - pts[i][0] * pts[i - 1][1] for i in range(len(pts)))


def convex_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (Andrew's monotone chain) with a positive shoelace area; collinear points dropped.

    >>> convex_hull([(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)])
    [(0, 0), (1, 0), (1, 1), (0, 1)]
    """
    pts = sorted(set(points))
    if len(pts) <= 2:
        return list(pts)

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def fit_polygon(points: Sequence[tuple[float, float]], k: int) -> list[tuple[float, float]]:
    """Fit a polygon into ``k`` vertex slots with a positive shoelace area (rules in the module docstring).

    Returns fewer than 3 points, or points of zero area, when the input is degenerate; callers reject it.
    """
    pts = [tuple(map(float, p)) for p in points]
    pts = [p for i, p in enumerate(pts) if p != pts[i - 1]] if len(pts) > 1 else pts  # cyclic duplicates
    if len(pts) > k:
        pts = convex_hull(pts)
        m = len(pts)
        if m > k:
            pts = [pts[(i * m) // k] for i in range(k)]
    if _area2(pts) < 0:
        pts = pts[::-1]
    return pts


# --------------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------------
def _fail(path: Path, line: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {what}")


def _parse_class(tok: str, path: Path, line: int, num_classes: int | None) -> int:
    try:
        value = float(tok)
    except ValueError:
        raise _fail(path, line, f"class {tok!r} is not a number") from None
    if not math.isfinite(value) or not value.is_integer():
        raise _fail(path, line, f"class {tok!r} is not an integer")
    cls = int(value)
    if cls < 0 or (num_classes is not None and cls >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise _fail(path, line, f"class {cls} out of range (must be {bound})")
    return cls


def _in_unit(v: float, tol: float, path: Path, line: int, what: str) -> float:
    if v < -tol or v > 1 + tol:
        raise _fail(path, line, f"{what} {v:g} outside [0, 1] (tolerance {tol:g})")
    return min(max(v, 0.0), 1.0)


def parse_yolo_labels(
    path: str | Path, num_vertices: int = 8, num_classes: int | None = None, tolerance: float = 1e-3
) -> dict[str, Tensor]:
    """Parse one YOLO label file into normalized tensors.

    Returns ``labels (n,)`` int64, ``boxes (n, 4)`` float32 normalized ``xyxy``, ``polygons (n, K, 2)``
    float32 normalized (zeros after the valid vertices), ``polygon_counts (n,)`` int64 and
    ``is_polygon (n,)`` bool (False for box lines). Raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    k = int(num_vertices)
    labels: list[int] = []
    boxes: list[list[float]] = []
    polys: list[list[tuple[float, float]]] = []
    is_poly: list[bool] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        toks = raw.split()
        if not toks:
            continue
        cls = _parse_class(toks[0], path, lineno, num_classes)
        vals: list[float] = []
        for j, tok in enumerate(toks[1:], start=2):
            try:
                v = float(tok)
            except ValueError:
                raise _fail(path, lineno, f"value {j} ({tok!r}) is not a number") from None
            if not math.isfinite(v):
                raise _fail(path, lineno, f"value {j} ({tok!r}) is not finite")
            vals.append(v)
        nv = len(vals)
        if nv == 4:
            cx, cy, w, h = (
                _in_unit(v, tolerance, path, lineno, name) for v, name in zip(vals, ("cx", "cy", "w", "h"), strict=True)
            )
            if w <= 0 or h <= 0:
                raise _fail(path, lineno, f"box width and height must be > 0, got w={w:g}, h={h:g}")
            x1, y1, x2, y2 = (
                _in_unit(v, tolerance, path, lineno, name)
                for v, name in zip(
                    (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), ("x1", "y1", "x2", "y2"), strict=True
                )
            )
            boxes.append([x1, y1, x2, y2])
            polys.append([(x1, y1), (x2, y1), (x2, y2), (x1, y2)])
            is_poly.append(False)
        elif nv % 2 == 1:
            raise _fail(
                path, lineno, f"odd number of coordinates ({nv}) after the class; expected 4 (box) or x y pairs"
            )
        elif nv < 6:
            raise _fail(
                path, lineno, f"{nv} coordinates after the class; expected 4 (box) or at least 3 x y pairs (polygon)"
            )
        else:
            vals = [_in_unit(v, tolerance, path, lineno, "coordinate") for v in vals]
            pts = list(zip(vals[0::2], vals[1::2], strict=True))
            xs, ys = vals[0::2], vals[1::2]
            fitted = fit_polygon(pts, k)
            if len(fitted) < 3 or _area2(fitted) <= 0:
                raise _fail(path, lineno, "polygon has zero area")
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
            polys.append(fitted)
            is_poly.append(True)
        labels.append(cls)

    n = len(labels)
    polygons = torch.zeros(n, k, 2, dtype=torch.float32)
    counts = torch.zeros(n, dtype=torch.long)
    for i, p in enumerate(polys):
        polygons[i, : len(p)] = torch.tensor(p, dtype=torch.float32)
        counts[i] = len(p)
    return {
        "labels": torch.tensor(labels, dtype=torch.long),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "polygons": polygons,
        "polygon_counts": counts,
        "is_polygon": torch.tensor(is_poly, dtype=torch.bool),
    }


class YoloDataset(torch.utils.data.Dataset):
    """A YOLO-format folder as a dataset of samples in pixel coordinates (see the module docstring).

    Args:
        root: dataset root holding ``images/<split>`` and ``labels/<split>``.
        split: sub-folder name (``"train"``, ``"val"``, ...).
        num_vertices: ``K`` polygon slots (>= 4, so a box rectangle fits).
        num_classes: when given, a class id ``>= num_classes`` is an error.
        tolerance: how far outside ``[0, 1]`` a normalized value may lie (and is clamped) before it is
            an error.

    Images are listed in sorted file-name order (``self.image_paths``); all label files are parsed and
    validated here. ``dataset[i]`` is a dict: ``image (3, H, W)`` float32, ``labels (n,)``, ``boxes (n, 4)``
    pixel ``xyxy``, ``polygons (n, K, 2)`` pixel, ``polygon_counts (n,)``, ``is_polygon (n,)`` and
    ``path`` (the image file, a str).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_vertices: int = 8,
        num_classes: int | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if num_vertices < 4:
            raise ValueError(f"num_vertices must be >= 4 (a box becomes a rectangle), got {num_vertices}")
        self.root = Path(root)
        self.split = split
        self.num_vertices = int(num_vertices)
        self.num_classes = num_classes
        image_dir = self.root / "images" / split
        if not image_dir.is_dir():
            raise ValueError(f"{image_dir}: image folder not found (expected root/images/{split})")
        self.label_dir = self.root / "labels" / split
        self.image_paths = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        _check_every_label_has_an_image(self.label_dir, image_dir, {p.stem for p in self.image_paths})
        self.targets: list[dict[str, Tensor]] = []
        for p in self.image_paths:
            label = self.label_dir / f"{p.stem}.txt"
            if label.is_file():
                self.targets.append(parse_yolo_labels(label, self.num_vertices, num_classes, tolerance))
            else:
                self.targets.append(_empty_targets(self.num_vertices))

    #: the decoder (``path -> (3, H, W)``); :func:`detloss.data.cache.cache_images` swaps in a cache
    load_image = staticmethod(load_image)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_paths[index]
        image = self.load_image(path)
        h, w = image.shape[-2:]
        t = self.targets[index]
        scale = torch.tensor([w, h], dtype=torch.float32)
        return {
            "image": image,
            "labels": t["labels"].clone(),
            "boxes": t["boxes"] * scale.repeat(2),
            "polygons": t["polygons"] * scale,
            "polygon_counts": t["polygon_counts"].clone(),
            "is_polygon": t["is_polygon"].clone(),
            "path": str(path),
        }


def _check_every_label_has_an_image(label_dir: Path, image_dir: Path, stems: set[str]) -> None:
    if not label_dir.is_dir():
        return
    orphans = sorted(p.name for p in label_dir.glob("*.txt") if p.stem not in stems)
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        raise ValueError(
            f"{label_dir}: {len(orphans)} label file(s) without an image in {image_dir} "
            f"(same stem, one of {IMAGE_SUFFIXES}): {shown}"
        )


def _empty_targets(num_vertices: int) -> dict[str, Tensor]:
    """The targets of an image without objects (no label file)."""
    return {
        "labels": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 4),
        "polygons": torch.zeros(0, num_vertices, 2),
        "polygon_counts": torch.zeros(0, dtype=torch.long),
        "is_polygon": torch.zeros(0, dtype=torch.bool),
    }
