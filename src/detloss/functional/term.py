"""One loss term as a Module: element loss, named normalizer and its DDP reduction in one call.

``Term(sigmoid_focal, normalizer="num_pos")`` does what a criterion does by hand in four steps: the
element losses ``fn(*args)``, the :class:`~detloss.core.normalize.Normalizer`, the one all-reduce of the
counts (:func:`~detloss.core.normalize.denominators`) and the reduction
(:func:`~detloss.core.report.make_term`). The result is the same :class:`~detloss.core.report.TermRecord`,
so under DDP the gradient is that of one process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from detloss.core.normalize import COUNT_KEYS, Normalizer, denominators
from detloss.core.report import TermRecord, make_term

__all__ = ["Term"]


class Term(nn.Module):
    """``weight * sum(weights * fn(*args, **kwargs)) / D``, with ``D`` the named normalizer's per-rank value.

    Args:
        fn: the element loss, e.g. :func:`~detloss.functional.classification.sigmoid_focal`; it returns
            per-element losses of any shape.
        normalizer: a name from :data:`~detloss.core.normalize.NORMALIZERS` (``"num_pos"``, ``"mean"``, ...).
        weight: the term's gain.
        name: the term's name in the record and in errors (default: ``fn.__name__``).
        floor: the normalizer's lower bound (see :class:`~detloss.core.normalize.Normalizer`).

    The :class:`~detloss.core.normalize.Normalizer` is a submodule, so the state of an EMA normalizer
    rides in ``state_dict``.

    Example:
        >>> from detloss.functional.classification import sigmoid_focal
        >>> focal = Term(sigmoid_focal, normalizer="num_pos")
        >>> logits, targets = torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [0.0], [0.0]])
        >>> record = focal(logits, targets, pos_mask=targets[:, 0] > 0)
        >>> round(float(record.value), 4)  # (0.25 + 3 * 0.75) * 0.5**2 * log 2 / 1 positive
        0.4332
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        normalizer: str = "num_pos",
        weight: float | Tensor = 1.0,
        name: str | None = None,
        floor: float = 1.0,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise ValueError(f"fn must be an element-loss function, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "term")
        self.normalizer = Normalizer(normalizer, floor)
        self.weight = weight

    def forward(
        self,
        *args,
        num_pos: Tensor | float | None = None,
        pos_mask: Tensor | None = None,
        counts: Mapping[str, Tensor | float] | None = None,
        weights: Tensor | None = None,
        **kwargs,
    ) -> TermRecord:
        """The term on this rank's batch.

        Args:
            *args, **kwargs: the inputs of ``fn`` (its first tensor argument is taken as the prediction:
                an empty term stays attached to it, with zero gradient).
            num_pos: positives on this rank (for ``num_pos``, ``density`` and the EMA normalizers).
            pos_mask: a bool mask of the positives, counted instead of ``num_pos``.
            counts: any other counts on this rank, keyed by :data:`~detloss.core.normalize.COUNT_KEYS`
                (``target_sum``, ``batch_size``, ...). ``num_elements`` defaults to the element count.
            weights: per-element weights broadcastable to the elements.

        Returns:
            the :class:`~detloss.core.report.TermRecord`; every rank must call it (one all-reduce).
        """
        given = dict(counts or {})
        unknown = set(given) - set(COUNT_KEYS)
        if unknown:
            raise ValueError(f"counts has unknown keys {sorted(unknown)}; valid: {COUNT_KEYS}")
        if num_pos is not None and pos_mask is not None:
            raise ValueError("pass num_pos or pos_mask, not both")
        if pos_mask is not None:
            if not isinstance(pos_mask, Tensor) or pos_mask.dtype != torch.bool:
                raise ValueError(f"pos_mask must be a bool tensor, got {getattr(pos_mask, 'dtype', type(pos_mask))}")
            num_pos = pos_mask.sum()
        if num_pos is not None:
            if "num_pos" in given:
                raise ValueError("num_pos given twice: as num_pos/pos_mask and in counts")
            given["num_pos"] = num_pos
        elements = self.fn(*args, **kwargs)
        if not isinstance(elements, Tensor):
            raise ValueError(f"{self.name}: fn must return a tensor of element losses, got {type(elements).__name__}")
        given.setdefault("num_elements", float(elements.numel()))
        missing = [k for k in self.normalizer.needs if k not in given]
        if missing:
            raise ValueError(
                f"term {self.name!r} with normalizer {self.normalizer.spec!r} needs the counts {missing}: "
                "pass num_pos= or pos_mask= (positives), or counts={...}"
            )
        denom = denominators({self.name: self.normalizer}, {self.name: given}, device=elements.device)[self.name]
        anchor = next((a for a in args if isinstance(a, Tensor) and a.requires_grad), None)
        return make_term(
            self.name,
            elements,
            denom,
            self.normalizer.spec,
            weights=weights,
            weight=self.weight,
            num_pos=given.get("num_pos"),
            anchor=anchor,
        )

    def extra_repr(self) -> str:
        return f"{self.name}, normalizer={self.normalizer.spec!r}, weight={self.weight}"
