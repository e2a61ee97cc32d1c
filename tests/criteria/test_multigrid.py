"""MultigridCriterion: hand-computed terms per normalizer, ignore cells, empty grids, and the
point measured: per-image normalizers make losses and gradients independent of the other images."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.criteria.multigrid import PER_BATCH_NORMALIZERS, MultigridCriterion

C = 2
#: the per-batch count normalizers and per-class BCE (the criterion's defaults are batch_size and CE)
PER_BATCH_BCE = MultigridCriterion(C, normalizers=PER_BATCH_NORMALIZERS, cls_loss="bce")
# 3 images of 2 x 2 cells. Image 0: object (0,0) class 1, ignore (0,1). Image 1: objects (0,0) class 1
# and (1,1) class 0, the latter also marked ignore (objects win), ignore (1,0). Image 2: empty.
OBJECT = torch.zeros(3, 2, 2, dtype=torch.bool)
OBJECT[0, 0, 0] = OBJECT[1, 0, 0] = OBJECT[1, 1, 1] = True
IGNORE = torch.zeros(3, 2, 2, dtype=torch.bool)
IGNORE[0, 0, 1] = IGNORE[1, 1, 1] = IGNORE[1, 1, 0] = True
LABELS = torch.zeros(3, 2, 2, dtype=torch.long)
LABELS[0, 0, 0] = LABELS[1, 0, 0] = 1
# counts: 3 object cells, 10 active cells (3 + 2 + 1 negatives in images 0, 1 and 4 in image 2)
D = {  # (loc, obj, cls)
    "sum": (1, 1, 1),
    "mean": (3, 10, 3),
    "num_pos": (3, 3, 3),
    "target_sum": (3, 3, 3),
    "num_samples": (10, 10, 10),
    "batch_size": (3, 3, 3),
    "images_with_fg": (2, 2, 2),
    "fixed:8": (8, 8, 8),
    "density": (3 + 3 / 4,) * 3,
    "ema_num_pos:0.9": (3, 3, 3),
}


def _pred(seed: int = 0, b: int = 3, h: int = 2, w: int = 2):
    g = torch.Generator().manual_seed(seed)
    return {
        "loc": torch.randn(b, h, w, 4, generator=g).requires_grad_(),
        "obj": torch.randn(b, h, w, generator=g).requires_grad_(),
        "cls": torch.randn(b, h, w, C, generator=g).requires_grad_(),
    }


def _targets(seed: int = 1, obj=OBJECT, ignore=IGNORE, labels=LABELS):
    g = torch.Generator().manual_seed(seed)
    return {"loc": torch.randn(*obj.shape, 4, generator=g), "object_mask": obj, "ignore_mask": ignore, "labels": labels}


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _hand_raw(pred, tgt, pos_weight=1.0, cls_loss="bce"):
    loc = obj = cls = 0.0
    for b, i, j in torch.cartesian_prod(torch.arange(3), torch.arange(2), torch.arange(2)).tolist():
        x = pred["obj"][b, i, j].item()
        if OBJECT[b, i, j]:
            loc += sum(
                (p - t) ** 2 for p, t in zip(pred["loc"][b, i, j].tolist(), tgt["loc"][b, i, j].tolist(), strict=True)
            )
            obj += pos_weight * _softplus(-x)
            logits, label = pred["cls"][b, i, j].tolist(), int(LABELS[b, i, j])
            if cls_loss == "bce":
                cls += sum(_softplus(-z) if c == label else _softplus(z) for c, z in enumerate(logits))
            else:
                cls += math.log(sum(math.exp(z) for z in logits)) - logits[label]
        elif not IGNORE[b, i, j]:
            obj += _softplus(x)
    return loc, obj, cls


@pytest.mark.parametrize("name", list(D))
def test_each_term_equals_the_hand_computed_value_for_each_normalizer(name):
    crit = MultigridCriterion(
        C, weights={"loc": 2.0, "obj": 1.0, "cls": 0.5}, normalizers=dict.fromkeys(("loc", "obj", "cls"), name),
        cls_loss="bce",
    )  # fmt: skip
    pred, tgt = _pred(), _targets()
    report = crit.cell_loss(pred, tgt)
    for (term, raw), d, w in zip(
        zip(("loc", "obj", "cls"), _hand_raw(pred, tgt), strict=True), D[name], (2.0, 1.0, 0.5), strict=True
    ):
        torch.testing.assert_close(report[term].value, torch.tensor(w * raw / d))
    assert [float(report[k].num_elements) for k in report] == [3, 10, 3]


def test_defaults_pos_weight_and_softmax_classification():
    pred, tgt = _pred(2), _targets(3)
    crit = MultigridCriterion(C, normalizers=PER_BATCH_NORMALIZERS, obj_pos_weight=3.0, cls_loss="ce")
    report = crit.cell_loss(pred, tgt)
    loc, obj, cls = _hand_raw(pred, tgt, pos_weight=3.0, cls_loss="ce")
    torch.testing.assert_close(report["loc"].value, torch.tensor(loc / 3))  # num_pos
    torch.testing.assert_close(report["obj"].value, torch.tensor(obj / 10))  # active cells
    torch.testing.assert_close(report["cls"].value, torch.tensor(cls / 3))  # num_pos


def test_ignored_cells_get_no_objectness_gradient_unless_they_hold_an_object():
    pred = _pred()
    PER_BATCH_BCE.cell_loss(pred, _targets()).total.backward()
    g = pred["obj"].grad
    assert g[0, 0, 1] == 0 and g[1, 1, 0] == 0  # ignored
    assert g[1, 1, 1] != 0  # object and ignore: an object
    assert (g[2] != 0).all()
    assert (pred["loc"].grad.abs().sum(-1) != 0).eq(OBJECT).all()


def test_empty_grid_is_finite_with_zero_loc_and_cls_gradients():
    empty = torch.zeros(3, 2, 2, dtype=torch.bool)
    pred = _pred()
    report = PER_BATCH_BCE.cell_loss(pred, _targets(obj=empty, ignore=empty))
    assert list(report) == ["loc", "obj", "cls"] and all(torch.isfinite(report[k].value) for k in report)
    report.total.backward()
    assert torch.equal(pred["loc"].grad, torch.zeros_like(pred["loc"]))
    assert torch.equal(pred["cls"].grad, torch.zeros_like(pred["cls"]))
    assert (pred["obj"].grad != 0).all()


def _random_objects(b: int, h: int, w: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, generator=g) < density


def _grads(crit, pred, obj, ignore):
    for p in pred.values():
        p.grad = None
    labels = torch.zeros(obj.shape, dtype=torch.long)
    crit.cell_loss(pred, _targets(5, obj=obj, ignore=ignore, labels=labels)).total.backward()
    return [p.grad[0].clone() for p in pred.values()]  # gradient w.r.t. image 0's predictions


def test_batch_size_gradient_of_one_image_ignores_the_others_objects_num_pos_does_not():
    """The point of per-image normalizers: with ``batch_size`` the gradient with respect to image 0's predictions is the
    same whether the other images are empty or crowded; with ``num_pos`` (and ``num_samples``) it is not."""
    pred = _pred(7, b=4, h=8, w=8)
    sparse = _random_objects(4, 8, 8, 0.05, seed=0)
    crowded = sparse.clone()
    crowded[1:] = _random_objects(3, 8, 8, 0.6, seed=1)  # image 0 unchanged, the others gain objects
    no_ignore = torch.zeros_like(sparse)
    ignore = no_ignore.clone()
    ignore[1:] = _random_objects(3, 8, 8, 0.3, seed=2) & ~crowded[1:]  # ... and ignore regions around them
    assert sparse[0].any()
    per_image = MultigridCriterion(C, normalizers=dict.fromkeys(("loc", "obj", "cls"), "batch_size"), cls_loss="bce")
    before, after = _grads(per_image, pred, sparse, no_ignore), _grads(per_image, pred, crowded, ignore)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # equal up to vectorized-kernel rounding
    per_batch = PER_BATCH_BCE  # num_pos / num_samples / num_pos
    before, after = _grads(per_batch, pred, sparse, no_ignore), _grads(per_batch, pred, crowded, ignore)
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max() > 0.1 * a.abs().max()  # the neighbours' objects rescale image 0


def test_epoch_loss_of_the_same_predictions_depends_on_batching_only_with_per_batch_counts():
    """Measured illustration of the class docstring: the same 4 images and predictions, grouped into
    batches of mixed density (a shuffled training order) or of uniform density (a sequential
    validation order). A per-image normalizer gives the same epoch loss; ``num_pos`` does not."""
    b, h, w = 4, 8, 8
    pred = {k: v.detach() for k, v in _pred(11, b, h, w).items()}
    obj = torch.zeros(b, h, w, dtype=torch.bool)
    obj[2:] = _random_objects(2, h, w, 0.5, seed=2)  # images 0, 1 nearly empty, 2, 3 crowded
    obj[0, 0, 0] = obj[1, 3, 3] = True
    tgt = _targets(13, obj=obj, ignore=torch.zeros_like(obj), labels=torch.zeros(b, h, w, dtype=torch.long))

    def epoch_loss(normalizer: str, batches) -> float:
        crit = MultigridCriterion(C, normalizers=dict.fromkeys(("loc", "obj", "cls"), normalizer), cls_loss="bce")
        losses = [
            crit.cell_loss({k: v[idx] for k, v in pred.items()}, {k: v[idx] for k, v in tgt.items()}).total
            for idx in batches
        ]
        return float(torch.stack(losses).mean())

    mixed, uniform = [[0, 2], [1, 3]], [[0, 1], [2, 3]]
    measured = {
        n: (epoch_loss(n, mixed), epoch_loss(n, uniform)) for n in ("batch_size", "fixed:2", "density", "num_pos")
    }
    for n in ("batch_size", "fixed:2"):
        assert measured[n][0] == pytest.approx(measured[n][1], rel=1e-6)
    rel = {n: abs(a - c) / a for n, (a, c) in measured.items()}
    assert rel["num_pos"] > 0.3  # 14.6 vs 37.5 here: the same model, 2.6x worse on one split
    assert 0 < rel["density"] < rel["num_pos"]


def test_bad_inputs_raise():
    crit = PER_BATCH_BCE
    pred, tgt = _pred(), _targets()
    with pytest.raises(ValueError, match="cls"):
        crit.cell_loss({**pred, "cls": pred["cls"][..., :1]}, tgt)
    with pytest.raises(ValueError, match="ignore_mask"):
        crit.cell_loss(pred, {k: v for k, v in tgt.items() if k != "ignore_mask"})
    with pytest.raises(ValueError, match="object_mask"):
        crit.cell_loss(pred, {**tgt, "object_mask": OBJECT[:, :1]})
    with pytest.raises(ValueError, match="normalizer"):
        MultigridCriterion(C, normalizers={"loc": "per_cell"})
