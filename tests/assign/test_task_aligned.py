"""TaskAlignedAssigner: hand-worked cases of the YOLOv8 rule, and dense / chunked path equivalence.

Most cases use one 4 x 4 level at stride 8 (a 32 x 32 image): anchor ``i = 4 * row + col`` sits at
``(4 + 8 col, 4 + 8 row)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detloss.assign import task_aligned
from detloss.assign.anchors import make_anchors
from detloss.assign.task_aligned import (
    BACKGROUND_LABEL,
    AssignResult,
    TaskAlignedAssigner,
    ultralytics_min_candidate_size,
)

POINTS = torch.tensor([[4.0 + 8 * c, 4.0 + 8 * r] for r in range(4) for c in range(4)])
A = 16


def anchor(col: int, row: int) -> int:
    return 4 * row + col


def cell_boxes() -> torch.Tensor:
    """Each anchor predicts its own 8 x 8 cell."""
    return torch.cat([POINTS - 4, POINTS + 4], -1)


def run(
    gts,
    classes,
    *,
    num_classes=3,
    pred_boxes=None,
    pred_scores=None,
    path="auto",
    **kwargs,
) -> AssignResult:
    """One image with the given GT boxes / classes (all real)."""
    gt_boxes = torch.tensor(gts, dtype=torch.float32).view(1, -1, 4)
    gt_labels = torch.tensor(classes, dtype=torch.long).view(1, -1)
    gt_mask = torch.ones_like(gt_labels, dtype=torch.bool)
    if pred_boxes is None:
        pred_boxes = cell_boxes()
    if pred_scores is None:
        pred_scores = torch.full((A, num_classes), 0.5)
    assigner = TaskAlignedAssigner(num_classes, **kwargs)
    return assigner(pred_scores[None], pred_boxes[None], POINTS, gt_labels, gt_boxes, gt_mask, path=path)


def both_paths(*args, **kwargs) -> AssignResult:
    """Run dense and chunked (one GT row per chunk); assert bit-identical results; return one."""
    dense = run(*args, path="dense", **kwargs)
    chunked = run(*args, path="chunked", max_pairs=1, **kwargs)
    assert_same(dense, chunked)
    return dense


def assert_same(a: AssignResult, b: AssignResult) -> None:
    for name in ("labels", "boxes", "scores", "fg_mask", "gt_index"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name


def fg_set(result: AssignResult, image: int = 0) -> set[int]:
    return set(result.fg_mask[image].nonzero().flatten().tolist())


def ciou(gt, pred, eps=1e-7) -> float:
    """CIoU with ultralytics' ``bbox_iou(gt, pred, xywh=False, CIoU=True)`` eps conventions, plain Python."""
    ax1, ay1, ax2, ay2 = gt
    bx1, by1, bx2, by2 = pred
    w1, h1 = ax2 - ax1, ay2 - ay1 + eps
    w2, h2 = bx2 - bx1, by2 - by1 + eps
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    c2 = (max(ax2, bx2) - min(ax1, bx1)) ** 2 + (max(ay2, by2) - min(ay1, by1)) ** 2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


# ---------------------------------------------------------------- candidates


def test_gt_touching_the_image_border():
    # [0, 0, 16, 16] holds the centres x, y in {4, 12}: anchors 0, 1, 4, 5; topk=10 keeps all four.
    r = both_paths([[0, 0, 16, 16]], [2])
    assert fg_set(r) == {0, 1, 4, 5}
    fg = r.fg_mask[0]
    assert torch.equal(r.labels[0][fg], torch.full((4,), 2))
    assert torch.equal(r.labels[0][~fg], torch.full((12,), BACKGROUND_LABEL))
    assert torch.equal(r.boxes[0][fg], torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4))
    assert torch.equal(r.boxes[0][~fg], torch.zeros(12, 4))
    assert torch.equal(r.gt_index, torch.zeros(1, A, dtype=torch.long))
    assert (r.scores[0][fg][:, 2] > 0).all() and r.scores[0][fg][:, :2].eq(0).all()
    assert r.scores[0][~fg].eq(0).all()


