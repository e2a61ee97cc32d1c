"""Read an ultralytics ``data.yaml``: the class names and each split's images, with YOLO label files.

Keys read (others are ignored):

* ``path`` -- the dataset root; relative to the YAML file's folder; default that folder;
* ``train``, ``val`` (and any other split) -- relative to ``path`` unless absolute: a folder of images
  (searched recursively, sorted), a ``.txt`` list of image paths (one a line; relative lines are
  relative to the list's folder), or a list of such entries;
* ``names`` -- a list of class names, or a mapping ``{0: name, 1: name, ...}`` with the ids ``0..n-1``;
* ``nc`` -- optional; when present it must equal the number of names.

The label file of an image ``.../images/<rest>/<stem>.<ext>`` is ``.../labels/<rest>/<stem>.txt`` (the last
``images`` folder in the path becomes ``labels``, as ultralytics does), parsed by
:func:`detloss.data.yolo.parse_yolo_labels` with ``num_classes = len(names)``; an image without one has no
objects. Errors are ``ValueError`` naming the YAML file and the key, or the list file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detloss.data.yolo import IMAGE_SUFFIXES, YoloDataset, _empty_targets, parse_yolo_labels

__all__ = ["YamlYoloDataset", "read_data_yaml", "label_path"]


def _yaml():
    try:
        import yaml
    except ImportError as e:
        raise ImportError("reading data.yaml needs PyYAML: pip install 'detloss[train]' (or pyyaml)") from e
    return yaml


def read_data_yaml(path: str | Path) -> dict[str, Any]:
    """``{"root": Path, "names": [str], "splits": {split: [entry, ...]}}`` from a data.yaml (entries as
    written, resolved against ``root`` by :class:`YamlYoloDataset`)."""
    path = Path(path)
    yaml = _yaml()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: malformed YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys path, train, val, names")
    base = path.parent
    root = data.get("path")
    if root is not None and not isinstance(root, str):
        raise ValueError(f"{path}: 'path' must be a string, got {root!r}")
    root = base if root is None else (Path(root) if Path(root).is_absolute() else base / root)
    names = _names(data.get("names"), path)
    if "nc" in data and data["nc"] != len(names):
        raise ValueError(f"{path}: 'nc' is {data['nc']!r} but 'names' lists {len(names)} classes")
    splits = {}
    for key, value in data.items():
        if key in ("path", "names", "nc", "download") or value is None:
            continue
        entries = value if isinstance(value, list) else [value]
        if all(isinstance(e, str) for e in entries) and entries:
            splits[key] = entries
    return {"root": root, "names": names, "splits": splits}


def _names(value: Any, path: Path) -> list[str]:
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, dict) and value:
        keys = list(value)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or sorted(keys) != list(
            range(len(keys))
        ):
            raise ValueError(f"{path}: 'names' mapping must have the ids 0..{len(keys) - 1}, got {keys}")
        return [str(value[i]) for i in range(len(keys))]
    raise ValueError(f"{path}: 'names' must be a non-empty list or {{id: name}} mapping, got {value!r}")


def label_path(image: Path) -> Path:
    """``.../images/<rest>/<stem>.<ext>`` -> ``.../labels/<rest>/<stem>.txt`` (the last ``images`` part).

    >>> label_path(Path("d/images/train/a.png")).as_posix()
    'd/labels/train/a.txt'
    """
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        raise ValueError(f"{image}: no 'images' folder in the path, so its label file cannot be found")
    i = len(parts) - 2 - parts[:-1][::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _list_images(entry: str, root: Path, source: Path, key: str) -> list[Path]:
    p = Path(entry) if Path(entry).is_absolute() else root / entry
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            img = Path(line) if Path(line).is_absolute() else p.parent / line
            if not img.is_file():
                raise ValueError(f"{p}, line {lineno}: image {img} not found")
            out.append(img)
        return out
    raise ValueError(f"{source}: '{key}' entry {entry!r}: {p} is neither a folder of images nor a .txt list")


class YamlYoloDataset(YoloDataset):
    """One split of a data.yaml as a :class:`~detloss.data.yolo.YoloDataset` (same samples).

    Args:
        yaml_path: the data.yaml.
        split: a key of the YAML (``"train"``, ``"val"``, ...).
        num_vertices, tolerance: as :class:`~detloss.data.yolo.YoloDataset`.

    Attributes: ``class_names`` and ``num_classes`` (from ``names``), ``image_paths``.
    """

    def __init__(
        self, yaml_path: str | Path, split: str = "train", num_vertices: int = 8, tolerance: float = 1e-3
    ) -> None:
        if num_vertices < 4:
            raise ValueError(f"num_vertices must be >= 4 (a box becomes a rectangle), got {num_vertices}")
        self.yaml_path = Path(yaml_path)
        info = read_data_yaml(self.yaml_path)
        if split not in info["splits"]:
            raise ValueError(f"{self.yaml_path}: no '{split}' key (splits found: {sorted(info['splits'])})")
        self.root, self.split, self.num_vertices = info["root"], split, int(num_vertices)
        self.class_names: Sequence[str] = info["names"]
        self.num_classes = len(self.class_names)
        self.image_paths = [
            p for e in info["splits"][split] for p in _list_images(e, self.root, self.yaml_path, split)
        ]
        if not self.image_paths:
            raise ValueError(f"{self.yaml_path}: '{split}' lists no images")
        self.targets = []
        for p in self.image_paths:
            label = label_path(p)
            if label.is_file():
                self.targets.append(parse_yolo_labels(label, self.num_vertices, self.num_classes, tolerance))
            else:
                self.targets.append(_empty_targets(self.num_vertices))
