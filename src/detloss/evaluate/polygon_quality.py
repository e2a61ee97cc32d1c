"""Where polygon AP goes: per class, how well the best prediction covers each ground-truth polygon, and how
many of the K predicted vertices are redundant.

For every ground-truth polygon the *best match* is the prediction of its class and image, scored at least
``conf``, whose convex hull has the largest exact IoU with it (:func:`detloss.ops.polygon_iou`); a GT
without such a prediction (none of its class, or none overlapping it) is *missed*, with IoU 0. The IoU
quantiles of a class therefore show whether its AP is lost to
misses (IoU 0) or to loose shapes (IoU between 0.5 and 0.9).

A predicted polygon's *corners* are the vertices of the convex hull of its K raw vertices left after
dropping, one at a time (the least important first), every hull vertex within ``tol`` pixels of its next
hull vertex (coincident) or of the chord joining its two neighbours (collinear). Its *redundant* vertices
are the other ``K - corners``: inside the hull, on a hull edge, or on top of another vertex.
``corner_excess`` is ``corners`` minus the GT's vertex count (a triangle predicted as a rounded hexagon
has excess +3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from detloss.ops.hull import convex_hull
from detloss.ops.polygon import polygon_iou

__all__ = ["Match", "PolygonQuality", "polygon_corners", "polygon_quality"]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def polygon_corners(points: np.ndarray, tol: float) -> np.ndarray:
    """The corners ``(c, 2)`` of the convex hull of ``points`` ``(k, 2)`` (pixels), in hull order, after
    dropping hull vertices within ``tol`` of their next vertex or of their neighbours' chord (module
    docstring). ``tol >= 0``; at most 2 corners remain for a flat set.

    >>> sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4], [2, 0], [4, 0.1], [1, 1]], dtype=float)
    >>> polygon_corners(sq, tol=0.5).tolist()  # (2, 0) and (4, 0.1) on edges, (1, 1) inside
    [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0 pixels, got {tol}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (k, 2), got {pts.shape}")
    hull, mask = convex_hull(torch.from_numpy(pts)[None])
    p = hull[0][mask[0]].numpy()
    # start at the hull vertex nearest the lowest-leftmost point, so the result does not depend on the
    # hull's starting angle
    if len(p):
        p = np.roll(p, -int(np.lexsort((p[:, 0], p[:, 1]))[0]), 0)
    while len(p) > 2:
        prev, nxt = np.roll(p, 1, 0), np.roll(p, -1, 0)
        chord = nxt - prev
        length = np.hypot(chord[:, 0], chord[:, 1])
        cross = np.abs(chord[:, 0] * (p[:, 1] - prev[:, 1]) - chord[:, 1] * (p[:, 0] - prev[:, 0]))
        off_chord = np.where(length > 0, cross / np.where(length > 0, length, 1.0), np.hypot(*(p - prev).T))
        importance = np.minimum(off_chord, np.hypot(*(nxt - p).T))
        worst = int(np.argmin(importance))
        if importance[worst] > tol:
            break
        p = np.delete(p, worst, 0)
    return p


@dataclass
class Match:
    """One ground-truth polygon and its best prediction (``pred_index`` -1 and IoU 0: none)."""

    image: int
    gt_index: int
    label: int
    iou: float
    score: float
    pred_index: int
    gt_vertices: int
    corners: int  # of the prediction (0 without one)
    redundant: int  # K - corners (0 without a prediction)


@dataclass
class PolygonQuality:
    """Every GT's :class:`Match`; per-class summaries from :meth:`per_class`, a table from :meth:`table`."""

    matches: list[Match]
    num_vertices: int
    names: Sequence[str] = field(default_factory=list)

    def name(self, label: int) -> str:
        return self.names[label] if label < len(self.names) else str(label)

    def per_class(self) -> dict[int, dict[str, float]]:
        """label -> ``gts``, ``missed`` (no prediction), ``iou_mean``, ``iou_p10`` ... ``iou_p90``,
        ``iou>=0.5``, ``iou>=0.75`` (fractions), ``redundant`` (mean over matched), ``corner_excess``
        (mean over matched), ``corners_right`` (fraction of matched with exactly the GT's count)."""
        out = {}
        for label in sorted({m.label for m in self.matches}):
            ms = [m for m in self.matches if m.label == label]
            iou = np.array([m.iou for m in ms])
            hit = [m for m in ms if m.pred_index >= 0]
            row = {"gts": float(len(ms)), "missed": float(len(ms) - len(hit)), "iou_mean": float(iou.mean())}
            for q, v in zip(QUANTILES, np.quantile(iou, QUANTILES), strict=True):
                row[f"iou_p{round(100 * q)}"] = float(v)
            row["iou>=0.5"] = float((iou >= 0.5).mean())
            row["iou>=0.75"] = float((iou >= 0.75).mean())
            nan = float("nan")
            row["redundant"] = float(np.mean([m.redundant for m in hit])) if hit else nan
            row["corner_excess"] = float(np.mean([m.corners - m.gt_vertices for m in hit])) if hit else nan
            row["corners_right"] = float(np.mean([m.corners == m.gt_vertices for m in hit])) if hit else nan
            out[label] = row
        return out

    def worst(self, n: int = 5, label: int | None = None, matched: bool = False) -> list[Match]:
        """The ``n`` matches with the lowest IoU (of one class if ``label`` is given; with ``matched``, only
        ground truths that have a prediction)."""
        ms = [m for m in self.matches if (label is None or m.label == label) and (m.pred_index >= 0 or not matched)]
        return sorted(ms, key=lambda m: (m.iou, m.image, m.gt_index))[:n]

    def table(self, worst: int = 3) -> str:
        """Per-class rows, then the worst cases of each class."""
        keys = ("gts", "missed", "iou_p10", "iou_p25", "iou_p50", "iou_p75", "iou_p90", "iou>=0.75", "redundant",
                "corner_excess", "corners_right")  # fmt: skip
        head = f"{'class':<16}" + "".join(f"{k:>14}" for k in keys)
        rows = [head]
        for label, row in self.per_class().items():
            rows.append(f"{self.name(label):<16}" + "".join(f"{row[k]:>14.3f}" for k in keys))
        k = self.num_vertices
        rows.append(f"\nworst cases (image, GT index, IoU, score, GT vertices -> predicted corners), K = {k}:")
        for label in sorted({m.label for m in self.matches}):
            cases = ", ".join(
                f"({m.image}, {m.gt_index}, {m.iou:.2f}, {m.score:.2f}, {m.gt_vertices}->{m.corners})"
                for m in self.worst(worst, label)
            )
            rows.append(f"  {self.name(label):<16} {cases}")
        return "\n".join(rows)


def polygon_quality(
    preds: Sequence[Mapping[str, torch.Tensor]],
    gts: Sequence[Mapping[str, torch.Tensor]],
    conf: float = 0.25,
    tol: float = 1.0,
    names: Sequence[str] = (),
) -> PolygonQuality:
    """Best matches and vertex redundancy (module docstring).

    Args:
        preds: one dict per image: ``polygons (N, K, 2)`` the **raw** predicted vertices in pixels (not
            their hull), ``scores (N,)``, ``labels (N,)``.
        gts: one dict per image: ``polygons (M, K', 2)``, ``polygon_counts (M,)``, ``labels (M,)``.
        conf: predictions scored below this are left out.
        tol: pixels within which a vertex is coincident or collinear (:func:`polygon_corners`).
        names: class names for the table.
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have one entry per image, got {len(preds)} and {len(gts)}")
    matches: list[Match] = []
    k = 0
    for img, (p, g) in enumerate(zip(preds, gts, strict=True)):
        keep = p["scores"] >= conf
        pp = p["polygons"][keep].double()
        ps, pl = p["scores"][keep], p["labels"][keep]
        k = max(k, p["polygons"].shape[1])
        hull, hull_valid = convex_hull(pp) if len(pp) else (pp, torch.zeros(0, pp.shape[1], dtype=torch.bool))
        gp, gc, gl = g["polygons"].double(), g["polygon_counts"], g["labels"]
        for j in range(len(gp)):
            cand = (pl == gl[j]).nonzero().flatten()
            n = int(gc[j])
            if len(cand) == 0:
                matches.append(Match(img, j, int(gl[j]), 0.0, 0.0, -1, n, 0, 0))
                continue
            target = gp[j : j + 1].expand(len(cand), -1, -1)
            counts = gc[j : j + 1].expand(len(cand))
            iou = polygon_iou(hull[cand], target, hull_valid[cand], counts)
            best = int(iou.argmax())
            if iou[best] <= 0:  # no prediction of its class overlaps it: a miss
                matches.append(Match(img, j, int(gl[j]), 0.0, 0.0, -1, n, 0, 0))
                continue
            i = int(cand[best])
            corners = len(polygon_corners(pp[i].numpy(), tol))
            matches.append(
                Match(img, j, int(gl[j]), float(iou[best]), float(ps[i]), i, n, corners, pp.shape[1] - corners)
            )
    return PolygonQuality(matches, k, list(names))
