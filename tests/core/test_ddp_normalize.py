"""2-process gloo: DDP gradients equal the single-process gradient on the concatenated batch."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from detloss.core.normalize import Normalizer, denominators
from detloss.core.report import make_term
from detloss.testing import ddp_and_single_gradients

SPECS = [
    "mean",
    "num_pos",
    "target_sum",
    "num_samples",
    "batch_size",
    "images_with_fg",
    "density",
    "ema_num_pos:0.9",
    "ema_num_pos:0.9:init=100",
    "sum",
    "fixed:4",
]
CELLS, CLASSES, FEATURES = 6, 3, 4


class Toy(nn.Module):
    """A linear 'head' scored by one BCE term normalized by ``spec``."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(FEATURES, CLASSES)
        self.norm = Normalizer(spec)

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.head(batch["x"])
        targets, sampled = batch["targets"], batch["sampled"]
        positive = targets.amax(-1) > 0
        b = batch["x"].shape[0] // CELLS
        counts = {
            "num_elements": float(logits.numel()),
            "num_pos": positive.sum(),
            "target_sum": targets.sum(),
            "num_samples": sampled.sum(),
            "batch_size": float(b),
            "images_with_fg": positive.view(b, CELLS).any(1).sum(),
            "num_cells": float(CELLS),
        }
        d = denominators({"cls": self.norm}, {"*": counts})["cls"]
        elements = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return make_term("cls", elements, d, self.norm.spec, weights=sampled[:, None].float(), weight=2.0).value


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch)


def _shard(images: int, positives: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = images * CELLS
    targets = torch.zeros(n, CLASSES)
    rows = torch.randperm(n, generator=g)[:positives]
    targets[rows, torch.randint(CLASSES, (positives,), generator=g)] = torch.rand(positives, generator=g) + 0.1
    return {
        "x": torch.randn(n, FEATURES, generator=g),
        "targets": targets,
        "sampled": torch.rand(n, generator=g) < 0.7,
    }


def _concat(shards: list[dict]) -> dict:
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def test_two_rank_gradients_equal_single_process_for_every_normalizer():
    # step 0: rank 1 has zero positives and fewer images; step 1: both ranks have positives
    shards = [[_shard(3, 5, 0), _shard(2, 0, 1)], [_shard(2, 3, 2), _shard(2, 4, 3)]]
    results = ddp_and_single_gradients([functools.partial(Toy, spec) for spec in SPECS], _loss, shards, _concat)
    for spec, (ddp, single) in zip(SPECS, results, strict=True):
        for rank_grads in ddp:
            for step in range(len(shards)):
                for g_ddp, g_single in zip(rank_grads[step], single[step], strict=True):
                    assert g_single.abs().sum() > 0, spec
                    torch.testing.assert_close(g_ddp, g_single, atol=1e-6, rtol=1e-6, msg=spec)
