"""Pseudo-label filters on hand-built teacher outputs: every threshold, entropy and count by hand."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.semi import (
    AdaptiveClassThreshold,
    EntropyFilter,
    PseudoLabelFilter,
    ScoreThreshold,
    build_filters,
    teacher_pseudo_labels,
)
from detloss.testing.ddp import spawn_gloo

OFF = -1e4  # a logit whose softmax weight and sigmoid are exactly 0 in float32


def _image(scores, labels, entropy=None):
    """One image's detections; boxes/polygons/index encode the row so that misaligned keys show."""
    n = len(scores)
    rows = torch.arange(n, dtype=torch.float32)
    det = {
        "boxes": torch.stack([rows, rows, rows + 1, rows + 1], 1),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "polygons": rows[:, None, None].expand(n, 3, 2).clone(),
        "index": torch.arange(n) + 100,
        "image_id": "img",  # not per-detection: copied as is
        "scale": torch.tensor(2.0),  # 0-d: not per-detection
    }
    if entropy is not None:
        det["entropy"] = torch.tensor(entropy, dtype=torch.float32)
    return det


def _assert_rows(out, original, rows):
    """``out`` holds exactly ``original``'s rows ``rows`` in every per-detection key."""
    idx = torch.tensor(rows, dtype=torch.long)
    assert set(out) == set(original)
    for k, v in original.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            torch.testing.assert_close(out[k], v[idx])
        else:
            assert out[k] is v or out[k] == v


# ---------------------------------------------------------------- teacher_pseudo_labels


def test_teacher_pseudo_labels_hand_built():
    c, r, k = 2, 4, 1
    ch = 4 * r + c + 2 * k
    feats = [torch.full((2, ch, 2, 3), OFF), torch.full((2, ch, 1, 1), OFF)]  # strides 8 and 16
    f = feats[0][0]
    y, x = 1, 2  # anchor point (20, 12), flat index 1 * 3 + 2 = 5
    for side, b in enumerate((1, 2, 0, 3)):  # one-hot DFL: l = 1, t = 2, r = 0, b = 3 cells
        f[side * r + b, y, x] = 0.0
    f[4 * r + 1, y, x] = math.log(0.875 / 0.125)  # class 1 at 0.875
    f[4 * r + c : 4 * r + c + 2, y, x] = torch.tensor([0.5, -1.0])  # vertex (24, 4)
    g = feats[1][0]  # level 1, anchor point (8, 8), flat index 6
    g[: 4 * r, 0, 0] = 0.0  # uniform DFL: 1.5 cells per side, entropy 1
    g[4 * r + 0, 0, 0] = 0.0  # class 0 at 0.5
    g[4 * r + c : 4 * r + c + 2, 0, 0] = 0.0
    det, empty = teacher_pseudo_labels(feats, (8, 16), c, r, num_vertices=k)
    assert det["index"].tolist() == [5, 6]
    assert det["labels"].tolist() == [1, 0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.875, 0.5]))
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[20.0 - 8, 12 - 16, 20 + 0, 12 + 24], [8 - 24, 8 - 24, 8 + 24, 8 + 24]])
    )
    torch.testing.assert_close(det["polygons"], torch.tensor([[[24.0, 4.0]], [[8.0, 8.0]]]))
    assert det["entropy"][0].item() == 0.0  # exactly: one-hot
    assert abs(det["entropy"][1].item() - 1.0) <= 1e-6
    assert empty["boxes"].shape == (0, 4) and empty["entropy"].shape == (0,) and empty["polygons"].shape == (0, 1, 2)
    # the entropy filter then drops the uncertain box
    (kept, _) = EntropyFilter(0.5)([det, empty])
    assert kept["index"].tolist() == [5]


def test_teacher_pseudo_labels_reg_max_one_has_no_entropy():
    feats = [torch.full((1, 4 + 1, 1, 1), 0.0)]
    (det,) = teacher_pseudo_labels(feats, (8,), 1, 1)
    assert "entropy" not in det and det["scores"].shape == (1,)
    with pytest.raises(ValueError, match="'entropy'"):
        EntropyFilter(0.5)([det])


# ---------------------------------------------------------------- simple filters


def test_score_threshold_filters_every_key_consistently():
    dets = [_image([0.9, 0.3, 0.5, 0.7], [0, 1, 1, 0]), _image([0.2], [1])]
    out = ScoreThreshold(0.5)(dets)
    _assert_rows(out[0], dets[0], [0, 2, 3])  # 0.5 >= 0.5 is kept
    _assert_rows(out[1], dets[1], [])
    assert dets[0]["scores"].shape == (4,)  # the input is untouched
    assert out[0] is not dets[0]


