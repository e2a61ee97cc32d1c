"""COCO-style average precision for boxes and convex polygons, equal to pycocotools ``COCOeval``.

:func:`box_map` reproduces ``COCOeval`` with ``iouType="bbox"`` (area range ``"all"`` by default,
``maxDets=100``, no crowd annotations) to floating-point rounding; :func:`polygon_map` runs the same
matching and accumulation with the **exact** IoU of convex polygons
(:func:`detloss.ops.polygon_iou`). COCO's ``segm`` evaluation rasterizes polygons into masks and
compares pixels, so its numbers differ from :func:`polygon_map` by the rasterization error; for
axis-aligned rectangles :func:`polygon_map` equals :func:`box_map`.

What is replicated from ``cocoeval.py`` (``evaluateImg`` and ``accumulate``):

* IoU thresholds ``linspace(.5, .95, 10)`` and recall thresholds ``linspace(0, 1, 101)``, built with
  numpy's arithmetic so they are the same float64 values (``0.8999999999999999`` included).
* Box IoU as ``maskUtils.iou``: float64 on ``xywh``, ``w = min(x + w) - max(x)``, 0 unless both overlaps
  are positive, union ``area_d + area_g - inter`` (no ``+1``).
* Per image and class, detections sorted by decreasing score with a stable sort (ties keep input
  order) and truncated to ``max_dets``; ground truths outside the area range are *ignored* and sorted
  last.
* Greedy matching per IoU threshold ``t``: each detection in score order takes, among unmatched ground
  truths with ``IoU >= min(t, 1 - 1e-10)``, the one with the largest IoU (on equal IoU, the **later**
  one: the loop replaces on ``>=``); regular ground truths first, ignored ones only if no regular one
  qualifies. A detection matched to an ignored ground truth, or unmatched with its own area outside the
  range, is ignored (neither TP nor FP).
* Per class, the detections of all images are concatenated in image order and stably sorted by
  decreasing score (so score ties across images keep image order); ``precision = tp / (tp + fp +
  np.spacing(1))``, made monotone from the right, sampled with ``searchsorted(recall, recThrs,
  side="left")``, zero past the last detection.
* A class with no (non-ignored) ground truth has precision ``-1`` and is left out of every mean; AP is
  the mean over classes that have ground truth (``-1.0`` when no class has any).

The matching and accumulation are shared by boxes and polygons: :func:`coco_ap` takes the per-image
scores, labels and areas plus an IoU-matrix provider. Everything runs on CPU in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from detloss.ops.boxes import box_iou_matrix
from detloss.ops.polygon import polygon_area, polygon_iou

__all__ = ["IoUProvider", "box_map", "coco_ap", "coco_thresholds", "polygon_map"]

#: ``(image, det_index (D,), gt_index (G,)) -> (D, G)`` float64 IoU of the listed predictions and
#: ground truths of one image (indices into that image's rows, in the order given).
IoUProvider = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

#: ``COCOeval.params.areaRng[0]``, the range ``"all"``.
AREA_ALL = (0.0, 1e5**2)


def coco_thresholds(start: float, stop: float, num: int) -> torch.Tensor:
    """``np.linspace(start, stop, num)`` bit for bit (float64): ``arange * step + start``, last = stop.

    >>> coco_thresholds(0.5, 0.95, 10)[8].item()
    0.8999999999999999
    """
    if num == 1:
        return torch.tensor([float(start)], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    y = torch.arange(num, dtype=torch.float64) * step + start
    y[-1] = stop
    return y


IOU_THRESHOLDS = coco_thresholds(0.5, 0.95, 10)
RECALL_THRESHOLDS = coco_thresholds(0.0, 1.0, 101)


# --------------------------------------------------------------------------------------------------
# matching and accumulation (shared by boxes and polygons)
# --------------------------------------------------------------------------------------------------
def _greedy_match(iou: torch.Tensor, gt_ignore: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``evaluateImg``'s greedy matching for all thresholds at once.

    ``iou`` ``(D, G)`` with detections sorted by decreasing score and ground truths ignored-last,
    ``gt_ignore`` ``(G,)``, ``thr`` ``(T,)``. Returns ``matched (T, D)`` and ``ignored (T, D)`` (matched
    to an ignored ground truth).
    """
    t, (d_count, g_count) = thr.numel(), iou.shape
    matched = torch.zeros(t, d_count, dtype=torch.bool)
    ignored = torch.zeros(t, d_count, dtype=torch.bool)
    if d_count == 0 or g_count == 0:
        return matched, ignored
    thr = thr.clamp(max=1 - 1e-10)[:, None]
    taken = torch.zeros(t, g_count, dtype=torch.bool)
    rows = torch.arange(t)
    reachable = (iou >= thr.min()).any(1).tolist()  # detections that can match at some threshold
    for d in range(d_count):
        if not reachable[d]:
            continue
        cand = (iou[d] >= thr) & ~taken  # (T, G)
        regular = cand & ~gt_ignore
        use = torch.where(regular.any(1, keepdim=True), regular, cand)
        ok = use.any(1)
        # the largest IoU, the last of equal ones (pycocotools replaces on >=)
        best = g_count - 1 - torch.where(use, iou[d], -1.0).flip(1).argmax(1)
        taken[rows[ok], best[ok]] = True
        matched[:, d] = ok
        ignored[:, d] = ok & gt_ignore[best]
    return matched, ignored


