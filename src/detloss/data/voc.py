"""Read Pascal VOC XML annotations (boxes, ``difficult`` flags) in the standard layout or loose beside images.

Layouts (:class:`VocDataset` ``source``):

* **standard** -- a folder holding ``Annotations/``: the ids are the lines of
  ``ImageSets/Main/<split>.txt`` (first token of each non-blank line), the annotation of id ``i`` is
  ``Annotations/<i>.xml`` and its image ``JPEGImages/<filename>`` (the XML's ``<filename>``);
* **loose** -- a folder of ``*.xml`` files (sorted by name) or one ``.xml`` file, each image lying beside
  its XML under the XML's ``<filename>`` (as the ``deepforest`` package ships its NEON annotations).

Per ``<object>``: ``<name>`` (the class), ``<bndbox>`` with ``<xmin> <ymin> <xmax> <ymax>`` used as pixel
``xyxy`` as written (no 1-based shift; decimals allowed), and ``<difficult>`` (``1`` marks the object
difficult; absent or ``0``: not). Rules:

* ``difficult`` objects are kept in the sample and flagged in ``ignore (n,)``. Evaluation treats them as
  COCO's ignored ground truths (VOC's own rule): a detection matched to one is neither a true nor a false
  positive, and they do not count towards recall. The training harness removes them from the targets:
  they are not positives, and the loss sees their pixels as it sees background.
* Class names: the sorted set of ``<name>`` over the files read, or ``class_names`` (fixing the ids);
  with ``class_names`` a name not in the list is an error naming the file and the object index.
* A box needs ``0 <= xmin < xmax`` and ``0 <= ymin < ymax``; a box reaching past the image is an error
  when the item is read (the image size is taken from the image, not from ``<size>``).

Malformed XML, a missing ``<filename>`` / ``<name>`` / ``<bndbox>`` / coordinate, a non-numeric or
non-finite coordinate, an empty box or a missing image raise ``ValueError`` naming the XML file, the
object index and the element. Only :mod:`xml.etree.ElementTree` (stdlib) is used.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from detloss.data.boxes import BoxFileDataset

__all__ = ["VocDataset", "parse_voc_xml"]

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _text(elem: ET.Element | None) -> str | None:
    return None if elem is None or elem.text is None else elem.text.strip()


def parse_voc_xml(path: str | Path) -> dict[str, Any]:
    """Parse one VOC XML file: ``filename`` (str), ``names`` (list of str), ``boxes`` (list of pixel
    ``[xmin, ymin, xmax, ymax]``) and ``difficult`` (list of bool), one entry per ``<object>`` in order.

    Raises ``ValueError`` naming the file, the object index and the element (module docstring).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from None
    filename = _text(root.find("filename"))
    if not filename:
        raise ValueError(f"{path}: missing <filename> (the image file name)")
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        where = f"{path}: <object> {i}"
        name = _text(obj.find("name"))
        if not name:
            raise ValueError(f"{where}: missing <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{where} ({name!r}): missing <bndbox>")
        box = []
        for tag in _COORDS:
            raw = _text(bnd.find(tag))
            if raw is None:
                raise ValueError(f"{where} ({name!r}): missing <bndbox><{tag}>")
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{where} ({name!r}): <{tag}> {raw!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{where} ({name!r}): <{tag}> {raw!r} is not finite")
            box.append(v)
        x1, y1, x2, y2 = box
        if x1 < 0 or y1 < 0:
            raise ValueError(f"{where} ({name!r}): <xmin>/<ymin> must be >= 0, got {x1:g}, {y1:g}")
        if x1 >= x2 or y1 >= y2:
            raise ValueError(
                f"{where} ({name!r}): <bndbox> needs xmin < xmax and ymin < ymax, got {x1:g}, {y1:g}, {x2:g}, {y2:g}"
            )
        flag = _text(obj.find("difficult"))
        if flag not in (None, "", "0", "1"):
            raise ValueError(f"{where} ({name!r}): <difficult> must be 0 or 1, got {flag!r}")
        names.append(name)
        boxes.append(box)
        difficult.append(flag == "1")
    return {"filename": filename, "names": names, "boxes": boxes, "difficult": difficult}


class VocDataset(BoxFileDataset):
    """Pascal VOC annotations as a dataset of samples in pixel coordinates (rules in the module docstring).

    Args:
        source: a VOC root (holding ``Annotations/``), a folder of loose ``*.xml`` files, or one ``.xml``.
        split: the ``ImageSets/Main/<split>.txt`` list of a VOC root (ignored for loose files).
        class_names: the classes in label order; default the sorted set of names found.
        num_vertices: ``K`` polygon slots (>= 4: a box becomes its 4-vertex rectangle).

    ``dataset[i]`` is a dict: ``image (3, H, W)`` float32, ``labels (n,)``, ``boxes (n, 4)`` pixel ``xyxy``,
    ``polygons (n, K, 2)``, ``polygon_counts (n,)``, ``is_polygon (n,)`` (all False), ``ignore (n,)`` bool
    (the ``difficult`` objects) and ``path`` (the image, a str). Attributes: ``class_names``,
    ``num_classes``, ``xml_paths``, ``image_paths``.
    """

    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        class_names: Sequence[str] | None = None,
        num_vertices: int = 8,
    ) -> None:
        super().__init__(num_vertices)
        source = Path(source)
        if (source / "Annotations").is_dir():
            self.xml_paths, image_dirs = _standard_layout(source, split)
        elif source.is_dir():
            self.xml_paths = sorted(p for p in source.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
            if not self.xml_paths:
                raise ValueError(f"{source}: no Annotations/ folder and no *.xml files")
            image_dirs = [p.parent for p in self.xml_paths]
        elif source.is_file() and source.suffix.lower() == ".xml":
            self.xml_paths, image_dirs = [source], [source.parent]
        else:
            raise ValueError(f"{source}: not a VOC root (with Annotations/), a folder of .xml files or an .xml file")
        parsed = [parse_voc_xml(p) for p in self.xml_paths]
        index = self._set_classes([n for p in parsed for n in p["names"]], class_names)
        for xml, folder, p in zip(self.xml_paths, image_dirs, parsed, strict=True):
            image = folder / p["filename"]
            if not image.is_file():
                raise ValueError(f"{xml}: <filename> {p['filename']!r}: image {image} not found")
            for i, name in enumerate(p["names"]):
                if name not in index:
                    raise ValueError(f"{xml}: <object> {i}: <name> {name!r} is not in class_names {self.class_names}")
            self._add(image, p["boxes"], [index[n] for n in p["names"]], p["difficult"], xml)


def _standard_layout(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise ValueError(f"{listing}: split list not found (a VOC root lists each split's ids there)")
    xmls = []
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        toks = line.split()
        if not toks:
            continue
        xml = root / "Annotations" / f"{toks[0]}.xml"
        if not xml.is_file():
            raise ValueError(f"{listing}, line {lineno}: annotation {xml} not found")
        xmls.append(xml)
    return xmls, [root / "JPEGImages"] * len(xmls)
