"""detloss's torchvision adapter against torchvision's own R-CNN losses, on a small real Mask R-CNN."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision", reason="needs torchvision: pip install -e '.[torchvision]' (run by .ci/run)")
from torch import nn  # noqa: E402
from torchvision.models.detection import FasterRCNN, MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from detloss.data.shapes import ShapesDataset  # noqa: E402
from detloss.diagnose.doctor import Doctor  # noqa: E402
from detloss.diagnose.gradients import gradient_accounting  # noqa: E402
from detloss.integrations.torchvision import KEYS, attach  # noqa: E402

NUM_CLASSES = 7  # 6 shapes + background 0
SIZE = 96


def _model(mask: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
    backbone.out_channels = 32
    kw = dict(
        min_size=SIZE, max_size=SIZE,
        rpn_anchor_generator=AnchorGenerator(((12, 24, 48),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(32 * 49, 64),
        box_predictor=FastRCNNPredictor(64, NUM_CLASSES), box_batch_size_per_image=64,
    )
    if not mask:
        return FasterRCNN(backbone, **kw).train()
    return MaskRCNN(
        backbone, mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), mask_head=MaskRCNNHeads(32, (32,), 1),
        mask_predictor=MaskRCNNPredictor(32, 32, NUM_CLASSES), **kw
    ).train()


def _batch(start: int, n: int) -> tuple[list[torch.Tensor], list[dict]]:
    data = ShapesDataset(start + n, image_size=SIZE, max_objects=4, seed=3)
    images, targets = [], []
    for i in range(start, start + n):
        item = data[i]
        ids = torch.arange(1, item["labels"].numel() + 1)
        images.append(item["image"])
        targets.append({
            "boxes": item["boxes"], "labels": item["labels"] + 1,
            "masks": (item["masks"][None] == ids[:, None, None]).to(torch.uint8),
        })
    return images, targets


def _grads(losses: dict, params: list) -> list[torch.Tensor]:
    out = []
    for key in sorted(losses):
        g = torch.autograd.grad(losses[key], params, retain_graph=True, allow_unused=True)
        flat = [(torch.zeros_like(p) if x is None else x).flatten() for x, p in zip(g, params, strict=True)]
        out.append(torch.cat(flat))
    return out


@pytest.mark.parametrize("mask", [True, False])
def test_torchvision_preset_reproduces_torchvision_values_and_gradients(mask):
    reference = _model(mask)
    ours = copy.deepcopy(reference)
    attach(ours, preset="torchvision")
    images, targets = _batch(0, 2)
    for seed in (0, 1):  # torchvision's samplers draw with randperm: same seed, same samples
        torch.manual_seed(seed)
        expected = reference(images, targets)
        torch.manual_seed(seed)
        got = ours(images, targets)
        assert sorted(got) == sorted(expected) == sorted(k for t, k in KEYS.items() if mask or t != "mask")
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)
        report = ours.detloss.last_report
        assert list(report) == ["rpn_obj", "rpn_box", "cls", "box"] + (["mask"] if mask else [])
        assert report["box"].num_pos > 0  # the box and mask terms are not vacuous
        ours_g, ref_g = _grads(got, list(ours.parameters())), _grads(expected, list(reference.parameters()))
        for g, e, key in zip(ours_g, ref_g, sorted(expected), strict=True):
            assert e.abs().max() > 0, key
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=key)


def _rpn_case(pos_weight: float = 1.0, **kw):
    """An attached model's RPN ``compute_loss`` on hand-made labels; every labelled anchor is sampled."""
    model = _model()
    attach(model, rpn_pos_weight=pos_weight, **kw)
    g = torch.Generator().manual_seed(0)
    a = 40
    labels = [torch.tensor([1.0] * 3 + [0.0] * 20 + [-1.0] * 17), torch.tensor([1.0] * 2 + [0.0] * 30 + [-1.0] * 8)]
    obj = torch.randn(2 * a, 1, generator=g, requires_grad=True)
    deltas = torch.randn(2 * a, 4, generator=g, requires_grad=True)
    reg = [torch.randn(a, 4, generator=g), torch.randn(a, 4, generator=g)]
    loss_obj, loss_box = model.rpn.compute_loss(obj, deltas, labels, reg)
    lab = torch.cat(labels)
    pos, neg = lab == 1, lab == 0
    x = obj.detach().flatten()
    return model, loss_obj, loss_box, x, pos, neg, deltas.detach(), torch.cat(reg)


