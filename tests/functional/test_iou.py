"""IoU family: hand-worked boxes, the ultralytics eps conventions, gradients, ranges, degenerate boxes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.functional import iou_loss
from detloss.ops.boxes import box_ciou, box_diou, box_giou, box_iou

KINDS = ["iou", "giou", "diou", "ciou"]
SIMILARITY = {"iou": box_iou, "giou": box_giou, "diou": box_diou, "ciou": box_ciou}
V = 4 / math.pi**2  # CIoU aspect-ratio constant


def _boxes(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def _ciou_hand(iou, diou, v, eps=0.0):
    if v == 0:  # alpha·v = 0 (and 0/0 with eps = 0 for identical boxes)
        return diou
    alpha = v / (v - iou + 1 + eps)
    return diou - alpha * v


# (a, b, iou, giou, diou, v) worked by hand with eps = 0
HAND = [
    # two unit squares offset by 0.5: inter 0.5, union 1.5; enclosing 1.5 x 1; centre offset 0.5
    ([0, 0, 1, 1], [0.5, 0, 1.5, 1], 1 / 3, 1 / 3, 1 / 3 - 0.25 / 3.25, 0.0),
    # disjoint unit squares: enclosing 3 x 3 = 9, union 2; centres (0.5,0.5), (2.5,2.5)
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9, -8 / 18, 0.0),
    # 2x1 and 1x2 sharing a corner: inter 1, union 3, enclosing 2x2; centres (1,.5), (.5,1)
    ([0, 0, 2, 1], [0, 0, 1, 2], 1 / 3, 1 / 3 - 1 / 4, 1 / 3 - 0.5 / 8, V * (math.atan(0.5) - math.atan(2)) ** 2),
    # 1x2 box inside a 4x4 box: inter 2, union 16 = enclosing; centres (2,2), (1.5,2); diag² 32
    ([0, 0, 4, 4], [1, 1, 2, 3], 1 / 8, 1 / 8, 1 / 8 - 0.25 / 32, V * (math.atan(0.5) - math.atan(1)) ** 2),
    # identical boxes
    ([1, 2, 5, 4], [1, 2, 5, 4], 1.0, 1.0, 1.0, 0.0),
]


@pytest.mark.parametrize("case", HAND)
def test_hand_cases_exact_with_eps_zero(case):
    a, b, iou, giou, diou, v = case
    a, b = _boxes([a]), _boxes([b])
    ciou = _ciou_hand(iou, diou, v)
    expected = {"iou": iou, "giou": giou, "diou": diou, "ciou": ciou}
    if iou == 1:  # identical boxes: CIoU's alpha is 0/0 without eps (documented: eps > 0)
        del expected["ciou"]
    got = {k: SIMILARITY[k](a, b, eps=0.0).item() for k in expected}
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for k, value in expected.items():
        assert iou_loss(a, b, kind=k, eps=0.0).item() == pytest.approx(1 - value, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("case", HAND)
def test_hand_cases_default_eps_float32(case):
    a, b, iou, giou, diou, v = case
    a, b = _boxes([a], torch.float32), _boxes([b], torch.float32)
    ciou = _ciou_hand(iou, diou, v)
    got = {k: SIMILARITY[k](a, b).item() for k in KINDS}
    assert got == pytest.approx({"iou": iou, "giou": giou, "diou": diou, "ciou": ciou}, abs=1e-6)


def test_ultralytics_eps_conventions():
    """A large eps makes every place it enters visible; the formulas are ultralytics' ``bbox_iou``."""
    e = 1e-2
    w1, h1, w2, h2 = 2.0, 1.0 + e, 1.0, 2.0 + e  # eps on the heights only
    inter = 1.0
    union = w1 * h1 + w2 * h2 - inter + e
    iou = inter / union
    c_area = 2.0 * 2.0 + e
    giou = iou - (c_area - union) / c_area
    diou = iou - 0.5 / (2.0**2 + 2.0**2 + e)
    v = V * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    ciou = diou - v / (v - iou + (1 + e)) * v
    a, b = _boxes([[0, 0, 2, 1]]), _boxes([[0, 0, 1, 2]])
    got = {k: SIMILARITY[k](a, b, eps=e).item() for k in KINDS if k != "giou"}
    got["giou"] = box_giou(a, b, eps=e, preset="ultralytics").item()
    assert got == pytest.approx({"iou": iou, "giou": giou, "diou": diou, "ciou": ciou}, rel=1e-12)
    assert iou_loss(a, b, kind="giou", eps=e, preset="ultralytics").item() == pytest.approx(1 - giou, rel=1e-12)
    # default path: enclosing area and union both without the eps on the heights
    # (union of the true areas 2 + 2 - 1 = 3, enclosing 2 x 2), eps only in the denominator
    assert box_giou(a, b, eps=e).item() == pytest.approx(iou - (4.0 - 3.0) / (4.0 + e), rel=1e-12)


