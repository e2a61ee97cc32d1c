"""NORMALIZER_SKEW between training and validation fires whichever of the two medians is the larger."""

from __future__ import annotations

import pytest

from detloss.diagnose.findings import check_normalizer_skew


def _rows(prefix: str, box: list[float], cls: float = 4.0) -> list[dict[str, float]]:
    """Flat rows with a ``box`` term of the given normalizers and a steady ``cls`` term."""
    return [
        {
            f"{prefix}box": 1.0,
            f"{prefix}box/normalizer": d,
            f"{prefix}cls": 1.0,
            f"{prefix}cls/normalizer": cls,
        }
        for d in box
    ]


@pytest.mark.parametrize(
    ("train", "val", "skew"),
    [
        ([30.0, 25.0, 35.0], [3.0, 2.0, 2.5], 30 / 2.5),  # training median 30, validation 2.5: 12x
        ([3.0, 2.0, 2.5], [30.0, 25.0, 35.0], 30 / 2.5),  # the other way round: still 12x
        ([1.0, 1.5, 2.0], [40.0], 40 / 1.5),  # validation 26.7x larger
    ],
    ids=["train_larger", "val_larger", "val_much_larger"],
)
def test_train_vs_validation_skew_both_ways(train, val, skew):
    (f,) = check_normalizer_skew(_rows("train/", train), _rows("val/", val))
    assert f.code == "NORMALIZER_SKEW" and f.term == "box"
    assert f.numbers["skew"] == pytest.approx(skew)
    assert f.numbers["train_median"] == pytest.approx(sorted(train)[len(train) // 2])
    assert f.numbers["val_median"] == pytest.approx(sorted(val)[len(val) // 2])
    assert "validation" in f.message


@pytest.mark.parametrize("factor", [1 / 9, 9.0], ids=["val_smaller", "val_larger"])
def test_skew_below_the_ratio_either_way_is_quiet(factor):
    train = [4.0, 4.0, 4.0]
    assert check_normalizer_skew(_rows("train/", train), _rows("val/", [4.0 * factor])) == []
    # the same pair against a lower bound fires, in both directions
    (f,) = check_normalizer_skew(_rows("train/", train), _rows("val/", [4.0 * factor]), val_ratio=8.0)
    assert f.numbers["skew"] == pytest.approx(9.0)
