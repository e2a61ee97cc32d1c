"""World size, the one all-reduce of named sums, and the batch-split check, in one process and over 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch

from detloss.core.distributed import check_divisible, global_sums, world_size
from detloss.testing.ddp import spawn_gloo


def test_one_process_is_the_identity():
    assert world_size() == 1
    sums = global_sums({"num_pos": torch.tensor(3.0), "batch_size": 4})
    assert list(sums) == ["num_pos", "batch_size"]
    assert [v.item() for v in sums.values()] == [3.0, 4.0]
    assert global_sums({}) == {}


def test_check_divisible_names_the_setting_and_the_ranks():
    check_divisible("batch_size", 8, world=4)
    check_divisible("batch_size", 7)  # one process: anything splits
    with pytest.raises(ValueError, match=r"^semi.unlabelled_batch_size 6 must divide by the 4 ranks$"):
        check_divisible("semi.unlabelled_batch_size", 6, world=4)


def _sums_on_rank(rank: int, world: int) -> dict:
    # rank r contributes num_pos = r + 1 and target_sum = 0.5 * (r + 1)
    sums = global_sums({"num_pos": torch.tensor(float(rank + 1)), "target_sum": 0.5 * (rank + 1)})
    with pytest.raises(ValueError, match="batch_size 3 must divide by the 2 ranks"):
        check_divisible("batch_size", 3)
    return {"world": world_size(), **{k: v.item() for k, v in sums.items()}}


def test_two_ranks_sum_every_value_once():
    out = spawn_gloo(_sums_on_rank, 2)
    # num_pos 1 + 2 = 3, target_sum 0.5 + 1.0 = 1.5, the same on both ranks
    assert out == [{"world": 2, "num_pos": 3.0, "target_sum": 1.5}] * 2
