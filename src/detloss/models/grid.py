"""A single-grid detector: one ``H x W`` grid of cells, each predicting ``loc``, ``obj`` and ``cls``.

:class:`TinyGrid` outputs exactly what :class:`detloss.criteria.MultigridCriterion` takes (the criterion
encodes the boxes into cells with :func:`detloss.assign.grid.grid_targets`, whose module docstring states
the encoding); :func:`decode_grid` inverts that encoding into detections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from detloss.core.checks import check_tensor
from detloss.ops.nms import batched_nms
from detloss.models.tiny_yolo import Block, ConvNormAct

__all__ = ["TinyGrid", "decode_grid"]

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

    Outputs are raw: ``loc`` in the encoding of :mod:`detloss.assign.grid`, ``obj`` and ``cls`` logits.
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
    score ``> conf`` are decoded (inverse of the encoding of :mod:`detloss.assign.grid`, ``loc_2, loc_3`` capped at
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
