"""TinyTwoStage: anchors (count, order, a hand-checked box), proposals from hand-set RPN outputs, the RPN
and ROI criteria on its outputs (gradient reaches the backbone), a short overfit, and predict."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.data.shapes import ShapesDataset
from detloss.models import TinyTwoStage

C = ShapesDataset.num_classes


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # two shared cores: intra-op threads contending with other processes make these steps ~5x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(n: int, size: int) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    ds = ShapesDataset(n, image_size=size, max_objects=3, seed=0)
    samples = [ds[i] for i in range(n)]
    targets = [{k: s[k] for k in ("boxes", "labels", "polygons", "polygon_counts")} for s in samples]
    return torch.stack([s["image"] for s in samples]), [s["boxes"] for s in samples], targets


def test_anchor_count_order_and_a_hand_checked_box() -> None:
    model = TinyTwoStage(3, width=4)
    anchors = model.anchors((64, 96))
    k, w = 9, 12  # 3 sizes x 3 ratios per cell; 96 / 8 columns
    assert anchors.shape == (8 * 12 * k, 4) and anchors.dtype == torch.float32
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres[:k], torch.tensor([[4.0, 4.0]]).expand(k, 2))  # cell (0, 0)
    torch.testing.assert_close(centres[k : 2 * k], torch.tensor([[12.0, 4.0]]).expand(k, 2))  # next column
    torch.testing.assert_close(centres[w * k : w * k + k], torch.tensor([[4.0, 12.0]]).expand(k, 2))  # next row
    # cell (row 1, col 2), size 32, ratio h/w 0.5: centre (20, 12), w = 32 / sqrt(0.5), h = 32 sqrt(0.5)
    half_w, half_h = 16 * math.sqrt(2), 8 * math.sqrt(2)
    expected = torch.tensor([20 - half_w, 12 - half_h, 20 + half_w, 12 + half_h])
    torch.testing.assert_close(anchors[(1 * w + 2) * k + 1 * 3 + 0], expected)
    sizes = ((anchors[:k, 2] - anchors[:k, 0]) * (anchors[:k, 3] - anchors[:k, 1])).sqrt()
    torch.testing.assert_close(sizes, torch.tensor([16.0] * 3 + [32.0] * 3 + [64.0] * 3))
    assert model.anchors((70, 90)).shape[0] == 9 * 12 * k  # ceil(70 / 8) x ceil(90 / 8) cells
    out = model(torch.zeros(2, 3, 64, 96))
    assert out["objectness"].shape == (2, anchors.shape[0]) and out["rpn_deltas"].shape == (2, anchors.shape[0], 4)
    assert out["features"].shape == (2, 16, 8, 12)


def test_rpn_layout_matches_anchor_order() -> None:
    k, h, w = 9, 2, 3
    row = torch.arange(h).view(1, 1, h, 1)
    col = torch.arange(w).view(1, 1, 1, w)
    a = torch.arange(k).view(1, k, 1, 1)
    obj = (1000 * row + 10 * col + a).float()
    deltas = (1000 * row + 10 * col).view(1, 1, 1, h, w) + 100 * torch.arange(4).view(1, 1, 4, 1, 1)
    deltas = (deltas + a.view(1, k, 1, 1, 1)).reshape(1, 4 * k, h, w).float()  # channel a * 4 + coordinate
    flat_obj, flat_deltas = TinyTwoStage.rpn_layout(obj, deltas)
    for r in range(h):
        for c in range(w):
            for j in range(k):
                i = (r * w + c) * k + j
                assert flat_obj[0, i] == 1000 * r + 10 * c + j
                assert flat_deltas[0, i].tolist() == [1000 * r + 10 * c + j + 100 * q for q in range(4)]


def _hand_set_outputs(model: TinyTwoStage, hw: tuple[int, int], b: int) -> tuple[dict, torch.Tensor]:
    a = model.anchors(hw).shape[0]
    out = {"objectness": torch.full((b, a), -5.0), "rpn_deltas": torch.zeros(b, a, 4)}
    return out, model.anchors(hw)


def test_top_proposal_is_the_best_anchor_clipped() -> None:
    model = TinyTwoStage(3, width=4, proposals_test=5).eval()
    hw = (64, 64)
    out, anchors = _hand_set_outputs(model, hw, 2)
    # image 0: cell (0, 0), size 64, ratio 1 -> (-28, -28, 36, 36), clipped to (0, 0, 36, 36)
    big = (0 * 8 + 0) * 9 + 2 * 3 + 1
    torch.testing.assert_close(anchors[big], torch.tensor([-28.0, -28.0, 36.0, 36.0]))
    out["objectness"][0, big] = 5.0
    # image 1: the best anchor is shrunk to 0.5 px by its deltas and dropped; the second best, cell (3, 3),
    # size 32, ratio 1 = (12, 12, 44, 44), moved by (0.25 w, -0.125 h) and halved in width -> (28, 8, 44, 40)
    tiny, second = (1 * 8 + 1) * 9 + 4, (3 * 8 + 3) * 9 + 1 * 3 + 1
    out["objectness"][1, tiny], out["objectness"][1, second] = 6.0, 5.0
    out["rpn_deltas"][1, tiny] = torch.tensor([0.0, 0.0, math.log(0.5 / 32), 0.0])
    out["rpn_deltas"][1, second] = torch.tensor([0.25, -0.125, math.log(0.5), 0.0])
    rois, roi_image = model.proposals(out, hw)
    assert rois.dtype == torch.float32 and roi_image.dtype == torch.long
    assert (roi_image == 0).sum() == 5 and (roi_image == 1).sum() == 5  # proposals_test each
    assert roi_image.tolist() == sorted(roi_image.tolist())
    torch.testing.assert_close(rois[roi_image == 0][0], torch.tensor([0.0, 0.0, 36.0, 36.0]))
    torch.testing.assert_close(rois[roi_image == 1][0], torch.tensor([28.0, 8.0, 44.0, 40.0]))
    assert (rois[:, :2] >= 0).all() and (rois[:, 2:] <= 64).all()


def test_gt_boxes_are_appended_in_training() -> None:
    model = TinyTwoStage(3, width=4, proposals_train=7, proposals_test=3)
    hw = (64, 64)
    out, _ = _hand_set_outputs(model, hw, 2)
    gt = [torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 60.0]]), torch.zeros(0, 4)]
    rois, roi_image = model.proposals(out, hw, gt)
    assert (roi_image == 0).sum() == 7 + 2 and (roi_image == 1).sum() == 7
    torch.testing.assert_close(rois[roi_image == 0][-2:], gt[0])
    model.eval()
    assert model.proposals(out, hw, gt)[0].shape[0] == 3 + 2 + 3
    with pytest.raises(ValueError, match="gt_boxes"):
        model.proposals(out, hw, gt[:1])
    with pytest.raises(ValueError, match="objectness"):
        model.proposals(out, (96, 64))


def test_criteria_accept_outputs_and_gradient_reaches_backbone() -> None:
    torch.manual_seed(0)
    model = TinyTwoStage(C, width=8, proposals_train=64)
    images, gt, targets = _batch(2, 96)
    hw = (96, 96)
    out = model(images)
    rpn = RPNCriterion()(out["objectness"], out["rpn_deltas"], model.anchors(hw), gt)
    rois, roi_image = model.proposals(out, hw, gt)
    assert not rois.requires_grad
    cls, box, mask = model.roi_heads(out["features"], rois, roi_image)
    r = rois.shape[0]
    assert cls.shape == (r, C + 1) and box.shape == (r, C, 4) and mask.shape == (r, C, 14, 14)
    # background prior at the start
    assert (cls.softmax(-1)[:, -1] > 0.9).all()
    roi_crit = ROICriterion(C, mask_size=14)
    roi = roi_crit(cls, box, mask, rois, roi_image, targets)
    assert set(rpn.keys()) == {"obj", "box"} and set(roi.keys()) == {"cls", "box", "mask"}
    loss = rpn.total + roi.total
    assert torch.isfinite(loss)
    loss.backward()
    for p in (model.backbone.stem[0][0].weight, model.rpn_obj.weight, model.box_pred.weight, model.mask_pred.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the mask head on the sampled positives only: the same loss and gradients
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(images)
    pos = roi_crit.assign(rois, roi_image, targets).index
    cls2, box2, mask2 = model.roi_heads(out["features"], rois, roi_image, mask_index=pos)
    rpn2 = RPNCriterion()(out["objectness"], out["rpn_deltas"], model.anchors(hw), gt)
    loss2 = rpn2.total + roi_crit(cls2, box2, mask2, rois, roi_image, targets).total
    torch.testing.assert_close(loss2, loss)
    loss2.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-4, msg=n)


def _probe_rois(gt: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed ROIs per image: 4 jittered copies of each GT box and 8 random small background boxes."""
    g = torch.Generator().manual_seed(0)
    rois, image = [], []
    for i, b in enumerate(gt):
        wh = (b[:, 2:] - b[:, :2]).repeat(4, 2)
        jitter = b.repeat(4, 1) + torch.randn(wh.shape, generator=g) * 0.08 * wh
        xy = torch.rand(8, 2, generator=g) * (size - 24)
        rois.append(torch.cat([jitter, torch.cat([xy, xy + 12 + torch.rand(8, 2, generator=g) * 12], 1)]))
        image.append(torch.full((rois[-1].shape[0],), i))
    return torch.cat(rois), torch.cat(image)


