"""Per-level channel-first views of a dense head's outputs, never concatenated (no full-size copies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil, floor

import torch
from torch import Tensor

from detloss.core.checks import check_tensor


@dataclass(frozen=True)
class HeadOutputs:
    """``box[l] (B, 4R, HW_l)``, ``cls[l] (B, C, HW_l)``, ``poly[l] (B, 2K, HW_l)`` views of ``feats[l]``.

    Each level is ``split`` (not sliced): in backward a split writes one dense gradient per level,
    where slicing zero-fills a full-size gradient per slice. Anchors are numbered level by level.
    """

    box: list[Tensor]
    cls: list[Tensor]
    poly: list[Tensor] | None
    sizes: list[tuple[int, int]]
    starts: list[int]  # first anchor index of each level, plus the total

    @classmethod
    def split(cls, feats: Sequence[Tensor], strides: Sequence[float], groups: tuple[int, int, int]) -> HeadOutputs:
        if not isinstance(feats, Sequence) or len(feats) != len(strides):
            raise ValueError(f"feats must be a list of {len(strides)} tensors (one per stride {tuple(strides)})")
        b = feats[0].shape[0] if isinstance(feats[0], Tensor) and feats[0].dim() == 4 else None
        for i, f in enumerate(feats):
            check_tensor(f"feats[{i}]", f, (b, sum(groups), "H", "W"), floating=True)
        parts = [f.flatten(2).split(groups, 1) for f in feats]
        sizes = [(f.shape[2], f.shape[3]) for f in feats]
        starts = [0]
        for h, w in sizes:
            starts.append(starts[-1] + h * w)
        box, cls_, poly = (list(p) for p in zip(*parts, strict=True))
        return cls(box, cls_, poly if groups[2] else None, sizes, starts)

    @property
    def batch_size(self) -> int:
        return self.cls[0].shape[0]

    @property
    def num_anchors(self) -> int:
        return self.starts[-1]

    def levels(self, anchor: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """``(level, mask, local index)`` of the given global anchor indices, one entry per level."""
        out = []
        for level, (lo, hi) in enumerate(zip(self.starts[:-1], self.starts[1:], strict=True)):
            mask = (anchor >= lo) & (anchor < hi)
            out.append((level, mask, anchor[mask] - lo))
        return out

    def gather(self, group: list[Tensor], image: Tensor, anchor: Tensor) -> Tensor:
        """``(P, channels)`` rows of ``group`` at ``(image, anchor)``, in the order given."""
        rows, where = [], []
        for level, mask, local in self.levels(anchor):
            rows.append(group[level][image[mask], :, local])
            where.append(torch.nonzero(mask).flatten())
        order = torch.cat(where).argsort()
        return torch.cat(rows)[order]


def check_level_sizes(sizes: Sequence[tuple[int, int]], strides: Sequence[float], image_hw: Sequence[float]) -> None:
    """Raise ``ValueError`` unless level ``l`` has ``image size / strides[l]`` cells per side, rounded down
    or up (stride-2 convs with padding round up, without padding down); a mismatch would place every
    anchor of that level at the wrong pixels."""
    h, w = image_hw
    for level, ((rows, cols), stride) in enumerate(zip(sizes, strides, strict=True)):
        fits = [floor(side / stride) <= n <= ceil(side / stride) for n, side in ((rows, h), (cols, w))]
        if not all(fits):
            raise ValueError(
                f"feats[{level}] has {rows}x{cols} cells, but strides[{level}] = {stride:g} on a {h:g}x{w:g} image "
                f"gives {ceil(h / stride)}x{ceil(w / stride)} (image size / stride, rounded either way); "
                "check the order of strides, or image_size"
            )
