"""A straightforward re-implementation of ultralytics 8.4 ``v8DetectionLoss`` in its own data flow.

Written from the documented semantics without any detloss code: permute + contiguous predictions,
all anchors decoded with gradient, dense ``(B, M, A)`` task-aligned assignment, BCE over ``(B, A, C)``.
It is the independent reference the ``preset="ultralytics"`` tests compare with, and the naive baseline
``benchmarks/dense.py`` times.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
EPS_IOU = 1e-7  # ultralytics bbox_iou
EPS_TAL = 1e-9  # ultralytics TaskAlignedAssigner (inside test and normalization)
TOPK, ALPHA, BETA = 10, 0.5, 6.0
#: 8.4.128+ small-GT rule for strides (8, 16, ...): sides shorter than 16 px become 16 px, for candidates only.
SMALL_GT_RULE = (16.0, 16.0)


def ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = EPS_IOU) -> torch.Tensor:
    """CIoU of aligned xyxy boxes ``(..., 4)``, ultralytics ``bbox_iou`` eps placements, alpha without grad."""
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    w1, h1 = x2 - x1, y2 - y1 + eps
    w2, h2 = u2 - u1, v2 - v1 + eps
    inter = (x2.minimum(u2) - x1.maximum(u1)).clamp(min=0) * (y2.minimum(v2) - y1.maximum(v1)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = x2.maximum(u2) - x1.minimum(u1)
    ch = y2.maximum(v2) - y1.minimum(v1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((u1 + u2 - x1 - x2).pow(2) + (v1 + v2 - y1 - y2).pow(2)) / 4
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@torch.no_grad()
def assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, nc, small):
    """Dense ``(B, M, A)`` task-aligned assignment (no grad). ``mask_gt (B, M, 1)`` bool, ``small = (below, size)``."""
    bs, n_max = gt_bboxes.shape[:2]
    na = anc_points.shape[0]
    if n_max == 0:
        zeros = torch.zeros(bs, na, dtype=torch.bool)
        return torch.zeros(bs, na, 4), torch.zeros(bs, na, nc), zeros
    # candidates: the anchor point strictly inside the GT, small sides enlarged (8.4) for this test only
    xy = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2
    wh = gt_bboxes[..., 2:] - gt_bboxes[..., :2]
    wh = torch.where((wh < small[0]) & mask_gt, torch.tensor(small[1]), wh)
    cand = torch.cat((xy - wh / 2, xy + wh / 2), -1)
    lt, rb = cand.view(-1, 1, 4).chunk(2, 2)
    deltas = torch.cat((anc_points[None] - lt, rb - anc_points[None]), 2).view(bs, n_max, na, 4)
    in_gts = deltas.amin(3) > EPS_TAL  # (B, M, A)
    pair = in_gts & mask_gt

    # alignment on candidate pairs
    overlaps = torch.zeros(bs, n_max, na)
    scores = torch.zeros(bs, n_max, na)
    img = torch.arange(bs).view(-1, 1).expand(-1, n_max)
    scores[pair] = pd_scores[img, :, gt_labels.squeeze(-1).long()][pair]  # (B, M, A) -> candidate pairs
    pd = pd_bboxes.unsqueeze(1).expand(-1, n_max, -1, -1)[pair]
    gt = gt_bboxes.unsqueeze(2).expand(-1, -1, na, -1)[pair]
    overlaps[pair] = ciou(gt, pd).clamp(min=0)
    align = scores.pow(ALPHA) * overlaps.pow(BETA)

    # top-k per GT over all anchors; padding rows point all their picks at anchor 0 and are dropped (count > 1)
    k = min(TOPK, na)
    idx = torch.topk(align, k, dim=-1, largest=True).indices
    idx = idx.masked_fill(~mask_gt.expand(-1, -1, k), 0)
    count = torch.zeros(bs, n_max, na, dtype=torch.int8)
    for i in range(k):
        count.scatter_add_(-1, idx[:, :, i : i + 1], torch.ones_like(idx[:, :, :1], dtype=torch.int8))
    count.masked_fill_(count > 1, 0)
    mask_pos = count.float() * in_gts.float() * mask_gt.float()

    # one GT per anchor: the highest overlap wins
    fg = mask_pos.sum(-2)
    if fg.max() > 1:
        multi = (fg.unsqueeze(1) > 1).expand(-1, n_max, -1)
        best = overlaps.argmax(1)
        is_best = torch.zeros_like(mask_pos).scatter_(1, best.unsqueeze(1), 1)
        mask_pos = torch.where(multi, is_best, mask_pos)
        fg = mask_pos.sum(-2)
    gt_idx = mask_pos.argmax(-2)  # (B, A)

    flat = gt_idx + torch.arange(bs).view(-1, 1) * n_max
    labels = gt_labels.long().flatten()[flat]
    boxes = gt_bboxes.view(-1, 4)[flat]
    onehot = torch.zeros(bs, na, nc).scatter_(2, labels.clamp(min=0).unsqueeze(-1), 1.0)
    onehot = torch.where(fg.unsqueeze(-1) > 0, onehot, 0.0)

    align = align * mask_pos
    pos_align = align.amax(-1, keepdim=True)
    pos_overlaps = (overlaps * mask_pos).amax(-1, keepdim=True)
    norm = (align * pos_overlaps / (pos_align + EPS_TAL)).amax(-2).unsqueeze(-1)
    return boxes, onehot * norm, fg > 0


def v8_detection_loss(feats, targets, nc, strides, reg_max, small=SMALL_GT_RULE):
    """Per-term losses after gains and the fg count, ultralytics 8.4 style; ``small = (below, size)``."""
    bs = feats[0].shape[0]
    no = 4 * reg_max + nc
    x = torch.cat([f.reshape(bs, no, -1) for f in feats], 2)
    pred_distri, pred_logits = x.split((4 * reg_max, nc), 1)
    pred_logits = pred_logits.permute(0, 2, 1).contiguous()  # (B, A, C)
    pred_distri = pred_distri.permute(0, 2, 1).contiguous()  # (B, A, 4R)

    points, stride_list = [], []
    for f, s in zip(feats, strides, strict=True):
        h, w = f.shape[2:]
        sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2).float())
        stride_list.append(torch.full((h * w, 1), float(s)))
    anchor_points, stride_tensor = torch.cat(points), torch.cat(stride_list)  # grid units, (A, 1)

    # targets -> (B, M, 5) [cls, xyxy px]
    img_h, img_w = feats[0].shape[2] * strides[0], feats[0].shape[3] * strides[0]
    scale = torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float32)
    bidx, cls, bboxes = targets["batch_idx"].long(), targets["cls"].float(), targets["bboxes"].float()
    n_max = int(torch.bincount(bidx, minlength=bs).max()) if bidx.numel() else 0
    padded = torch.zeros(bs, n_max, 5)
    for b in range(bs):
        sel = bidx == b
        n = int(sel.sum())
        if n:
            xywh = bboxes[sel] * scale
            xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
            padded[b, :n] = torch.cat((cls[sel, None], xyxy), 1)
    gt_labels, gt_bboxes = padded.split((1, 4), 2)
    mask_gt = gt_bboxes.sum(2, keepdim=True) > 0

    proj = torch.arange(reg_max, dtype=torch.float32)
    dist = pred_distri.view(bs, -1, 4, reg_max).softmax(3).matmul(proj)
    lt, rb = dist.chunk(2, -1)
    pred_bboxes = torch.cat((anchor_points - lt, anchor_points + rb), -1)  # grid units, with grad

    target_bboxes, target_scores, fg = assign(
        pred_logits.detach().sigmoid(),
        pred_bboxes.detach() * stride_tensor,
        anchor_points * stride_tensor,
        gt_labels,
        gt_bboxes,
        mask_gt,
        nc,
        small,
    )
    tss = max(target_scores.sum(), 1)
    cls_loss = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="none").sum() / tss

    box_loss = dfl_loss = torch.zeros(())
    if fg.sum():
        target_bboxes = target_bboxes / stride_tensor
        weight = target_scores.sum(-1)[fg].unsqueeze(-1)
        iou = ciou(pred_bboxes[fg], target_bboxes[fg])
        box_loss = ((1.0 - iou).unsqueeze(-1) * weight).sum() / tss
        x1y1, x2y2 = target_bboxes.chunk(2, -1)
        ltrb = torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp(0, reg_max - 1 - 0.01)[fg]
        logits = pred_distri[fg].view(-1, reg_max)
        tl = ltrb.long()
        tr = tl + 1
        wl = tr - ltrb
        wr = 1 - wl
        ce_l = F.cross_entropy(logits, tl.view(-1), reduction="none").view(tl.shape)
        ce_r = F.cross_entropy(logits, tr.view(-1), reduction="none").view(tl.shape)
        dfl_el = (ce_l * wl + ce_r * wr).mean(-1, keepdim=True)
        dfl_loss = (dfl_el * weight).sum() / tss
    return {
        "box": box_loss * GAINS["box"],
        "cls": cls_loss * GAINS["cls"],
        "dfl": dfl_loss * GAINS["dfl"],
        "fg": int(fg.sum()),
    }
