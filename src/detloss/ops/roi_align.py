"""Bilinear ROI Align in pure PyTorch, with torchvision's / detectron2's sample positions.

For a ROI ``(x1, y1, x2, y2)`` in image pixels, ``offset = 0.5`` if ``aligned`` else ``0`` and
``S = output_size``, ``g = sampling_ratio``, on a feature map whose value ``[i, j]`` sits at the
continuous feature coordinate ``(x=j, y=i)``::

    start = (x1, y1) * spatial_scale - offset,   size = (x2 - x1, y2 - y1) * spatial_scale
    (aligned=False: size = max(size, 1), the legacy Mask R-CNN behaviour)
    bin = size / S
    sample (p, k) of bin p along an axis: start + p * bin + (k + 0.5) * bin / g,   k = 0 .. g-1
    output[r, c, py, px] = mean over the g * g samples of bin (py, px) of bilinear(features, y, x)

``bilinear`` follows torchvision's kernel: a sample with ``y < -1`` or ``y > H`` (or the same for
``x`` and ``W``) contributes 0 but still counts in the mean; otherwise the coordinate is clamped to
``[0, H - 1]`` (``[0, W - 1]``) and interpolated between its two neighbouring rows (columns). With
``aligned=True`` a pixel-centre grid in the image maps to the pixel centres of the feature map
(detectron2's ``ROIAlign(aligned=True)``).

Implementation: the samples of a ROI form a Cartesian grid (``S g`` x-positions times ``S g``
y-positions) and bilinear weights factor into an x-weight times a y-weight, the validity test too;
so the mean over a bin's ``g²`` samples is ``A_y F A_x^T`` with ``A_y (S, H)``, ``A_x (S, W)`` the
per-axis weights averaged over the bin's ``g`` samples. Per image of the batch this is two matrix
products over all its ROIs: exact (same numbers as torchvision's kernel up to rounding), linear in
``features`` and so differentiable w.r.t. them (not w.r.t. ``rois``: the clamping makes the box
gradient piecewise, and no model here needs it). Memory is ``R x S x C x W`` for the intermediate,
no per-ROI copy of the feature map.

Difference from torchvision, on purpose: ``sampling_ratio <= 0`` (torchvision's adaptive
``ceil(size / S)`` samples per bin, different for every ROI) is not supported; pass a fixed ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detloss.core.checks import check_same, check_tensor

__all__ = ["roi_align"]


def _check_args(
    features: object,
    rois: object,
    roi_image: object,
    output_size: object,
    spatial_scale: object,
    sampling_ratio: object,
) -> None:
    check_tensor("features", features, ("B", "C", "H", "W"), floating=True)
    check_tensor("rois", rois, ("R", 4), floating=True)
    assert isinstance(features, Tensor) and isinstance(rois, Tensor)
    r = rois.shape[0]
    check_tensor("roi_image", roi_image, (r,))
    assert isinstance(roi_image, Tensor)
    if roi_image.is_floating_point() or roi_image.is_complex() or roi_image.dtype == torch.bool:
        raise ValueError(f"roi_image must be an integer tensor of shape ({r},), got dtype {roi_image.dtype}")
    check_same("features", features, "rois", rois, dims=())
    check_same("features", features, "roi_image", roi_image, dims=())
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int) or sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be an int >= 1 (adaptive <= 0 is not supported), got {sampling_ratio!r}")
    if not isinstance(spatial_scale, (int, float)) or isinstance(spatial_scale, bool) or not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be a number > 0, got {spatial_scale!r}")
    b = features.shape[0]
    if r and (int(roi_image.min()) < 0 or int(roi_image.max()) >= b):
        raise ValueError(f"roi_image must hold image indices in [0, {b}) for features of shape {tuple(features.shape)}")


def _axis_samples(lo: Tensor, hi: Tensor, size: int, ratio: int, scale: float, aligned: bool) -> Tensor:
    """Feature coordinates ``(R, size * ratio)`` of the samples along one axis of ROIs spanning ``[lo, hi]`` px."""
    offset = 0.5 if aligned else 0.0
    start = lo * scale - offset
    extent = (hi - lo) * scale
    if not aligned:
        extent = extent.clamp(min=1.0)  # legacy: ROIs smaller than one feature cell are stretched to one
    step = extent / (size * ratio)  # samples are evenly spaced: bin / ratio apart, half a step from the edges
    k = torch.arange(size * ratio, dtype=lo.dtype, device=lo.device) + 0.5
    return start[:, None] + k[None, :] * step[:, None]


def _axis_weights(t: Tensor, n: int, size: int, ratio: int) -> Tensor:
    """Interpolation matrix ``(R, size, n)`` along one axis: row ``p`` is the mean over bin ``p``'s samples
    of their bilinear weights on the ``n`` cells (torchvision's rule: outside ``[-1, n]`` all zero,
    otherwise clamped to ``[0, n - 1]`` and split between the two neighbouring cells)."""
    r = t.shape[0]
    valid = ((t >= -1.0) & (t <= n)).to(t.dtype)
    t = t.clamp(0.0, n - 1)
    low = t.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)  # at t = n - 1 both neighbours are the last cell, weight 1 on it
    frac = t - low.to(t.dtype)
    w = t.new_zeros(r, size * ratio, n)
    w.scatter_add_(2, low[..., None], ((1.0 - frac) * valid)[..., None])
    w.scatter_add_(2, high[..., None], (frac * valid)[..., None])
    return w.view(r, size, ratio, n).mean(2)


def roi_align(
    features: Tensor,
    rois: Tensor,
    roi_image: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    """Pool ``S x S`` bilinear ROI Align features (module docstring for the exact sample positions).

    Args:
        features: ``(B, C, H, W)`` floating feature maps.
        rois: ``(R, 4)`` ``xyxy`` in image pixels.
        roi_image: ``(R,)`` integer image index of each ROI, in ``[0, B)``.
        output_size: ``S``.
        spatial_scale: feature cells per image pixel (``1 / stride``).
        sampling_ratio: ``g >= 1`` bilinear samples per bin and axis (``g²`` per bin).
        aligned: subtract half a feature cell (detectron2 / torchvision ``aligned=True``).

    Returns:
        ``(R, C, S, S)`` in the dtype of ``features``; ``(0, C, S, S)`` for ``R = 0``.

    Example:
        >>> f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> roi_align(f, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0]), 1, 1.0, 1)
        tensor([[[[2.5000]]]])
    """
    _check_args(features, rois, roi_image, output_size, spatial_scale, sampling_ratio)
    _, c, h, w = features.shape
    s, g, r = output_size, sampling_ratio, rois.shape[0]
    if r == 0:
        return features.new_zeros(0, c, s, s)
    boxes = rois.detach().to(features.dtype)
    wx = _axis_weights(_axis_samples(boxes[:, 0], boxes[:, 2], s, g, spatial_scale, aligned), w, s, g)  # (R, S, W)
    wy = _axis_weights(_axis_samples(boxes[:, 1], boxes[:, 3], s, g, spatial_scale, aligned), h, s, g)  # (R, S, H)
    image = roi_image.long()
    parts, order = [], []
    for b in torch.unique(image).tolist():  # per image: two GEMMs, no per-ROI copy of the feature map
        idx = (image == b).nonzero().squeeze(1)
        k = idx.numel()
        rows = (wy[idx].reshape(k * s, h) @ features[b].transpose(0, 1).reshape(h, c * w)).view(k, s * c, w)
        pooled = (rows @ wx[idx].transpose(1, 2)).view(k, s, c, s)  # (k, S_y, C, S_x)
        parts.append(pooled.transpose(1, 2))
        order.append(idx)
    return torch.cat(parts)[torch.argsort(torch.cat(order))].contiguous()  # back to ROI order
