"""Grid-cell targets of a single-grid detector (:class:`~detloss.criteria.multigrid.MultigridCriterion`):
which cell is responsible for each GT box, its location encoding, and the cells left out of the
objectness loss.

**Encoding** (``s = stride``; a cell ``(row, col)`` covers ``[col s, (col + 1) s] x [row s, (row + 1) s]``
pixels). A GT box with centre ``(cx, cy)`` and size ``(w, h)`` (pixels) is encoded in its *object cell*
``(row, col) = (floor(cy / s), floor(cx / s))`` (clamped into the grid, so a centre on the right or
bottom image edge belongs to the last cell) as::

    loc = (cx / s - col,  cy / s - row,  log(w / s),  log(h / s))

The first two lie in ``[0, 1)`` inside the grid; ``loc = (0.5, 0.5, 0, 0)`` is the cell's *prior box*,
the ``s x s`` square on the cell. Decoding inverts it: ``cx = (col + loc_0) s``, ``w = s exp(loc_2)``.

**Rules of** :func:`grid_targets`:

* *Two GT boxes with their centre in one cell*: the **first** of them (lowest index in ``boxes[i]``)
  gets the cell; the others have no object cell (no ``loc`` / ``cls`` target). Order the boxes to
  choose the priority (e.g. by decreasing area).
* *Ignore cells*: a cell that is not an object cell is ignored (no objectness loss) when, for some GT
  box of its image (whether or not it won its own cell), the GT box **moved to be centred on that
  cell's centre** overlaps the GT box itself with ``IoU > ignore_iou``. That is: a prediction from
  that cell with exactly the right size would be a true positive at IoU ``ignore_iou``, so it should
  not be trained towards "no object". For a ``w x h`` box and a shift ``(dx, dy)`` between its centre
  and the cell centre, the IoU is ``a / (2 w h - a)`` with ``a = max(w - |dx|, 0) max(h - |dy|, 0)``.
  Large boxes thus ignore a neighbourhood of cells, boxes smaller than about a cell none.
* ``labels`` is the object cell's class, 0 elsewhere (read on object cells only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detloss.core.checks import check_tensor

__all__ = ["grid_targets"]


def _check_image_targets(i: int, boxes: Tensor, labels: Tensor) -> None:
    check_tensor(f"boxes[{i}]", boxes, ("n", 4), floating=True)
    check_tensor(f"labels[{i}]", labels, (boxes.shape[0],))
    if labels.is_floating_point():
        raise ValueError(
            f"labels[{i}] must be an integer tensor of shape ({boxes.shape[0]},), got dtype {labels.dtype}"
        )
    if boxes.shape[0] and not bool(((boxes[:, 2:] - boxes[:, :2]) > 0).all()):
        raise ValueError(f"boxes[{i}] must be (n, 4) xyxy with positive width and height (log-size encoding)")


def _centre_iou(boxes: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """IoU ``(n, H, W)`` of each box with itself moved to be centred at every cell centre ``cx (W,)``, ``cy (H,)``."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dx = (cx[None, :] - (boxes[:, 0] + boxes[:, 2])[:, None] / 2).abs()  # (n, W)
    dy = (cy[None, :] - (boxes[:, 1] + boxes[:, 3])[:, None] / 2).abs()  # (n, H)
    ox = (bw[:, None] - dx).clamp(min=0)
    oy = (bh[:, None] - dy).clamp(min=0)
    inter = oy[:, :, None] * ox[:, None, :]
    area = (bw * bh)[:, None, None]
    return inter / (2 * area - inter)


@torch.no_grad()
def grid_targets(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    grid_hw: Sequence[int],
    stride: int,
    ignore_iou: float = 0.5,
) -> dict[str, Tensor]:
    """:class:`MultigridCriterion` targets of a batch (rules and encoding: module docstring).

    Args:
        boxes: per image ``(n_i, 4)`` pixel ``xyxy`` with positive width and height (``n_i`` may be 0).
        labels: per image ``(n_i,)`` int classes.
        grid_hw: ``(H, W)`` cells.
        stride: pixels per cell.
        ignore_iou: a non-object cell is ignored when a GT re-centred on it has ``IoU > ignore_iou`` with
            the GT (``>= 1`` ignores nothing).

    Returns:
        ``loc (B, H, W, 4)`` float32 (0 off object cells), ``object_mask (B, H, W)`` bool,
        ``ignore_mask (B, H, W)`` bool (never set on object cells), ``labels (B, H, W)`` int64
        (0 off object cells). Everything on the device of ``boxes[0]`` (CPU without boxes).

    Example:
        >>> t = grid_targets([torch.tensor([[4.0, 4.0, 12.0, 20.0]])], [torch.tensor([2])], (2, 2), 16)
        >>> t["object_mask"][0].tolist(), [round(v, 4) for v in t["loc"][0, 0, 0].tolist()]
        ([[True, False], [False, False]], [0.5, 0.75, -0.6931, 0.0])
    """
    if isinstance(boxes, Tensor) or isinstance(labels, Tensor) or len(boxes) != len(labels):
        raise ValueError("boxes and labels must be lists with one (n_i, 4) / (n_i,) tensor per image, of equal length")
    if len(grid_hw) != 2 or min(int(grid_hw[0]), int(grid_hw[1])) < 1:
        raise ValueError(f"grid_hw must be (H, W) with H, W >= 1, got {tuple(grid_hw)}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    b = len(boxes)
    device = boxes[0].device if b else torch.device("cpu")
    loc = torch.zeros(b, h, w, 4, device=device)
    obj = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    ignore = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    cls = torch.zeros(b, h, w, dtype=torch.long, device=device)
    cx_cells = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) * stride
    cy_cells = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) * stride
    for i, (bx, lab) in enumerate(zip(boxes, labels, strict=True)):
        _check_image_targets(i, bx, lab)
        n = bx.shape[0]
        if n == 0:
            continue
        g = bx.to(device, torch.float64)  # float64: cell choice and offsets exact for float32 inputs
        cx, cy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2
        col = (cx / stride).floor().clamp(0, w - 1).long()
        row = (cy / stride).floor().clamp(0, h - 1).long()
        cell = row * w + col
        # the first GT of a cell wins: the smallest GT index per cell
        first = torch.full((h * w,), n, dtype=torch.long, device=device)
        first.scatter_reduce_(0, cell, torch.arange(n, device=device), reduce="amin")
        win = first[cell] == torch.arange(n, device=device)
        r, c = row[win], col[win]
        enc = torch.stack(
            (
                cx[win] / stride - c,
                cy[win] / stride - r,
                ((g[win, 2] - g[win, 0]) / stride).log(),
                ((g[win, 3] - g[win, 1]) / stride).log(),
            ),
            -1,
        )
        loc[i, r, c] = enc.float()
        obj[i, r, c] = True
        cls[i, r, c] = lab.to(device).long()[win]
        near = (_centre_iou(g, cx_cells, cy_cells) > ignore_iou).any(0)  # (H, W)
        ignore[i] = near & ~obj[i]
    return {"loc": loc, "object_mask": obj, "ignore_mask": ignore, "labels": cls}
