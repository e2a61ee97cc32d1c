"""Pseudo-labels from a teacher's dense-head outputs, and the filters that choose which ones a student sees.

A *detection list* is what :func:`detloss.evaluate.decode_dense` returns: one dict per image with
``boxes (N, 4)`` ``xyxy`` pixels, ``scores (N,)``, ``labels (N,)`` int64 and optionally ``polygons
(N, K, 2)``, ``index (N,)`` and ``entropy (N,)``. Every tensor value with at least one dimension is a
per-detection value whose first dimension is ``N``; a filter keeps the same rows of all of them, so the
keys stay aligned. Other values (0-d tensors, non-tensors) are copied unchanged.

Filters (per-class adaptive thresholds in the manner of DSAT, and the DFL entropy of a box) are small
:class:`torch.nn.Module` objects with one interface, ``filter(dets) -> dets``:

* :class:`ScoreThreshold` -- one global score threshold;
* :class:`AdaptiveClassThreshold` -- per-class thresholds following the teacher's score statistics by
  EMA (state in a buffer, so it checkpoints with ``state_dict``);
* :class:`EntropyFilter` -- drops boxes whose DFL side distributions are too flat (uncertain boxes);
* :class:`PseudoLabelFilter` -- applies filters in order and records statistics of the last call;
  :func:`build_filters` makes one from config dicts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detloss.core.checks import check_tensor
from detloss.core.distributed import global_sums, world_size
from detloss.evaluate.decode import decode_dense
from detloss.ops.dfl import dfl_entropy
from detloss.ops.head_layout import HeadLayout

__all__ = [
    "FILTER_KINDS",
    "AdaptiveClassThreshold",
    "DetectionFilter",
    "EntropyFilter",
    "PseudoLabelFilter",
    "ScoreThreshold",
    "build_filters",
    "teacher_pseudo_labels",
]

Detections = list[dict[str, Any]]


@torch.no_grad()
def teacher_pseudo_labels(
    feats: Sequence[Tensor],
    strides: Sequence[int | float],
    num_classes: int,
    reg_max: int,
    num_vertices: int = 0,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    objectness: bool = False,
) -> Detections:
    """Candidate pseudo-labels from a teacher's dense-head outputs: NMS first, then DFL entropy.

    Decodes with :func:`detloss.evaluate.decode_dense` (channel layout and post-processing are
    documented there) and reads each kept detection's DFL box logits back from its anchor, so the
    entropy describes exactly the distribution that produced the box.

    Args:
        feats: one ``(B, 4R + C + O + 2K, H_l, W_l)`` tensor per level (``R = reg_max``, ``C = num_classes``,
            ``O`` 1 with ``objectness``, ``K = num_vertices``; :class:`~detloss.ops.head_layout.HeadLayout`).
        strides: pixels per cell of each level.
        num_classes: ``C``.
        reg_max: DFL bins per side.
        num_vertices: ``K`` polygon vertices (0: none).
        conf: keep anchors whose best class score is ``> conf`` (low on purpose: the filters decide).
        iou: class-aware NMS IoU threshold.
        max_det: detections per image, best first.
        objectness: the head has an objectness channel (scores are class x objectness).

    Returns:
        One dict per image, sorted by decreasing score: ``boxes (N, 4)`` ``xyxy`` pixels, ``scores (N,)``,
        ``labels (N,)`` int64, ``index (N,)`` int64 (flat anchor index), ``polygons (N, K, 2)`` pixels
        when ``K > 0``, and ``entropy (N,)`` (:func:`~detloss.ops.dfl.dfl_entropy`) when ``reg_max >= 2``; with
        ``reg_max == 1`` the box channels are direct distances, there is no distribution, and the
        ``entropy`` key is absent (an :class:`EntropyFilter` then raises). No gradient.
    """
    dets = decode_dense(
        feats, strides, num_classes, reg_max, num_vertices, conf, iou, max_det, return_index=True, objectness=objectness
    )
    if reg_max < 2:
        return dets
    # (B, A, 4R): the same numbering of anchors that ``index`` refers to
    box_raw = HeadLayout(reg_max, num_classes, num_vertices, objectness).flatten(feats, "box")
    for i, det in enumerate(dets):
        det["entropy"] = dfl_entropy(box_raw[i, det["index"]], reg_max)  # (N,)
    return dets


def _check_dets(dets: object, name: str = "dets") -> list[int]:
    """Validate a detection list; return each image's ``N``."""
    if not isinstance(dets, Sequence) or isinstance(dets, (str, bytes)):
        raise ValueError(f"{name} must be a list of per-image dicts with scores (N,) and labels (N,)")
    sizes = []
    for i, det in enumerate(dets):
        if not isinstance(det, Mapping) or "scores" not in det or "labels" not in det:
            raise ValueError(f"{name}[{i}] must be a dict with at least 'scores' (N,) and 'labels' (N,)")
        check_tensor(f"{name}[{i}]['scores']", det["scores"], ("N",), floating=True)
        check_tensor(f"{name}[{i}]['labels']", det["labels"], ("N",))
        if det["labels"].is_floating_point() or det["labels"].shape != det["scores"].shape:
            raise ValueError(f"{name}[{i}]['labels'] must be an integer tensor of shape (N,) like 'scores'")
        n = det["scores"].shape[0]
        for k, v in det.items():
            if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] != n:
                raise ValueError(
                    f"{name}[{i}][{k!r}] must have N = {n} rows like 'scores' (every tensor with a first "
                    f"dimension is per-detection), got shape {tuple(v.shape)}"
                )
        sizes.append(n)
    return sizes


