"""2-process gloo: DenseCriterion's DDP gradient equals one process on the concatenated batch."""

from __future__ import annotations

import torch
from torch import nn

from detloss import BackgroundPenalty, DenseCriterion
from detloss.data.synthetic import random_targets
from detloss.testing import ddp_and_single_gradients

C, R, K, IN = 3, 4, 5, 6
STRIDES, SIZE = (8, 16), 64
CRITERION = DenseCriterion(C, STRIDES, R, num_vertices=K, background=BackgroundPenalty("max"))


class Head(nn.Module):
    """A 1x1 conv per level: parameters whose gradient DDP averages."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(IN, CRITERION.num_channels, 1) for _ in STRIDES)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs, strict=True)]


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return CRITERION(model(batch["x"]), batch["targets"]).total


def _batch(images: int, objects: list[int], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(images, IN, SIZE // s, SIZE // s, generator=g) for s in STRIDES]
    return {"x": xs, "targets": random_targets(images, C, objects, num_vertices=K, seed=seed)}


def _concat(parts: list[dict]) -> dict:
    offset, targets = 0, []
    for p in parts:
        t = dict(p["targets"])
        t["batch_idx"] = t["batch_idx"] + offset
        offset += p["x"][0].shape[0]
        targets.append(t)
    return {
        "x": [torch.cat([p["x"][i] for p in parts]) for i in range(len(STRIDES))],
        "targets": {k: torch.cat([t[k] for t in targets]) for k in targets[0]},
    }


def test_dense_criterion_ddp_gradient_equals_single_process():
    # step 0: rank 1's shard has no objects at all; step 1: crowded vs sparse shards
    shards = [
        [_batch(2, [3, 2], seed=0), _batch(2, [0, 0], seed=1)],
        [_batch(2, [6, 1], seed=2), _batch(2, [1, 2], seed=3)],
    ]
    [(ddp, single)] = ddp_and_single_gradients([Head], _loss, shards, _concat)
    for rank_grads in ddp:
        for step in range(len(shards)):
            for g_ddp, g_single in zip(rank_grads[step], single[step], strict=True):
                torch.testing.assert_close(g_ddp, g_single, atol=1e-6, rtol=1e-6)