def test_overfit_two_images() -> None:
    # The proposals move as the RPN learns, so the ROI loss is measured on fixed probe ROIs, which are
    # also trained on every step (with the proposals and the GT boxes).
    torch.manual_seed(0)
    model = TinyTwoStage(C, width=8, proposals_train=64)
    images, gt, targets = _batch(2, 96)
    hw = (96, 96)
    anchors = model.anchors(hw)
    probe, probe_image = _probe_rois(gt, 96)
    rpn_crit, roi_crit = RPNCriterion(), ROICriterion(C, mask_size=14)

    @torch.no_grad()
    def losses() -> tuple[float, dict[str, float]]:
        out = model(images)
        rpn = rpn_crit(out["objectness"], out["rpn_deltas"], anchors, gt).total
        roi = roi_crit(*model.roi_heads(out["features"], probe, probe_image), probe, probe_image, targets)
        return float(rpn), {k: float(v.value) for k, v in roi.items()} | {"total": float(roi.total)}

    rpn0, roi0 = losses()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        out = model(images)
        rpn = rpn_crit(out["objectness"], out["rpn_deltas"], anchors, gt)
        rois, roi_image = model.proposals(out, hw, gt)
        rois, roi_image = torch.cat([rois, probe]), torch.cat([roi_image, probe_image])
        roi = roi_crit(*model.roi_heads(out["features"], rois, roi_image), rois, roi_image, targets)
        opt.zero_grad()
        (rpn.total + roi.total).backward()
        opt.step()
    rpn1, roi1 = losses()
    assert rpn1 < 0.5 * rpn0, (rpn0, rpn1)
    assert roi1["total"] < 0.5 * roi0["total"], (roi0, roi1)
    assert roi1["box"] < 0.75 * roi0["box"] and roi1["mask"] < 0.75 * roi0["mask"], (roi0, roi1)