def test_entropy_filter():
    dets = [_image([0.9, 0.8, 0.7], [0, 0, 1], entropy=[0.2, 0.5, 0.6])]
    (out,) = EntropyFilter(0.5)(dets)
    _assert_rows(out, dets[0], [0, 1])
    with pytest.raises(ValueError, match="'entropy'"):
        EntropyFilter(0.5)([_image([0.9], [0])])
    with pytest.raises(ValueError, match="max_entropy"):
        EntropyFilter(-0.1)


# ---------------------------------------------------------------- adaptive thresholds


def test_adaptive_ema_after_one_call_by_hand():
    filt = AdaptiveClassThreshold(3, init=0.5, bounds=(0.3, 0.9), momentum=0.75, floor=0.1)
    # class 0 over both images: 0.875 and 0.625 (0.05 is below the floor) -> mean 0.75
    # class 1: 0.25 -> mean 0.25; class 2: absent
    dets = [_image([0.875, 0.05, 0.25], [0, 0, 1]), _image([0.625], [0])]
    out = filt(dets)
    # t0 = 0.75 * 0.5 + 0.25 * 0.75 = 0.5625; t1 = 0.75 * 0.5 + 0.25 * 0.25 = 0.4375; t2 stays 0.5
    torch.testing.assert_close(filt.threshold, torch.tensor([0.5625, 0.4375, 0.5]))
    assert filt.log() == {"pseudo/threshold/0": 0.5625, "pseudo/threshold/1": 0.4375, "pseudo/threshold/2": 0.5}
    # filtered with the thresholds just updated: 0.875 >= 0.5625, 0.05 no, 0.25 < 0.4375; 0.625 >= 0.5625
    _assert_rows(out[0], dets[0], [0])
    _assert_rows(out[1], dets[1], [0])


def test_adaptive_thresholds_stay_clamped_at_their_bounds():
    filt = AdaptiveClassThreshold(2, init=0.5, bounds=(0.3, 0.9), momentum=0.5, floor=0.1)
    dets = [_image([1.0, 0.125], [0, 1])]
    filt(dets)  # t0 = 0.5 * 0.5 + 0.5 * 1.0 = 0.75; t1 = 0.25 + 0.0625 = 0.3125
    torch.testing.assert_close(filt.threshold, torch.tensor([0.75, 0.3125]))
    filt(dets)  # t0 = 0.875; t1 = 0.21875 -> 0.3
    torch.testing.assert_close(filt.threshold, torch.tensor([0.875, 0.3]))
    for _ in range(5):  # t0 = 0.9375 -> 0.9, then 0.95 -> 0.9 ...; t1 = 0.2125 -> 0.3 ...
        (out,) = filt(dets)
    assert torch.equal(filt.threshold, torch.tensor([0.9, 0.3]))  # exactly the bounds
    _assert_rows(out, dets[0], [0])  # 1.0 >= 0.9; 0.125 < 0.3


def test_adaptive_class_never_seen_keeps_init():
    filt = AdaptiveClassThreshold(3, init=0.625, bounds=(0.3, 0.9), momentum=0.0, floor=0.1)
    for _ in range(3):
        filt([_image([0.8, 0.05], [0, 2])])  # class 2 only below the floor, class 1 never
    torch.testing.assert_close(filt.threshold, torch.tensor([0.8, 0.625, 0.625]))


def test_adaptive_quantile_statistic():
    filt = AdaptiveClassThreshold(2, init=0.5, bounds=(0.0, 1.0), momentum=0.0, quantile=0.5, floor=0.0)
    (out,) = filt([_image([0.25, 0.5, 0.75, 1.0, 0.375], [0, 0, 0, 0, 1])])
    torch.testing.assert_close(filt.threshold, torch.tensor([0.625, 0.375]))  # median of 4 values: midpoint
    assert out["scores"].tolist() == [0.75, 1.0, 0.375]


def test_adaptive_update_flag_and_state_dict():
    filt = AdaptiveClassThreshold(2, init=0.5, momentum=0.0)
    filt([_image([0.8, 0.4], [0, 1])])
    torch.testing.assert_close(filt.threshold, torch.tensor([0.8, 0.4]))
    restored = AdaptiveClassThreshold(2, update=False)
    restored.load_state_dict(filt.state_dict())
    dets = [_image([0.85, 0.75, 0.45, 0.35], [0, 0, 1, 1])]
    (out,) = restored(dets)
    torch.testing.assert_close(restored.threshold, torch.tensor([0.8, 0.4]))  # not updated
    _assert_rows(out, dets[0], [0, 2])
    assert list(filt.state_dict()) == ["threshold"]