def test_zero_height_overlap_giou_quirk_only_with_ultralytics_preset():
    # ultralytics: union = 10 eps + 10 eps + eps, enclosing area = 0 + eps: GIoU = (21 eps - eps) / eps = w1 + w2
    z = _boxes([[0, 0, 10, 0]])
    assert box_giou(z, z, preset="ultralytics").item() == pytest.approx(20.0, rel=1e-9)
    assert box_iou(z, z).item() == 0.0
    # default: enclosing area 0 = union of the true areas: no penalty, GIoU = IoU = 0
    assert box_giou(z, z).item() == 0.0
    # two zero-height boxes on one line, overlapping by 2: ultralytics' union is (4 + 6 + 1) eps against an
    # enclosing area of eps, GIoU 10, loss -9
    a, b = _boxes([[0, 5, 4, 5]], torch.float32), _boxes([[2, 5, 8, 5]], torch.float32)
    assert iou_loss(a, b, kind="giou", preset="ultralytics").item() == pytest.approx(-9.0, rel=1e-5)
    assert iou_loss(a, b, kind="giou").item() == 1.0
    with pytest.raises(ValueError, match="preset"):
        iou_loss(a, b, kind="giou", preset="yolo")
    with pytest.raises(ValueError, match="preset"):
        box_giou(a, b, preset="Ultralytics")


def test_min_iou_gates_aspect_term():
    a = _boxes([[0, 0, 2, 1], [0, 0, 4, 2]])
    b = _boxes([[0, 0, 1, 2], [0, 0, 4, 2.5]])  # iou 1/3 and 0.8; both aspect ratios differ
    diou = box_diou(a, b)
    gated = box_ciou(a, b, min_iou=0.5)
    ungated = box_ciou(a, b)
    assert gated[0].item() == diou[0].item()
    assert gated[1].item() == ungated[1].item() < diou[1].item()
    assert ungated[0].item() < diou[0].item()
    assert torch.equal(iou_loss(a, b, kind="ciou", min_iou=0.5), 1 - gated)


def test_batch_shapes():
    a = torch.rand(2, 3, 4, dtype=torch.float64)
    a[..., 2:] += a[..., :2]
    b = a + 0.1
    for k in KINDS:
        assert iou_loss(a, b, kind=k).shape == (2, 3)
        assert SIMILARITY[k](a, b).shape == (2, 3)


def _generic_pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * 10
    wh = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * 6 + 0.5
    boxes = torch.cat([xy, xy + wh], -1)  # (n, 2, 4); random reals: no ties, no clamp kinks
    return boxes[:, 0].clone().requires_grad_(True), boxes[:, 1].clone().requires_grad_(True)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_gradcheck(kind):
    a, b = _generic_pairs()
    assert torch.autograd.gradcheck(lambda p, t: iou_loss(p, t, kind=kind), (a, b))


