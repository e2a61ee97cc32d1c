"""Hypothesis strategies for the polygon property suites: batches of aligned polygon pairs that are convex,
flat (a point, a segment, collinear or fewer than three vertices), with repeated or subnormal-close
vertices, tiny to huge, near the origin or far from it, in float32 or float64.

Each hypothesis example is a batch of ``MIN_PAIRS`` to ``MAX_PAIRS`` independent pairs (one call of the
function under test checks them all), so a property sees at least ``PAIRS`` pairs: 2,000 by default,
10,000 with ``DETLOSS_HYPOTHESIS_FULL=1``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

MIN_PAIRS, MAX_PAIRS = 8, 16
PAIRS = 10_000 if os.environ.get("DETLOSS_HYPOTHESIS_FULL") == "1" else 2_000
EXAMPLES = PAIRS // MIN_PAIRS
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

K = 8  # stored vertices per polygon; the valid ones come first (a vertex count)
CONVEX = ("convex", "repeated", "subnormal")  # kinds with positive area
FLAT = ("collinear", "point", "few")  # kinds with zero area, exactly (see lattice)
KINDS = CONVEX + FLAT
SCALES = (1e-4, 1e-2, 1.0, 10.0, 1e4)
OFFSETS = (0.0, 1000.5, -4000.25, 8192.0, 1e6, -1e6)


@dataclass
class Pairs:
    """``a``, ``b`` ``(N, K, 2)`` as given to the functions (offset, cast, padded); ``na``, ``nb`` ``(N,)``
    vertex counts; ``offset`` ``(N, 2)``; ``kind_a``, ``kind_b`` the kind of each polygon (a moved copy
    has the kind of its original)."""

    a: torch.Tensor
    na: torch.Tensor
    b: torch.Tensor
    nb: torch.Tensor
    offset: np.ndarray
    kind_a: list[str]
    kind_b: list[str]

    def vertices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The valid vertices of pair ``i`` exactly as given, in float64."""
        return self.a[i, : self.na[i]].double().numpy(), self.b[i, : self.nb[i]].double().numpy()

    def local(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`vertices` minus the pair's offset: exact (Sterbenz) wherever the offset dominates."""
        va, vb = self.vertices(i)
        return va - self.offset[i], vb - self.offset[i]


def rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


unit = st.floats(0.0, 1.0)


@st.composite
def convex(draw: st.DrawFn, k_max: int = K - 1) -> np.ndarray:
    """A convex ``k``-gon (3 <= k <= k_max), counter-clockwise: angles at least ~0.09 rad apart on a
    rotated ellipse with semi-axes in ``[0.2, 3]``, centred within 3 of the origin."""
    k = draw(st.integers(3, k_max))
    gaps = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=k, max_size=k)))
    angle = draw(st.floats(0.0, 2 * math.pi)) + (np.cumsum(gaps) - gaps[0]) * (2 * math.pi / gaps.sum())
    radii = np.array([draw(st.floats(0.2, 3.0)), draw(st.floats(0.2, 3.0))])
    centre = np.array([draw(st.floats(-3.0, 3.0)), draw(st.floats(-3.0, 3.0))])
    pts = np.stack([np.cos(angle), np.sin(angle)], -1) * radii
    return pts @ rotation(draw(st.floats(0.0, math.pi))).T + centre


def grid_step(scale: float) -> float:
    """A power of two near ``scale / 256``: coordinates that are small multiples of it keep few mantissa
    bits, so adding any of ``OFFSETS`` in float64 is exact."""
    return 2.0 ** round(math.log2(scale)) / 256


@st.composite
def lattice(draw: st.DrawFn, scale: float) -> np.ndarray:
    """1..K collinear points ``(p0 + t * d) * q`` with small integers ``p0, d, t`` on the grid ``q`` of
    :func:`grid_step`: exactly collinear, also after adding an offset in float64."""
    p0 = np.array([draw(st.integers(-256, 256)), draw(st.integers(-256, 256))], dtype=np.float64)
    d = np.array([draw(st.integers(-64, 64)), draw(st.integers(-64, 64))], dtype=np.float64)
    t = np.array(draw(st.lists(st.integers(-4, 4), min_size=1, max_size=K)), dtype=np.float64)
    return (p0 + t[:, None] * d) * grid_step(scale)


@st.composite
def polygon(draw: st.DrawFn, scale: float, dtype: torch.dtype, kinds: tuple[str, ...] = KINDS) -> tuple:
    """``(vertices (k, 2) float64, kind)`` at about ``scale``, near the origin."""
    kind = draw(st.sampled_from(kinds))
    if kind == "convex":
        return draw(convex()) * scale, kind
    if kind == "repeated":  # exact repeats of some vertices, others dropped (still convex)
        base = draw(convex())
        idx = sorted(draw(st.lists(st.integers(0, len(base) - 1), min_size=4, max_size=K)))
        return base[idx] * scale, kind
    if kind == "subnormal":  # a vertex at the origin and one a subnormal distance from it
        base = draw(convex()) * scale
        base = base - base[0]
        step = 1e-40 if dtype == torch.float32 else 1e-310
        return np.concatenate([base[:1], [[step, 0.0]], base[1:]]), kind
    line = draw(lattice(scale))
    if kind == "point":
        return np.repeat(line[:1], draw(st.integers(1, K)), 0), kind
    if kind == "few":  # one or two vertices
        return line[: draw(st.integers(1, 2))], kind
    return line, kind  # collinear


