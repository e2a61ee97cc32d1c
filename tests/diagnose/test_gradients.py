"""Gradient accounting: closed-form norms, dead fractions on hand-built masks, DenseCriterion (report 000)."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import BackgroundPenalty, DenseCriterion, LossReport, make_term
from detloss.data.synthetic import random_feats, random_targets
from detloss.diagnose import check_dead, check_dominance, dense_dependencies, gradient_accounting, saturation
from detloss.diagnose.doctor import Doctor

ONE = torch.ones(())


def _term(name, elements, weight=1.0, normalizer=1.0):
    return make_term(name, elements, torch.tensor(float(normalizer)), "fixed", weight=weight)


# -- closed form -------------------------------------------------------------------------------


def test_linear_terms_have_closed_form_norms_shares_and_ratios():
    x = torch.randn(5, requires_grad=True)
    y = torch.randn(3, requires_grad=True)
    u = torch.tensor([3.0, 0.0, -4.0, 0.0, 0.0])  # |u| = 5
    v = torch.tensor([1.0, 2.0, 2.0])  # |v| = 3
    # a = 2 * (u.x) / 4, b = 0.5 * (v.y) / 1, c = (u.x + v.y): gradients 0.5 u, 0.5 v, (u, v)
    report = LossReport(
        {
            "a": _term("a", u * x, weight=2.0, normalizer=4.0),
            "b": _term("b", v * y, weight=0.5),
            "c": _term("c", [u * x, v * y]),
        }
    )
    acc = gradient_accounting(report, [x, y])
    assert acc.norms["a"] == pytest.approx(2.5)
    assert acc.norms["b"] == pytest.approx(1.5)
    assert acc.norms["c"] == pytest.approx(math.sqrt(25 + 9))
    total = 2.5 + 1.5 + math.sqrt(34)
    for name, n in (("a", 2.5), ("b", 1.5), ("c", math.sqrt(34))):
        assert acc.shares[name] == pytest.approx(n / total)
    assert sum(acc.shares.values()) == pytest.approx(1.0)
    assert acc.ratios[("a", "b")] == pytest.approx(2.5 / 1.5)
    assert acc.ratios[("b", "a")] == pytest.approx(1.5 / 2.5)
    assert len(acc.ratios) == 6
    assert acc.weights == {"a": 2.0, "b": 0.5, "c": 1.0}
    assert acc.dead == {} and acc.saturated == {} and acc.nonfinite == ()
    assert x.grad is None and y.grad is None  # nothing accumulated
    report.total.backward()  # the graph is still alive


def test_norm_is_linear_in_the_weight_and_includes_the_report_scale():
    x = torch.randn(4, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 2.0, 4.0])  # |w| = 5
    for weight in (1.0, 3.0, 0.1):
        report = LossReport({"a": _term("a", w * x, weight=weight), "b": _term("b", x)}, scale=2.0)
        acc = gradient_accounting(report, [x])
        assert acc.norms["a"] == pytest.approx(2.0 * 5.0 * weight)
        assert acc.norms["b"] == pytest.approx(2.0 * 2.0)


def test_unused_tensor_constant_term_and_zero_norms():
    x = torch.randn(3, requires_grad=True)
    y = torch.randn(2, requires_grad=True)
    const = make_term("k", torch.ones(3), ONE, "sum")  # no graph at all
    report = LossReport({"a": _term("a", 2 * x), "k": const})
    acc = gradient_accounting(report, [x, y], depends={"k": [torch.ones(3, dtype=torch.bool), None]})
    assert acc.norms["a"] == pytest.approx(2 * math.sqrt(3))
    assert acc.norms["k"] == 0.0
    assert acc.dead["k"] == 1.0  # depends on x but receives nothing
    assert acc.ratios[("a", "k")] == math.inf
    assert acc.shares["a"] == 1.0 and acc.shares["k"] == 0.0


def test_nonfinite_gradient_is_recorded():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    report = LossReport({"a": _term("a", x.sqrt()), "b": _term("b", x)})
    acc = gradient_accounting(report, [x])
    assert acc.nonfinite == ("a",)
    assert math.isinf(acc.norms["a"])
    assert math.isnan(acc.shares["b"])


# -- dead fractions ---------------------------------------------------------------------------


def test_hard_masked_sum_kills_exactly_the_masked_elements():
    x = torch.randn(4, 8, requires_grad=True)
    mask = torch.rand(4, 8, generator=torch.Generator().manual_seed(0)) > 0.6
    zeros = int((~mask).sum())
    report = LossReport({"masked": _term("masked", x * mask), "plain": _term("plain", x * 2)})
    every = [torch.ones(4, 8, dtype=torch.bool)]
    acc = gradient_accounting(report, [x], depends={"masked": every, "plain": every})
    assert acc.dead["masked"] == pytest.approx(zeros / 32)
    assert acc.dead["plain"] == 0.0
    assert acc.norms["masked"] == pytest.approx(math.sqrt(int(mask.sum())))
    # only the unmasked half of the dependency: nothing dead there
    acc = gradient_accounting(report, [x], depends={"masked": [mask]})
    assert acc.dead == {"masked": 0.0}
    # an empty dependency mask gives NaN, not a division by zero
    acc = gradient_accounting(report, [x], depends={"masked": [torch.zeros(4, 8, dtype=torch.bool)]})
    assert math.isnan(acc.dead["masked"])


def test_report_001_pattern_giou_times_mask_over_padded_axes():
    # Report 001: per-axis GIoU of a triangle padded to 8 vertices, masked mean over the valid axes.
    # Every axis is computed from the predictions (the term depends on all 8), but
    # giou * mask gives padded axes exactly zero gradient: 5/8 dead; the clamp to [-1, 1] kills more.
    n, k, valid = 6, 8, 3
    pred = (0.5 * torch.randn(n, k)).requires_grad_(True)
    giou1d = torch.tanh(pred)  # a stand-in for the per-axis 1-D GIoU, in (-1, 1)
    mask = (torch.arange(k) < valid).expand(n, k)
    giou_val = (giou1d * mask).sum(1) / mask.sum(1).clamp(min=1)
    clamped = (2 * pred).clamp(-1.0, 1.0)  # report 001 #3: GIoU clamped to [-1, 1]
    clamp_val = clamped.mean(1)
    report = LossReport({"masked": _term("masked", (1 - giou_val) / 2), "clamped": _term("clamped", 1 - clamp_val)})
    every = [torch.ones(n, k, dtype=torch.bool)]
    acc = gradient_accounting(report, [pred], depends={"masked": every, "clamped": every})
    assert acc.dead["masked"] == pytest.approx((k - valid) / k)
    assert acc.dead["clamped"] == pytest.approx(float(((2 * pred).abs() > 1).float().mean()))
    found = check_dead(acc, threshold=0.5)
    assert [f.term for f in found] == ["masked"] + (["clamped"] if acc.dead["clamped"] > 0.5 else [])
    assert found[0].code == "DEAD_GRADIENT" and found[0].numbers["dead_fraction"] == pytest.approx(0.625)


def test_saturation_counts_logits_beyond_the_limit():
    a = torch.tensor([0.0, 16.0, -20.0, 14.9])
    b = torch.tensor([[15.5, 1.0], [-1.0, 2.0]])
    assert saturation(a) == 0.5
    assert saturation([a, b]) == pytest.approx(3 / 8)
    assert math.isnan(saturation([]))
    x = torch.randn(2, requires_grad=True)
    report = LossReport({"a": _term("a", x)})
    assert gradient_accounting(report, [x], saturation_logits=[a, b]).saturated == {"logits": pytest.approx(3 / 8)}
    assert gradient_accounting(report, [x], saturation_logits={"cls": b}).saturated == {"cls": 0.25}
    assert gradient_accounting(report, [x], saturation_logits=[b], saturation_limit=1.5).saturated["logits"] == 0.5


def test_bad_arguments_raise_value_errors():
    x = torch.randn(3, requires_grad=True)
    report = LossReport({"a": _term("a", x)})
    with pytest.raises(ValueError, match="requires grad"):
        gradient_accounting(report, [torch.randn(3)])
    with pytest.raises(ValueError, match="shape"):
        gradient_accounting(report, [x], depends={"a": [torch.ones(4, dtype=torch.bool)]})
    with pytest.raises(ValueError, match="one mask per wrt"):
        gradient_accounting(report, [x], depends={"a": []})
    with pytest.raises(ValueError, match="not in the report"):
        gradient_accounting(report, [x], depends={"zz": [None]})
    with pytest.raises(ValueError, match="not in the report"):
        gradient_accounting(report, [x], terms=["zz"])


def test_table_lists_every_term():
    x = torch.randn(3, requires_grad=True)
    report = LossReport({"a": _term("a", x), "b": _term("b", 3 * x)})
    acc = gradient_accounting(report, [x], depends={"a": [torch.ones(3, dtype=torch.bool)]}, saturation_logits=[x])
    table = acc.table()
    assert "grad_norm" in table and "saturated logits" in table
    assert any(line.startswith("a ") and "0.0%" in line for line in table.splitlines())
    assert set(acc.as_dict()["b"]) == {"value", "weight", "grad_norm", "grad_share", "dead_fraction"}


# -- DenseCriterion -----------------------------------------------------------------------------

STRIDES = (8, 16, 32)


def _dense(classes=80, image=320, batch=2, objects=8, **kw):
    crit = DenseCriterion(classes, STRIDES, 16, num_vertices=8, **kw)
    feats = random_feats(batch, crit.num_channels, image, STRIDES, seed=0)
    targets = random_targets(batch, classes, objects, num_vertices=8, seed=0)
    return crit, feats, targets


@pytest.mark.parametrize("preset", [None, "ultralytics"])
def test_report_000_cls_dominates_with_target_sum_and_the_recommended_weights_balance_it(preset):
    crit, feats, targets = _dense(preset=preset)
    report = crit(feats, targets)
    assert report["cls"].normalizer_name == "target_sum"
    acc = gradient_accounting(report, feats, depends=dense_dependencies(crit, feats, targets))
    assert acc.shares["cls"] > 0.9
    assert all(v == 0.0 for v in acc.dead.values()), acc.dead  # every term reaches what it depends on
    (finding,) = check_dominance(acc, target_ratio=2.0)
    assert finding.code == "GRAD_DOMINANCE" and finding.term == "cls"
    n = finding.numbers
    assert n["poly/weight"] == pytest.approx(7.5 * acc.norms["cls"] / (2.0 * acc.norms["poly"]))

    # raise every other weight as recommended: each ratio cls:other becomes 2:1
    for term in ("box", "dfl", "poly"):
        crit.weights[term] = n[f"{term}/weight"]
    balanced = gradient_accounting(crit(feats, targets), feats)
    for term in ("box", "dfl", "poly"):
        assert balanced.ratios[("cls", term)] == pytest.approx(2.0, rel=1e-3)
    assert not check_dominance(balanced, target_ratio=2.0)

    # or lower cls's weight against one term
    crit.weights.update({"box": 7.5, "dfl": 1.5, "poly": 7.5, "cls": n["cls/weight_vs_poly"]})
    lowered = gradient_accounting(crit(feats, targets), feats)
    assert lowered.ratios[("cls", "poly")] == pytest.approx(2.0, rel=1e-3)


def test_dense_dependencies_match_the_channels_each_term_trains():
    r, c, k = 16, 3, 8
    crit, feats, targets = _dense(classes=c, image=64, background=BackgroundPenalty("max"))
    deps = dense_dependencies(crit, feats, targets)
    assert list(deps) == ["box", "dfl", "cls", "poly", "bg"]
    t = crit.assign(feats, targets)
    per = {name: torch.cat([m.flatten(2) for m in masks], 2) for name, masks in deps.items()}  # (B, ch, A)
    fg = t.fg
    weighted = torch.zeros_like(fg)  # positives with a nonzero soft target (this seed has one at 0)
    weighted[t.image, t.anchor] = t.weight > 0
    assert (t.weight == 0).any() and weighted.any()
    assert torch.equal(per["box"][:, : 4 * r].all(1), weighted) and not per["box"][:, 4 * r :].any()
    assert torch.equal(per["box"].sum(1), 4 * r * weighted.long())
    assert per["cls"][:, 4 * r : 4 * r + c].all() and per["cls"].sum() == fg.numel() * c
    assert torch.equal(per["poly"][:, 4 * r + c :].all(1), weighted) and per["poly"].sum() == weighted.sum() * 2 * k
    assert torch.equal(per["bg"].sum(1), (~fg).long())  # one (the top) class channel per background anchor
    acc = gradient_accounting(crit(feats, targets), feats, depends=deps)
    assert acc.dead == {name: 0.0 for name in deps}


def test_dense_dependencies_l1_polygon_and_focal_background():
    crit, feats, targets = _dense(classes=3, image=64, polygon_loss="l1", background=BackgroundPenalty("focal"))
    deps = dense_dependencies(crit, feats, targets)
    t = crit.assign(feats, targets)
    poly = torch.cat([m.flatten(2) for m in deps["poly"]], 2)[:, 16 * 4 + 3 :]  # (B, 2K, A)
    per_vertex = poly.permute(0, 2, 1)[t.image, t.anchor].view(-1, 8, 2)  # in DenseTargets order
    expected = t.polygon_valid & (t.weight > 0)[:, None]
    assert torch.equal(per_vertex.all(-1), expected) and torch.equal(per_vertex.any(-1), expected)
    bg = torch.cat([m.flatten(2) for m in deps["bg"]], 2)
    assert torch.equal(bg.sum(1), 3 * (~t.fg).long())
    acc = gradient_accounting(crit(feats, targets), feats, depends=deps)
    assert acc.dead == {name: 0.0 for name in deps}


def test_background_logit_clamp_shows_up_as_dead_gradient():
    clamp = 1.0
    crit, feats, targets = _dense(classes=3, image=64, background=BackgroundPenalty("max", logit_clamp=clamp))
    deps = dense_dependencies(crit, feats, targets)
    t = crit.assign(feats, targets)
    top = torch.cat([f.detach().flatten(2)[:, 64:67] for f in feats], 2).amax(1)[~t.fg]  # (N_bg,)
    expected = float((top.abs() > clamp).float().mean())
    acc = gradient_accounting(crit(feats, targets), feats, depends=deps)
    assert 0.0 < acc.dead["bg"] == pytest.approx(expected)


def test_dense_dependencies_objectness_is_its_own_channel_of_every_anchor():
    r, c, k = 16, 3, 8
    crit, feats, targets = _dense(classes=c, image=64, objectness=True)
    deps = dense_dependencies(crit, feats, targets)
    assert list(deps) == ["box", "dfl", "cls", "poly", "obj"]
    obj = torch.cat([m.flatten(2) for m in deps["obj"]], 2)  # (B, ch, A)
    assert obj[:, 4 * r + c].all() and obj.sum() == obj.shape[0] * obj.shape[2]  # channel 4R + C only
    poly = torch.cat([m.flatten(2) for m in deps["poly"]], 2)
    assert not poly[:, 4 * r + c].any() and poly[:, 4 * r + c + 1 :].any()  # polygon channels after O
    report = crit(feats, targets)
    acc = gradient_accounting(report, feats, depends=deps)
    assert acc.dead == {name: 0.0 for name in deps} and acc.norms["obj"] > 0
    m = Doctor().measure(1, crit(feats, targets), feats, crit, targets)  # the doctor accounts it too
    assert m.account.shares["obj"] > 0 and {"cls", "obj"} <= set(m.account.saturated)
