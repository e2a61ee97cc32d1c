"""Read a box CSV (the ``deepforest`` format): one row per object, ``image_path,xmin,ymin,xmax,ymax,label``.

* The header line is required and must contain those six columns (in any order; other columns are
  ignored). ``image_path`` is relative to ``image_root`` (default: the CSV's folder) unless absolute.
* Coordinates are pixel ``xyxy`` as written (decimals allowed): ``0 <= xmin < xmax``, ``0 <= ymin < ymax``;
  a box reaching past its image is an error when the item is read.
* A row whose four coordinates are all ``0`` marks an image without objects (deepforest's convention
  for empty images); its ``label`` is not read.
* Images are listed in the order of their first row; rows of one image may be anywhere in the file.
* Class names: the sorted set of ``label`` values, or ``class_names`` (fixing the ids; a label not in
  it is an error).

Every error is a ``ValueError`` naming the CSV file and the line (1 is the header), the column and the
value. Only :mod:`csv` (stdlib) is used.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from detloss.data.boxes import BoxFileDataset

__all__ = ["BoxCsvDataset", "COLUMNS"]

COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


class BoxCsvDataset(BoxFileDataset):
    """A box CSV as a dataset of samples in pixel coordinates (rules in the module docstring).

    Args:
        csv_path: the CSV file.
        image_root: folder ``image_path`` is relative to; default the CSV's folder.
        class_names: the classes in label order; default the sorted set of labels found.
        num_vertices: ``K`` polygon slots (>= 4: a box becomes its 4-vertex rectangle).

    ``dataset[i]`` is a dict like :class:`detloss.data.voc.VocDataset`'s (``ignore`` all False).
    Attributes: ``class_names``, ``num_classes``, ``image_paths``.
    """

    def __init__(
        self,
        csv_path: str | Path,
        image_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        num_vertices: int = 8,
    ) -> None:
        super().__init__(num_vertices)
        self.csv_path = Path(csv_path)
        root = Path(image_root) if image_root is not None else self.csv_path.parent
        rows = _read_rows(self.csv_path)  # image -> [(line, box, label)]
        index = self._set_classes([r[2] for objs in rows.values() for r in objs if r[2] is not None], class_names)
        unknown = sorted(  # reported in file order; empty-image rows have no label
            (line, label)
            for objs in rows.values()
            for line, label in ((o[0], o[2]) for o in objs)
            if label is not None and label not in index
        )
        if unknown:
            line, label = unknown[0]
            raise ValueError(f"{self.csv_path}, line {line}: label {label!r} is not in class_names {self.class_names}")
        for image, objs in rows.items():
            path = Path(image) if Path(image).is_absolute() else root / image
            if not path.is_file():
                raise ValueError(f"{self.csv_path}, line {objs[0][0]}: image_path {image!r}: {path} not found")
            objs = [o for o in objs if o[2] is not None]
            self._add(path, [o[1] for o in objs], [index[o[2]] for o in objs], [False] * len(objs), self.csv_path)


def _read_rows(path: Path) -> dict[str, list[tuple[int, list[float], str | None]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (a header line {','.join(COLUMNS)} is required)")
            header = [h.strip() for h in header]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{path}, line 1: header lacks column(s) {missing} (required: {','.join(COLUMNS)}; got {header})"
                )
            col = {c: header.index(c) for c in COLUMNS}
            rows: dict[str, list] = {}
            for lineno, row in enumerate(reader, start=2):
                if not any(v.strip() for v in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}, line {lineno}: {len(row)} values, the header has {len(header)}")
                image = row[col["image_path"]].strip()
                if not image:
                    raise ValueError(f"{path}, line {lineno}: empty image_path")
                box = [_number(row[col[c]], c, path, lineno) for c in COLUMNS[1:5]]
                if box == [0.0, 0.0, 0.0, 0.0]:  # an image without objects
                    rows.setdefault(image, []).append((lineno, box, None))
                    continue
                x1, y1, x2, y2 = box
                if x1 < 0 or y1 < 0:
                    raise ValueError(f"{path}, line {lineno}: xmin/ymin must be >= 0, got {x1:g}, {y1:g}")
                if x1 >= x2 or y1 >= y2:
                    raise ValueError(
                        f"{path}, line {lineno}: box needs xmin < xmax and ymin < ymax, "
                        f"got {x1:g}, {y1:g}, {x2:g}, {y2:g}"
                    )
                label = row[col["label"]].strip()
                if not label:
                    raise ValueError(f"{path}, line {lineno}: empty label")
                rows.setdefault(image, []).append((lineno, box, label))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    return rows


def _number(raw: str, column: str, path: Path, line: int) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{path}, line {line}: {column} {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{path}, line {line}: {column} {raw!r} is not finite")
    return v