def _check_labels(dets: Detections, num_classes: int) -> None:
    for i, d in enumerate(dets):
        labels = d["labels"]
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
            raise ValueError(f"dets[{i}]['labels'] must lie in [0, {num_classes}), got {labels.tolist()}")


def _flat(dets: Detections, device: torch.device) -> tuple[Tensor, Tensor]:
    """All images' scores ``(M,)`` float32 and labels ``(M,)`` int64, concatenated on ``device``."""
    scores = [d["scores"].detach().float().to(device) for d in dets]
    labels = [d["labels"].long().to(device) for d in dets]
    # the empty tensors make an empty batch (no images) concatenate too
    return (
        torch.cat([*scores, torch.zeros(0, device=device)]),
        torch.cat([*labels, torch.zeros(0, dtype=torch.long, device=device)]),
    )


def _select(det: Mapping[str, Any], keep: Tensor) -> dict[str, Any]:
    """A copy of ``det`` with the rows ``keep`` (bool ``(N,)``) of every per-detection tensor."""
    return {k: v[keep] if isinstance(v, Tensor) and v.dim() >= 1 else v for k, v in det.items()}


class DetectionFilter(nn.Module):
    """Common interface: ``filter(dets) -> dets``, a filtered copy of each image's dict.

    Subclasses implement :meth:`keep_masks`, one boolean ``(N,)`` mask per image; the base class
    validates the input and applies the masks to every per-detection tensor.
    """

    def keep_masks(self, dets: Detections) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, dets: Detections) -> Detections:
        """Filtered copies of ``dets`` (see the module docstring for the format)."""
        _check_dets(dets)
        return [_select(d, m) for d, m in zip(dets, self.keep_masks(dets), strict=True)]

    def log(self) -> dict[str, float]:
        """Values worth logging (none for stateless filters)."""
        return {}