def test_centre_on_the_box_edge_is_not_a_candidate():
    # [4, 4, 20, 20]: (4, 4) is a corner, x = 20 or y = 20 lie on edges; only (12, 12) is strictly inside.
    r = both_paths([[4, 4, 20, 20]], [0])
    assert fg_set(r) == {anchor(1, 1)}


def test_full_image_gt_keeps_exactly_topk():
    r = both_paths([[0, 0, 32, 32]], [1], topk=10)
    assert int(r.fg_mask.sum()) == 10


def test_fewer_candidates_than_topk():
    # [0, 0, 16, 8] holds only (4, 4) and (12, 4); with topk=10 both are positives and nothing else is.
    r = both_paths([[0, 0, 16, 8]], [0], topk=10)
    assert fg_set(r) == {0, 1}


def test_topk_larger_than_anchor_count():
    points = POINTS[:2]
    assigner = TaskAlignedAssigner(2, topk=13)
    r = assigner(
        torch.full((1, 2, 2), 0.5),
        cell_boxes()[None, :2],
        points,
        torch.tensor([[1]]),
        torch.tensor([[[0.0, 0.0, 16.0, 8.0]]]),
        torch.tensor([[True]]),
    )
    assert r.fg_mask.tolist() == [[True, True]]


# ---------------------------------------------------------------- one GT per anchor


def test_overlapping_gts_anchor_goes_to_higher_iou():
    # GT 0 = [0, 0, 24, 16] (class 0) and GT 1 = [8, 0, 32, 16] (class 1) share the centres
    # (12, 4), (20, 4), (12, 12), (20, 12); topk=10 keeps every candidate, so these four are claimed twice.
    gt0, gt1 = [0.0, 0.0, 24.0, 16.0], [8.0, 0.0, 32.0, 16.0]
    pred = cell_boxes()
    pred[anchor(1, 0)] = torch.tensor(gt0)  # predicts GT 0 exactly: CIoU 1 with GT 0
    pred[anchor(2, 0)] = torch.tensor(gt1)  # predicts GT 1 exactly
    # (12, 12) keeps its cell [8, 8, 16, 16]: same IoU (64 / 384) with both GTs, but its centre is 4 px from
    # GT 0's centre (12, 8) and sqrt(80) px from GT 1's (20, 8), same enclosing box size -> GT 0 wins.
    # (20, 12) is the mirror image -> GT 1.
    assert ciou(gt0, [8, 8, 16, 16]) > ciou(gt1, [8, 8, 16, 16])
    r = both_paths([gt0, gt1], [0, 1], pred_boxes=pred)
    idx = r.gt_index[0]
    assert idx[anchor(1, 0)] == 0 and idx[anchor(2, 0)] == 1
    assert idx[anchor(1, 1)] == 0 and idx[anchor(2, 1)] == 1
    assert r.labels[0, anchor(1, 0)] == 0 and r.labels[0, anchor(2, 0)] == 1
    assert torch.equal(r.boxes[0, anchor(2, 1)], torch.tensor(gt1))
    # uncontested candidates stay with their only GT
    assert idx[anchor(0, 0)] == 0 and idx[anchor(3, 1)] == 1
    assert fg_set(r) == {anchor(c, rr) for c in range(4) for rr in range(2)}


