"""A small two-stage detector (Faster / Mask R-CNN) for CPU demos of :class:`RPNCriterion` and :class:`ROICriterion`.

One feature level at stride 8 (a stride-16 stage is upsampled and fused back into it, for a larger
receptive field at the price of one extra conv), an RPN over ``len(anchor_sizes) * len(anchor_ratios)``
anchors per cell, and R-CNN box and mask heads on :func:`roi_align` features.

Conventions (what the criteria expect):

* **Anchors** ``(A, 4)`` pixel ``xyxy``, ``A = h * w * k`` with ``(h, w)`` the stride-8 grid
  (``ceil(H / 8), ceil(W / 8)``) and ``k`` anchors per cell; flat index
  ``(row * w + col) * k + size_index * len(ratios) + ratio_index``. The anchor of cell ``(row, col)``
  is centred on the cell centre ``((col + 0.5) * 8, (row + 0.5) * 8)`` with area ``size²`` and
  ``height / width = ratio``: ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)``.
* **RPN deltas** are :func:`encode_deltas` with ``stds = (1, 1, 1, 1)`` (:data:`RPN_STDS`, the
  :class:`RPNCriterion` default).
* **R-CNN deltas** are class-specific ``(R, C, 4)`` with ``stds = (0.1, 0.1, 0.2, 0.2)``
  (:data:`ROI_STDS`, the :class:`ROICriterion` default); classification logits ``(R, C + 1)`` with
  **background last**; mask logits ``(R, C, S, S)``.

A training step::

    out = model(images)
    rpn = rpn_criterion(out["objectness"], out["rpn_deltas"], model.anchors(hw, images.device), gt_boxes)
    rois, roi_image = model.proposals(out, hw, gt_boxes)          # no grad, GT appended
    pos = roi_criterion.assign(rois, roi_image, targets).index    # optional: mask head on positives only
    cls, box, mask = model.roi_heads(out["features"], rois, roi_image, mask_index=pos)
    roi = roi_criterion(cls, box, mask, rois, roi_image, targets)

(pass the same ``image_ids`` to ``assign`` and the criterion call if you pass any.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detloss.ops.box_coder import decode_deltas
from detloss.ops.nms import batched_nms, nms
from detloss.ops.roi_align import roi_align
from detloss.models.tiny_yolo import Block, ConvNormAct

__all__ = ["ROI_STDS", "RPN_STDS", "TinyTwoStage"]

#: Delta normalisation of the RPN (``RPNCriterion(box_stds=...)`` default).
RPN_STDS = (1.0, 1.0, 1.0, 1.0)
#: Delta normalisation of the R-CNN box head (``ROICriterion(box_stds=...)`` default).
ROI_STDS = (0.1, 0.1, 0.2, 0.2)


def _grid_hw(image_hw: Sequence[int], stride: int) -> tuple[int, int]:
    """Output size of ``log2(stride)`` stride-2 ``3x3`` convs with padding 1: ``ceil`` at every halving."""
    h, w = int(image_hw[0]), int(image_hw[1])
    for _ in range(int(math.log2(stride))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _clip(boxes: Tensor, image_hw: Sequence[int]) -> Tensor:
    """``xyxy`` boxes clipped to ``[0, W] x [0, H]``."""
    h, w = float(image_hw[0]), float(image_hw[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)), -1)


class _Backbone(nn.Module):
    """Stride-8 features ``(B, 4 * width, ceil(H / 8), ceil(W / 8))`` with a stride-16 stage fused back in."""

    def __init__(self, width: int) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(ConvNormAct(3, c1, 3, 2), ConvNormAct(c1, c2, 3, 2), Block(c2))  # stride 4
        self.stage8 = nn.Sequential(ConvNormAct(c2, c3, 3, 2), Block(c3))
        self.stage16 = nn.Sequential(ConvNormAct(c3, c3, 3, 2), Block(c3))
        self.fuse = ConvNormAct(2 * c3, c3, 3)
        self.out_channels = c3

    def forward(self, images: Tensor) -> Tensor:
        p8 = self.stage8(self.stem(images))
        p16 = self.stage16(p8)
        up = nn.functional.interpolate(p16, size=p8.shape[-2:], mode="nearest")
        return self.fuse(torch.cat((p8, up), 1))


class TinyTwoStage(nn.Module):
    """A small Mask R-CNN: stride-8 backbone, RPN, ROI-Align box and mask heads (module docstring).

    Args:
        num_classes: ``C`` object classes (background is the extra, last logit).
        width: channels of the first stage; features have ``4 * width``.
        mask_size: ``S`` of the mask logits (even: the head pools ``S / 2`` and upsamples x2).
        pool_size: ROI Align output of the box head.
        anchor_sizes: anchor sides in pixels (square root of the area).
        anchor_ratios: anchor ``height / width``.
        proposals_train, proposals_test: proposals kept per image after NMS in training / eval mode.
        rpn_nms: IoU threshold of the proposal NMS.
        pre_nms_top_k: highest-objectness anchors per image that enter the proposal NMS.
        min_proposal_size: proposals narrower or lower than this (pixels, after clipping) are dropped.

    Example:
        >>> model = TinyTwoStage(num_classes=3, width=8)
        >>> out = model(torch.zeros(1, 3, 64, 64))
        >>> out["features"].shape, out["objectness"].shape, out["rpn_deltas"].shape
        (torch.Size([1, 32, 8, 8]), torch.Size([1, 576]), torch.Size([1, 576, 4]))
    """

    stride = 8
    rpn_stds = RPN_STDS
    box_stds = ROI_STDS

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        mask_size: int = 14,
        pool_size: int = 7,
        anchor_sizes: Sequence[float] = (16, 32, 64),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        proposals_train: int = 256,
        proposals_test: int = 100,
        rpn_nms: float = 0.7,
        *,
        pre_nms_top_k: int = 1000,
        min_proposal_size: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be >= 1, got {num_classes} and {width}")
        if mask_size < 2 or mask_size % 2:
            raise ValueError(
                f"mask_size must be an even int >= 2 (pooled at mask_size // 2, upsampled x2), got {mask_size}"
            )
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        if not anchor_sizes or not anchor_ratios or min(anchor_sizes) <= 0 or min(anchor_ratios) <= 0:
            raise ValueError(
                f"anchor_sizes and anchor_ratios must be non-empty and > 0, got {anchor_sizes}, {anchor_ratios}"
            )
        if min(proposals_train, proposals_test, pre_nms_top_k) < 1:
            raise ValueError("proposals_train, proposals_test and pre_nms_top_k must be >= 1")
        self.num_classes = int(num_classes)
        self.mask_size, self.pool_size = int(mask_size), int(pool_size)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
        self.proposals_train, self.proposals_test = int(proposals_train), int(proposals_test)
        self.rpn_nms, self.pre_nms_top_k = float(rpn_nms), int(pre_nms_top_k)
        self.min_proposal_size = float(min_proposal_size)

        self.backbone = _Backbone(width)
        c, k, fc, m = self.backbone.out_channels, self.anchors_per_cell, 8 * width, 2 * width
        self.rpn_conv = ConvNormAct(c, c, 3)
        self.rpn_obj = nn.Conv2d(c, k, 1)
        self.rpn_box = nn.Conv2d(c, 4 * k, 1)
        self.box_fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * pool_size**2, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
        )
        self.cls_score = nn.Linear(fc, num_classes + 1)
        self.box_pred = nn.Linear(fc, 4 * num_classes)
        self.mask_convs = nn.Sequential(ConvNormAct(c, m, 3), ConvNormAct(m, m, 3))
        self.mask_up = nn.Sequential(nn.ConvTranspose2d(m, m, 2, 2), nn.ReLU(inplace=True))
        self.mask_pred = nn.Conv2d(m, num_classes, 1)
        self._init_heads()

    @property
    def anchors_per_cell(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    def _init_heads(self) -> None:
        # Small RPN / box outputs at the start (detectron2): proposals are the anchors, boxes the proposals.
        for layer, std in ((self.rpn_obj, 0.01), (self.rpn_box, 0.01), (self.cls_score, 0.01), (self.box_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        # Background prior 0.99: most sampled ROIs are background, so the first steps' classification
        # loss is not dominated by a confident-nothing C+1-way uniform guess.
        with torch.no_grad():
            self.cls_score.bias[-1] = math.log(0.99 * self.num_classes / 0.01)

    def head_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of one part: ``"backbone"``, ``"rpn"``, ``"box"``, ``"mask"``; ``[]`` for other names."""
        parts: dict[str, list[nn.Module]] = {
            "backbone": [self.backbone],
            "rpn": [self.rpn_conv, self.rpn_obj, self.rpn_box],
            "box": [self.box_fc, self.cls_score, self.box_pred],
            "mask": [self.mask_convs, self.mask_up, self.mask_pred],
        }
        return [p for module in parts.get(name, []) for p in module.parameters()]

    # ------------------------------------------------------------------------------------------------
    # RPN
    # ------------------------------------------------------------------------------------------------
    def anchors(self, image_hw: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Anchors ``(A, 4)`` float32 pixel ``xyxy`` for images of size ``image_hw = (H, W)`` (module docstring)."""
        h, w = _grid_hw(image_hw, self.stride)
        sizes = torch.tensor(self.anchor_sizes, dtype=torch.float64)
        ratios = torch.tensor(self.anchor_ratios, dtype=torch.float64)
        half_w = (sizes[:, None] / ratios.sqrt()[None, :]).flatten() / 2  # (k,) size-major, ratio-minor
        half_h = (sizes[:, None] * ratios.sqrt()[None, :]).flatten() / 2
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * self.stride
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * self.stride
        cy, cx = (v.reshape(-1, 1) for v in torch.meshgrid(cy, cx, indexing="ij"))  # (h * w, 1) row-major
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), -1)  # (h * w, k, 4)
        return boxes.reshape(-1, 4).to(device=device, dtype=torch.float32)

    @staticmethod
    def rpn_layout(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        """Conv outputs ``(B, k, h, w)`` and ``(B, 4k, h, w)`` -> ``(B, A)`` and ``(B, A, 4)`` in anchor order."""
        b, k, h, w = objectness.shape
        obj = objectness.permute(0, 2, 3, 1).reshape(b, h * w * k)
        box = deltas.view(b, k, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * k, 4)
        return obj, box

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images (B, 3, H, W)`` -> ``features (B, 4 width, h, w)``, ``objectness (B, A)``, ``rpn_deltas (B, A, 4)``.

        ``h, w = ceil(H / 8), ceil(W / 8)``; ``A = h w k`` in the anchor order of :meth:`anchors`.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (B, 3, H, W), got {shape}")
        features = self.backbone(images)
        t = self.rpn_conv(features)
        objectness, rpn_deltas = self.rpn_layout(self.rpn_obj(t), self.rpn_box(t))
        return {"features": features, "objectness": objectness, "rpn_deltas": rpn_deltas}

    @torch.no_grad()
    def proposals(
        self, out: dict[str, Tensor], image_hw: Sequence[int], gt_boxes: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Proposals of a batch: ``rois (R, 4)`` float32 pixel ``xyxy`` and ``roi_image (R,)`` int64 (no grad).

        Per image: decode the RPN deltas on the anchors (:data:`RPN_STDS`), clip to the image, take the
        ``pre_nms_top_k`` highest objectness, drop boxes smaller than ``min_proposal_size``, NMS at
        ``rpn_nms``, keep the first ``proposals_train`` (training mode) / ``proposals_test`` (eval mode),
        in decreasing objectness; then, if ``gt_boxes`` (per image ``(n_i, 4)`` pixel ``xyxy``) is given,
        that image's GT boxes are appended (mmdet's ``add_gt_as_proposals``). ROIs are grouped by image.
        """
        objectness, deltas = out["objectness"], out["rpn_deltas"]
        anchors = self.anchors(image_hw, objectness.device)
        b, a = objectness.shape[0], anchors.shape[0]
        if objectness.shape != (b, a) or deltas.shape != (b, a, 4):
            raise ValueError(
                f"out['objectness'] and out['rpn_deltas'] must have shapes ({b}, {a}) and ({b}, {a}, 4) for "
                f"image_hw {tuple(image_hw)}, got {tuple(objectness.shape)} and {tuple(deltas.shape)}"
            )
        if gt_boxes is not None and (isinstance(gt_boxes, Tensor) or len(gt_boxes) != b):
            raise ValueError(f"gt_boxes must be a list of {b} tensors (n_i, 4), one per image")
        keep_n = self.proposals_train if self.training else self.proposals_test
        scores, top = objectness.float().topk(min(self.pre_nms_top_k, a), dim=1)  # (B, k), sorted
        boxes = _clip(decode_deltas(anchors[top], deltas.float().gather(1, top[..., None].expand(-1, -1, 4))), image_hw)
        rois, roi_image = [], []
        for i in range(b):
            bx, sc = boxes[i], scores[i]
            big = ((bx[:, 2] - bx[:, 0]) >= self.min_proposal_size) & ((bx[:, 3] - bx[:, 1]) >= self.min_proposal_size)
            bx, sc = bx[big], sc[big]
            bx = bx[nms(bx, sc, self.rpn_nms)[:keep_n]]
            if gt_boxes is not None:
                gt = gt_boxes[i]
                if gt.dim() != 2 or gt.shape[-1] != 4:
                    raise ValueError(f"gt_boxes[{i}] must have shape (n, 4), got {tuple(gt.shape)}")
                bx = torch.cat((bx, gt.to(bx.device, bx.dtype)))
            rois.append(bx)
            roi_image.append(torch.full((bx.shape[0],), i, dtype=torch.long, device=bx.device))
        return torch.cat(rois), torch.cat(roi_image)

    # ------------------------------------------------------------------------------------------------
    # R-CNN heads
    # ------------------------------------------------------------------------------------------------
    def box_head(self, features: Tensor, rois: Tensor, roi_image: Tensor) -> tuple[Tensor, Tensor]:
        """``cls_logits (R, C + 1)`` (background last) and ``box_deltas (R, C, 4)`` (:data:`ROI_STDS`)."""
        pooled = roi_align(features, rois, roi_image, self.pool_size, 1.0 / self.stride, sampling_ratio=2)
        x = self.box_fc(pooled)
        return self.cls_score(x), self.box_pred(x).view(-1, self.num_classes, 4)

    def mask_head(self, features: Tensor, rois: Tensor, roi_image: Tensor) -> Tensor:
        """``mask_logits (R, C, S, S)``: ROI Align at ``S / 2``, two convs, x2 transposed conv, per-class 1x1."""
        pooled = roi_align(features, rois, roi_image, self.mask_size // 2, 1.0 / self.stride, sampling_ratio=2)
        return self.mask_pred(self.mask_up(self.mask_convs(pooled)))

    def roi_heads(
        self, features: Tensor, rois: Tensor, roi_image: Tensor, mask_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``cls_logits (R, C + 1)`` background last, ``box_deltas (R, C, 4)``, ``mask_logits (R, C, S, S)``.

        Args:
            features: ``(B, 4 width, h, w)`` from :meth:`forward`.
            rois: ``(R, 4)`` pixel ``xyxy`` (e.g. from :meth:`proposals`).
            roi_image: ``(R,)`` int image of each ROI.
            mask_index: optional ``(P,)`` int64 ROIs to run the mask head on; the other rows of
                ``mask_logits`` are constant zeros. :class:`ROICriterion` reads the mask logits of its
                sampled positives only, so ``mask_index = roi_criterion.assign(rois, roi_image, targets).index``
                gives the same loss and gradients for a fraction of the mask head's work.
        """
        cls_logits, box_deltas = self.box_head(features, rois, roi_image)
        if mask_index is None:
            return cls_logits, box_deltas, self.mask_head(features, rois, roi_image)
        if not isinstance(mask_index, Tensor) or mask_index.dim() != 1 or mask_index.is_floating_point():
            raise ValueError("mask_index must be an int64 tensor of shape (P,) indexing rois")
        mask_index = mask_index.to(rois.device).long()
        part = self.mask_head(features, rois[mask_index], roi_image[mask_index])
        full = part.new_zeros(rois.shape[0], *part.shape[1:])
        return cls_logits, box_deltas, full.index_copy(0, mask_index, part)

    @torch.no_grad()
    def predict(
        self, images: Tensor, conf: float = 0.05, iou: float = 0.5, max_det: int = 100
    ) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes (N, 4)`` float32 pixel ``xyxy`` (clipped), ``scores (N,)``, ``labels (N,)``.

        Proposals (``proposals_test`` per image in eval mode; the caller sets the mode) -> box head ->
        softmax -> class-specific boxes (:data:`ROI_STDS`) -> every (ROI, class) with score ``> conf``
        -> class-aware NMS at ``iou`` -> the ``max_det`` best.
        """
        hw = tuple(images.shape[-2:])
        out = self(images)
        rois, roi_image = self.proposals(out, hw)
        cls_logits, box_deltas = self.box_head(out["features"], rois, roi_image)
        probs = cls_logits.float().softmax(-1)[:, : self.num_classes]  # (R, C)
        boxes = _clip(decode_deltas(rois[:, None, :], box_deltas.float(), stds=self.box_stds), hw)  # (R, C, 4)
        results = []
        for i in range(images.shape[0]):
            p, bx = probs[roi_image == i], boxes[roi_image == i]
            r, c = (p > conf).nonzero(as_tuple=True)
            sc, bx, lab = p[r, c], bx[r, c], c
            nonempty = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])  # clipping can flatten a box
            sc, bx, lab = sc[nonempty], bx[nonempty], lab[nonempty]
            keep = batched_nms(bx, sc, lab, iou)[:max_det]
            results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lab[keep].long()})
        return results
