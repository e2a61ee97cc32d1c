"""roi_align: exact values on linear ramps, hand-worked border cases, a transcription of torchvision's
scalar kernel, gradcheck, empty input, argument validation."""

from __future__ import annotations

import pytest
import torch

from detloss.models import roi_align


def _ramp(h: int, w: int, coef: list[tuple[float, float, float]]) -> torch.Tensor:
    """``(C, h, w)`` with channel ``k`` equal to ``a x + b y + c`` at cell ``(y, x)``."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([a * x + b * y + c for a, b, c in coef])


RAMPS = [[(1.0, 2.0, 0.5), (-0.5, 0.25, 3.0)], [(0.3, -1.0, 2.0), (2.0, 0.0, -1.0)]]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_linear_ramp_equals_ramp_at_bin_centres(aligned: bool, ratio: int) -> None:
    # Bilinear interpolation of a linear function is exact, and the mean of a bin's samples (symmetric
    # about the bin centre) is the value at the centre; so each output is the ramp at the bin centre.
    features = torch.stack([_ramp(6, 8, RAMPS[0]), _ramp(6, 8, RAMPS[1])])  # (2, 2, 6, 8)
    scale = 0.5
    # ROIs in image pixels whose samples stay inside [0, 7] x [0, 5] on the feature map (no clamping) in
    # both modes; the last one is narrower than a cell, stretched to one cell when not aligned
    rois = torch.tensor([[2.0, 3.0, 10.0, 9.0], [4.0, 2.0, 12.0, 10.0], [3.0, 3.0, 4.0, 5.0]], dtype=torch.float64)
    roi_image = torch.tensor([0, 1, 1])
    s = 3
    out = roi_align(features, rois, roi_image, s, scale, sampling_ratio=ratio, aligned=aligned)
    assert out.shape == (3, 2, s, s) and out.dtype == torch.float64
    offset = 0.5 if aligned else 0.0
    for r, ((x1, y1, x2, y2), img) in enumerate(zip(rois.tolist(), roi_image.tolist(), strict=True)):
        w, h = (x2 - x1) * scale, (y2 - y1) * scale
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        for py in range(s):
            for px in range(s):
                cx = x1 * scale - offset + (px + 0.5) * w / s
                cy = y1 * scale - offset + (py + 0.5) * h / s
                for ch, (a, b, c) in enumerate(RAMPS[img]):
                    assert out[r, ch, py, px].item() == pytest.approx(a * cx + b * cy + c, abs=1e-12)


def test_ramp_first_roi_numbers() -> None:
    # Written out for ROI (2, 3, 10, 9), scale 0.5, S = 3, aligned: feature box (0.5, 1.0)-(4.5, 4.0),
    # bins 4/3 x 1 wide, centres x = 0.5 + 2/3 + 4/3 k = 1.1667, 2.5, 3.8333 and y = 1.5, 2.5, 3.5.
    f = _ramp(6, 8, [(1.0, 2.0, 0.5)])[None]
    out = roi_align(f, torch.tensor([[2.0, 3.0, 10.0, 9.0]], dtype=torch.float64), torch.tensor([0]), 3, 0.5)
    expected = torch.tensor(
        [[1.1667 + 3.0 + 0.5, 2.5 + 3.0 + 0.5, 3.8333 + 3.0 + 0.5],
         [1.1667 + 5.0 + 0.5, 2.5 + 5.0 + 0.5, 3.8333 + 5.0 + 0.5],
         [1.1667 + 7.0 + 0.5, 2.5 + 7.0 + 0.5, 3.8333 + 7.0 + 0.5]],
        dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(out[0, 0], expected, atol=1e-4, rtol=0)


F22 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
BUMP = torch.tensor([[[[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]]])


@pytest.mark.parametrize(
    ("features", "roi", "size", "ratio", "aligned", "expected"),
    [
        # one sample at (0.5, 0.5): the mean of the four cells
        (F22, [0.0, 0.0, 2.0, 2.0], 1, 1, True, [[2.5]]),
        # not aligned: the sample is at (1, 1), the last row and column: exactly cell [1, 1]
        (F22, [0.0, 0.0, 2.0, 2.0], 1, 1, False, [[4.0]]),
        # sample at (-1, -1): still inside [-1, H], clamped to cell [0, 0]
        (F22, [-1.0, -1.0, 0.0, 0.0], 1, 1, True, [[1.0]]),
        # sample at (-3, -3): outside, 0
        (F22, [-3.0, -3.0, -2.0, -2.0], 1, 1, True, [[0.0]]),
        # x samples at -2 (outside) and -1 (clamped to column 0), y samples at rows 0 and 1:
        # (0 + 0 + f[0, 0] + f[1, 0]) / 4 = (1 + 3) / 4, the outside samples still count
        (F22, [-2.0, 0.0, 0.0, 2.0], 1, 2, True, [[1.0]]),
        # samples at 0.25 and 1.75 on both axes; at (0.25, 0.25):
        # 0.75*0.75*0 + 0.75*0.25*1 + 0.25*0.75*1 + 0.25*0.25*4 = 0.625, the same at all four by symmetry
        (BUMP, [0.0, 0.0, 3.0, 3.0], 1, 2, True, [[0.625]]),
        # a 1 x 1 map: every sample in [-1, 1] reads its single value
        (torch.full((1, 1, 1, 1), 5.0), [0.0, 0.0, 1.0, 1.0], 2, 1, True, [[5.0, 5.0], [5.0, 5.0]]),
    ],
)
def test_hand_worked_cases(
    features: torch.Tensor, roi: list[float], size: int, ratio: int, aligned: bool, expected: list[list[float]]
) -> None:
    out = roi_align(features, torch.tensor([roi]), torch.tensor([0]), size, 1.0, sampling_ratio=ratio, aligned=aligned)
    torch.testing.assert_close(out[0, 0], torch.tensor(expected), atol=1e-6, rtol=0)


def _reference(
    feat: torch.Tensor, rois: torch.Tensor, roi_image: torch.Tensor, s: int, scale: float, g: int, aligned: bool
) -> torch.Tensor:
    """torchvision's CPU ROIAlign forward, one sample at a time (fixed sampling ratio)."""
    _, c, h, w = feat.shape
    out = torch.zeros(len(rois), c, s, s, dtype=feat.dtype)
    off = 0.5 if aligned else 0.0
    for r, (box, b) in enumerate(zip(rois.tolist(), roi_image.tolist(), strict=True)):
        x1, y1, x2, y2 = (v * scale for v in box)
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        for py in range(s):
            for px in range(s):
                for iy in range(g):
                    y = y1 - off + py * rh / s + (iy + 0.5) * rh / s / g
                    for ix in range(g):
                        x = x1 - off + px * rw / s + (ix + 0.5) * rw / s / g
                        if y < -1.0 or y > h or x < -1.0 or x > w:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        yl, xl = int(y), int(x)
                        yh, xh = yl + 1, xl + 1
                        if yl >= h - 1:
                            yl = yh = h - 1
                            y = float(yl)
                        if xl >= w - 1:
                            xl = xh = w - 1
                            x = float(xl)
                        ly, lx = y - yl, x - xl
                        f = feat[b]
                        v = (1 - ly) * (1 - lx) * f[:, yl, xl] + (1 - ly) * lx * f[:, yl, xh]
                        out[r, :, py, px] += (v + ly * (1 - lx) * f[:, yh, xl] + ly * lx * f[:, yh, xh]) / (g * g)
    return out


