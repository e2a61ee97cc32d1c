"""The one ground-truth type every criterion takes: :class:`Targets`, flat over the objects of a batch, boxes
in pixel ``xyxy``; built from the YOLO-layout dict (normalized ``cxcywh``) or from per-image pixel dicts, and
converted to what each criterion needs (padded per image, per-image lists) here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.criteria.target_checks import ValueChecks

__all__ = ["PaddedTargets", "Targets", "pad_targets"]


@dataclass(frozen=True)
class PaddedTargets:
    """Ground truth padded to ``M`` (the most objects in one image) slots per image.

    Attributes:
        labels: ``(B, M)`` int64 class ids (0 in empty slots).
        boxes: ``(B, M, 4)`` pixel ``xyxy`` (0 in empty slots).
        mask: ``(B, M)`` bool, real objects.
        polygons: ``(B, M, K, 2)`` pixel vertices, or ``None``.
        polygon_valid: ``(B, M, K)`` bool valid vertices, or ``None``.
    """

    labels: Tensor
    boxes: Tensor
    mask: Tensor
    polygons: Tensor | None = None
    polygon_valid: Tensor | None = None


@dataclass(frozen=True, eq=False)
class Targets:
    """Ground truth of a batch of ``B`` images: ``N`` objects, flat, in pixels.

    Attributes:
        batch_idx: ``(N,)`` int64 image of each object, in ``[0, B)``.
        cls: ``(N,)`` int64 class of each object.
        boxes: ``(N, 4)`` float32 pixel ``x1, y1, x2, y2`` (image pixels span ``[0, w] x [0, h]``).
        batch_size: ``B`` (images without objects count too).
        image_hw: ``(h, w)`` image size in pixels, or ``None`` when unknown (per-image pixel input).
        polygons: optional ``(N, K, 2)`` float32 pixel ``x, y`` vertices.
        polygon_valid: ``(N, K)`` bool valid vertices (with ``polygons``; the valid ones first, so
            :attr:`polygon_counts` is how many).
        masks: optional ``(N, H, W)`` bool pixel bitmaps (the ROI mask term without polygons).

    Build it with :meth:`from_dict` (the YOLO layout: ``batch_idx``, ``cls``, normalized ``cxcywh``
    ``bboxes``) or :meth:`from_per_image` (a list of per-image ``boxes``/``labels`` dicts in pixels);
    those check every value (one host sync). A ``Targets`` built directly is checked for shapes only;
    :meth:`validate` checks its values (the criteria call it).

    Example:
        >>> t = Targets.from_dict({"batch_idx": torch.tensor([1]), "cls": torch.tensor([2]),
        ...                        "bboxes": torch.tensor([[0.5, 0.5, 0.25, 0.5]])}, 2, (64, 128))
        >>> t.boxes, [len(x["boxes"]) for x in t.per_image()]
        (tensor([[48., 16., 80., 48.]]), [0, 1])
        >>> t.cxcywh_normalized()
        tensor([[0.5000, 0.5000, 0.2500, 0.5000]])
    """

    batch_idx: Tensor
    cls: Tensor
    boxes: Tensor
    batch_size: int
    image_hw: tuple[float, float] | None = None
    polygons: Tensor | None = None
    polygon_valid: Tensor | None = None
    masks: Tensor | None = None
    # the most objects in one image when a constructor already read it (saves the padding a host sync)
    max_per_image: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_tensor("targets.boxes", self.boxes, ("N", 4), floating=True)
        n = self.boxes.shape[0]
        check_tensor("targets.batch_idx", self.batch_idx, (n,))
        check_tensor("targets.cls", self.cls, (n,))
        if self.batch_idx.is_floating_point() or self.cls.is_floating_point():
            raise ValueError(
                "targets.batch_idx and targets.cls must be integer tensors (Targets.from_dict accepts integral floats)"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(f"targets.batch_size must be an int >= 0, got {self.batch_size!r}")
        if (self.polygons is None) != (self.polygon_valid is None):
            raise ValueError("targets.polygons (N, K, 2) and targets.polygon_valid (N, K) come together")
        if self.polygons is not None:
            check_tensor("targets.polygons", self.polygons, (n, "K", 2), floating=True)
            check_tensor("targets.polygon_valid", self.polygon_valid, (n, self.polygons.shape[1]))
            if self.polygon_valid.dtype != torch.bool:
                raise ValueError(f"targets.polygon_valid must be a bool tensor, got dtype {self.polygon_valid.dtype}")
        if self.masks is not None:
            check_tensor("targets.masks", self.masks, (n, "H", "W"))

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        targets: Mapping[str, Tensor],
        batch_size: int,
        image_hw: tuple[float, float],
        *,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
    ) -> Targets:
        """From flat YOLO-layout targets (what :func:`detloss.data.collate.collate` gives).

        Args:
            targets: ``batch_idx (N,)`` image index, ``cls (N,)`` or ``(N, 1)`` class, ``bboxes (N, 4)``
                normalized ``cx, cy, w, h``; optionally ``polygons (N, K, 2)`` normalized ``x, y`` with
                ``polygon_valid (N, K)`` bool or ``polygon_counts (N,)`` (valid vertices first).
            batch_size: ``B``; ``batch_idx`` must lie in ``[0, B)``.
            image_hw: image ``(height, width)`` in pixels: normalized coordinates are scaled by it.
            num_classes: ``C``, if known: ``cls`` must lie in ``[0, C)``.
            device: where the result lives (default: that of ``bboxes``).

        Raises:
            ValueError: naming the key, the first bad row and the expected range, for a ``batch_idx`` or
                ``cls`` that is not an integer in range (float values are accepted if integral), a box
                that is not finite or has ``w < 0`` or ``h < 0``, a ``polygon_counts`` outside ``[0, K]``,
                a ``polygon_valid`` that is not 0/1, or a non-finite valid polygon vertex. Every check
                and the most objects per image are read from the device together, in one sync.
        """
        if not isinstance(targets, Mapping):
            got = type(targets).__name__
            raise ValueError(f"targets must be a Targets or a dict with 'batch_idx', 'cls', 'bboxes', got {got}")
        for key in ("batch_idx", "cls", "bboxes"):
            if key not in targets:
                raise ValueError(
                    f"targets must contain 'batch_idx' (N,), 'cls' (N,) and 'bboxes' (N, 4); missing {key!r}"
                )
        check_tensor("targets['bboxes']", targets["bboxes"], ("N", 4), floating=True)
        n = targets["bboxes"].shape[0]
        check_tensor("targets['batch_idx']", targets["batch_idx"].reshape(-1), (n,))
        check_tensor("targets['cls']", targets["cls"].reshape(-1), (n,))
        device = targets["bboxes"].device if device is None else torch.device(device)
        raw_idx = targets["batch_idx"].reshape(-1).to(device)
        raw_cls = targets["cls"].reshape(-1).to(device)
        raw_boxes = targets["bboxes"].to(device)
        checks = ValueChecks()
        bad_idx = checks.integers("targets['batch_idx']", raw_idx, 0, batch_size)
        checks.integers("targets['cls']", raw_cls, 0, num_classes)
        checks.boxes("targets['bboxes']", raw_boxes, "cxcywh")
        if "polygons" in targets:
            check_tensor("targets['polygons']", targets["polygons"], (n, "K", 2), floating=True)
            k = targets["polygons"].shape[1]
            raw_polygons = targets["polygons"].to(device)
            vertex_valid = _vertex_mask(targets, n, k, device, checks)
            checks.finite_points("targets['polygons']", raw_polygons, where=vertex_valid)

        # Rows with a bad index are counted in an extra bucket, so the counts exist before the one read
        # that both checks every row and fetches the most objects per image.
        idx = torch.where(bad_idx, batch_size, raw_idx.long())
        buckets = torch.zeros(batch_size + 1, dtype=torch.long, device=device)
        per_image = buckets.index_add_(0, idx, torch.ones_like(idx))[:batch_size]
        (m,) = checks.verify(per_image.max() if batch_size else per_image.new_zeros(()))

        h, w = image_hw
        scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
        cxcywh = raw_boxes.float() * scale
        xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
        polygons = polygon_valid = None
        if "polygons" in targets:
            polygons, polygon_valid = raw_polygons.float() * scale[:2], vertex_valid
        return cls(idx, raw_cls.long(), xyxy, batch_size, (h, w), polygons, polygon_valid, max_per_image=m)

    @classmethod
    def from_per_image(
        cls,
        images: Sequence[Mapping[str, Tensor]],
        image_hw: tuple[float, float] | None = None,
        *,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
    ) -> Targets:
        """From one dict per image, in pixels (what :class:`ROICriterion` took): ``boxes (n, 4)`` ``xyxy``,
        ``labels (n,)`` and optionally ``polygons (n, K, 2)`` with ``polygon_counts (n,)`` (all ``K``
        valid without it) or ``masks (n, H, W)`` bool; images without objects may leave these out.
        Polygons of different ``K`` are padded to the largest, bitmaps at the bottom/right to the largest
        (pixel coordinates unchanged). Bad values raise ``ValueError`` naming ``images[i][key]``."""
        if isinstance(images, Mapping) or not isinstance(images, Sequence):
            raise ValueError("images must be a list with one dict per image")
        for i, img in enumerate(images):
            if not isinstance(img, Mapping) or "boxes" not in img or "labels" not in img:
                raise ValueError(f"images[{i}] must be a dict with 'boxes' (n, 4) and 'labels' (n,)")
            check_tensor(f"images[{i}]['boxes']", img["boxes"], ("n", 4), floating=True)
            check_tensor(f"images[{i}]['labels']", img["labels"], (img["boxes"].shape[0],))
        if device is None:
            device = images[0]["boxes"].device if images else torch.device("cpu")
        device = torch.device(device)
        given = [img for img in images if img["boxes"].shape[0] > 0]
        checks = ValueChecks()
        for i, img in enumerate(images):
            checks.boxes(f"images[{i}]['boxes']", img["boxes"].to(device), "xyxy")
            checks.integers(f"images[{i}]['labels']", img["labels"].to(device), 0, num_classes)
        polygons = polygon_valid = masks = None
        if given and any("polygons" in img for img in given):
            polygons, polygon_valid = _stack_polygons(images, device, checks)
        if given and polygons is None and any("masks" in img for img in given):
            masks = _stack_masks(images, device)
        checks.verify()
        sizes = [img["boxes"].shape[0] for img in images]
        counts = torch.tensor(sizes, dtype=torch.long, device=device)
        batch_idx = torch.repeat_interleave(torch.arange(len(images), device=device), counts)
        cat = lambda key, empty: torch.cat([img[key].to(device) for img in images]) if images else empty  # noqa: E731
        boxes = cat("boxes", torch.zeros(0, 4, device=device)).float()
        labels = cat("labels", torch.zeros(0, dtype=torch.long, device=device)).long()
        hw = None if image_hw is None else tuple(image_hw)
        return cls(batch_idx, labels, boxes, len(images), hw, polygons, polygon_valid, masks, max(sizes, default=0))

    # -- checks and conversions --------------------------------------------------------------

    def validate(self, *, num_classes: int | None = None, batch_size: int | None = None) -> Targets:
        """Check the values (one host sync) and return ``self``: ``batch_idx`` in ``[0, B)``, ``cls`` in
        ``[0, C)`` when ``num_classes`` is given, finite ``x1 <= x2``, ``y1 <= y2`` boxes, finite valid
        polygon vertices; and ``batch_size`` equal to the criterion's batch when given."""
        if batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"targets.batch_size is {self.batch_size} but the predictions hold {batch_size} images")
        checks = ValueChecks()
        checks.integers("targets.batch_idx", self.batch_idx, 0, self.batch_size)
        checks.integers("targets.cls", self.cls, 0, num_classes)
        checks.boxes("targets.boxes", self.boxes, "xyxy")
        if self.polygons is not None:
            checks.finite_points("targets.polygons", self.polygons, where=self.polygon_valid)
        checks.verify()
        return self

    def to(self, device: torch.device | str) -> Targets:
        """The same targets on ``device``."""
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(
            self,
            batch_idx=self.batch_idx.to(device),
            cls=self.cls.to(device),
            boxes=self.boxes.to(device),
            polygons=move(self.polygons),
            polygon_valid=move(self.polygon_valid),
            masks=move(self.masks),
        )

    @property
    def polygon_counts(self) -> Tensor | None:
        """``(N,)`` int64 valid vertices per polygon, or ``None`` without polygons."""
        return None if self.polygon_valid is None else self.polygon_valid.sum(-1)

    def xyxy_pixels(self) -> Tensor:
        """``(N, 4)`` pixel ``x1, y1, x2, y2`` (the stored form)."""
        return self.boxes

    def cxcywh_normalized(self) -> Tensor:
        """``(N, 4)`` ``cx, cy, w, h`` as fractions of the image size (the YOLO layout); needs ``image_hw``."""
        if self.image_hw is None:
            raise ValueError("targets.image_hw is None: give image_hw to Targets.from_per_image to normalize boxes")
        h, w = self.image_hw
        scale = torch.tensor([w, h, w, h], device=self.boxes.device, dtype=torch.float32)
        xy, x2y2 = self.boxes[:, :2], self.boxes[:, 2:]
        return torch.cat(((xy + x2y2) / 2, x2y2 - xy), 1) / scale

    def per_image(self) -> list[dict[str, Tensor]]:
        """One dict per image: ``boxes (n, 4)`` pixel ``xyxy``, ``labels (n,)`` and, when present,
        ``polygons (n, K, 2)`` with ``polygon_counts (n,)``, or ``masks (n, H, W)``; objects in their
        original order."""
        out = []
        for b in range(self.batch_size):
            keep = self.batch_idx == b
            item = {"boxes": self.boxes[keep], "labels": self.cls[keep]}
            if self.polygons is not None:
                item["polygons"] = self.polygons[keep]
                item["polygon_counts"] = self.polygon_valid[keep].sum(-1)
            if self.masks is not None:
                item["masks"] = self.masks[keep]
            out.append(item)
        return out

    def padded(self) -> PaddedTargets:
        """Scattered into ``M`` slots per image, ``M`` the most objects in one image, in original order."""
        b, device, n = self.batch_size, self.boxes.device, self.boxes.shape[0]
        idx = self.batch_idx.long()
        per_image = torch.zeros(b, dtype=torch.long, device=device).index_add_(0, idx, torch.ones_like(idx))
        m = self.max_per_image
        if m is None:
            m = int(per_image.max()) if b else 0
        order = torch.argsort(idx, stable=True)
        starts = torch.cumsum(per_image, 0) - per_image
        slot = torch.empty_like(idx)
        slot[order] = torch.arange(n, device=device) - starts[idx[order]]

        labels = torch.zeros(b, m, dtype=torch.long, device=device)
        boxes = torch.zeros(b, m, 4, device=device)
        mask = torch.zeros(b, m, dtype=torch.bool, device=device)
        labels[idx, slot] = self.cls
        boxes[idx, slot] = self.boxes.float()
        mask[idx, slot] = True
        polygons = polygon_valid = None
        if self.polygons is not None:
            k = self.polygons.shape[1]
            polygons = torch.zeros(b, m, k, 2, device=device)
            polygon_valid = torch.zeros(b, m, k, dtype=torch.bool, device=device)
            polygons[idx, slot] = self.polygons.float()
            polygon_valid[idx, slot] = self.polygon_valid
        return PaddedTargets(labels, boxes, mask, polygons, polygon_valid)