def test_gradcheck_ciou_same_aspect_ratio():
    """Where both boxes share an aspect ratio, alpha·v is O(d⁴): the detached alpha is invisible."""
    a, _ = _generic_pairs()
    a = a.detach()
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1] + 1e-7
    s = torch.linspace(0.6, 1.7, a.shape[0], dtype=torch.float64)
    cx, cy = a[:, 0] + 0.3, a[:, 1] - 0.2
    b = torch.stack([cx, cy, cx + w * s, cy + (h * s) - 1e-7], -1)
    assert torch.autograd.gradcheck(lambda p, t: iou_loss(p, t, kind="ciou"), (a.requires_grad_(True), b))


def test_ciou_gradient_treats_alpha_as_constant():
    """CIoU's gradient is that of ``1 - (DIoU - alpha0·v)`` with alpha frozen at the current boxes.

    (Plain gradcheck cannot pass on generic boxes: finite differences would also move alpha, which is
    detached by design.) The frozen function is differentiated by central differences.
    """
    # no coordinate ties between a box and its partner: min / max / clamp are smooth there
    a = _boxes([[0.1, 0.2, 2, 1], [1, 1, 5, 5], [3, 2.2, 4, 7], [0.5, 0.2, 6, 2], [10, 10, 11, 14]])
    a.requires_grad_(True)
    b = _boxes([[0, 0, 1, 2], [2, 2, 6, 4], [2.5, 2, 6, 6.5], [0, 0, 3, 3.5], [4, 4, 9, 6]])
    eps = 1e-7

    def v_of(p):
        w1, h1 = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1] + eps
        w2, h2 = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1] + eps
        return V * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2

    with torch.no_grad():
        v0 = v_of(a)
        alpha0 = v0 / (v0 - box_iou(a, b) + 1 + eps)
        assert (v0 > 1e-3).all()

    def frozen(p):
        return (1 - (box_diou(p, b) - alpha0 * v_of(p))).sum()

    iou_loss(a, b, kind="ciou").sum().backward()
    h = 1e-6
    numeric = torch.zeros_like(a)
    with torch.no_grad():
        for i in range(a.shape[0]):
            for j in range(4):
                d = torch.zeros_like(a)
                d[i, j] = h
                numeric[i, j] = (frozen(a + d) - frozen(a - d)) / (2 * h)
    assert torch.allclose(a.grad, numeric, rtol=1e-6, atol=1e-8)
    # and alpha is not differentiated: a gradient through alpha would differ
    assert not torch.allclose(a.grad, torch.autograd.functional.jacobian(lambda p: _ciou_alpha_live(p, b), a))


def _ciou_alpha_live(p, b, eps=1e-7):
    w1, h1 = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1] + eps
    w2, h2 = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1] + eps
    v = V * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    iou = box_iou(p, b)
    return (1 - (box_diou(p, b) - v / (v - iou + 1 + eps) * v)).sum()


# ---------------------------------------------------------------- properties on degenerate boxes

COORD = st.floats(0, 1e4, allow_nan=False, width=32)
SIZE = st.one_of(st.just(0.0), st.floats(0, 2**-10, width=32), st.floats(0, 1e4, width=32))
BOX = st.tuples(COORD, COORD, SIZE, SIZE).map(lambda c: (c[0], c[1], c[0] + c[2], c[1] + c[3]))
PAIR = st.one_of(
    st.tuples(BOX, BOX),  # random, often disjoint
    BOX.map(lambda b: (b, b)),  # identical
    st.tuples(BOX, BOX).map(lambda p: (p[0], tuple(c + 1e4 for c in p[1]))),  # far apart
    BOX.map(lambda b: (b, (b[0], b[1], b[2], b[1]))),  # zero height vs its box
    BOX.map(lambda b: (b, (b[0], b[1], b[0], b[3]))),  # zero width vs its box
)
PAIRS = st.lists(PAIR, min_size=1, max_size=8)


def _tensors(pairs, dtype=torch.float32):
    a = torch.tensor([p[0] for p in pairs], dtype=dtype, requires_grad=True)
    b = torch.tensor([p[1] for p in pairs], dtype=dtype, requires_grad=True)
    return a, b


