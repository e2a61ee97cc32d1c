"""Class scores averaged over the D4 views: the inverse grid map and a 2 x 2 case by hand; the zoomed view's resize
and its detections scaled back, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.ops.head_layout import HeadLayout
from detloss.semi.tta import D4_VIEWS, downscale_detections, ensemble_class_scores, undo_grid, upscale
from detloss.semi.views import GeometricView


def test_d4_views_are_eight_distinct_maps_and_undo_inverts_each():
    m = torch.arange(9.0).view(1, 3, 3)
    moved = [v.apply_grid(m) for v in D4_VIEWS]
    assert len({tuple(x.flatten().tolist()) for x in moved}) == 8  # the whole group, no repeats
    for view, x in zip(D4_VIEWS, moved, strict=True):
        assert torch.equal(undo_grid(x, view), m), view
    both = GeometricView(hflip=True, vflip=True, turns=3)  # a vertical flip too, as semi.geometric draws
    assert torch.equal(undo_grid(both.apply_grid(m), both), m)
    with pytest.raises(ValueError, match="scale-crop"):
        undo_grid(m, GeometricView(scale=1.5))


#: A position-dependent bias: +5 on the bottom-right anchor of a 2 x 2 grid (a head that is not D4-equivariant).
BIAS = torch.tensor([[0.0, 0.0], [0.0, 5.0]])


def _pixels_as_class_logits(images):
    """A 'head' on a stride-1 grid: 4 box channels (the pixel's row index) and 1 class logit = the image's
    first channel + :data:`BIAS`."""
    b, _, h, w = images.shape
    rows = torch.arange(h, dtype=images.dtype).view(1, 1, h, 1).expand(b, 4, h, w)
    return [torch.cat((rows, images[:, :1] + BIAS), 1)]


def test_two_by_two_image_averages_each_anchor_over_the_views():
    # an image pixel x reaches the biased corner in 2 of the 8 views (D4 takes each corner of a 2 x 2 grid
    # to every corner twice), so its average is (6 sigmoid(v) + 2 sigmoid(v + 5)) / 8
    logits = torch.tensor([[0.0, 1.0], [-2.0, 3.0]])
    images = logits.expand(1, 3, 2, 2).clone()
    layout = HeadLayout(reg_max=1, num_classes=1)
    (out,) = ensemble_class_scores(_pixels_as_class_logits, images, layout)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    expected = torch.tensor([[(6 * sig(v) + 2 * sig(v + 5)) / 8 for v in row] for row in logits.tolist()])
    torch.testing.assert_close(out[0, 4], torch.logit(expected))  # pixel (0, 0): 0.6233, logit 0.5037
    torch.testing.assert_close(out[0, :4], _pixels_as_class_logits(images)[0][0, :4])  # box: the input view's
    (same,) = ensemble_class_scores(_pixels_as_class_logits, images, layout, views=[GeometricView()])
    # one view: the model itself (logit(sigmoid(8)) in float32 is 8 to 5e-6 relative)
    torch.testing.assert_close(same, _pixels_as_class_logits(images)[0], rtol=1e-5, atol=1e-4)


def test_bad_views_and_images_are_refused():
    layout = HeadLayout(reg_max=1, num_classes=1)
    with pytest.raises(ValueError, match="at least one view"):
        ensemble_class_scores(_pixels_as_class_logits, torch.zeros(1, 3, 2, 2), layout, views=[])
    with pytest.raises(ValueError, match="no scale-crop"):
        ensemble_class_scores(_pixels_as_class_logits, torch.zeros(1, 3, 2, 2), layout, views=[GeometricView(scale=2)])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ensemble_class_scores(_pixels_as_class_logits, torch.zeros(3, 2, 2), layout)


def test_upscale_sizes_factors_and_bilinear_pixels_by_hand():
    ramp = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    big, sx, sy = upscale(ramp, 2.0, 1)
    # half-pixel centres (align_corners=False): output x = 0.25, 0.75, 1.25, 1.75 -> input 0, 0.25, 0.75, 1 (clamped)
    torch.testing.assert_close(big[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert big.shape == (1, 3, 2, 4) and (sx, sy) == (2.0, 2.0)
    # sides go to the nearest multiple: 64 * 1.5 = 96 = 3 * 32; 96 * 1.5 = 144 -> 160 (5 * 32)
    big, sx, sy = upscale(torch.zeros(2, 3, 64, 96), 1.5, 32)
    assert big.shape == (2, 3, 96, 160) and sx == pytest.approx(160 / 96) and sy == 1.5
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        upscale(torch.zeros(3, 4, 4), 1.5, 1)


def test_downscale_detections_divides_boxes_and_polygons_only():
    det = {
        "boxes": torch.tensor([[30.0, 60.0, 90.0, 120.0]]),
        "polygons": torch.tensor([[[30.0, 60.0], [90.0, 120.0]]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
    }
    out = downscale_detections(det, 1.5, 2.0)
    torch.testing.assert_close(out["boxes"], torch.tensor([[20.0, 30.0, 60.0, 60.0]]))
    torch.testing.assert_close(out["polygons"], torch.tensor([[[20.0, 30.0], [60.0, 60.0]]]))
    assert out["scores"] is det["scores"] and out["labels"] is det["labels"]