def pad_targets(
    targets: Mapping[str, Tensor],
    batch_size: int,
    image_hw: tuple[float, float],
    device: torch.device,
    num_classes: int | None = None,
) -> PaddedTargets:
    """Flat YOLO targets padded per image in pixels: :meth:`Targets.from_dict` then :meth:`Targets.padded`."""
    return Targets.from_dict(targets, batch_size, image_hw, num_classes=num_classes, device=device).padded()


def _vertex_mask(targets: Mapping[str, Tensor], n: int, k: int, device: torch.device, checks: ValueChecks) -> Tensor:
    if "polygon_valid" in targets:
        valid = targets["polygon_valid"]
        check_tensor("targets['polygon_valid']", valid, (n, k))
        checks.bool_mask("targets['polygon_valid']", valid.to(device))
        return valid.to(device=device, dtype=torch.bool)
    if "polygon_counts" in targets:
        check_tensor("targets['polygon_counts']", targets["polygon_counts"], (n,))
        counts = targets["polygon_counts"].to(device)
        checks.integers("targets['polygon_counts']", counts, 0, k, closed=True)
        return torch.arange(k, device=device) < counts.view(-1, 1)
    return torch.ones(n, k, dtype=torch.bool, device=device)


def _stack_polygons(
    images: Sequence[Mapping[str, Tensor]], device: torch.device, checks: ValueChecks
) -> tuple[Tensor, Tensor]:
    """Per-image pixel polygons padded to the largest ``K`` and concatenated, with their valid vertices."""
    for i, img in enumerate(images):
        n = img["boxes"].shape[0]
        if n and "polygons" not in img:
            raise ValueError(f"images[{i}] has objects but no 'polygons' (n, K, 2), which other images have")
        if "polygons" in img:
            check_tensor(f"images[{i}]['polygons']", img["polygons"], (n, None, 2), floating=True)
            if "polygon_counts" in img:
                check_tensor(f"images[{i}]['polygon_counts']", img["polygon_counts"], (n,))
    k = max(int(img["polygons"].shape[1]) for img in images if "polygons" in img)
    polys, valid = [], []
    for i, img in enumerate(images):
        n = img["boxes"].shape[0]
        if "polygons" not in img:
            polys.append(torch.zeros(0, k, 2, device=device))
            valid.append(torch.zeros(0, k, dtype=torch.bool, device=device))
            continue
        ki = img["polygons"].shape[1]
        polys.append(F.pad(img["polygons"].to(device).float(), (0, 0, 0, k - ki)))
        counts = img["polygon_counts"].to(device) if "polygon_counts" in img else torch.full((n,), ki, device=device)
        checks.integers(f"images[{i}]['polygon_counts']", counts, 0, ki, closed=True)
        valid.append(torch.arange(k, device=device) < counts.long().view(-1, 1))
    return torch.cat(polys), torch.cat(valid)


def _stack_masks(images: Sequence[Mapping[str, Tensor]], device: torch.device) -> Tensor:
    """Per-image bitmaps padded at the bottom/right to the largest ``H, W`` and concatenated."""
    for i, img in enumerate(images):
        n = img["boxes"].shape[0]
        if n and "masks" not in img:
            raise ValueError(f"images[{i}] has objects but no 'masks' (n, H, W), which other images have")
        if "masks" in img:
            check_tensor(f"images[{i}]['masks']", img["masks"], (n, None, None))
    h = max(int(img["masks"].shape[1]) for img in images if "masks" in img)
    w = max(int(img["masks"].shape[2]) for img in images if "masks" in img)
    out = []
    for img in images:
        if "masks" not in img:
            out.append(torch.zeros(0, h, w, dtype=torch.bool, device=device))
            continue
        m = img["masks"].to(device)
        out.append(F.pad(m.float(), (0, w - m.shape[2], 0, h - m.shape[1])) >= 0.5)
    return torch.cat(out)
