"""R-CNN box/mask head loss: max-IoU assignment of proposals, per-image sampling, cls / box / mask terms.

Each denominator is a named normalizer, reduced across ranks and recorded in the report.

**Mask targets.** For a positive ROI ``(x1, y1, x2, y2)`` and ``S = mask_size``, target pixel
``(i, j)`` is the GT mask's value at the ROI point ``(x1 + (j + 0.5)(x2 - x1)/S, y1 + (i + 0.5)(y2 - y1)/S)``
(pixel-centre sampling, image pixels have their centres at ``k + 0.5``):

* from **polygons** (``polygons (n, K, 2)`` pixel ``x, y`` with ``polygon_counts (n,)``): the point is
  tested against the GT polygon directly in ROI coordinates — inside (or on an edge) of every edge of
  the convex polygon, an exact sign test in float64, vectorized over ROIs, edges and pixels (as
  detectron2 rasterizes polygons per ROI, without going through a full-image bitmap). Polygons must
  be convex (the shapes data are); give a bitmap for other shapes.
* from **bitmaps** (``masks (n, H, W)`` bool): bilinear interpolation of the 0/1 bitmap at the point
  (:func:`torch.nn.functional.grid_sample`, ``align_corners=False``, zeros outside the image), then
  ``>= 0.5`` (as detectron2's ``roi_align`` of bitmasks and mmdet's crop-and-resize do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.ops.box_coder import encode_deltas
from detloss.assign.sampler import rank_in_bucket
from detloss.criteria.sampled import SampledCriterion
from detloss.criteria.target_checks import check_roi_targets
from detloss.criteria.targets import Targets
from detloss.criteria.terms import config_options
from detloss.functional.classification import bce_with_logits, softmax_cross_entropy
from detloss.functional.regression import smooth_l1
from detloss.core.normalize import denominators
from detloss.core.report import LossReport

__all__ = [
    "DEFAULT_NORMALIZERS",
    "DEFAULT_WEIGHTS",
    "ROICriterion",
    "ROITargets",
    "bitmap_mask_targets",
    "polygon_mask_targets",
]

DEFAULT_WEIGHTS = {"cls": 1.0, "box": 1.0, "mask": 1.0}
#: cls: sampled ROIs, as mmdet and detectron2. box: positives, where mmdet and detectron2 divide by the
#: sampled ROIs (``num_samples``). mask: positives, each a per-pixel mean, as both.
DEFAULT_NORMALIZERS = {"cls": "num_samples", "box": "num_pos", "mask": "num_pos"}


def _roi_points(rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre sample points of ``(P, 4)`` ROIs: ``x (P, 1, S)``, ``y (P, S, 1)`` in float64."""
    r = rois.double()
    t = (torch.arange(size, dtype=torch.float64, device=rois.device) + 0.5) / size
    x = r[:, 0, None] + t[None] * (r[:, 2] - r[:, 0])[:, None]
    y = r[:, 1, None] + t[None] * (r[:, 3] - r[:, 1])[:, None]
    return x[:, None, :], y[:, :, None]