def test_multiply_claimed_anchor_goes_to_best_iou_gt_even_if_that_gt_did_not_claim_it():
    # ultralytics resolves a multiply-claimed anchor by argmax of IoU over *all* GTs.
    # a = (12, 12) is the only candidate of GT 0 = [10, 10, 14, 14] and GT 1 = [9, 9, 15, 15]: with topk=1 both
    # claim it. GT 2 = [8, 8, 24, 16] holds a and b = (20, 12); a predicts GT 2's box exactly (IoU 1) but has a
    # tiny score for class 2, so GT 2's top-1 is b. Still, a goes to GT 2 (highest IoU), and GTs 0, 1 end empty.
    a, b = anchor(1, 1), anchor(2, 1)
    g0, g1, g2 = [10.0, 10.0, 14.0, 14.0], [9.0, 9.0, 15.0, 15.0], [8.0, 8.0, 24.0, 16.0]
    pred = cell_boxes()
    pred[a] = torch.tensor(g2)
    scores = torch.full((A, 3), 0.5)
    scores[a, 2], scores[b, 2] = 1e-6, 0.9
    m_a = math.sqrt(1e-6) * ciou(g2, g2) ** 6
    m_b = math.sqrt(0.9) * ciou(g2, pred[b].tolist()) ** 6
    assert m_b > m_a  # GT 2's top-1 is b (hand: m_a ~ 1e-3, m_b ~ 7.5e-3)
    assert ciou(g0, g2) > 0 and ciou(g1, g2) > 0  # GTs 0 and 1 do claim a
    r = both_paths([g0, g1, g2], [0, 1, 2], pred_boxes=pred, pred_scores=scores, topk=1)
    assert fg_set(r) == {a, b}
    assert r.gt_index[0, a] == 2 and r.gt_index[0, b] == 2
    assert r.labels[0, a] == 2 and r.labels[0, b] == 2
    # soft targets over GT 2's final positives {a, b}: max IoU is a's (~1), max alignment is b's
    iou_max = ciou(g2, g2)
    expected_a = m_a * iou_max / (m_b + 1e-9)
    expected_b = m_b * iou_max / (m_b + 1e-9)
    assert r.scores[0, a, 2].item() == pytest.approx(expected_a, rel=1e-5)
    assert r.scores[0, b, 2].item() == pytest.approx(expected_b, rel=1e-5)


# ---------------------------------------------------------------- soft targets by hand


def test_soft_targets_one_gt_three_candidates_topk2():
    # GT [0, 0, 24, 8], class 1, holds anchors 0, 1, 2 (centres (4, 4), (12, 4), (20, 4)).
    gt = [0.0, 0.0, 24.0, 8.0]
    pred = cell_boxes()
    pred[0] = torch.tensor([0.0, 0.0, 16.0, 8.0])  # IoU 2/3, centre 4 px off  -> CIoU ~ 0.6415
    pred[1] = torch.tensor(gt)  # exact                                      -> CIoU ~ 1
    pred[2] = torch.tensor([8.0, 0.0, 24.0, 8.0])  # mirror of anchor 0      -> CIoU ~ 0.6415
    scores = torch.zeros(A, 2)
    scores[0, 1], scores[1, 1], scores[2, 1] = 0.81, 0.25, 0.64
    c = [ciou(gt, pred[i].tolist()) for i in range(3)]
    t = [math.sqrt(s) * ci**6 for s, ci in zip((0.81, 0.25, 0.64), c, strict=True)]
    # t ~ [0.9 * 0.0697, 0.5, 0.8 * 0.0697] = [0.0627, 0.5, 0.0557]: the top-2 are anchors 1 and 0.
    assert t[1] > t[0] > t[2]
    r = both_paths([gt], [1], num_classes=2, pred_boxes=pred, pred_scores=scores, topk=2)
    assert fg_set(r) == {0, 1}
    # normalized: t / max t over positives (t[1]) x max CIoU over positives (c[1])
    expected0 = t[0] * c[1] / (t[1] + 1e-9)
    expected1 = t[1] * c[1] / (t[1] + 1e-9)
    assert r.scores[0, 0].tolist() == pytest.approx([0.0, expected0], rel=1e-5)
    assert r.scores[0, 1].tolist() == pytest.approx([0.0, expected1], rel=1e-5)
    assert expected0 == pytest.approx(0.12541, rel=1e-4)
    assert r.scores[0, 2:].eq(0).all()


# ---------------------------------------------------------------- GTs smaller than a stride


def test_gt_smaller_than_a_stride_has_no_candidate_without_enlargement():
    r = both_paths([[13, 13, 15, 15]], [0])  # 2 x 2 px, between the centres 12 and 20
    assert not r.fg_mask.any()
    assert r.scores.eq(0).all()


def test_min_candidate_size_enlarges_tiny_gt_for_candidates_only():
    # 2 x 2 px GT centred at (14, 14) -> 16 x 16 candidate box [6, 6, 22, 22]: centres x, y in {12, 20}.
    tiny = [13.0, 13.0, 15.0, 15.0]
    pred = torch.tensor([tiny] * A)  # every anchor predicts the tiny box: CIoU 1, so every candidate scores
    r = both_paths([tiny], [0], pred_boxes=pred, min_candidate_size=16.0)
    assert fg_set(r) == {anchor(1, 1), anchor(2, 1), anchor(1, 2), anchor(2, 2)}
    assert torch.equal(r.boxes[0][r.fg_mask[0]], torch.tensor([tiny] * 4))  # targets keep the original box