def _precision_curve(scores: torch.Tensor, tp: torch.Tensor, fp: torch.Tensor, num_gt: int) -> torch.Tensor:
    """``accumulate`` for one class: ``(T, R)`` interpolated precision from per-detection flags ``(T, N)``."""
    t, r = tp.shape[0], RECALL_THRESHOLDS.numel()
    n = scores.numel()
    if n == 0:
        return torch.zeros(t, r, dtype=torch.float64)
    order = torch.sort(-scores, stable=True).indices
    tp_sum = tp[:, order].double().cumsum(1)
    fp_sum = fp[:, order].double().cumsum(1)
    rc = tp_sum / num_gt
    pr = tp_sum / (fp_sum + tp_sum + torch.finfo(torch.float64).eps)  # np.spacing(1)
    pr = pr.flip(1).cummax(1).values.flip(1)  # monotone from the right
    inds = torch.searchsorted(rc, RECALL_THRESHOLDS.expand(t, r).contiguous(), right=False)
    q = pr.gather(1, inds.clamp(max=n - 1))
    return torch.where(inds < n, q, torch.zeros((), dtype=torch.float64))


def coco_ap(
    scores: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    areas: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    gt_areas: Sequence[torch.Tensor],
    iou_matrix: IoUProvider,
    iou_thresholds: Sequence[float] | torch.Tensor | None = None,
    max_dets: int = 100,
    conf: float = 0.25,
    area_range: tuple[float, float] = AREA_ALL,
    gt_ignore: Sequence[torch.Tensor] | None = None,
) -> dict:
    """COCO AP from per-image predictions and ground truths, matched by a given IoU.

    Args:
        scores, labels, areas: per image, the predictions' ``(N_i,)`` scores, integer classes and areas.
        gt_labels, gt_areas: per image, the ground truths' ``(M_i,)`` classes and areas.
        iou_matrix: :data:`IoUProvider`, called once per image and class present in that image.
        iou_thresholds: default COCO's ``.50:.05:.95``.
        max_dets: detections kept per image and class (highest scores).
        conf: score threshold of ``precision``, ``recall`` and ``dets_per_image``.
        area_range: ground truths outside ``[lo, hi]`` are ignored, and so are unmatched detections
            outside it (COCO's ``areaRng``; default ``"all"``).
        gt_ignore: per image, ``(M_i,)`` bool: ground truths ignored whatever their area (VOC
            ``difficult``, COCO's ``ignore``): matched like area-ignored ones, never counted in recall.

    Returns:
        The dict of :func:`box_map`.
    """
    user_thr = IOU_THRESHOLDS if iou_thresholds is None else torch.as_tensor(iou_thresholds, dtype=torch.float64)
    if user_thr.dim() != 1 or user_thr.numel() == 0:
        raise ValueError(f"iou_thresholds must be a non-empty 1-d sequence, got {iou_thresholds!r}")
    thr = user_thr
    for v in (0.5, 0.75):  # always evaluated (appended if missing), for map50 / map75 and precision / recall
        if not bool(((thr - v).abs() < 1e-12).any()):
            thr = torch.cat([thr, torch.tensor([v], dtype=torch.float64)])
    i50 = int(((thr - 0.5).abs() < 1e-12).nonzero()[0])
    i75 = int(((thr - 0.75).abs() < 1e-12).nonzero()[0])
    n_user = user_thr.numel()
    lo, hi = area_range

    per_class: dict[int, dict[str, list]] = {}
    num_gt: dict[int, int] = {}
    confident = 0
    for img in range(len(scores)):
        s, lab, area = scores[img], labels[img], areas[img]
        g_lab, g_area = gt_labels[img], gt_areas[img]
        confident += int((s >= conf).sum())
        for c in torch.cat([lab, g_lab]).unique().tolist():
            det = (lab == c).nonzero().squeeze(1)
            det = det[torch.sort(-s[det], stable=True).indices][:max_dets]
            gt = (g_lab == c).nonzero().squeeze(1)
            flagged = gt_ignore[img] if gt_ignore is not None else torch.zeros(g_lab.shape[0], dtype=torch.bool)
            g_ignore = (g_area[gt] < lo) | (g_area[gt] > hi) | flagged[gt]
            gt = gt[torch.sort(g_ignore.to(torch.uint8), stable=True).indices]
            g_ignore = (g_area[gt] < lo) | (g_area[gt] > hi) | flagged[gt]
            if det.numel() and gt.numel():
                iou = iou_matrix(img, det, gt).detach().cpu().double()
            else:
                iou = torch.zeros(det.numel(), gt.numel(), dtype=torch.float64)
            matched, ignored = _greedy_match(iou, g_ignore, thr)
            d_area = area[det]
            ignored |= ~matched & ((d_area < lo) | (d_area > hi))
            acc = per_class.setdefault(c, {"scores": [], "matched": [], "ignored": []})
            acc["scores"].append(s[det])
            acc["matched"].append(matched)
            acc["ignored"].append(ignored)
            num_gt[c] = num_gt.get(c, 0) + int((~g_ignore).sum())

    classes = sorted(per_class)
    r = RECALL_THRESHOLDS.numel()
    precision = -torch.ones(thr.numel(), r, len(classes), dtype=torch.float64)
    tp_conf = n_conf = 0
    for k, c in enumerate(classes):
        acc = per_class[c]
        s = torch.cat(acc["scores"])
        matched = torch.cat(acc["matched"], 1)
        ignored = torch.cat(acc["ignored"], 1)
        sel = (s >= conf) & ~ignored[i50]
        tp_conf += int((matched[i50] & sel).sum())
        n_conf += int(sel.sum())
        if num_gt[c] > 0:
            precision[:, :, k] = _precision_curve(s, matched & ~ignored, ~matched & ~ignored, num_gt[c])

    valid = torch.tensor([num_gt[c] > 0 for c in classes], dtype=torch.bool)

    def mean_ap(p: torch.Tensor) -> float:
        return float(p[..., valid].mean()) if bool(valid.any()) else -1.0

    total_gt = sum(num_gt.values())
    return {
        "map": mean_ap(precision[:n_user]),
        "map50": mean_ap(precision[i50]),
        "map75": mean_ap(precision[i75]),
        "per_class": {
            c: (float(precision[:n_user, :, k].mean()) if num_gt[c] > 0 else -1.0) for k, c in enumerate(classes)
        },
        "per_class50": {
            c: (float(precision[i50, :, k].mean()) if num_gt[c] > 0 else -1.0) for k, c in enumerate(classes)
        },
        "precision": tp_conf / n_conf if n_conf else 0.0,
        "recall": tp_conf / total_gt if total_gt else 0.0,
        "dets_per_image": confident / len(scores) if len(scores) else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def _get(d: Mapping, key: str, where: str) -> torch.Tensor:
    if key not in d:
        raise ValueError(f"{where} must contain {key!r}")
    v = d[key]
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{where}[{key!r}] must be a torch.Tensor, got {type(v).__name__}")
    return v.detach().cpu()


def _rows(where: str, key: str, v: torch.Tensor, n: int | None, trailing: tuple[int, ...] = ()) -> int:
    if v.dim() != 1 + len(trailing) or tuple(v.shape[1:]) != trailing or (n is not None and v.shape[0] != n):
        want = "(" + ", ".join(["N" if n is None else str(n), *map(str, trailing)]) + ")"
        raise ValueError(f"{where}[{key!r}] must have shape {want}, got {tuple(v.shape)}")
    return v.shape[0]


def _labels(where: str, v: torch.Tensor, n: int) -> torch.Tensor:
    _rows(where, "labels", v, n)
    if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
        raise ValueError(f"{where}['labels'] must be an integer tensor, got {v.dtype}")
    return v.long()


def _ignore_flags(gts: Sequence[Mapping], g_labels: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Each image's ``ignore (M,)`` bool (all False where absent); None when no image has one."""
    if not any("ignore" in g for g in gts):
        return None
    out = []
    for i, (g, lab) in enumerate(zip(gts, g_labels, strict=True)):
        if "ignore" not in g:
            out.append(torch.zeros(lab.shape[0], dtype=torch.bool))
            continue
        v = _get(g, "ignore", f"gts[{i}]")
        _rows(f"gts[{i}]", "ignore", v, lab.shape[0])
        if v.dtype != torch.bool:
            raise ValueError(f"gts[{i}]['ignore'] must be a bool tensor, got {v.dtype}")
        out.append(v)
    return out


def _check_lists(preds: object, gts: object) -> None:
    if not isinstance(preds, Sequence) or not isinstance(gts, Sequence):
        raise ValueError("preds and gts must be lists of dicts (one per image)")
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have one entry per image, got {len(preds)} and {len(gts)}")


def _xywh(boxes: torch.Tensor) -> torch.Tensor:
    b = boxes.double()
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1)


def coco_box_iou(dt: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``maskUtils.iou`` of ``xywh`` float64 boxes ``(D, 4)``, ``(G, 4)`` without crowd: ``(D, G)``.

    :func:`~detloss.ops.boxes.box_iou_matrix` with COCO's two differences: the areas are ``w * h`` of
    the ``xywh`` boxes and the far corners ``x + w``, ``y + h`` (pycocotools' own arithmetic), and a pair
    without overlap is 0 even when both boxes have zero area (where the ratio is ``0 / 0``).
    """
    iou = box_iou_matrix(_xyxy(dt), _xyxy(gt), dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3])
    return iou.nan_to_num(nan=0.0)


def _xyxy(xywh: torch.Tensor) -> torch.Tensor:
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)


def box_map(
    preds: Sequence[Mapping[str, torch.Tensor]],
    gts: Sequence[Mapping[str, torch.Tensor]],
    iou_thresholds: Sequence[float] | torch.Tensor | None = None,
    max_dets: int = 100,
    conf: float = 0.25,
    *,
    area_range: tuple[float, float] = AREA_ALL,
) -> dict:
    """COCO box AP, equal to pycocotools ``COCOeval(iouType="bbox")`` (``maxDets=100``, area ``"all"``).

    Args:
        preds: one dict per image: ``boxes (N, 4)`` ``xyxy``, ``scores (N,)``, ``labels (N,)`` int.
        gts: one dict per image: ``boxes (M, 4)`` ``xyxy``, ``labels (M,)`` int (no crowd), optionally
            ``ignore (M,)`` bool: ground truths that neither count in recall nor make a matching detection a
            false positive (VOC ``difficult``; the rule of an area-ignored ground truth).
        iou_thresholds: default ``.50:.05:.95`` (``map`` averages over these).
        max_dets: detections per image and class (COCO's ``maxDets``, applied per category).
        conf: score threshold for ``precision``, ``recall`` and ``dets_per_image`` (AP uses every score).
        area_range: COCO's ``areaRng`` (``(0, 32**2)`` for "small", ...); default ``"all"``.

    Returns:
        ``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``per_class`` (class -> AP@[.5:.95], ``-1.0`` for a
        class with predictions but no ground truth), ``per_class50`` (the same at IoU 0.5), ``precision``
        and ``recall`` (greedy matches at IoU 0.5 among the evaluated detections with ``score >= conf``,
        over all classes; 0.0 when undefined) and ``dets_per_image`` (mean number of predictions with
        ``score >= conf``). An AP is ``-1.0`` when no class has ground truth, as in COCO.

    Example:
        >>> gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}
        >>> pred = {"boxes": gt["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
        >>> round(box_map([pred], [gt])["map"], 6)  # tp / (tp + fp + eps): just below 1, as in COCO
        1.0
    """
    _check_lists(preds, gts)
    scores, labels, areas, g_labels, g_areas, p_boxes, g_boxes = [], [], [], [], [], [], []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        pb = _get(p, "boxes", f"preds[{i}]")
        n = _rows(f"preds[{i}]", "boxes", pb, None, (4,))
        s = _get(p, "scores", f"preds[{i}]")
        _rows(f"preds[{i}]", "scores", s, n)
        gb = _get(g, "boxes", f"gts[{i}]")
        m = _rows(f"gts[{i}]", "boxes", gb, None, (4,))
        pb, gb = _xywh(pb), _xywh(gb)
        p_boxes.append(pb)
        g_boxes.append(gb)
        scores.append(s.double())
        labels.append(_labels(f"preds[{i}]", _get(p, "labels", f"preds[{i}]"), n))
        g_labels.append(_labels(f"gts[{i}]", _get(g, "labels", f"gts[{i}]"), m))
        areas.append(pb[:, 2] * pb[:, 3])
        g_areas.append(gb[:, 2] * gb[:, 3])

    def iou(img: int, det: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return coco_box_iou(p_boxes[img][det], g_boxes[img][gt])

    ignore = _ignore_flags(gts, g_labels)
    return coco_ap(scores, labels, areas, g_labels, g_areas, iou, iou_thresholds, max_dets, conf, area_range, ignore)


def _polygons(d: Mapping, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    poly = _get(d, "polygons", where)
    if poly.dim() != 3 or poly.shape[2] != 2 or poly.shape[1] < 1:
        raise ValueError(f"{where}['polygons'] must have shape (N, K, 2), got {tuple(poly.shape)}")
    if "polygon_valid" in d and "polygon_counts" in d:
        raise ValueError(f"{where} must give at most one of 'polygon_valid' and 'polygon_counts'")
    valid = None
    if "polygon_valid" in d:
        valid = _get(d, "polygon_valid", where)
        _rows(where, "polygon_valid", valid, poly.shape[0], (poly.shape[1],))
    elif "polygon_counts" in d:
        valid = _get(d, "polygon_counts", where)
        _rows(where, "polygon_counts", valid, poly.shape[0])
    return poly.double(), valid


def _pairs(v: torch.Tensor | None, count: int, first: bool) -> torch.Tensor | None:
    """Expand per-polygon ``v`` ``(n, ...)`` to the ``D * G`` aligned pairs (row-major ``(d, g)``)."""
    if v is None:
        return None
    x = v[:, None] if first else v[None]
    shape = (v.shape[0], count) if first else (count, v.shape[0])
    return x.expand(*shape, *v.shape[1:]).reshape(v.shape[0] * count, *v.shape[1:])


def polygon_map(
    preds: Sequence[Mapping[str, torch.Tensor]],
    gts: Sequence[Mapping[str, torch.Tensor]],
    iou_thresholds: Sequence[float] | torch.Tensor | None = None,
    max_dets: int = 100,
    conf: float = 0.25,
    *,
    area_range: tuple[float, float] = AREA_ALL,
) -> dict:
    """COCO-style AP of convex polygons, matched by their **exact** IoU.

    The matching and accumulation are :func:`box_map`'s (pycocotools' rules); only the overlap
    differs: :func:`detloss.ops.polygon_iou` in float64 on every prediction x ground-truth pair of
    a class within an image, and areas from :func:`detloss.ops.polygon_area` (for
    ``area_range``). COCO's ``segm`` evaluation instead rasterizes polygons to masks, so it differs
    by the rasterization error. Exact for convex polygons only.

    Args:
        preds: one dict per image: ``polygons (N, K, 2)``, optionally ``polygon_valid (N, K)`` or
            ``polygon_counts (N,)``, ``scores (N,)``, ``labels (N,)``.
        gts: one dict per image: ``polygons (M, K', 2)``, optionally ``polygon_valid`` or
            ``polygon_counts``, ``labels (M,)``, optionally ``ignore (M,)`` bool (as in :func:`box_map`).
        iou_thresholds, max_dets, conf, area_range: as in :func:`box_map`.

    Returns:
        The dict of :func:`box_map`.

    Example:
        >>> tri = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
        >>> pred = {"polygons": tri, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
        >>> round(polygon_map([pred], [{"polygons": tri, "labels": torch.tensor([0])}])["map"], 6)
        1.0
    """
    _check_lists(preds, gts)
    scores, labels, areas, g_labels, g_areas, p_polys, g_polys = [], [], [], [], [], [], []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        pp, pv = _polygons(p, f"preds[{i}]")
        n = pp.shape[0]
        s = _get(p, "scores", f"preds[{i}]")
        _rows(f"preds[{i}]", "scores", s, n)
        gp, gv = _polygons(g, f"gts[{i}]")
        scores.append(s.double())
        labels.append(_labels(f"preds[{i}]", _get(p, "labels", f"preds[{i}]"), n))
        g_labels.append(_labels(f"gts[{i}]", _get(g, "labels", f"gts[{i}]"), gp.shape[0]))
        areas.append(polygon_area(pp, pv) if n else pp.new_zeros(0))
        g_areas.append(polygon_area(gp, gv) if gp.shape[0] else gp.new_zeros(0))
        p_polys.append((pp, pv))
        g_polys.append((gp, gv))

    def iou(img: int, det: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        (pp, pv), (gp, gv) = p_polys[img], g_polys[img]
        a, av = pp[det], None if pv is None else pv[det]
        b, bv = gp[gt], None if gv is None else gv[gt]
        d, g = a.shape[0], b.shape[0]
        out = polygon_iou(_pairs(a, g, True), _pairs(b, d, False), _pairs(av, g, True), _pairs(bv, d, False))
        return out.view(d, g)

    ignore = _ignore_flags(gts, g_labels)
    return coco_ap(scores, labels, areas, g_labels, g_areas, iou, iou_thresholds, max_dets, conf, area_range, ignore)
