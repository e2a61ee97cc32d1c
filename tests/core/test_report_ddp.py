"""A report's numbers reduced across ranks are the one-process numbers (worked by hand)."""

from __future__ import annotations

import torch

from detloss.core.report import LossReport, make_term
from detloss.testing import spawn_gloo

#: Rank 0 and rank 1 of one batch. box: raw sums 1 + 2 = 3 and 5, num_pos 1 and 3, global D = 4 positives;
#: cls: raw sums 4 x 0.25 = 1 and 4 x 0.75 = 3 over 8 elements, global D = 8 (the mean).
SHARDS = [
    {"box": ([1.0, 2.0], 1.0), "cls": [0.25] * 4},
    {"box": ([5.0], 3.0), "cls": [0.75] * 4},
]


def _report(shard: dict, world: int) -> LossReport:
    box_el, num_pos = shard["box"]
    box = make_term("box", torch.tensor(box_el), torch.tensor(4.0 / world), "num_pos", weight=0.5, num_pos=num_pos)
    cls = make_term("cls", torch.tensor(shard["cls"]), torch.tensor(8.0 / world), "mean")
    return LossReport({"box": box, "cls": cls})


def _global_numbers(rank: int, world: int) -> dict[str, float]:
    return _report(SHARDS[rank], world).as_dict(across_ranks=True)


def test_numbers_reduced_across_ranks_are_the_one_process_numbers():
    # one process on the whole batch: box = 0.5 * (3 + 5) / 4 = 1, cls = (1 + 3) / 8 = 0.5
    expected = {
        "box": 1.0, "box/raw_sum": 8.0, "box/normalizer": 4.0, "box/weight": 0.5, "box/num_elements": 3.0,
        "box/num_pos": 4.0,
        "cls": 0.5, "cls/raw_sum": 4.0, "cls/normalizer": 8.0, "cls/weight": 1.0, "cls/num_elements": 8.0,
        "cls/num_pos": 0.0,
        "total": 1.5,
    }  # fmt: skip
    # each rank alone: box values 0.5 * 3 / 2 = 0.75 and 0.5 * 5 / 2 = 1.25, normalizer 2 (= 4 / 2 ranks)
    alone = _report(SHARDS[0], 2).as_dict(across_ranks=True)  # no process group: nothing to reduce
    assert alone["box"] == 0.75 and alone["box/normalizer"] == 2.0 and alone["cls/num_elements"] == 4.0
    for numbers in spawn_gloo(_global_numbers, 2):
        assert numbers == expected