def test_rpn_pos_weight_multiplies_exactly_the_positive_part():
    w = 0.37
    _, loss_obj, _, x, pos, neg, _, _ = _rpn_case(w)
    pos_sum = F.binary_cross_entropy_with_logits(x[pos], torch.ones(5), reduction="sum")
    neg_sum = F.binary_cross_entropy_with_logits(x[neg], torch.zeros(50), reduction="sum")
    assert float(loss_obj.detach()) == pytest.approx(float(w * pos_sum + neg_sum) / 55, rel=1e-6)  # num_samples = 55
    _, base, _, _, _, _, _, _ = _rpn_case(1.0)
    assert float((base - loss_obj).detach()) == pytest.approx(float((1 - w) * pos_sum) / 55, rel=1e-5)


def test_rpn_box_normalizer_num_pos_divides_by_the_positives():
    model, _, loss_box, _, pos, _, d, reg = _rpn_case(normalizers={"rpn_box": "num_pos"})
    total = F.smooth_l1_loss(d[pos], reg[pos], beta=1 / 9, reduction="sum")
    assert float(loss_box.detach()) == pytest.approx(float(total) / 5, rel=1e-6)  # 5 positives
    assert model.detloss.normalizers["rpn_box"].spec == "num_pos"
    _, _, tv_box, *_ = _rpn_case(normalizers={"rpn_box": "num_samples"})
    assert float(tv_box.detach()) == pytest.approx(float(total) / 55, rel=1e-6)


def test_roi_fg_weight_weights_the_foreground_classification_elements():
    model = _model(mask=False)
    attach(model, roi_fg_weight=4.0, weights={"cls": 0.5})
    g = torch.Generator().manual_seed(1)
    labels = [torch.tensor([3, 0, 0, 1]), torch.tensor([0, 6, 0])]
    logits = torch.randn(7, NUM_CLASSES, generator=g)
    terms, parts = model.roi_heads.detloss_terms(logits, torch.randn(7, 4 * NUM_CLASSES, generator=g), labels,
                                                 torch.randn(7, 4, generator=g))
    ce = F.cross_entropy(logits, torch.cat(labels), reduction="none")
    fg = torch.tensor([1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    expected = 0.5 * (4.0 * ce[fg].sum() + ce[~fg].sum()) / 7  # default cls normalizer: num_samples
    assert float(terms["cls"].value.detach()) == pytest.approx(float(expected), rel=1e-6)
    # the doctor's split: foreground and background parts of the same term
    assert float(parts["cls_fg"].value.detach()) == pytest.approx(float(0.5 * 4.0 * ce[fg].sum() / 7), rel=1e-6)
    assert float(parts["cls_bg"].value.detach()) == pytest.approx(float(0.5 * ce[~fg].sum() / 7), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(weights={"objectness": 1.0}), "weights"),
        (dict(normalizers={"bbox": "sum"}), "normalizers"),
        (dict(normalizers={"box": "num_positives"}), "normalizers"),
        (dict(weights={"cls": 0.0}), "weights['cls']"),
        (dict(rpn_pos_weight=-1.0), "rpn_pos_weight"),
        (dict(roi_fg_weight=0), "roi_fg_weight"),
        (dict(preset="mmdet"), "preset"),
    ],
)
def test_attach_rejects_bad_input_naming_the_argument(kwargs, word):
    with pytest.raises(ValueError, match="^" + re.escape(word)):
        attach(_model(mask=False), **kwargs)