class ScoreThreshold(DetectionFilter):
    """Keep detections with ``score >= threshold``.

    Args:
        threshold: in ``[0, 1]``.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)

    def keep_masks(self, dets: Detections) -> list[Tensor]:
        return [d["scores"] >= self.threshold for d in dets]

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class EntropyFilter(DetectionFilter):
    """Keep detections whose DFL entropy (:func:`dfl_entropy`, in ``[0, 1]``) is ``<= max_entropy``.

    Needs the ``entropy (N,)`` key that :func:`teacher_pseudo_labels` adds (``reg_max >= 2``). A ``nan``
    entropy (no distribution) is dropped.

    Args:
        max_entropy: ``>= 0``; 1 keeps every box with a defined entropy.
    """

    def __init__(self, max_entropy: float) -> None:
        super().__init__()
        if not max_entropy >= 0.0:
            raise ValueError(f"max_entropy must be >= 0, got {max_entropy!r}")
        self.max_entropy = float(max_entropy)

    def keep_masks(self, dets: Detections) -> list[Tensor]:
        masks = []
        for i, d in enumerate(dets):
            if "entropy" not in d:
                raise ValueError(
                    f"EntropyFilter needs an 'entropy' (N,) key in dets[{i}] (teacher_pseudo_labels adds it "
                    f"when reg_max >= 2); got keys {sorted(d)}"
                )
            check_tensor(f"dets[{i}]['entropy']", d["entropy"], ("N",), floating=True)
            masks.append(d["entropy"] <= self.max_entropy)
        return masks

    def extra_repr(self) -> str:
        return f"max_entropy={self.max_entropy}"


class AdaptiveClassThreshold(DetectionFilter):
    """Per-class score thresholds that follow the teacher's confidence in each class (in the manner of DSAT,
    dynamic self-adaptive thresholds), so a class the teacher scores low is not filtered out wholesale.

    Rule, per call (update first, then filter):

    1. *Statistic.* For each class ``c``, the candidates of the whole batch (every image, and every
       rank under ``torch.distributed``) with label ``c`` and ``score >= floor`` give ``s_c``: their mean
       score, or with ``quantile=q`` their ``q``-quantile (linear interpolation).
    2. *EMA.* ``t_c <- clamp(m * t_c + (1 - m) * s_c, lo, hi)`` for every class with at least one such
       candidate; a class without any keeps ``t_c`` (a class that never appears stays at ``init``).
    3. *Filter.* Keep detections with ``score >= t[label]``, using the thresholds just updated.

    Why: a fixed threshold is too strict for classes the teacher is unsure about (they never get
    pseudo-labels) and too loose for easy ones; tracking each class's own score level fixes both. The
    ``floor`` keeps the flood of near-zero background candidates that a low decode ``conf`` lets
    through (up to ``max_det`` per image) from dragging every statistic, and so every threshold, to the
    lower bound. The EMA smooths batch-to-batch noise (a class seen once in a batch) while tracking the
    teacher as it improves; the bounds stop a collapse to "keep everything" or a climb to "keep
    nothing". Updating before filtering means each batch is filtered with thresholds that already
    include its own evidence, weighted by ``1 - m``. The statistic is pooled over ranks so every rank
    keeps identical thresholds (as it would in one process on the concatenated batch).

    Updates happen only while :attr:`update` is true (set it to ``False`` to apply the current
    thresholds without changing them, e.g. in evaluation); this flag is independent of
    ``train()``/``eval()``.

    Args:
        num_classes: ``C``.
        init: starting threshold of every class, within ``bounds``.
        bounds: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``.
        momentum: ``m`` in ``[0, 1]``: the weight of the old threshold (0: the batch statistic alone,
            1: never moves).
        quantile: ``None`` for the mean, or ``q`` in ``[0, 1]`` for the ``q``-quantile.
        floor: candidates below this score are ignored by the statistic, in ``[0, 1]``.
        update: whether calls update the thresholds.

    State: the buffer ``threshold (C,)`` float32 (in ``state_dict``).
    """

    threshold: Tensor

    def __init__(
        self,
        num_classes: int,
        init: float = 0.5,
        bounds: Sequence[float] = (0.3, 0.9),
        momentum: float = 0.99,
        quantile: float | None = None,
        floor: float = 0.1,
        update: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if len(bounds) != 2 or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
            raise ValueError(f"bounds must be (lo, hi) with 0 <= lo <= hi <= 1, got {bounds!r}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo <= init <= hi:
            raise ValueError(f"init must lie within bounds [{lo}, {hi}], got {init!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if quantile is not None and not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be None (mean) or in [0, 1], got {quantile!r}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor!r}")
        self.num_classes = num_classes
        self.init, self.bounds, self.momentum = float(init), (lo, hi), float(momentum)
        self.quantile, self.floor, self.update = quantile, float(floor), bool(update)
        self.register_buffer("threshold", torch.full((num_classes,), float(init)))

    def _statistics(self, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-class statistic ``(C,)`` and whether each class had candidates ``(C,)`` bool."""
        c = self.num_classes
        if self.quantile is None:
            sums = torch.zeros(c, device=scores.device).index_add_(0, labels, scores)
            counts = torch.bincount(labels, minlength=c).float()
            total = global_sums({"sums": sums, "counts": counts})  # identity outside DDP
            present = total["counts"] > 0
            return total["sums"] / total["counts"].clamp(min=1), present  # the clamp only guards absent classes
        scores, labels = _gather_all_ranks(scores, labels)
        stat = torch.zeros(c, device=scores.device)
        present = torch.zeros(c, dtype=torch.bool, device=scores.device)
        for k in labels.unique().tolist():
            stat[k] = torch.quantile(scores[labels == k], self.quantile)
            present[k] = True
        return stat, present

    @torch.no_grad()
    def keep_masks(self, dets: Detections) -> list[Tensor]:
        _check_labels(dets, self.num_classes)
        if self.update:
            scores, labels = _flat(dets, self.threshold.device)
            cand = scores >= self.floor
            stat, present = self._statistics(scores[cand], labels[cand])
            ema = self.momentum * self.threshold + (1.0 - self.momentum) * stat
            self.threshold.copy_(torch.where(present, ema.clamp(*self.bounds), self.threshold))
        return [d["scores"] >= self.threshold.to(d["scores"].device)[d["labels"].long()] for d in dets]

    def log(self) -> dict[str, float]:
        """``pseudo/threshold/<c>`` for every class."""
        return {f"pseudo/threshold/{c}": float(t) for c, t in enumerate(self.threshold.tolist())}

    def extra_repr(self) -> str:
        q = "mean" if self.quantile is None else f"quantile={self.quantile}"
        return (
            f"num_classes={self.num_classes}, init={self.init}, bounds={self.bounds}, momentum={self.momentum}, "
            f"{q}, floor={self.floor}, update={self.update}"
        )