def polygon_mask_targets(polygons: Tensor, counts: Tensor, rois: Tensor, size: int) -> Tensor:
    """Convex polygons rasterized in ROI coordinates: ``(P, S, S)`` bool (module docstring).

    Args:
        polygons: ``(P, K, 2)`` pixel ``(x, y)`` vertices of each ROI's GT, either orientation.
        counts: ``(P,)`` valid vertices (the first ``counts[p]``).
        rois: ``(P, 4)`` pixel ``xyxy``.
        size: ``S``.

    Polygons with fewer than 3 vertices or zero area give empty masks.

    >>> tri = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
    >>> polygon_mask_targets(tri, torch.tensor([3]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 4)[0].int()
    tensor([[1, 1, 1, 1],
            [1, 1, 1, 0],
            [1, 1, 0, 0],
            [1, 0, 0, 0]], dtype=torch.int32)
    """
    p, k = polygons.shape[0], polygons.shape[1]
    if p == 0 or k == 0:
        return torch.zeros(p, size, size, dtype=torch.bool, device=polygons.device)
    v = polygons.double()
    counts = counts.to(polygons.device).long()
    idx = torch.arange(k, device=polygons.device)
    valid = idx[None] < counts[:, None]  # (P, K)
    nxt = torch.where(idx[None] + 1 < counts[:, None], idx[None] + 1, torch.zeros_like(idx[None]))
    w = torch.gather(v, 1, nxt[..., None].expand(-1, -1, 2))  # next vertex of each edge
    vx, vy = v.unbind(-1)  # (P, K)
    ex, ey = (w - v).unbind(-1)
    area2 = torch.where(valid, vx * w[..., 1] - w[..., 0] * vy, torch.zeros_like(vx)).sum(-1)  # 2 * signed area
    sign = area2.sign()  # (P,)
    ex, ey = ex * sign[:, None], ey * sign[:, None]
    x, y = _roi_points(rois, size)  # (P, 1, S), (P, S, 1)
    # cross(edge, point - start) >= 0 for every valid edge; (P, K, S, S)
    cross = ex[:, :, None, None] * (y[:, None] - vy[:, :, None, None]) - ey[:, :, None, None] * (
        x[:, None] - vx[:, :, None, None]
    )
    inside = ((cross >= 0) | ~valid[:, :, None, None]).all(1)
    return inside & (sign != 0)[:, None, None] & (counts >= 3)[:, None, None]


def bitmap_mask_targets(masks: Tensor, gt_index: Tensor, rois: Tensor, size: int) -> Tensor:
    """Bitmaps cropped to ROIs by bilinear sampling at the ``S x S`` ROI pixel centres, then ``>= 0.5``.

    Args:
        masks: ``(n, H, W)`` bool (or 0/1) GT masks.
        gt_index: ``(P,)`` which mask each ROI crops.
        rois: ``(P, 4)`` pixel ``xyxy``.
        size: ``S``.

    Returns:
        ``(P, S, S)`` bool.

    The ROIs are grouped by GT so that :func:`torch.nn.functional.grid_sample` reads each mask once:
    memory is ``n x H x W`` plus ``n x (most ROIs of one GT) x S x S``, not ``P x H x W``.

    >>> m = torch.zeros(1, 4, 4, dtype=torch.bool)
    >>> m[0, :, :2] = True
    >>> bitmap_mask_targets(m, torch.tensor([0]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 2).int()
    tensor([[[1, 0],
             [1, 0]]], dtype=torch.int32)
    """
    p, device = gt_index.shape[0], masks.device
    n, h, w = masks.shape
    if p == 0 or n == 0:
        return torch.zeros(p, size, size, dtype=torch.bool, device=device)
    gt_index = gt_index.to(device).long()
    slot = rank_in_bucket(gt_index, torch.arange(p, device=device), n)  # position among its GT's ROIs
    per_gt = int(slot.max()) + 1
    x, y = _roi_points(rois.to(device), size)  # (P, 1, S), (P, S, 1)
    gx = (2.0 * x / w - 1.0).expand(-1, size, -1)
    gy = (2.0 * y / h - 1.0).expand(-1, -1, size)
    grid = torch.full((n, per_gt, size, size, 2), -4.0, dtype=torch.float32, device=device)  # outside: 0
    grid[gt_index, slot] = torch.stack([gx, gy], -1).float()
    sampled = F.grid_sample(
        masks[:, None].float(), grid.view(n, per_gt * size, size, 2), mode="bilinear", align_corners=False
    )
    return sampled.view(n, per_gt, size, size)[gt_index, slot] >= 0.5


