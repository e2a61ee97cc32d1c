"""2-process gloo: RPN, ROI and multigrid criteria (count normalizers) give DDP gradients equal to one
process on the concatenated batch — random sampling included, since the sample of an image depends only
on (seed, epoch, image content, element index within the image), not on its rank or batch position."""

from __future__ import annotations

import torch
from torch import nn

from detloss.criteria.multigrid import PER_BATCH_NORMALIZERS, MultigridCriterion
from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.testing import ddp_and_single_gradients

C, F, S, SIZE, CELLS = 3, 5, 6, 64, 4
# small budgets, so that sampling actually drops anchors and ROIs
RPN = RPNCriterion(sample_num=24, pos_fraction=0.5)
ROI = ROICriterion(C, mask_size=S, sample_num=10, pos_fraction=0.25)
GRID = MultigridCriterion(C, normalizers=PER_BATCH_NORMALIZERS, cls_loss="bce")  # counts reduced over ranks
ANCHORS = torch.tensor(
    [[x, y, x + s, y + s] for s in (12.0, 24.0) for y in range(0, SIZE, 8) for x in range(0, SIZE, 8)]
)


def _image(seed: int, n: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 16], 1)
    x1, y1, x2, y2 = boxes.unbind(-1)
    triangle = torch.stack(
        [torch.stack([x1, y2], -1), torch.stack([x2, y2], -1), torch.stack([(x1 + x2) / 2, y1], -1)], 1
    )
    polygons = torch.cat([triangle, triangle[:, :1]], 1)  # K = 4, 3 valid
    jitter = boxes.repeat(3, 1) + torch.randn(3 * n, 4, generator=g) * 3
    rand_xy = torch.rand(12, 2, generator=g) * 50
    rois = torch.cat([jitter, torch.cat([rand_xy, rand_xy + 6 + torch.rand(12, 2, generator=g) * 10], 1)])
    rois = torch.cat([rois[:, :2], torch.maximum(rois[:, 2:], rois[:, :2] + 2)], 1)
    obj = torch.zeros(CELLS, CELLS, dtype=torch.bool)
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 / (SIZE / CELLS)).long().clamp(0, CELLS - 1)
    obj[centre[:, 1], centre[:, 0]] = True
    labels = torch.randint(0, C, (n,), generator=g)
    grid_labels = torch.zeros(CELLS, CELLS, dtype=torch.long)
    grid_labels[centre[:, 1], centre[:, 0]] = labels
    return {
        "boxes": boxes,
        "labels": labels,
        "polygons": polygons,
        "polygon_counts": torch.full((n,), 3),
        "rois": rois,
        "x_rpn": torch.randn(ANCHORS.shape[0], F, generator=g),
        "x_roi": torch.randn(rois.shape[0], F, generator=g),
        "x_grid": torch.randn(CELLS, CELLS, F, generator=g),
        "grid": {
            "loc": torch.randn(CELLS, CELLS, 4, generator=g),
            "object_mask": obj,
            "ignore_mask": torch.rand(CELLS, CELLS, generator=g) < 0.3,
            "labels": grid_labels,
        },
    }


class RPNHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(F, 5)

    def forward(self, images: list[dict]) -> torch.Tensor:
        out = self.linear(torch.stack([im["x_rpn"] for im in images]))
        return RPN(out[..., 0], out[..., 1:], ANCHORS, [im["boxes"] for im in images]).total


class ROIHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(F, (C + 1) + C * 4 + C * S * S)

    def forward(self, images: list[dict]) -> torch.Tensor:
        out = self.linear(torch.cat([im["x_roi"] for im in images]))
        r = out.shape[0]
        cls, box, mask = out.split([C + 1, 4 * C, C * S * S], 1)
        rois = torch.cat([im["rois"] for im in images])
        roi_image = torch.cat([torch.full((im["rois"].shape[0],), i) for i, im in enumerate(images)])
        targets = [{k: im[k] for k in ("boxes", "labels", "polygons", "polygon_counts")} for im in images]
        return ROI(cls, box.view(r, C, 4), mask.view(r, C, S, S), rois, roi_image, targets).total


class GridHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(F, 4 + 1 + C)

    def forward(self, images: list[dict]) -> torch.Tensor:
        out = self.linear(torch.stack([im["x_grid"] for im in images]))
        pred = {"loc": out[..., :4], "obj": out[..., 4], "cls": out[..., 5:]}
        targets = {k: torch.stack([im["grid"][k] for im in images]) for k in images[0]["grid"]}
        return GRID.cell_loss(pred, targets).total


def _loss(model: nn.Module, images: list[dict]) -> torch.Tensor:
    return model(images)


def _concat(parts: list[list[dict]]) -> list[dict]:
    return [image for part in parts for image in part]


def test_two_stage_and_multigrid_ddp_gradients_equal_single_process():
    # step 0: rank 1's images have no objects; step 1: crowded vs sparse shards
    shards = [
        [[_image(0, 3), _image(1, 2)], [_image(2, 0), _image(3, 0)]],
        [[_image(4, 6), _image(5, 1)], [_image(6, 1), _image(7, 2)]],
    ]
    results = ddp_and_single_gradients([RPNHead, ROIHead, GridHead], _loss, shards, _concat)
    for name, (ddp, single) in zip(("rpn", "roi", "multigrid"), results, strict=True):
        for rank_grads in ddp:
            for step in range(len(shards)):
                for g_ddp, g_single in zip(rank_grads[step], single[step], strict=True):
                    assert g_single.abs().sum() > 0, name
                    torch.testing.assert_close(g_ddp, g_single, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
