"""Anchor points of a dense (anchor-free) head, and the ltrb <-> xyxy conversions around them.

Everything here is in **pixels**: an anchor point is the centre of a feature-map cell,
``((x + offset) * stride, (y + offset) * stride)``. The ordering is that of ultralytics ``make_anchors``
(row-major within a level, ``x`` fastest; levels concatenated in the order given), whose points are in
grid units; ours are those points times the stride, computed in the same order of operations
(``(x + offset)`` first, then ``* stride``), so they equal ultralytics' ``anchor_points * stride_tensor``
bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detloss.core.checks import check_same, check_trailing

__all__ = ["anchors_in_boxes", "bbox2dist", "dist2bbox", "make_anchors"]


def make_anchors(
    feat_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int | float],
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (pixel cell centres) and per-anchor strides of a multi-level dense head.

    Args:
        feat_sizes: one ``(height, width)`` per level, e.g. ``[(80, 80), (40, 40), (20, 20)]``.
        strides: one stride (pixels per cell) per level, e.g. ``[8, 16, 32]``.
        offset: position of the point inside its cell, in cells (0.5 = centre).
        device: device of the outputs.
        dtype: floating dtype of the outputs.

    Returns:
        ``points (A, 2)`` pixel ``(x, y)`` and ``strides (A,)``, with ``A = sum(h * w)``. Within a level
        the order is row-major (``y`` outer, ``x`` inner); levels follow the order of ``feat_sizes``.

    Example:
        >>> points, s = make_anchors([(1, 2)], [8])
        >>> points
        tensor([[ 4.,  4.],
                [12.,  4.]])
        >>> s
        tensor([8., 8.])
    """
    if not isinstance(feat_sizes, Sequence) or not isinstance(strides, Sequence):
        raise ValueError("feat_sizes and strides must be sequences (one entry per level)")
    if len(feat_sizes) != len(strides):
        raise ValueError(f"strides must have one entry per level of feat_sizes ({len(feat_sizes)}), got {len(strides)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    points, stride_list = [], []
    for level, (size, stride) in enumerate(zip(feat_sizes, strides, strict=True)):
        if (
            not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
        ):
            raise ValueError(f"feat_sizes[{level}] must be a pair of non-negative ints (height, width), got {size!r}")
        if isinstance(stride, bool) or not isinstance(stride, int | float) or not stride > 0:
            raise ValueError(f"strides[{level}] must be a positive number, got {stride!r}")
        h, w = size
        sx = torch.arange(w, device=device, dtype=dtype) + offset
        sy = torch.arange(h, device=device, dtype=dtype) + offset
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).reshape(-1, 2) * stride)
        stride_list.append(torch.full((h * w,), stride, device=device, dtype=dtype))
    if not points:
        return torch.zeros(0, 2, device=device, dtype=dtype), torch.zeros(0, device=device, dtype=dtype)
    return torch.cat(points), torch.cat(stride_list)


def _broadcast(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    check_same(name_a, a, name_b, b, dims=())
    try:
        torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must broadcast in their leading dims"
        ) from err


def dist2bbox(distance: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Decode ``(left, top, right, bottom)`` distances from points into ``xyxy`` boxes.

    Args:
        distance: ``(..., 4)`` ltrb distances (same unit as ``points``; not clamped).
        points: ``(..., 2)`` ``(x, y)``, broadcastable against ``distance``'s leading dims.

    Returns:
        ``(..., 4)`` ``(x - l, y - t, x + r, y + b)``.

    Example:
        >>> dist2bbox(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0]))
        tensor([ 9., 18., 13., 24.])
    """
    check_trailing("distance", distance, (4,), floating=True)
    check_trailing("points", points, (2,), floating=True)
    _broadcast("distance", distance, "points", points)
    lt, rb = distance.chunk(2, -1)
    return torch.cat((points - lt, points + rb), -1)


def bbox2dist(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Encode ``xyxy`` boxes as ``(left, top, right, bottom)`` distances from points; inverse of
    :func:`dist2bbox`.

    No clamping: a point outside its box gives negative distances (the DFL target clamp to
    ``[0, reg_max - 0.01]`` lives in the loss, where ``reg_max`` is known).

    Args:
        points: ``(..., 2)`` ``(x, y)``.
        boxes: ``(..., 4)`` ``xyxy``, broadcastable against ``points``' leading dims.

    Returns:
        ``(..., 4)`` ``(x - x1, y - y1, x2 - x, y2 - y)``.

    Example:
        >>> bbox2dist(torch.tensor([10.0, 20.0]), torch.tensor([9.0, 18.0, 13.0, 24.0]))
        tensor([1., 2., 3., 4.])
    """
    check_trailing("points", points, (2,), floating=True)
    check_trailing("boxes", boxes, (4,), floating=True)
    _broadcast("points", points, "boxes", boxes)
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((points - x1y1, x2y2 - points), -1)


def anchors_in_boxes(points: torch.Tensor, boxes: torch.Tensor, batch_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(B, A)`` bool: anchor ``a`` of image ``b`` lies in one of that image's boxes (edges included).

    The dense criterion's ``ignore`` mask from ignore regions (VOC ``difficult`` objects, objects a tile cuts).

    Args:
        points: ``(A, 2)`` pixel ``(x, y)`` anchor points (:func:`make_anchors`).
        boxes: ``(M, 4)`` pixel ``xyxy``.
        batch_idx: ``(M,)`` image of each box, in ``[0, batch_size)``.

    Example:
        >>> points, _ = make_anchors([(1, 3)], [8])  # x = 4, 12, 20
        >>> anchors_in_boxes(points, torch.tensor([[0.0, 0.0, 12.0, 8.0]]), torch.tensor([1]), 2)
        tensor([[False, False, False],
                [ True,  True, False]])
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or batch_idx.shape != boxes.shape[:1]:
        raise ValueError(
            f"boxes must be (M, 4) and batch_idx (M,), got {tuple(boxes.shape)} and {tuple(batch_idx.shape)}"
        )
    if boxes.shape[0] == 0:
        return torch.zeros(batch_size, points.shape[0], dtype=torch.bool, device=points.device)
    if int(batch_idx.min()) < 0 or int(batch_idx.max()) >= batch_size:
        raise ValueError(f"batch_idx must lie in [0, {batch_size}), got {batch_idx.tolist()}")
    x, y = points[None, :, 0], points[None, :, 1]
    b = boxes.to(points)[:, :, None]
    inside = (x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])  # (M, A)
    hits = torch.zeros(batch_size, points.shape[0], dtype=torch.int32, device=points.device)
    return hits.index_add_(0, batch_idx.to(points.device), inside.int()) > 0
