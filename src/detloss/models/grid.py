"""Field report 003's grid detector: one ``H x W`` grid of cells, each predicting ``loc``, ``obj`` and ``cls``.

:class:`TinyGrid` outputs exactly what :class:`detloss.criteria.MultigridCriterion` takes;
:func:`grid_targets` builds its targets from boxes; :func:`decode_grid` turns outputs into detections.

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

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from detloss.core.checks import check_tensor
from detloss.ops.nms import batched_nms
from detloss.models.tiny_yolo import Block, ConvNormAct

__all__ = ["TinyGrid", "decode_grid", "grid_targets"]

#: Largest ``loc_2``, ``loc_3`` used when decoding: boxes at most ``1000 / 16`` cells wide, so an
#: untrained head cannot overflow ``exp`` (decoding only; the loss sees the raw outputs).
MAX_LOG_SIZE = math.log(1000.0 / 16)
CLS_LOSSES = ("bce", "ce")


class TinyGrid(nn.Module):
    """A small single-grid detector: ``{"loc": (B, H, W, 4), "obj": (B, H, W), "cls": (B, H, W, C)}``.

    Args:
        num_classes: ``C``.
        width: channels of the first stage; each further stride-2 stage doubles them, up to ``8 * width``.
        stride: grid stride in pixels, a power of 2 ``>= 4``; the grid is ``ceil`` of ``H / stride``
            halved stage by stage (:meth:`grid_hw`).

    Outputs are raw: ``loc`` in the encoding of the module docstring, ``obj`` and ``cls`` logits.
    The objectness bias starts at the 1% prior (most cells are empty), the ``loc`` bias at the prior
    box ``(0.5, 0.5, 0, 0)``.

    Example:
        >>> model = TinyGrid(num_classes=3, width=8)
        >>> {k: tuple(v.shape) for k, v in model(torch.zeros(2, 3, 64, 96)).items()}
        {'loc': (2, 4, 6, 4), 'obj': (2, 4, 6), 'cls': (2, 4, 6, 3)}
    """

    def __init__(self, num_classes: int, width: int = 16, stride: int = 16) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be >= 1, got {num_classes} and {width}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 4 or stride & (stride - 1):
            raise ValueError(f"stride must be a power of 2 >= 4, got {stride!r}")
        self.num_classes, self.stride = int(num_classes), int(stride)
        c = 2 * width
        layers: list[nn.Module] = [ConvNormAct(3, width, 3, 2), ConvNormAct(width, c, 3, 2), Block(c)]  # stride 4
        for _ in range(int(math.log2(stride)) - 2):
            c_out = min(2 * c, 8 * width)
            layers += [ConvNormAct(c, c_out, 3, 2), Block(c_out)]
            c = c_out
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(ConvNormAct(c, c, 3), ConvNormAct(c, c, 3, groups=c))
        self.pred = nn.Conv2d(c, 5 + num_classes, 1)  # channels: loc 0-3, obj 4, cls 5..
        self._init_pred()

    def _init_pred(self) -> None:
        nn.init.normal_(self.pred.weight, std=0.01)
        with torch.no_grad():
            self.pred.bias.zero_()
            self.pred.bias[:2] = 0.5  # the prior box: centred in the cell, stride-sized
            self.pred.bias[4] = math.log(0.01 / 0.99)  # objectness prior 1%: the focal-loss init

    def grid_hw(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """Grid ``(H, W)`` for images of ``image_hw`` pixels (``ceil`` at every stride-2 conv)."""
        h, w = int(image_hw[0]), int(image_hw[1])
        for _ in range(int(math.log2(self.stride))):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def head_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of ``"backbone"`` or ``"head"`` (head convs and the prediction conv); ``[]`` otherwise."""
        parts = {"backbone": [self.backbone], "head": [self.head, self.pred]}
        return [p for module in parts.get(name, []) for p in module.parameters()]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images (B, 3, H, W)`` -> ``loc (B, h, w, 4)``, ``obj (B, h, w)``, ``cls (B, h, w, C)`` (channels last)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must have shape (B, 3, H, W), got {shape}")
        out = self.pred(self.head(self.backbone(images))).permute(0, 2, 3, 1)  # (B, h, w, 5 + C)
        return {"loc": out[..., :4], "obj": out[..., 4], "cls": out[..., 5:]}


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


@torch.no_grad()
def decode_grid(
    out: Mapping[str, Tensor],
    stride: int,
    conf: float = 0.05,
    iou: float = 0.5,
    max_det: int = 100,
    *,
    cls_loss: str = "bce",
    image_hw: Sequence[int] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image: ``boxes (N, 4)`` float32 pixel ``xyxy``, ``scores (N,)``, ``labels (N,)`` int64.

    ``score = sigmoid(obj) * p(class)`` for every (cell, class) pair, ``p`` the softmax of ``cls``
    (``cls_loss="ce"``) or its sigmoid (``"bce"``), as trained by :class:`MultigridCriterion`. Pairs with
    score ``> conf`` are decoded (inverse of the module docstring's encoding, ``loc_2, loc_3`` capped at
    :data:`MAX_LOG_SIZE`), optionally clipped to ``image_hw = (H, W)`` pixels, then class-aware NMS at
    ``iou`` and the ``max_det`` best are kept, by decreasing score.

    Args:
        out: ``loc (B, H, W, 4)``, ``obj (B, H, W)``, ``cls (B, H, W, C)`` (e.g. :class:`TinyGrid` output).
        stride: pixels per cell.
    """
    if cls_loss not in CLS_LOSSES:
        raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
    for key in ("loc", "obj", "cls"):
        if key not in out:
            raise ValueError(
                f"out must contain 'loc' (B, H, W, 4), 'obj' (B, H, W), 'cls' (B, H, W, C); missing {key!r}"
            )
    obj = out["obj"]
    check_tensor("out['obj']", obj, ("B", "H", "W"), floating=True)
    b, h, w = obj.shape
    check_tensor("out['loc']", out["loc"], (b, h, w, 4), floating=True)
    check_tensor("out['cls']", out["cls"], (b, h, w, None), floating=True)
    loc, logits = out["loc"].float(), out["cls"].float()
    prob = logits.softmax(-1) if cls_loss == "ce" else logits.sigmoid()
    scores = obj.float().sigmoid()[..., None] * prob  # (B, H, W, C)
    row = torch.arange(h, device=obj.device, dtype=torch.float32)[:, None]
    col = torch.arange(w, device=obj.device, dtype=torch.float32)[None, :]
    cx, cy = (col + loc[..., 0]) * stride, (row + loc[..., 1]) * stride
    bw = stride * loc[..., 2].clamp(max=MAX_LOG_SIZE).exp()
    bh = stride * loc[..., 3].clamp(max=MAX_LOG_SIZE).exp()
    boxes = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), -1)  # (B, H, W, 4)
    if image_hw is not None:
        lim = torch.tensor([image_hw[1], image_hw[0], image_hw[1], image_hw[0]], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), lim)
    results = []
    for i in range(b):
        s = scores[i].reshape(h * w, -1)
        cell, c = (s > conf).nonzero(as_tuple=True)
        sc, bx = s[cell, c], boxes[i].reshape(h * w, 4)[cell]
        keep = batched_nms(bx, sc, c, iou)[:max_det]
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": c[keep].long()})
    return results