@settings(max_examples=80, deadline=None)
@given(PAIRS)
def test_values_and_gradients_finite(pairs):
    for kind, preset in [(k, None) for k in KINDS] + [("giou", "ultralytics")]:
        a, b = _tensors(pairs)
        loss = iou_loss(a, b, kind=kind, preset=preset)
        assert torch.isfinite(loss).all(), kind
        loss.sum().backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), kind


@settings(max_examples=80, deadline=None)
@given(PAIRS)
def test_values_within_documented_ranges(pairs):
    a, b = _tensors(pairs)
    tol = 1e-6
    iou = box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + tol)).all()
    diou = box_diou(a, b)
    assert ((diou >= -1 - tol) & (diou <= 1 + tol)).all()
    ciou = box_ciou(a, b)
    assert ((ciou > -1.5 - tol) & (ciou <= 1 + tol)).all()
    giou = box_giou(a, b)
    assert ((giou >= -1 - tol) & (giou <= 1 + tol)).all()
    loss = iou_loss(a, b, kind="giou")
    assert ((loss >= -tol) & (loss <= 2 + tol)).all()
    giou = box_giou(a, b, preset="ultralytics")
    assert (giou >= -1 - tol).all()
    # upper bound: 1 + min(2 eps / ch, w1 + w2) (ultralytics eps placement), i.e. 1 for heights >= 1 px
    a64, b64 = a.detach().double(), b.detach().double()
    ch = torch.maximum(a64[:, 3], b64[:, 3]) - torch.minimum(a64[:, 1], b64[:, 1])
    w_sum = (a64[:, 2] - a64[:, 0]) + (b64[:, 2] - b64[:, 0])
    bound = 1 + torch.minimum(2e-7 / ch, w_sum)
    assert (giou.double() <= bound + tol).all()
    tall = ch >= 1
    assert (giou[tall] <= 1 + tol).all()


def test_ciou_lower_bound_is_approached():
    # a very wide flat box and a very tall thin box, far apart: rho²/c² -> 1 and alpha·v -> 1/2
    a = _boxes([[0, 0, 1e4, 1e-3]])
    b = _boxes([[1e7, 1e7, 1e7 + 1e-3, 1e7 + 1e4]])
    assert -1.5 < box_ciou(a, b).item() < -1.49


# ---------------------------------------------------------------- empty, bad input, dtypes


@pytest.mark.parametrize("kind", KINDS)
def test_empty(kind):
    a = torch.zeros(0, 4, requires_grad=True)
    loss = iou_loss(a, torch.zeros(0, 4), kind=kind)
    assert loss.shape == (0,)
    loss.sum().backward()
    assert a.grad.shape == (0, 4)
    assert SIMILARITY[kind](torch.zeros(2, 0, 4), torch.zeros(2, 0, 4)).shape == (2, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input(kind):
    fn = SIMILARITY[kind]
    with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., 4\)"):
        fn(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="b must"):
        fn(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="a must be a floating"):
        fn(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="pred"):
        iou_loss(torch.zeros(3), torch.zeros(3), kind=kind)
    with pytest.raises(ValueError, match="target"):
        iou_loss(torch.zeros(3, 4), torch.zeros(3, 3), kind=kind)


def test_bad_kind_and_min_iou():
    with pytest.raises(ValueError, match="kind"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), kind="eiou")
    with pytest.raises(ValueError, match="min_iou"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), kind="giou", min_iou=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_gives_float32(kind, dtype):
    a = torch.tensor([[0, 0, 2, 1], [1, 1, 5, 5]], dtype=dtype)
    b = torch.tensor([[0, 0, 1, 2], [2, 2, 6, 4]], dtype=dtype)
    out = iou_loss(a, b, kind=kind)
    assert out.dtype == torch.float32
    assert torch.equal(out, iou_loss(a.float(), b.float(), kind=kind))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert iou_loss(a, b.float(), kind=kind).dtype == torch.float32