def test_min_candidate_size_current_and_legacy_ultralytics_rules():
    # 2 x 10 px GT centred at (14, 18). Current 8.4 rule with strides (8, 16, 32): sides < 16 become 16 ->
    # [6, 10, 22, 26] holds x in {12, 20}, y in {12, 20}. Legacy 8.4.0-8.4.127: sides < 8 become 16, the
    # 10 px side stays -> [6, 13, 22, 23] holds x in {12, 20}, y = 20 only. Classic (None): no centre.
    box = [13.0, 13.0, 15.0, 23.0]
    pred = torch.tensor([box] * A)
    current = ultralytics_min_candidate_size([8, 16, 32])
    legacy = ultralytics_min_candidate_size([8, 16, 32], legacy=True)
    assert current == 16.0 and legacy == (8.0, 16.0)
    r = both_paths([box], [0], pred_boxes=pred, min_candidate_size=current)
    assert fg_set(r) == {anchor(1, 1), anchor(2, 1), anchor(1, 2), anchor(2, 2)}
    r = both_paths([box], [0], pred_boxes=pred, min_candidate_size=legacy)
    assert fg_set(r) == {anchor(1, 2), anchor(2, 2)}
    r = both_paths([box], [0], pred_boxes=pred)
    assert not r.fg_mask.any()
    assert ultralytics_min_candidate_size([32]) == 32.0


# ---------------------------------------------------------------- empty inputs


def check_background(r: AssignResult, B: int, n_anchors: int, C: int) -> None:
    assert r.labels.shape == (B, n_anchors) and r.labels.dtype == torch.long
    assert r.labels.eq(BACKGROUND_LABEL).all()
    assert r.boxes.shape == (B, n_anchors, 4) and r.boxes.eq(0).all()
    assert r.scores.shape == (B, n_anchors, C) and r.scores.eq(0).all()
    assert r.fg_mask.shape == (B, n_anchors) and r.fg_mask.dtype == torch.bool and not r.fg_mask.any()
    assert r.gt_index.shape == (B, n_anchors) and r.gt_index.eq(0).all()


@pytest.mark.parametrize("path", ["auto", "dense", "chunked"])
def test_no_gts_at_all(path):
    assigner = TaskAlignedAssigner(3)
    scores, boxes = torch.rand(2, A, 3), cell_boxes().expand(2, A, 4)
    # M = 0
    r = assigner(scores, boxes, POINTS, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4),
                 torch.zeros(2, 0, dtype=torch.bool), path=path)  # fmt: skip
    check_background(r, 2, A, 3)
    # M = 2 padding slots, none real (padding may hold anything)
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0]] * 2] * 2)
    r = assigner(scores, boxes, POINTS, torch.full((2, 2), 7), gt, torch.zeros(2, 2, dtype=torch.bool), path=path)
    check_background(r, 2, A, 3)
    # B = 0
    r = assigner(torch.rand(0, A, 3), torch.zeros(0, A, 4), POINTS, torch.zeros(0, 5, dtype=torch.long),
                 torch.zeros(0, 5, 4), torch.zeros(0, 5, dtype=torch.bool), path=path)  # fmt: skip
    check_background(r, 0, A, 3)


def test_image_without_gt_beside_images_with_gts_and_padding_in_the_middle():
    gt = torch.zeros(3, 3, 4)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    gt[0, 1] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # real GT in slot 1; slots 0, 2 are padding
    mask[0, 1] = True
    gt[2, 0] = torch.tensor([16.0, 16.0, 32.0, 32.0])
    gt[2, 2] = torch.tensor([0.0, 0.0, 16.0, 8.0])
    mask[2, 0] = mask[2, 2] = True
    labels = torch.tensor([[9, 1, 9], [9, 9, 9], [2, 9, 0]])  # padding labels are out of range on purpose
    args = (torch.full((3, A, 3), 0.5), cell_boxes().expand(3, A, 4), POINTS, labels, gt, mask)
    dense = TaskAlignedAssigner(3)(*args, path="dense")
    chunked = TaskAlignedAssigner(3, max_pairs=1)(*args, path="chunked")
    assert_same(dense, chunked)
    assert fg_set(dense, 0) == {0, 1, 4, 5} and dense.gt_index[0, 0] == 1 and dense.labels[0, 0] == 1
    assert fg_set(dense, 1) == set()
    assert fg_set(dense, 2) == {10, 11, 14, 15, 0, 1}
    assert dense.gt_index[2, 15] == 0 and dense.gt_index[2, 0] == 2 and dense.labels[2, 0] == 0