def test_attach_rejects_a_model_that_is_not_an_rcnn():
    with pytest.raises(ValueError, match="model must be"):
        attach(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mask"):
        attach(_model(mask=False), weights={"mask": 1.0})  # a Faster R-CNN has no mask term
    model = _model(mask=False)
    model.rpn.__class__ = type("MyRPN", (type(model.rpn),), {})
    with pytest.raises(ValueError, match="model.rpn is a MyRPN"):
        attach(model)


def test_eval_path_is_torchvision_and_state_dict_keeps_the_weights():
    reference = _model()
    ours = copy.deepcopy(reference)
    attach(ours)
    images, _ = _batch(0, 1)
    with torch.no_grad():
        a, b = reference.eval()(images), ours.eval()(images)
    for key in a[0]:
        torch.testing.assert_close(b[0][key], a[0][key])
    assert set(reference.state_dict()) <= set(ours.state_dict())


def _train(pos_weight: float, steps: int = 8) -> dict:
    """SGD on shapes images with the doctor observing every step; the positives' and negatives' gradient
    norms of the two classification terms at the first and last step."""
    model = _model()
    state = attach(model, rpn_pos_weight=pos_weight, roi_fg_weight=pos_weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    doctor = Doctor()
    torch.manual_seed(0)
    seen = {"loss_classifier": [], "doctor": doctor}
    for step in range(steps):
        losses = model(*_batch(2 * step, 2))
        seen["loss_classifier"].append(float(losses["loss_classifier"].detach()))
        out = state.last_outputs
        # the classification terms split into positives and negatives, w.r.t. the two classifiers' logits
        parts = doctor.observe(step, state.last_parts, wrt=[out["objectness"], out["class_logits"]])
        whole = gradient_accounting(state.last_report, [out["objectness"], out["class_logits"]], terms=["rpn_obj", "cls"])
        seen[step] = {"parts": parts.account.norms, "whole": whole.norms}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return seen


def test_positive_weight_cut_1000x_starves_the_positives_and_the_doctor_says_so():
    healthy, starved = _train(1.0), _train(1e-3)
    assert healthy["loss_classifier"][-1] < 0.8 * healthy["loss_classifier"][0]  # it trains (1.96 -> 1.22)
    for pos, neg in (("rpn_obj_pos", "rpn_obj_neg"), ("cls_fg", "cls_bg")):
        # step 0, same weights and samples: the positives' gradient is exactly 1000x smaller, the rest equal
        assert starved[0]["parts"][pos] == pytest.approx(1e-3 * healthy[0]["parts"][pos], rel=1e-4)
        assert starved[0]["parts"][neg] == pytest.approx(healthy[0]["parts"][neg], rel=1e-5)
        # after 8 steps the negatives outweigh the positives 2-5x when healthy, over 1000x when starved
        h, s = healthy[7]["parts"], starved[7]["parts"]
        assert h[neg] / h[pos] < 10, (pos, h)
        assert s[neg] / s[pos] > 1000, (pos, s)
    # ...while each whole term's gradient norm barely moves: invisible without the split
    for term in ("rpn_obj", "cls"):
        assert starved[7]["whole"][term] > 0.8 * healthy[7]["whole"][term], term
    starved_terms = {f.term for f in starved["doctor"].findings() if f.code == "GRAD_STARVED"}
    assert {"rpn_obj_pos", "cls_fg"} <= starved_terms
    assert not [f for f in healthy["doctor"].findings() if f.code == "GRAD_STARVED" and f.term in ("rpn_obj_pos", "cls_fg")]


def test_attached_model_pickles_with_its_shared_detloss_state():
    import pickle

    import detloss.integrations.torchvision as tv

    model = _model(mask=False)
    attach(model)
    copy_ = pickle.loads(pickle.dumps(model))
    assert type(copy_.rpn) is tv.DetlossRPN and type(copy_.roi_heads) is tv.DetlossRoIHeads
    assert copy_.rpn.__dict__["_detloss"] is copy_.detloss is copy_.roi_heads.__dict__["_detloss"]