@dataclass(frozen=True)
class ROITargets:
    """What :class:`ROICriterion` trains towards. ``P`` = sampled positive ROIs, in ``nonzero(pos)`` order.

    Attributes:
        pos, neg: ``(R,)`` bool sampled positive / negative ROIs.
        gt_index: ``(R,)`` assignment before sampling (GT index within the ROI's image, ``-1`` negative,
            ``-2`` ignored).
        labels: ``(R,)`` classification target: the GT class of positives, ``num_classes`` (background)
            of everything else (only sampled ROIs are trained).
        index: ``(P,)`` ROI index of each sampled positive.
        gt_flat: ``(P,)`` its GT in the concatenation of all images' targets.
        boxes: ``(P, 4)`` its GT box.
    """

    pos: Tensor
    neg: Tensor
    gt_index: Tensor
    labels: Tensor
    index: Tensor
    gt_flat: Tensor
    boxes: Tensor

    @property
    def sampled(self) -> Tensor:
        return self.pos | self.neg


class ROICriterion(SampledCriterion):
    """Loss of an R-CNN box (and mask) head, returning a :class:`LossReport` (``cls``, ``box`` [, ``mask``]).

    ROIs (proposals, with GT boxes added by the model if wanted, as mmdet's ``add_gt_as_proposals``)
    are assigned per image by :class:`MaxIoUAssigner` ``(0.5, 0.5, min_pos_iou=0.5)`` and sampled by
    :class:`RandomSampler` ``(512, 0.25)``; only sampled ROIs are trained (a model that pools only the
    sampled ROIs can call :meth:`assign` first and pass those; with at most ``sample_num`` ROIs per
    image and few positives, everything is sampled).

    * ``cls``: softmax cross-entropy over ``num_classes + 1`` logits; **background is the last index,
      ``num_classes``** (classes ``0 .. C-1`` are objects). Positives' elements are weighted by
      ``fg_weight``; ``label_smoothing`` as in torch. (A sigmoid head encodes background as an all-zero
      target row; a softmax head needs an explicit background class, and this is mmdet's and
      detectron2's placement of it.)
    * ``box``: smooth-L1 (``beta``) between the deltas predicted *for the GT's class* and
      :func:`encode_deltas` of the ROI to its GT with ``box_stds`` (default ``(0.1, 0.1, 0.2, 0.2)``),
      summed over the 4 coordinates — one element per positive. ``box_deltas`` of shape ``(R, 1, 4)``
      is class-agnostic. mmdet and detectron2 divide it by the sampled ROIs: ``box: num_samples``.
    * ``mask``: BCE of the mask logits of the GT's class against the GT mask cropped to the ROI and
      resized to ``S x S`` (module docstring), averaged over the ``S²`` pixels — one element per
      positive, so ``num_pos`` gives mmdet's and detectron2's per-pixel mean. ``(R, 1, S, S)`` is
      class-agnostic.

    Counts provided: ``num_pos`` and ``target_sum`` (sampled positives), ``num_samples`` (sampled ROIs,
    not weighted by ``fg_weight``), ``batch_size``, ``images_with_fg`` (images with a sampled positive),
    ``num_cells`` (``sample_num``, the per-image budget) and each term's ``num_elements``. An image
    without GT contributes sampled negatives; a batch without positive ROI gives ``box`` and ``mask``
    terms equal to ``0 * sum(predictions)``: finite, attached to the graph, zero gradient.

    **Sampling determinism**: as :class:`~detloss.criteria.sampled.SampledCriterion`, keys hashed from
    ``(seed, epoch, image key, index of the ROI among its image's ROIs)``; so the same ROIs in the same
    order per image sample the same way in any batch position or DDP rank.

    Args:
        num_classes: ``C`` object classes.
        weights, normalizers: per term, see :data:`DEFAULT_WEIGHTS`, :data:`DEFAULT_NORMALIZERS`.
        fg_weight: weight of foreground ROIs' classification elements.
        label_smoothing: of the classification target.
        mask_size: ``S``.
        with_mask: ``False`` drops the mask term (then ``mask_logits`` must be ``None``).
        beta, box_stds: box regression settings.
        sample_num, pos_fraction, neg_pos_ub: sampler settings per image.
        pos_iou, neg_iou, min_pos_iou, allow_low_quality: assigner settings.
        seed: sampling seed.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        fg_weight: float = 1.0,
        label_smoothing: float = 0.0,
        mask_size: int = 28,
        with_mask: bool = True,
        beta: float = 1.0,
        box_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        sample_num: int = 512,
        pos_fraction: float = 0.25,
        neg_pos_ub: float = -1,
        pos_iou: float = 0.5,
        neg_iou: float = 0.5,
        min_pos_iou: float = 0.5,
        allow_low_quality: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or mask_size < 1:
            raise ValueError(f"num_classes and mask_size must be >= 1, got {num_classes} and {mask_size}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.setup_sampling(
            beta=beta, box_stds=box_stds, sample_num=sample_num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub,
            pos_iou=pos_iou, neg_iou=neg_iou, min_pos_iou=min_pos_iou, allow_low_quality=allow_low_quality, seed=seed,
        )  # fmt: skip
        self.num_classes = int(num_classes)
        terms = ["cls", "box"] + (["mask"] if with_mask else [])
        self.setup_terms(terms, DEFAULT_WEIGHTS, DEFAULT_NORMALIZERS, weights, normalizers)
        self.fg_weight = float(fg_weight)
        self.label_smoothing = float(label_smoothing)
        self.mask_size = int(mask_size)
        self.with_mask = bool(with_mask)

    @classmethod
    def from_config(cls, cfg: object, num_classes: int, **overrides: object) -> ROICriterion:
        """From a config section whose fields are this class's options (the harness's ``roi`` section; a
        pydantic model, a dataclass or a dict); ``overrides`` (e.g. ``seed``) replace fields."""
        return cls(num_classes, **(config_options(cfg) | overrides))

    @property
    def background(self) -> int:
        """Class index of background in ``cls_logits``: ``num_classes``."""
        return self.num_classes

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        mask_logits: Tensor | None,
        rois: Tensor,
        roi_image: Tensor,
        targets: Targets | Sequence[Mapping[str, Tensor]],
        image_ids: Sequence[int] | Tensor | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> LossReport:
        """Loss of one batch.

        Args:
            cls_logits: ``(R, C + 1)``, background last.
            box_deltas: ``(R, C, 4)`` class-specific (or ``(R, 1, 4)``) ``(dx, dy, dw, dh)``.
            mask_logits: ``(R, C, S, S)`` (or ``(R, 1, S, S)``), or ``None`` without the mask term.
            rois: ``(R, 4)`` pixel ``xyxy`` the predictions were pooled from.
            roi_image: ``(R,)`` int image of each ROI, in ``[0, len(targets))``.
            targets: per image ``{"boxes": (n, 4) xyxy px, "labels": (n,) int in [0, C)}`` plus, for
                the mask term, ``"polygons": (n, K, 2)`` px with optional ``"polygon_counts": (n,)``,
                or ``"masks": (n, H, W)`` bool (images without GT may leave both out). A value out of
                range (non-finite or inverted box, label outside ``[0, C)``, ``roi_image`` outside
                ``[0, B)``, ``polygon_counts`` outside ``[0, K]``) raises ``ValueError`` naming it.
            image_ids: optional ``(B,)`` global image ids for sampling.
            weights: this call's gains, term -> gain, overriding the base :attr:`weights`.

        ``targets`` may also be a :class:`~detloss.criteria.targets.Targets` (``polygons`` or ``masks`` for
        the mask term), read as :meth:`Targets.per_image <detloss.criteria.targets.Targets.per_image>`.
        """
        gains = self.call_weights(weights)
        if isinstance(targets, Targets):
            targets = targets.validate(num_classes=self.num_classes).per_image()
        c, s = self.num_classes, self.mask_size
        check_tensor("cls_logits", cls_logits, ("R", c + 1), floating=True)
        r = cls_logits.shape[0]
        check_tensor("box_deltas", box_deltas, (r, None, 4), floating=True)
        if box_deltas.shape[1] not in (1, c):
            raise ValueError(f"box_deltas must have shape ({r}, {c}, 4) or ({r}, 1, 4), got {tuple(box_deltas.shape)}")
        if self.with_mask:
            check_tensor("mask_logits", mask_logits, (r, None, s, s), floating=True)
            if mask_logits.shape[1] not in (1, c):
                raise ValueError(
                    f"mask_logits must have shape ({r}, {c}, {s}, {s}) or ({r}, 1, {s}, {s}), got "
                    f"{tuple(mask_logits.shape)}"
                )
        elif mask_logits is not None:
            raise ValueError("mask_logits must be None: this criterion was built with with_mask=False")
        t = self.assign(rois, roi_image, targets, image_ids)
        device, b = cls_logits.device, len(targets)
        sampled = t.sampled
        num_pos, num_samples = t.pos.sum(), sampled.sum()
        pos_image = roi_image.to(device).long()[t.index]
        with_fg = torch.zeros(b, device=device).index_add_(0, pos_image, torch.ones(pos_image.shape, device=device))
        shared = self.sampled_counts(num_pos, num_samples, b, (with_fg > 0).sum(), self.sampler.num)
        counts = {"*": shared, "cls": {"num_elements": num_samples}}
        for term in ("box", "mask"):
            counts[term] = {"num_elements": num_pos}
        denom = denominators(self.normalizers, counts, device=device)

        cls_el = softmax_cross_entropy(cls_logits[sampled], t.labels[sampled], label_smoothing=self.label_smoothing)
        cls_w = None
        if self.fg_weight != 1.0:
            cls_w = torch.where(t.pos[sampled], self.fg_weight, 1.0)
        labels = t.labels[t.index]
        box_cls = labels if box_deltas.shape[1] > 1 else torch.zeros_like(labels)
        pred = box_deltas[t.index, box_cls]  # (P, 4)
        target = encode_deltas(rois[t.index].to(pred.dtype), t.boxes.to(pred.dtype), stds=self.box_stds)
        box_el = smooth_l1(pred, target, beta=self.beta).sum(-1)
        terms = {
            "cls": self._term("cls", cls_el, denom, gains=gains, num_pos=num_pos, anchor=cls_logits, weights=cls_w),
            "box": self._term("box", box_el, denom, gains=gains, num_pos=num_pos, anchor=box_deltas),
        }
        if self.with_mask:
            mask_cls = labels if mask_logits.shape[1] > 1 else torch.zeros_like(labels)
            mask_pred = mask_logits[t.index, mask_cls]  # (P, S, S)
            mask_target = self.mask_targets(targets, t, rois).to(mask_pred.dtype)
            mask_el = bce_with_logits(mask_pred, mask_target).mean((-2, -1))
            terms["mask"] = self._term("mask", mask_el, denom, gains=gains, num_pos=num_pos, anchor=mask_logits)
        return LossReport(terms)

    @torch.no_grad()
    def assign(
        self,
        rois: Tensor,
        roi_image: Tensor,
        targets: Targets | Sequence[Mapping[str, Tensor]],
        image_ids: Sequence[int] | Tensor | None = None,
    ) -> ROITargets:
        """Assignment and sampling of ``rois`` (for inspection and tests); arguments as :meth:`forward`."""
        if isinstance(targets, Targets):
            targets = targets.validate(num_classes=self.num_classes).per_image()
        check_tensor("rois", rois, ("R", 4), floating=True)
        r, device = rois.shape[0], rois.device
        check_tensor("roi_image", roi_image, (r,))
        if roi_image.is_floating_point():
            raise ValueError(f"roi_image must be an integer tensor of shape ({r},), got dtype {roi_image.dtype}")
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise ValueError("targets must be a list with one dict per image")
        boxes, labels = [], []
        for i, tgt in enumerate(targets):
            if not isinstance(tgt, Mapping) or "boxes" not in tgt or "labels" not in tgt:
                raise ValueError(f"targets[{i}] must be a dict with 'boxes' (n, 4) and 'labels' (n,)")
            check_tensor(f"targets[{i}]['boxes']", tgt["boxes"], ("n", 4), floating=True)
            check_tensor(f"targets[{i}]['labels']", tgt["labels"], (tgt["boxes"].shape[0],))
            boxes.append(tgt["boxes"].to(device).float())
            labels.append(tgt["labels"].to(device).long())
        b = len(targets)
        roi_image = roi_image.to(device)
        check_roi_targets(roi_image, targets, self.num_classes, with_mask=self.with_mask)
        roi_image = roi_image.long()
        assigned = self.assigner(rois, boxes, labels, box_image=roi_image)
        position = rank_in_bucket(roi_image, torch.arange(r, device=device), max(b, 1))
        keys = self.sample_keys(boxes, image_ids, position, roi_image)
        sample = self.sampler(assigned.gt_index, keys=keys, group=roi_image, num_groups=max(b, 1))
        counts = torch.tensor([x.shape[0] for x in boxes], device=device, dtype=torch.long)
        offsets = counts.cumsum(0) - counts
        index = torch.nonzero(sample.pos).squeeze(1)
        gt_flat = offsets[roi_image[index]] + assigned.gt_index[index] if b else index
        flat = torch.cat(boxes) if b else rois.new_zeros(0, 4)
        cls_target = torch.where(sample.pos, assigned.labels, torch.full_like(assigned.labels, self.num_classes))
        return ROITargets(
            pos=sample.pos,
            neg=sample.neg,
            gt_index=assigned.gt_index,
            labels=cls_target,
            index=index,
            gt_flat=gt_flat,
            boxes=flat[gt_flat],
        )

    def mask_targets(self, targets: Sequence[Mapping[str, Tensor]], t: ROITargets, rois: Tensor) -> Tensor:
        """``(P, S, S)`` bool mask targets of the sampled positives (module docstring).

        Every image with GT needs ``polygons`` (all of them) or ``masks`` (all of them); images without
        GT may leave both out.
        """
        device, s, p = rois.device, self.mask_size, t.index.shape[0]
        pos_rois = rois[t.index].detach()
        given = [(i, tgt) for i, tgt in enumerate(targets) if tgt["boxes"].shape[0] > 0]
        if not given:
            return torch.zeros(p, s, s, dtype=torch.bool, device=device)
        # images without GT add no rows, so the flat GT index t.gt_flat also indexes these concatenations
        if all("polygons" in tgt for _, tgt in given):
            for i, tgt in given:
                n = tgt["boxes"].shape[0]
                check_tensor(f"targets[{i}]['polygons']", tgt["polygons"], (n, None, 2), floating=True)
                if "polygon_counts" in tgt:
                    check_tensor(f"targets[{i}]['polygon_counts']", tgt["polygon_counts"], (n,))
            k = max(int(tgt["polygons"].shape[1]) for _, tgt in given)
            polys = [
                F.pad(tgt["polygons"].to(device).double(), (0, 0, 0, k - tgt["polygons"].shape[1])) for _, tgt in given
            ]
            counts = [
                tgt["polygon_counts"].to(device).long()
                if "polygon_counts" in tgt
                else torch.full((tgt["boxes"].shape[0],), tgt["polygons"].shape[1], dtype=torch.long, device=device)
                for _, tgt in given
            ]
            poly_flat, count_flat = torch.cat(polys), torch.cat(counts)
            return polygon_mask_targets(poly_flat[t.gt_flat], count_flat[t.gt_flat], pos_rois, s)
        if all("masks" in tgt for _, tgt in given):
            for i, tgt in given:
                check_tensor(f"targets[{i}]['masks']", tgt["masks"], (tgt["boxes"].shape[0], None, None))
            h = max(int(tgt["masks"].shape[1]) for _, tgt in given)
            w = max(int(tgt["masks"].shape[2]) for _, tgt in given)
            # pad at the bottom / right: pixel coordinates unchanged, zeros outside each image
            masks = [
                F.pad(tgt["masks"].to(device).float(), (0, w - tgt["masks"].shape[2], 0, h - tgt["masks"].shape[1]))
                for _, tgt in given
            ]
            return bitmap_mask_targets(torch.cat(masks), t.gt_flat, pos_rois, s)
        raise ValueError(
            "the mask term needs, in the targets of every image with objects, 'polygons' (n, K, 2) "
            "[+ 'polygon_counts' (n,)] or 'masks' (n, H, W)"
        )
