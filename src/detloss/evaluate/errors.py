"""Where the boxes go wrong: each confident detection and each ground truth sorted into one kind of error.

The detections with ``score >= conf`` of each image are matched greedily, highest score first, each to the
unmatched ground truth of its class it overlaps most at ``IoU >= iou`` (the rule behind ``box_map``'s
precision and recall). An unmatched detection is then, by its best IoU with any ground truth:

- ``duplicate``: ``>= iou`` with a ground truth of its class that a higher score already took;
- ``wrong_class``: ``>= iou`` with a ground truth of another class only;
- ``localization``: in ``[background_iou, iou)`` with one of its class (the right object, a wrong box);
- ``background``: below ``background_iou`` with every ground truth of its class.

The kinds are tried in that order (TIDE's, without its fixes-to-AP accounting). A detection matching an
ignored ground truth (VOC ``difficult``) counts nowhere; a second one is a duplicate, as in COCO.
``area_ratio`` is the median (the lower middle value) of a localization error's box area over its ground
truth's: above 1, the boxes are too big.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.ops.boxes import box_iou_matrix

__all__ = ["BoxErrors", "box_errors"]

KINDS = ("duplicate", "wrong_class", "localization", "background")


@dataclass(frozen=True)
class BoxErrors:
    """Counts over all images (module docstring); ``area_ratio`` is ``nan`` without localization errors."""

    detections: int
    true_positives: int
    duplicate: int
    wrong_class: int
    localization: int
    background: int
    ground_truths: int
    missed: int
    area_ratio: float


def box_errors(
    preds: Sequence[Mapping[str, Tensor]],
    gts: Sequence[Mapping[str, Tensor]],
    conf: float = 0.25,
    iou: float = 0.5,
    background_iou: float = 0.1,
) -> BoxErrors:
    """The error kinds of the module docstring over images.

    Args:
        preds: one dict per image: ``boxes (N, 4)`` xyxy, ``scores (N,)``, ``labels (N,)``.
        gts: one dict per image: ``boxes (M, 4)`` xyxy, ``labels (M,)``, optionally ``ignore (M,)`` bool.
        conf: the detections counted have ``score >= conf``.
        iou: the match threshold; background_iou: below it with its class, a detection is background.
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have one entry per image, got {len(preds)} and {len(gts)}")
    if not 0.0 <= background_iou <= iou <= 1.0:
        raise ValueError(f"need 0 <= background_iou <= iou <= 1, got background_iou={background_iou}, iou={iou}")
    counts = dict.fromkeys(("detections", "true_positives", *KINDS, "ground_truths", "missed"), 0)
    ratios: list[Tensor] = []
    for pred, gt in zip(preds, gts, strict=True):
        keep = pred["scores"] >= conf
        order = pred["scores"][keep].argsort(descending=True, stable=True)
        boxes, labels = pred["boxes"][keep][order].double(), pred["labels"][keep][order]
        g_boxes, g_labels = gt["boxes"].double(), gt["labels"]
        ignore = gt.get("ignore", torch.zeros(len(g_labels), dtype=torch.bool))
        counts["ground_truths"] += int((~ignore).sum())
        if not len(g_labels):  # nothing to match: every detection is background
            counts["detections"] += len(labels)
            counts["background"] += len(labels)
            continue
        overlap = box_iou_matrix(boxes, g_boxes)  # (N, M)
        same = labels[:, None] == g_labels[None]
        taken = torch.zeros(len(g_labels), dtype=torch.bool)
        for i in range(len(labels)):
            own = torch.where(same[i], overlap[i], -1.0)
            free = torch.where(taken, -1.0, own)
            j = int(free.argmax())
            if free[j] >= iou:
                taken[j] = True
                if not ignore[j]:
                    counts["detections"] += 1
                    counts["true_positives"] += 1
                continue
            counts["detections"] += 1
            best = int(own.argmax())
            if own[best] >= iou:
                counts["duplicate"] += 1
            elif torch.where(same[i], -1.0, overlap[i]).max() >= iou:
                counts["wrong_class"] += 1
            elif own[best] >= background_iou:
                counts["localization"] += 1
                ratios.append(_area(boxes[i]) / _area(g_boxes[best]))
            else:
                counts["background"] += 1
        counts["missed"] += int((~ignore & ~taken).sum())
    ratio = float(torch.stack(ratios).median()) if ratios else float("nan")
    return BoxErrors(**counts, area_ratio=ratio)


def _area(box: Tensor) -> Tensor:
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
