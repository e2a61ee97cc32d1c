"""A small anchor-free detector (backbone, FPN/PAN neck, decoupled head) for CPU demos.

GroupNorm instead of BatchNorm: statistics do not depend on how a batch is split across ranks, so
a k-process run takes exactly the step of one process on the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detloss.ops.head_layout import HeadLayout


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
            nn.GroupNorm(math.gcd(8, c_out), c_out),
            nn.SiLU(inplace=True),
        )


class Block(nn.Module):
    """Residual pair of 3x3 convs (depthwise-separable second conv keeps it cheap)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = ConvNormAct(c, c, 3)
        self.b = nn.Sequential(ConvNormAct(c, c, 3, groups=c), ConvNormAct(c, c, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


class TinyDetector(nn.Module):
    """Outputs the ``feats`` of :class:`detloss.DenseCriterion`: per level ``(B, 4R + C + O + 2K, H, W)``, the
    channels of ``self.layout`` (:class:`~detloss.ops.head_layout.HeadLayout`).

    Args:
        num_classes: C.
        reg_max: DFL bins per side.
        num_vertices: K polygon vertices (0: no polygon head).
        width: channels of the first stage; later stages use 2x and 4x.
        p2: add a stride-4 level (``width`` channels, from the stem and the stride-8 neck output) for
            objects of ~10-40 px; ``strides`` is then ``(4, 8, 16, 32)``, else ``(8, 16, 32)``.
        objectness: add one objectness logit per anchor (``O = 1``): a 1x1 conv on the box branch's
            features (where YOLOX puts it: "is an object here" is a question about place, not class),
            bias at the 1% prior. Off: no extra parameters, the layout and checkpoints of earlier versions.

    Example:
        >>> model = TinyDetector(num_classes=6, reg_max=8, num_vertices=8)
        >>> [f.shape for f in model(torch.zeros(1, 3, 64, 64))]
        [torch.Size([1, 54, 8, 8]), torch.Size([1, 54, 4, 4]), torch.Size([1, 54, 2, 2])]
        >>> TinyDetector(num_classes=6, reg_max=8, objectness=True)(torch.zeros(1, 3, 64, 64))[0].shape
        torch.Size([1, 39, 8, 8])
    """

    def __init__(
        self,
        num_classes: int,
        reg_max: int = 16,
        num_vertices: int = 0,
        width: int = 32,
        p2: bool = False,
        objectness: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.reg_max, self.num_vertices = num_classes, reg_max, num_vertices
        self.strides = (4, 8, 16, 32) if p2 else (8, 16, 32)
        self.layout = HeadLayout(reg_max, num_classes, num_vertices, objectness)
        box_channels, _, _, poly_channels = self.layout.groups
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(ConvNormAct(3, c1 // 2, 3, 2), ConvNormAct(c1 // 2, c1, 3, 2), Block(c1))
        self.stage3 = nn.Sequential(ConvNormAct(c1, c2, 3, 2), Block(c2))  # stride 8
        self.stage4 = nn.Sequential(ConvNormAct(c2, c3, 3, 2), Block(c3))  # stride 16
        self.stage5 = nn.Sequential(ConvNormAct(c3, c3, 3, 2), Block(c3))  # stride 32
        self.top_down4 = ConvNormAct(c3 + c3, c2, 1)
        self.top_down3 = ConvNormAct(c2 + c2, c2, 3)
        self.down3 = ConvNormAct(c2, c2, 3, 2)
        self.bottom_up4 = ConvNormAct(c2 + c2, c2, 3)
        self.down4 = ConvNormAct(c2, c2, 3, 2)
        self.bottom_up5 = ConvNormAct(c2 + c3, c2, 3)
        self.top_down2 = ConvNormAct(c2 + c1, c1, 3) if p2 else None
        widths = ([c1] if p2 else []) + [c2, c2, c2]
        self.box = nn.ModuleList(self._branch(c, box_channels) for c in widths)
        self.cls = nn.ModuleList(self._branch(c, num_classes) for c in widths)
        self.poly = nn.ModuleList(self._branch(c, poly_channels) for c in widths) if num_vertices else None
        self.obj = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in widths) if objectness else None
        self._init_biases()

    @staticmethod
    def _branch(c: int, out: int) -> nn.Sequential:
        return nn.Sequential(ConvNormAct(c, c, 3), ConvNormAct(c, c, 3, groups=c), nn.Conv2d(c, out, 1))

    def _init_biases(self) -> None:
        for box, cls in zip(self.box, self.cls, strict=True):
            nn.init.constant_(box[-1].bias, 1.0)  # uniform-ish bins at the start, as YOLOv8
            nn.init.constant_(cls[-1].bias, math.log(0.01 / 0.99))  # prior 1%: the focal-loss init
        for obj in self.obj or ():
            nn.init.constant_(obj.bias, math.log(0.01 / 0.99))  # as the classes: most anchors are background
        if self.poly is not None:
            # Start every anchor's K vertices on a unit K-gon around it, not all at the anchor point: with
            # coincident vertices MGIoU's min/max projections pick one vertex, and `detloss doctor` finds
            # ~90% of the polygon outputs dead at step 1.
            angle = torch.arange(self.num_vertices) * (2 * math.pi / self.num_vertices)
            ring = torch.stack((angle.cos(), angle.sin()), -1).flatten()
            for poly in self.poly:
                nn.init.zeros_(poly[-1].weight)
                with torch.no_grad():
                    poly[-1].bias.copy_(ring)

    def head_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of one head branch: ``"box"``, ``"cls"``, ``"poly"`` or ``"obj"`` (for optimizer groups)."""
        branch = getattr(self, name)
        return [] if branch is None else list(branch.parameters())

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        t4 = self.top_down4(torch.cat((F.interpolate(p5, size=p4.shape[-2:]), p4), 1))
        n3 = self.top_down3(torch.cat((F.interpolate(t4, size=p3.shape[-2:]), p3), 1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), 1))
        levels = [n3, n4, n5]
        if self.top_down2 is not None:
            levels.insert(0, self.top_down2(torch.cat((F.interpolate(n3, size=x.shape[-2:]), x), 1)))
        out = []
        for i, f in enumerate(levels):
            box = self.box[i]
            if self.obj is None:
                parts = [box(f), self.cls[i](f)]
            else:  # objectness reads the box branch's last features
                hidden = box[:-1](f)
                parts = [box[-1](hidden), self.cls[i](f), self.obj[i](hidden)]
            out.append(torch.cat(parts + ([self.poly[i](f)] if self.poly is not None else []), 1))
        return out