@st.composite
def partner(draw: st.DrawFn, a: np.ndarray, flat: bool, scale: float, dtype: torch.dtype, kinds: tuple) -> tuple:
    """A second polygon for ``a``: independent, the same (any start vertex, either order), shifted,
    far away (disjoint), or (convex ``a``) a shrunk copy inside it. A flat ``a`` moves on its grid only,
    so that it stays exactly flat far from the origin."""
    how = draw(st.sampled_from(["independent", "same", "shifted", "far", "nested"]))
    if how == "independent":
        return draw(polygon(scale, dtype, kinds))
    if how == "same" or (how == "nested" and flat):
        b = np.roll(a, draw(st.integers(0, len(a) - 1)), 0)
        return (b[::-1] if draw(st.booleans()) else b), "same"
    size = max(np.ptp(a, 0).max(), scale)
    if how == "nested":
        centre = a.mean(0)
        return centre + draw(st.floats(0.1, 0.9)) * (a - centre), how
    if flat:  # whole grid steps: 2..1000 steps of up to 512 cells
        step = np.array([draw(st.integers(-512, 512)), draw(st.integers(-512, 512))], dtype=np.float64)
        return a + step * grid_step(scale) * (draw(st.integers(2, 1000)) if how == "far" else 1), how
    if how == "shifted":
        return a + size * np.array([draw(st.floats(-2, 2)), draw(st.floats(-2, 2))]), how
    angle = draw(st.floats(0.0, 2 * math.pi))
    return a + size * draw(st.floats(3.0, 100.0)) * np.array([math.cos(angle), math.sin(angle)]), how


@st.composite
def polygon_pairs(
    draw: st.DrawFn,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
    kinds: tuple[str, ...] = KINDS,
) -> Pairs:
    """A batch of ``MIN_PAIRS..MAX_PAIRS`` pairs, each with its own kind, scale and offset (per axis); the
    padding holds 0, -7.5 or nan (it must never matter)."""
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(MIN_PAIRS, MAX_PAIRS))
    pad = draw(st.sampled_from([0.0, -7.5, math.nan]))
    a = np.full((n, K, 2), pad)
    b = np.full((n, K, 2), pad)
    na, nb, offset, kind_a, kind_b = [], [], np.zeros((n, 2)), [], []
    for i in range(n):
        scale = draw(st.sampled_from(SCALES))
        pa, ka = draw(polygon(scale, dtype, kinds))
        pb, kb = draw(partner(pa, ka in FLAT, scale, dtype, kinds))
        kb = ka if kb in ("same", "shifted", "far", "nested") else kb  # a moved copy of a
        offset[i] = [draw(st.sampled_from(OFFSETS)), draw(st.sampled_from(OFFSETS))]
        a[i, : len(pa)], b[i, : len(pb)] = pa + offset[i], pb + offset[i]
        na.append(len(pa))
        nb.append(len(pb))
        kind_a.append(ka)
        kind_b.append(kb)
    a_t, b_t = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
    return Pairs(a_t, torch.tensor(na), b_t, torch.tensor(nb), offset, kind_a, kind_b)


@st.composite
def pixel_polygon(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A convex polygon of side >= 1 px at up to 8192 px in float32 (still convex after rounding), and
    the same polygon from another start vertex, possibly in the other order; both ``(K, 2)``, padded
    with nan, and the vertex count."""
    local = draw(convex())
    local = local / np.ptp(local, 0).max() * draw(st.floats(1.0, 64.0))
    xy = local + np.array([draw(st.floats(0.0, 8192.0)), draw(st.floats(0.0, 8192.0))])
    a = torch.from_numpy(xy).float()
    e = a.double().numpy()  # differences of float32 values and their products are exact in float64
    edge = np.roll(e, -1, 0) - e
    turn = edge[:, 0] * np.roll(edge, -1, 0)[:, 1] - edge[:, 1] * np.roll(edge, -1, 0)[:, 0]
    assume((turn > 0).all())
    b = a.roll(draw(st.integers(0, len(a) - 1)), 0)
    b = b.flip(0) if draw(st.booleans()) else b
    pad = torch.full((K - len(a), 2), math.nan)
    return torch.cat([a, pad]), torch.cat([b, pad]), len(a)


@st.composite
def pixel_polygons(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``MIN_PAIRS..MAX_PAIRS`` of :func:`pixel_polygon`: ``a``, ``b`` ``(N, K, 2)`` and counts ``(N,)``."""
    polygons = draw(st.lists(pixel_polygon(), min_size=MIN_PAIRS, max_size=MAX_PAIRS))
    a, b, count = zip(*polygons, strict=True)
    return torch.stack(a), torch.stack(b), torch.tensor(count)


def for_shapely(pts: np.ndarray) -> np.ndarray:
    """``pts`` with subnormal coordinates set to 0: GEOS mis-clips them (two triangles touching at the
    origin, one with a vertex at (1e-310, 0), intersect in the whole of one triangle); the change is far
    below any tolerance here."""
    return np.where(np.abs(pts) < np.finfo(np.float64).tiny, 0.0, pts)