# ---------------------------------------------------------------- crowded batch, memory-bounded path


def crowded_batch(seed: int, B: int = 6, crowd: int = 300, img: float = 128.0, C: int = 5):
    g = torch.Generator().manual_seed(seed)
    points, _ = make_anchors([(16, 16), (8, 8), (4, 4)], [8, 16, 32])
    n_anchors = points.shape[0]
    counts = [crowd] + [3, 0, 3, 1, 3][: B - 1]
    M = max(counts)
    gt = torch.zeros(B, M, 4)
    mask = torch.zeros(B, M, dtype=torch.bool)
    for b, n in enumerate(counts):
        centre = torch.rand(n, 2, generator=g) * img
        wh = torch.rand(n, 2, generator=g) * 40 + 1
        gt[b, :n] = torch.cat([centre - wh / 2, centre + wh / 2], -1).clamp(0, img)
        mask[b, :n] = True
    labels = torch.randint(0, C, (B, M), generator=g)
    dist = torch.rand(B, n_anchors, 4, generator=g) * 24
    pred_boxes = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
    pred_scores = torch.rand(B, n_anchors, C, generator=g)
    pred_scores[1] = pred_scores[1].round()  # exact zeros: zero-alignment ties in top-k
    return (pred_scores, pred_boxes, points, labels, gt, mask), C


def test_crowded_image_beside_sparse_ones_paths_identical():
    args, C = crowded_batch(0)
    dense = TaskAlignedAssigner(C, min_candidate_size=16.0)(*args, path="dense")
    assert dense.fg_mask[0].sum() > 100  # the crowded image does get many positives
    for max_pairs in (1, 5000, 2**22):
        assigner = TaskAlignedAssigner(C, min_candidate_size=16.0, max_pairs=max_pairs)
        assert_same(dense, assigner(*args, path="chunked"))
    # auto picks the chunked path when B * M * A exceeds the budget, and the dense one otherwise
    B, M, n_anchors = args[0].shape[0], args[4].shape[1], args[2].shape[0]
    assert_same(dense, TaskAlignedAssigner(C, min_candidate_size=16.0, max_pairs=B * M * n_anchors - 1)(*args))
    assert_same(dense, TaskAlignedAssigner(C, min_candidate_size=16.0, max_pairs=B * M * n_anchors)(*args))