def test_adaptive_bad_arguments():
    for kwargs, name in [
        ({"init": 0.95}, "init"),
        ({"bounds": (0.9, 0.3)}, "bounds"),
        ({"momentum": 1.5}, "momentum"),
        ({"quantile": 2.0}, "quantile"),
        ({"floor": -0.1}, "floor"),
    ]:
        with pytest.raises(ValueError, match=name):
            AdaptiveClassThreshold(2, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        AdaptiveClassThreshold(0)
    with pytest.raises(ValueError, match=r"labels'\] must lie in \[0, 2\)"):
        AdaptiveClassThreshold(2)([_image([0.5], [2])])


# ---------------------------------------------------------------- composition


def test_filter_order_matters():
    # one class, scores 0.875, 0.625, 0.5, 0.25; momentum 0 so the threshold is the batch statistic
    dets = [_image([0.875, 0.625, 0.5, 0.25], [0, 0, 0, 0])]
    adaptive = {"kind": "adaptive", "init": 0.5, "bounds": [0.3, 0.9], "momentum": 0.0}
    score = {"kind": "score", "threshold": 0.5}
    # adaptive first: mean of all four = 0.5625 -> keeps 0.875, 0.625; then score >= 0.5 keeps both
    first = build_filters([adaptive, score], 1)
    (a,) = first(dets)
    assert a["scores"].tolist() == [0.875, 0.625]
    assert first.stats()["pseudo/threshold/0"] == 0.5625
    # score first: 0.875, 0.625, 0.5 survive; their mean 2/3 -> only 0.875 passes
    second = build_filters([score, adaptive], 1)
    (b,) = second(dets)
    assert b["scores"].tolist() == [0.875]
    assert second.stats()["pseudo/threshold/0"] == pytest.approx(2 / 3)


def test_pseudo_label_filter_stats_by_hand():
    filt = build_filters([{"kind": "score", "threshold": 0.5}, {"kind": "entropy", "max_entropy": 0.5}], 3)
    dets = [
        _image([1.0, 0.875, 0.75, 0.1], [0, 2, 0, 1], entropy=[0.1, 0.2, 0.3, 0.0]),
        _image([0.625, 0.5, 0.9], [2, 0, 1], entropy=[0.4, 0.5, 0.9]),
    ]
    assert filt.stats() == {}  # nothing recorded yet, no adaptive filter
    out = filt(dets)
    _assert_rows(out[0], dets[0], [0, 1, 2])
    _assert_rows(out[1], dets[1], [0, 1])
    s = filt.stats()
    # kept scores 1.0, 0.875, 0.75, 0.625, 0.5: mean 0.75; quantiles at positions 0.4, 2 and 3.6 of 0..4
    expected = {
        "pseudo/candidates_per_image": 3.5,
        "pseudo/kept_per_image": 2.5,
        "pseudo/kept/0": 1.5,
        "pseudo/kept/1": 0.0,
        "pseudo/kept/2": 1.0,
        "pseudo/score_mean": 0.75,
        "pseudo/score_p10": 0.55,
        "pseudo/score_p50": 0.75,
        "pseudo/score_p90": 0.95,
    }
    assert s.keys() == expected.keys()
    for k, v in expected.items():
        assert s[k] == pytest.approx(v, abs=1e-6), k


def test_adaptive_thresholds_appear_in_stats_and_state_dict():
    filt = build_filters([{"kind": "adaptive", "init": 0.5, "momentum": 0.0}], 2)
    assert filt.stats() == {"pseudo/threshold/0": 0.5, "pseudo/threshold/1": 0.5}
    filt([_image([0.75], [1])])
    assert filt.stats()["pseudo/threshold/1"] == 0.75
    assert list(filt.state_dict()) == ["filters.0.threshold"]
    fresh = build_filters([{"kind": "adaptive"}], 2)
    fresh.load_state_dict(filt.state_dict())
    assert fresh.stats()["pseudo/threshold/1"] == 0.75


def test_empty_predictions_everywhere():
    specs = [
        {"kind": "score", "threshold": 0.25},
        {"kind": "adaptive", "init": 0.5, "momentum": 0.5},
        {"kind": "entropy", "max_entropy": 0.5},
    ]
    filt = build_filters(specs, 2)
    dets = [_image([], [], entropy=[]), _image([], [], entropy=[])]
    out = filt(dets)
    for o, d in zip(out, dets, strict=True):
        _assert_rows(o, d, [])
        assert o["boxes"].shape == (0, 4) and o["polygons"].shape == (0, 3, 2)
    s = filt.stats()
    nan_keys = {"pseudo/score_mean", "pseudo/score_p10", "pseudo/score_p50", "pseudo/score_p90"}
    assert all(math.isnan(s[k]) for k in nan_keys)
    assert {k: v for k, v in s.items() if k not in nan_keys} == {
        "pseudo/candidates_per_image": 0.0,
        "pseudo/kept_per_image": 0.0,
        "pseudo/kept/0": 0.0,
        "pseudo/kept/1": 0.0,
        "pseudo/threshold/0": 0.5,  # no candidates: unchanged
        "pseudo/threshold/1": 0.5,
    }
    # a batch without images: nothing to average over, so the per-image values are nan too
    assert filt([]) == []
    assert math.isnan(filt.stats()["pseudo/kept_per_image"])
    assert filt.stats()["pseudo/threshold/0"] == 0.5
    # the teacher side of it: no anchor above conf
    feats = [torch.full((2, 4 * 4 + 2, 2, 2), OFF)]
    teacher = teacher_pseudo_labels(feats, (8,), 2, 4)
    assert [d["scores"].shape for d in filt(teacher)] == [(0,), (0,)]


def test_build_filters_errors():
    with pytest.raises(ValueError, match=r"unknown filter kind 'dsat'; valid kinds: score, adaptive, entropy"):
        build_filters([{"kind": "dsat"}], 2)
    with pytest.raises(ValueError, match=r"unknown keys \['thresh'\]; valid keys: threshold"):
        build_filters([{"kind": "score", "thresh": 0.5}], 2)
    with pytest.raises(ValueError, match="'kind'"):
        build_filters([{"threshold": 0.5}], 2)
    with pytest.raises(ValueError, match="at most one AdaptiveClassThreshold"):
        build_filters([{"kind": "adaptive"}, {"kind": "adaptive"}], 2)
    with pytest.raises(ValueError, match="threshold"):
        build_filters([{"kind": "score", "threshold": 1.5}], 2)


def test_malformed_detections_raise():
    bad = _image([0.5, 0.6], [0, 1])
    bad["boxes"] = bad["boxes"][:1]
    with pytest.raises(ValueError, match=r"dets\[0\]\['boxes'\] must have N = 2 rows"):
        ScoreThreshold(0.5)([bad])
    with pytest.raises(ValueError, match=r"dets\[0\] must be a dict with at least 'scores'"):
        ScoreThreshold(0.5)([{"boxes": torch.zeros(0, 4)}])
    float_labels = _image([0.5], [0])
    float_labels["labels"] = float_labels["labels"].float()
    with pytest.raises(ValueError, match="integer"):
        ScoreThreshold(0.5)([float_labels])
    with pytest.raises(ValueError, match=r"labels'\] must lie in \[0, 2\)"):
        build_filters([{"kind": "score", "threshold": 0.5}], 2)([_image([0.5], [-1])])


# ---------------------------------------------------------------- DDP


def _ddp_thresholds(rank: int, world: int, shards: list) -> list[list[float]]:
    out = []
    for quantile in (None, 0.5):
        filt = AdaptiveClassThreshold(2, init=0.5, bounds=(0.0, 1.0), momentum=0.0, quantile=quantile, floor=0.0)
        filt(shards[rank])
        out.append(filt.threshold.tolist())
    return out


def test_adaptive_thresholds_agree_across_ranks():
    # rank 1 has no class-1 candidates and an empty image; the pooled statistic equals one process's
    shards = [
        [_image([0.875, 0.25], [0, 1])],
        [_image([0.625, 0.5], [0, 0]), _image([], [])],
    ]
    ranks = spawn_gloo(_ddp_thresholds, 2, shards)
    single = [d for shard in shards for d in shard]
    for mode, quantile in enumerate((None, 0.5)):
        one = AdaptiveClassThreshold(2, init=0.5, bounds=(0.0, 1.0), momentum=0.0, quantile=quantile, floor=0.0)
        one(single)
        expected = [(0.875 + 0.625 + 0.5) / 3 if quantile is None else 0.625, 0.25]
        assert one.threshold.tolist() == pytest.approx(expected)
        for r in ranks:
            assert r[mode] == pytest.approx(expected)


def test_pseudo_label_filter_direct_construction():
    filt = PseudoLabelFilter([ScoreThreshold(0.5), AdaptiveClassThreshold(2, momentum=0.0)], num_classes=2)
    (out,) = filt([_image([0.75, 0.625, 0.25], [0, 0, 1])])
    assert out["scores"].tolist() == [0.75]  # mean of the survivors 0.6875
    assert filt.stats()["pseudo/threshold/0"] == 0.6875
    with pytest.raises(ValueError, match=r"filters\[0\] must be a DetectionFilter"):
        PseudoLabelFilter([lambda dets: dets], 2)
    with pytest.raises(ValueError, match="num_classes"):
        PseudoLabelFilter([], 0)


def test_a_string_argument_names_the_filter_and_key():
    import yaml

    specs = yaml.safe_load("[{kind: score, threshold: 2e-5}]")  # YAML 1.1: no dot, so a string
    assert specs[0]["threshold"] == "2e-5"
    with pytest.raises(ValueError, match=r"specs\[0\] \('score'\): threshold must be a number, got the string '2e-5'"):
        build_filters(specs, 3)