@pytest.mark.parametrize("aligned", [True, False])
def test_matches_scalar_kernel_with_borders(aligned: bool) -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    xy = torch.rand(30, 2, generator=g, dtype=torch.float64) * 20 - 4  # many ROIs cross the borders
    rois = torch.cat([xy, xy + torch.rand(30, 2, generator=g, dtype=torch.float64) * 15 + 0.1], 1)
    roi_image = torch.randint(0, 2, (30,), generator=g)
    for size, ratio in ((1, 1), (3, 2), (2, 3)):
        got = roi_align(feat, rois, roi_image, size, 0.5, sampling_ratio=ratio, aligned=aligned)
        torch.testing.assert_close(got, _reference(feat, rois, roi_image, size, 0.5, ratio, aligned))


@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck_features(aligned: bool) -> None:
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[1.0, 1.0, 7.0, 5.0], [-2.0, 0.5, 3.0, 9.0], [4.0, 2.0, 11.0, 8.0]], dtype=torch.float64)
    roi_image = torch.tensor([1, 0, 1])
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, roi_image, 2, 0.5, 2, aligned), (feat,))


def test_float32_and_roi_order() -> None:
    # ROIs of interleaved images come back in their own order
    feat = torch.stack([torch.full((2, 4, 4), 1.0), torch.full((2, 4, 4), 2.0)])
    rois = torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 4], [1, 1, 3, 3], [0, 0, 2, 2]])
    out = roi_align(feat, rois, torch.tensor([1, 0, 1, 0]), 2, 1.0)
    assert out.dtype == torch.float32 and out.shape == (4, 2, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [2.0, 1.0, 2.0, 1.0]


def test_empty_rois() -> None:
    feat = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = roi_align(feat, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 7, 0.25)
    assert out.shape == (0, 3, 7, 7) and out.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": torch.zeros(3, 4, 4)}, "features"),
        ({"features": torch.zeros(1, 3, 4, 4, dtype=torch.long)}, "features"),
        ({"rois": torch.zeros(2, 5)}, "rois"),
        ({"rois": torch.zeros(4)}, "rois"),
        ({"roi_image": torch.zeros(3, dtype=torch.long)}, "roi_image"),
        ({"roi_image": torch.zeros(2)}, "roi_image"),
        ({"roi_image": torch.tensor([0, 2])}, "roi_image"),
        ({"roi_image": torch.tensor([0, -1])}, "roi_image"),
        ({"output_size": 0}, "output_size"),
        ({"output_size": 2.0}, "output_size"),
        ({"spatial_scale": 0.0}, "spatial_scale"),
        ({"sampling_ratio": 0}, "sampling_ratio"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {
        "features": torch.zeros(2, 3, 4, 4),
        "rois": torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]),
        "roi_image": torch.tensor([0, 1]),
        "output_size": 2,
        "spatial_scale": 1.0,
        "sampling_ratio": 2,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        roi_align(**args)