class LargestTensor(TorchDispatchMode):
    """Record the largest number of elements of any tensor an aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_path_memory_does_not_scale_with_batch_times_max_gt():
    args, C = crowded_batch(1)
    B, M, n_anchors = args[0].shape[0], args[4].shape[1], args[2].shape[0]
    budget = 8 * n_anchors  # 8 GT rows per chunk
    dense_mode, chunked_mode = LargestTensor(), LargestTensor()
    with dense_mode:
        dense = TaskAlignedAssigner(C, max_pairs=budget)(*args, path="dense")
    with chunked_mode:
        chunked = TaskAlignedAssigner(C, max_pairs=budget)(*args)  # auto -> chunked
    assert_same(dense, chunked)
    assert dense_mode.largest >= B * M * n_anchors
    # Chunked: the largest intermediates are a chunk of rows (the budget), the flat list of candidate pairs
    # (x 4 for their boxes) or the (B, A, C) outputs; never B x M x A.
    points, boxes = args[2], args[4][args[5]]  # real GT boxes (N, 4)
    inside = (points[None] > boxes[:, None, :2]) & (points[None] < boxes[:, None, 2:])
    n_pairs = int(inside.all(-1).sum())
    assert chunked_mode.largest <= max(budget, B * n_anchors * C, 4 * n_pairs)
    assert chunked_mode.largest < B * M * n_anchors // 10


@pytest.mark.parametrize("block", [7, 37, 256])
def test_pair_blocks_keep_paths_identical_and_bound_pair_temporaries(monkeypatch, block):
    # Pair metrics and bookkeeping run by fixed blocks of the flat pair list; with tiny blocks (odd sizes:
    # vectorized body and scalar tail in every block) both paths must still agree bit for bit.
    monkeypatch.setattr(task_aligned, "_PAIR_BLOCK_CPU", block)
    args, C = crowded_batch(2, C=1)
    dense = TaskAlignedAssigner(C, min_candidate_size=16.0)(*args, path="dense")
    for max_pairs in (1, 5000, 2**22):
        assigner = TaskAlignedAssigner(C, min_candidate_size=16.0, max_pairs=max_pairs)
        assert_same(dense, assigner(*args, path="chunked"))
    # Chunked: gathered boxes and CIoU temporaries are per block; what spans all P pairs is (P,) only.
    B, n_anchors = args[0].shape[0], args[2].shape[0]
    points, boxes = args[2], args[4][args[5]]
    inside = (points[None] > boxes[:, None, :2]) & (points[None] < boxes[:, None, 2:])
    n_pairs = int(inside.all(-1).sum())
    budget = 8 * n_anchors
    bound = max(budget, 4 * B * n_anchors, n_pairs, 4 * block)  # chunk, (B, A, 4) boxes, (P,) lists, a block
    assert 4 * n_pairs > bound  # (P, 4) box lists would show
    mode = LargestTensor()
    with mode:
        chunked = TaskAlignedAssigner(C, min_candidate_size=16.0, max_pairs=budget)(*args, path="chunked")
    assert_same(dense, chunked)
    assert mode.largest <= bound


@pytest.mark.parametrize("seed", range(4))
def test_inside_test_equals_the_direct_four_deltas(seed):
    # _inside evaluates the deltas on distinct coordinates only; it must equal the direct (..., A) test,
    # including anchors exactly on edges, duplicated and unordered anchors, and any leading shape.
    g = torch.Generator().manual_seed(seed)
    points = torch.randint(0, 12, (50, 2), generator=g).float() * 2.5
    points = torch.cat([points, points[:7], torch.tensor([[0.0, -0.0], [-0.0, 0.0], [1e-10, 3.0]])])
    x1y1 = torch.randint(-2, 12, (2, 3, 2), generator=g).float() * 2.5
    boxes = torch.cat([x1y1, x1y1 + torch.randint(2, 12, (2, 3, 2), generator=g).float() * 2.5], -1)
    boxes[0, 0] = torch.tensor([0.0, 0.0, 1e-10, 1e-10])
    x, y = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (v.unsqueeze(-1) for v in boxes.unbind(-1))
    expected = ((x - x1) > 1e-9) & ((y - y1) > 1e-9) & ((x2 - x) > 1e-9) & ((y2 - y) > 1e-9)
    got = TaskAlignedAssigner._inside(points, boxes)
    assert got.shape == expected.shape == (2, 3, points.shape[0])
    assert torch.equal(got, expected)
    assert expected.any() and not expected.all()
    for lead in (boxes[1], boxes[1, 2:]):
        direct = expected[1] if lead.shape[0] == 3 else expected[1, 2:]
        r, a = TaskAlignedAssigner._inside(points, lead).nonzero(as_tuple=True)
        er, ea = direct.nonzero(as_tuple=True)
        assert torch.equal(r, er) and torch.equal(a, ea)  # (row, anchor) order


# ---------------------------------------------------------------- randomized equivalence


@pytest.mark.parametrize("seed", range(12))
def test_random_batches_dense_equals_chunked(seed):
    g = torch.Generator().manual_seed(seed)
    points, _ = make_anchors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    n_anchors = points.shape[0]
    B, M, C = 3, 6, 4
    gt = torch.rand(B, M, 4, generator=g) * 64
    gt = torch.cat([gt[..., :2], gt[..., :2] + torch.rand(B, M, 2, generator=g) * (4 if seed % 3 == 0 else 40)], -1)
    mask = torch.rand(B, M, generator=g) < 0.7
    labels = torch.randint(0, C, (B, M), generator=g)
    dist = torch.rand(B, n_anchors, 4, generator=g) * (2 if seed % 4 == 1 else 30)
    pred_boxes = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
    if seed % 4 == 1:
        pred_boxes = pred_boxes + 200  # far away: CIoU clamped to 0 everywhere, all-zero alignment rows
    pred_scores = torch.rand(B, n_anchors, C, generator=g)
    topk = 1 + seed % 13
    mcs = [None, 16.0, (8.0, 16.0)][seed % 3]
    args = (pred_scores, pred_boxes, points, labels, gt, mask)
    dense = TaskAlignedAssigner(C, topk=topk, min_candidate_size=mcs)(*args, path="dense")
    for max_pairs in (1, 3 * n_anchors):
        chunked = TaskAlignedAssigner(C, topk=topk, min_candidate_size=mcs, max_pairs=max_pairs)(*args, path="chunked")
        assert_same(dense, chunked)
    # invariants: fg anchors point at real GTs of their image that contain them (or the winner rule's GT);
    # scores are zero off the assigned class and in [0, 1]
    fg = dense.fg_mask
    assert mask.gather(1, dense.gt_index)[fg].all()
    assert (dense.scores >= 0).all() and (dense.scores <= 1 + 1e-6).all()
    assert dense.scores.sum(-1)[~fg].eq(0).all()
    assert torch.equal(dense.labels[fg], labels.gather(1, dense.gt_index)[fg])


def test_float64_inputs_and_grad_free_outputs():
    scores = torch.full((1, A, 2), 0.5, dtype=torch.float64, requires_grad=True)
    boxes = cell_boxes().double()[None].requires_grad_()
    r = TaskAlignedAssigner(2)(scores, boxes, POINTS.double(), torch.tensor([[1]]),
                               torch.tensor([[[0.0, 0.0, 16.0, 16.0]]], dtype=torch.float64),
                               torch.tensor([[True]]))  # fmt: skip
    assert r.scores.dtype == torch.float64 and r.boxes.dtype == torch.float64
    assert not r.scores.requires_grad
    assert fg_set(r) == {0, 1, 4, 5}


# ---------------------------------------------------------------- validation


def valid_args():
    return (
        torch.full((1, A, 3), 0.5),
        cell_boxes()[None],
        POINTS,
        torch.tensor([[1]]),
        torch.tensor([[[0.0, 0.0, 16.0, 16.0]]]),
        torch.tensor([[True]]),
    )


@pytest.mark.parametrize(
    ("position", "bad", "name"),
    [
        (0, torch.full((1, A, 4), 0.5), "pred_scores"),
        (0, torch.full((A, 3), 0.5), "pred_scores"),
        (1, torch.zeros(1, A, 5), "pred_boxes"),
        (2, torch.zeros(A + 1, 2), "anchor_points"),
        (3, torch.tensor([[1.0]]), "gt_labels"),
        (3, torch.tensor([[3]]), "gt_labels"),
        (3, torch.tensor([[-1]]), "gt_labels"),
        (4, torch.zeros(1, 2, 4), "gt_boxes"),
        (5, torch.tensor([[1]]), "gt_mask"),
        (5, torch.tensor([True]), "gt_mask"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(position, bad, name):
    args = list(valid_args())
    args[position] = bad
    with pytest.raises(ValueError, match=name):
        TaskAlignedAssigner(3)(*args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "topk": 0}, "topk"),
        ({"num_classes": 3, "alpha": -1.0}, "alpha"),
        ({"num_classes": 3, "beta": float("nan")}, "beta"),
        ({"num_classes": 3, "eps": 0.0}, "eps"),
        ({"num_classes": 3, "min_candidate_size": 0.0}, "min_candidate_size"),
        ({"num_classes": 3, "min_candidate_size": (8.0, 16.0, 32.0)}, "min_candidate_size"),
        ({"num_classes": 3, "max_pairs": 0}, "max_pairs"),
    ],
)
def test_bad_config_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TaskAlignedAssigner(**kwargs)


def test_bad_path_raises():
    with pytest.raises(ValueError, match="path"):
        TaskAlignedAssigner(3)(*valid_args(), path="sparse")