def _gather_all_ranks(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's ``(n_r,)`` scores and labels (identity outside DDP)."""
    world = world_size()
    if world == 1:
        return scores, labels
    sizes = [torch.zeros(1, dtype=torch.long, device=scores.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([scores.numel()], device=scores.device))
    most = int(max(s.item() for s in sizes))
    # all_gather needs equal sizes: pad with label -1, dropped afterwards
    padded = torch.full((2, most), -1.0, device=scores.device)
    padded[0, : scores.numel()], padded[1, : labels.numel()] = scores, labels.float()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    joined = torch.cat(parts, 1)
    real = joined[1] >= 0
    return joined[0, real], joined[1, real].long()


#: ``kind`` of a filter spec -> filter class.
FILTER_KINDS: dict[str, type[DetectionFilter]] = {
    "score": ScoreThreshold,
    "adaptive": AdaptiveClassThreshold,
    "entropy": EntropyFilter,
}


class PseudoLabelFilter(nn.Module):
    """Apply filters in order, and record statistics of the last call.

    Order matters when an :class:`AdaptiveClassThreshold` is involved: its statistics see only the
    candidates the earlier filters kept.

    Args:
        filters: applied in order; at most one :class:`AdaptiveClassThreshold` (its thresholds are
            logged under ``pseudo/threshold/<c>``).
        num_classes: ``C``, for the per-class statistics; labels must lie in ``[0, C)``.

    ``forward(dets)`` returns filtered copies (see :mod:`detloss.semi.filters`); ``state_dict`` holds
    the adaptive thresholds.
    """

    def __init__(self, filters: Sequence[DetectionFilter], num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        for i, f in enumerate(filters):
            if not isinstance(f, DetectionFilter):
                raise ValueError(f"filters[{i}] must be a DetectionFilter, got {type(f).__name__}")
        if sum(isinstance(f, AdaptiveClassThreshold) for f in filters) > 1:
            raise ValueError("filters may hold at most one AdaptiveClassThreshold (their logs would collide)")
        self.filters = nn.ModuleList(filters)
        self.num_classes = num_classes
        self._last: dict[str, float] = {}

    def forward(self, dets: Detections) -> Detections:
        """Filtered copies of ``dets``; records :meth:`stats`."""
        sizes = _check_dets(dets)
        _check_labels(dets, self.num_classes)
        out = [dict(d) for d in dets]
        for f in self.filters:
            out = f(out)
        self._last = self._summarise(sizes, out)
        return out

    def _summarise(self, sizes: list[int], kept: Detections) -> dict[str, float]:
        images = len(sizes)
        per_image = (lambda x: x / images) if images else (lambda x: math.nan)  # no images: undefined
        scores, labels = _flat(kept, torch.device("cpu"))
        stats = {
            "pseudo/candidates_per_image": per_image(sum(sizes)),
            "pseudo/kept_per_image": per_image(scores.numel()),
        }
        for c, n in enumerate(torch.bincount(labels, minlength=self.num_classes).tolist()):
            stats[f"pseudo/kept/{c}"] = per_image(n)
        names = ("pseudo/score_mean", "pseudo/score_p10", "pseudo/score_p50", "pseudo/score_p90")
        if scores.numel():
            q = torch.quantile(scores, torch.tensor([0.1, 0.5, 0.9])).tolist()
            stats.update(zip(names, [scores.mean().item(), *q], strict=True))
        else:  # nothing kept: the distribution is undefined, not 0
            stats.update(dict.fromkeys(names, math.nan))
        return stats

    def stats(self) -> dict[str, float]:
        """Statistics of the last call plus the filters' logs (adaptive thresholds, current values).

        * ``pseudo/candidates_per_image``, ``pseudo/kept_per_image``: detections in / out, averaged
          over the images of the call (``nan`` for a call with no images);
        * ``pseudo/kept/<c>``: kept detections of class ``c`` per image (they sum to ``kept_per_image``);
        * ``pseudo/score_mean``, ``pseudo/score_p10``, ``pseudo/score_p50``, ``pseudo/score_p90``: the
          kept scores' mean and 10/50/90 % quantiles (linear interpolation), ``nan`` when none is kept;
        * ``pseudo/threshold/<c>``: the adaptive thresholds, if any.

        Before the first call only the filters' logs are returned.
        """
        out = dict(self._last)
        for f in self.filters:
            out.update(f.log())
        return out


def build_filters(specs: Sequence[Mapping[str, Any]], num_classes: int) -> PseudoLabelFilter:
    """A :class:`PseudoLabelFilter` from config dicts, applied in list order.

    Each spec has a ``kind`` (a key of :data:`FILTER_KINDS`) and that filter's arguments, e.g.
    ``{"kind": "score", "threshold": 0.5}``, ``{"kind": "adaptive", "init": 0.5, "bounds": [0.3, 0.9],
    "momentum": 0.99}``, ``{"kind": "entropy", "max_entropy": 0.5}``. ``num_classes`` is passed to the
    adaptive filter.

    Example:
        >>> build_filters([{"kind": "score", "threshold": 0.25}, {"kind": "entropy", "max_entropy": 0.5}], 3)
        PseudoLabelFilter(
          (filters): ModuleList(
            (0): ScoreThreshold(threshold=0.25)
            (1): EntropyFilter(max_entropy=0.5)
          )
        )
    """
    if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)):
        raise ValueError(f"specs must be a list of dicts, each with a 'kind' ({', '.join(FILTER_KINDS)})")
    filters = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ValueError(f"specs[{i}] must be a dict with a 'kind' ({', '.join(FILTER_KINDS)}), got {spec!r}")
        kind = spec["kind"]
        if kind not in FILTER_KINDS:
            raise ValueError(f"specs[{i}]: unknown filter kind {kind!r}; valid kinds: {', '.join(FILTER_KINDS)}")
        cls = FILTER_KINDS[kind]
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes")]
        kwargs = {k: v for k, v in spec.items() if k != "kind"}
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"specs[{i}] ({kind!r}): unknown keys {unknown}; valid keys: {', '.join(params)}")
        for key, value in kwargs.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, str) for v in items):  # every filter argument is a number, a bool or None
                # YAML 1.1 reads 2e-5 (no dot) as a string
                raise ValueError(
                    f"specs[{i}] ({kind!r}): {key} must be a number, got the string {value!r}"
                    " (in YAML write 2.0e-5, not 2e-5)"
                )
        if cls is AdaptiveClassThreshold:
            kwargs["num_classes"] = num_classes
            if "bounds" in kwargs:
                kwargs["bounds"] = tuple(kwargs["bounds"])  # YAML gives a list
        filters.append(cls(**kwargs))
    return PseudoLabelFilter(filters, num_classes)