def test_predict_untrained_is_well_formed() -> None:
    torch.manual_seed(0)
    model = TinyTwoStage(C, width=8, proposals_test=30).eval()
    images, _, _ = _batch(2, 64)
    for conf, max_det in ((0.05, 100), (0.0, 20)):
        dets = model.predict(images, conf=conf, iou=0.5, max_det=max_det)
        assert len(dets) == 2
        for det in dets:
            n = det["boxes"].shape[0]
            assert n <= max_det and det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
            assert det["labels"].shape == (n,) and det["labels"].dtype == torch.long
            assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32
            assert ((det["labels"] >= 0) & (det["labels"] < C)).all()
            assert (det["boxes"][:, :2] >= 0).all() and (det["boxes"][:, 2:] <= 64).all()
            assert (det["boxes"][:, 2:] > det["boxes"][:, :2]).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all() and (det["scores"] > conf).all()
    assert sum(d["boxes"].shape[0] for d in dets) > 0  # conf 0 keeps something
    assert not model.training


def test_head_parameters_and_bad_arguments() -> None:
    model = TinyTwoStage(3, width=4)
    assert model.head_parameters("poly") == []
    parts = [model.head_parameters(n) for n in ("backbone", "rpn", "box", "mask")]
    assert sum(len(p) for p in parts) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="mask_size"):
        TinyTwoStage(3, mask_size=7)
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="mask_index"):
        model.roi_heads(torch.zeros(1, 16, 8, 8), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2))
