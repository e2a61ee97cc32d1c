"""The channel layout of a dense head, and per-level channel-first views of its outputs (never
concatenated: no full-size copies). Every reader of a dense head's outputs goes through :class:`HeadLayout`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil, floor

import torch
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.ops.dfl import dfl_decode

__all__ = ["HeadLayout", "HeadOutputs", "check_level_sizes"]

PARTS = ("box", "cls", "obj", "poly")


@dataclass(frozen=True)
class HeadLayout:
    """Channels of each level of a dense (anchor-free, DFL) head: ``4R | C | O | 2K``.

    * ``4R`` (``R = reg_max``) DFL box logits, side-major (channel ``side * R + bin``, sides ``l, t, r, b``),
      whose softmax expectation over ``arange(R)`` is the distance from the anchor point in stride units
      (``R == 1``: the channels are the distances themselves);
    * ``C = num_classes`` class logits;
    * ``O`` (1 with ``objectness``, else 0) an objectness logit: "an object of any class is here";
    * ``2K`` (``K = num_vertices``, 0: no polygon branch) vertex offsets ``x0, y0, x1, y1, ...`` from the
      anchor point, in stride units.

    Objectness sits right after the classes, so ``4R | C | O`` is a prefix of every layout: a reader of
    the box, class and objectness channels (the unlabelled criterion) slices it off any polygon head.
    Without objectness the layout is the one of earlier versions, channel for channel.

    Example:
        >>> layout = HeadLayout(reg_max=2, num_classes=3, num_vertices=1)
        >>> layout.num_channels, layout.groups, layout.cls
        (13, (8, 3, 0, 2), slice(8, 11, None))
        >>> box, cls, obj, poly = layout.split(torch.zeros(1, 13, 4, 4))
        >>> box.shape, cls.shape, obj.shape, poly.shape
        (torch.Size([1, 8, 4, 4]), torch.Size([1, 3, 4, 4]), torch.Size([1, 0, 4, 4]), torch.Size([1, 2, 4, 4]))
        >>> HeadLayout(reg_max=2, num_classes=3, num_vertices=1, objectness=True).obj
        slice(11, 12, None)
    """

    reg_max: int
    num_classes: int
    num_vertices: int = 0
    objectness: bool = False

    def __post_init__(self) -> None:
        for name, low in (("reg_max", 1), ("num_classes", 1), ("num_vertices", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.objectness, bool):
            raise ValueError(f"objectness must be a bool, got {self.objectness!r}")

    @property
    def groups(self) -> tuple[int, int, int, int]:
        """Channel counts ``(4R, C, O, 2K)`` of the box, class, objectness and polygon parts."""
        return 4 * self.reg_max, self.num_classes, int(self.objectness), 2 * self.num_vertices

    @property
    def num_channels(self) -> int:
        """Channels each level must have."""
        return sum(self.groups)

    @property
    def box(self) -> slice:
        return slice(0, self.groups[0])

    @property
    def cls(self) -> slice:
        return slice(self.groups[0], self.groups[0] + self.groups[1])

    @property
    def obj(self) -> slice:
        start = self.groups[0] + self.groups[1]
        return slice(start, start + self.groups[2])

    @property
    def poly(self) -> slice:
        return slice(self.obj.stop, self.num_channels)

    def split(self, x: Tensor, dim: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(box, cls, obj, poly)`` views of ``x`` along ``dim`` (the channels; ``obj`` has 0 channels
        without objectness, ``poly`` when ``K == 0``). A split, not four slices: in backward it writes one
        dense gradient, where slicing zero-fills a full-size gradient per slice."""
        if x.shape[dim] != self.num_channels:
            raise ValueError(
                f"x must have {self.num_channels} (4R + C + O + 2K) channels in dim {dim}, got {tuple(x.shape)}"
            )
        box, cls_, obj, poly = x.split(self.groups, dim)
        return box, cls_, obj, poly

    def check(self, feats: Sequence[Tensor], num_levels: int | None = None) -> None:
        """Raise ``ValueError`` unless ``feats`` is a list of ``(B, 4R + C + O + 2K, H_l, W_l)`` floating tensors
        of one batch size (``num_levels`` of them when given)."""
        if not isinstance(feats, Sequence) or len(feats) == 0 or (num_levels is not None and len(feats) != num_levels):
            count = "a non-empty list" if num_levels is None else f"a list of {num_levels}"
            raise ValueError(f"feats must be {count} of (B, {self.num_channels}, H, W) tensors (one per level)")
        b = feats[0].shape[0] if isinstance(feats[0], Tensor) and feats[0].dim() == 4 else None
        for i, f in enumerate(feats):
            check_tensor(f"feats[{i}]", f, (b, self.num_channels, "H", "W"), floating=True)

    def flatten(self, feats: Sequence[Tensor], part: str) -> Tensor:
        """One part (``"box"``, ``"cls"``, ``"obj"`` or ``"poly"``) of every level, ``(B, A, channels)``: anchors
        numbered level by level, row-major within a level (level ``l``'s cell ``(y, x)`` is
        ``sum(H_j * W_j for j < l) + y * W_l + x``)."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        index = PARTS.index(part)
        return torch.cat([self.split(f.flatten(2))[index] for f in feats], 2).transpose(1, 2)

    def decode_boxes(self, box_logits: Tensor, dim: int = -1) -> Tensor:
        """Box logits with ``4R`` entries along ``dim`` -> the 4 ``ltrb`` distances in stride units
        (float32): :func:`~detloss.ops.dfl.dfl_decode`."""
        return dfl_decode(box_logits, self.reg_max, dim=dim)

    def vertices(self, poly: Tensor) -> Tensor:
        """Polygon offsets ``(..., 2K)`` -> ``(..., K, 2)`` vertex ``(x, y)`` pairs."""
        return poly.unflatten(-1, (self.num_vertices, 2))

    def split_levels(self, feats: Sequence[Tensor], strides: Sequence[float]) -> HeadOutputs:
        """:class:`HeadOutputs` of ``feats``, one level per stride."""
        if not isinstance(feats, Sequence) or len(feats) != len(strides):
            raise ValueError(f"feats must be a list of {len(strides)} tensors (one per stride {tuple(strides)})")
        self.check(feats)
        parts = [self.split(f.flatten(2)) for f in feats]
        sizes = [(f.shape[2], f.shape[3]) for f in feats]
        starts = [0]
        for h, w in sizes:
            starts.append(starts[-1] + h * w)
        box, cls_, obj, poly = (list(p) for p in zip(*parts, strict=True))
        return HeadOutputs(
            self, box, cls_, poly if self.num_vertices else None, sizes, starts, obj if self.objectness else None
        )


@dataclass(frozen=True)
class HeadOutputs:
    """``box[l] (B, 4R, HW_l)``, ``cls[l] (B, C, HW_l)``, ``poly[l] (B, 2K, HW_l)`` and ``obj[l] (B, 1, HW_l)``
    views of ``feats[l]`` (:meth:`HeadLayout.split_levels`; ``poly`` / ``obj`` ``None`` without that part).
    Anchors are numbered level by level."""

    layout: HeadLayout
    box: list[Tensor]
    cls: list[Tensor]
    poly: list[Tensor] | None
    sizes: list[tuple[int, int]]
    starts: list[int]  # first anchor index of each level, plus the total
    obj: list[Tensor] | None = None

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
