"""Dense soft class targets (Dense Teacher style): the student's class logits regress the teacher's sigmoid
scores on the anchors the teacher ranks highest, and zero elsewhere, with a quality focal loss.

Why soft: on a young teacher the class of a well-placed box is often wrong, and its argmax as a one-hot
target trains the student to be sure of that wrong class; its score vector keeps the doubt (two classes at
0.4 stay two classes at 0.4) and is small where the teacher is unsure of everything.

The term (``soft``) is ``weight * sum_{kept anchors, classes} QFL(x, q) / D``:

* ``q``: the teacher's sigmoid scores ``(B, A, C)`` on each image's ``topk`` anchors by best class score
  (the *selected* anchors), ``0`` on the others;
* kept anchors: all but the ``ignore``d ones (anchors the teacher is unsure of, not selected);
* ``QFL(x, q) = |q - sigmoid(x)|^beta * BCE(x, q)``
  (:func:`~detloss.functional.classification.quality_focal`);
* ``D``: the named normalizer; ``target_sum`` is ``sum(q)``, the teacher's score mass on the selected
  anchors (floored at 1, reduced across ranks like every other normalizer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detloss.core.normalize import Normalizer, denominators
from detloss.core.report import TermRecord, make_term
from detloss.functional.classification import quality_focal

__all__ = ["DenseSoftClassTerm", "dense_soft_targets"]


def dense_soft_targets(teacher_scores: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """``teacher_scores (B, A, C)`` in ``[0, 1]`` -> ``(targets (B, A, C), selected (B, A) bool)``: each
    image's ``min(topk, A)`` anchors of highest best-class score keep their scores, the rest are 0 (ties:
    :func:`torch.topk`'s order).

    >>> s = torch.tensor([[[0.5, 0.25], [0.25, 0.75], [0.125, 0.0]]])
    >>> t, sel = dense_soft_targets(s, 2)
    >>> t[0].tolist(), sel[0].tolist()
    ([[0.5, 0.25], [0.25, 0.75], [0.0, 0.0]], [True, True, False])
    """
    if teacher_scores.dim() != 3:
        raise ValueError(f"teacher_scores must have shape (B, A, C), got {tuple(teacher_scores.shape)}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    b, a, _ = teacher_scores.shape
    selected = torch.zeros(b, a, dtype=torch.bool, device=teacher_scores.device)
    if a:
        best = teacher_scores.amax(-1)
        index = best.topk(min(topk, a), dim=1).indices
        selected.scatter_(1, index, True)
    return teacher_scores * selected[..., None], selected


class DenseSoftClassTerm(nn.Module):
    """The ``soft`` term (module docstring) with its named normalizer.

    Args:
        topk: anchors per image whose teacher scores are targets.
        beta: the quality focal exponent.
        normalizer: a :data:`~detloss.core.normalize.NORMALIZERS` name fed with ``target_sum`` (teacher
            score mass on the selected anchors), ``num_pos`` (selected anchors), ``num_elements`` (kept
            anchor-class elements) and ``batch_size``.
        name: the term's name in the report.
    """

    def __init__(self, topk: int = 10, beta: float = 2.0, normalizer: str = "target_sum", name: str = "soft") -> None:
        super().__init__()
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.topk, self.beta, self.name = int(topk), float(beta), name
        self.normalizer = Normalizer(normalizer)

    def forward(
        self, logits: Tensor, teacher_scores: Tensor, ignore: Tensor | None = None, weight: float = 1.0
    ) -> TermRecord:
        """``logits (B, A, C)`` the student's class logits on the strong view, ``teacher_scores (B, A, C)`` the
        teacher's sigmoid scores in the same anchor order, ``ignore (B, A)`` bool or ``None``."""
        if logits.shape != teacher_scores.shape or logits.dim() != 3:
            raise ValueError(
                f"logits and teacher_scores must both have shape (B, A, C), got {tuple(logits.shape)} "
                f"and {tuple(teacher_scores.shape)}"
            )
        if ignore is not None and (ignore.dtype != torch.bool or ignore.shape != logits.shape[:2]):
            raise ValueError(f"ignore must be a bool tensor of shape (B, A) = {tuple(logits.shape[:2])}")
        targets, selected = dense_soft_targets(teacher_scores.detach().float(), self.topk)
        keep = ~(ignore & ~selected) if ignore is not None else torch.ones_like(selected)
        elements = quality_focal(logits, targets, beta=self.beta) * keep[..., None]
        counts = {
            "target_sum": targets.sum(),
            "num_pos": selected.sum(),
            "num_elements": keep.sum() * logits.shape[-1],
            "batch_size": float(logits.shape[0]),
        }
        denom = denominators({self.name: self.normalizer}, {self.name: counts}, device=logits.device)[self.name]
        return make_term(
            self.name,
            elements,
            denom,
            self.normalizer.spec,
            weight=weight,
            num_pos=counts["num_pos"],
            anchor=logits if logits.requires_grad else None,
            num_elements=int(counts["num_elements"]),
        )
