"""Loss results: one :class:`Term` per named loss term, gathered in a :class:`LossReport`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from detloss.core.debug import debug_nan_enabled, watch
from detloss.core.distributed import world_size


@dataclass(frozen=True)
class Term:
    """One term ``value = weight * raw_sum / normalizer``.

    Attributes:
        value: 0-dim, attached to the graph; what :attr:`LossReport.total` adds up.
        raw_sum: ``sum(w_i * l_i)`` on this rank, detached.
        normalizer: ``D`` used on this rank (global ``D`` ÷ world size), detached.
        normalizer_name: the name ``D`` was chosen by, e.g. ``"target_sum"``.
        weight: the term's gain (a float, or a 0-dim tensor for learned balancers).
        num_elements: number of element losses summed on this rank.
        num_pos: positives this term saw on this rank.
    """

    value: Tensor
    raw_sum: Tensor
    normalizer: Tensor
    normalizer_name: str
    weight: float | Tensor
    num_elements: Tensor
    num_pos: Tensor

    FIELDS = ("raw_sum", "normalizer", "weight", "num_elements", "num_pos")


def make_term(
    name: str,
    elements: Tensor | Sequence[Tensor],
    normalizer: Tensor,
    normalizer_name: str,
    *,
    weights: Tensor | None = None,
    weight: float | Tensor = 1.0,
    num_pos: Tensor | float | None = None,
    anchor: Tensor | None = None,
    num_elements: int | None = None,
) -> Term:
    """The one reduction every loss shares: ``weight * sum(weights * elements) / normalizer``.

    Args:
        name: term name (used by the non-finite check).
        elements: per-element losses, any shape, possibly empty; or a list of pieces whose weighted
            sums add up to the term (e.g. a dense part and a sparse correction on positives).
        normalizer: 0-dim ``D`` (from :func:`detloss.core.normalize.denominators`).
        normalizer_name: the normalizer's name, recorded in the report.
        weights: per-element weights broadcastable to ``elements`` (soft targets, masks, class weights);
            with pieces, it applies to the first piece.
        weight: the term's gain.
        num_pos: positives behind this term (recorded only).
        num_elements: the element count to record, when pieces overlap (default: all their elements).
        anchor: the prediction tensor the term is computed from. When ``elements`` is empty the
            value becomes ``anchor.sum() * 0``, so it stays attached to the graph and backward gives
            zero gradients; with the non-finite check on, the term's own gradient with respect to
            ``anchor`` (else ``elements``) is checked too.
    """
    pieces = [elements] if isinstance(elements, Tensor) else list(elements)
    if weights is not None:
        pieces[0] = pieces[0] * weights
    raw = pieces[0].sum()
    for piece in pieces[1:]:
        raw = raw + piece.sum()
    count = sum(p.numel() for p in pieces) if num_elements is None else num_elements
    if anchor is not None and count == 0:
        raw = raw + anchor.sum() * 0
    value = raw * weight / normalizer
    if debug_nan_enabled():
        watch(name, value, anchor if anchor is not None else pieces[0])
    device = value.device
    return Term(
        value=value,
        raw_sum=raw.detach(),
        normalizer=normalizer.detach(),
        normalizer_name=normalizer_name,
        weight=weight,
        num_elements=torch.tensor(float(count), device=device),
        num_pos=torch.as_tensor(0.0 if num_pos is None else num_pos, dtype=torch.float32, device=device),
    )


class LossReport(Mapping[str, Term]):
    """Terms in a fixed order, their ``total`` and a flat dict for loggers.

    ``total = scale * sum(term values)``; ``scale`` is 1 except in compatibility presets (the
    ultralytics preset multiplies by the batch size, as ``v8DetectionLoss`` does).

    Example:
        >>> box = make_term("box", torch.tensor([0.25, 0.5]), torch.tensor(2.0), "num_pos", weight=7.5)
        >>> cls = make_term("cls", torch.tensor([1.0, 0.0, 3.0]), torch.tensor(4.0), "mean")
        >>> report = LossReport({"box": box, "cls": cls})
        >>> float(report.total)  # 7.5 * 0.75 / 2 + 4 / 4
        3.8125
        >>> flat = report.as_dict()
        >>> flat["box/raw_sum"], flat["box/normalizer"], flat["cls/num_elements"]
        (0.75, 2.0, 3.0)
    """

    def __init__(self, terms: Mapping[str, Term], scale: float = 1.0) -> None:
        if not terms:
            raise ValueError("a LossReport needs at least one term")
        self._terms = dict(terms)
        self.scale = scale

    def __getitem__(self, key: str) -> Term:
        return self._terms[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    @property
    def total(self) -> Tensor:
        """``scale *`` the sum of the term values: what ``backward()`` is called on."""
        return torch.stack([t.value for t in self._terms.values()]).sum() * self.scale

    def as_dict(self, prefix: str = "", across_ranks: bool = False) -> dict[str, float]:
        """Flat ``{name: value, name/raw_sum: ..., ..., total: ...}`` with one host sync.

        ``across_ranks``: under DDP, every rank's report combined with one ``all_reduce``, so the numbers
        are those of one process on the whole batch: ``raw_sum``, ``num_elements`` and ``num_pos`` are
        summed; so is ``normalizer``, since each rank holds the global ``D`` ÷ world size; the values, the
        weights and the total are averaged (the mean of the ranks' values is the one-process value).
        Every rank must call it at the same point. Outside DDP it changes nothing.
        """
        keys, values, averaged = [], [], []
        for name, term in self._terms.items():
            keys.append(f"{prefix}{name}")
            values.append(term.value.detach())
            averaged.append(True)
            for field in Term.FIELDS:
                keys.append(f"{prefix}{name}/{field}")
                values.append(torch.as_tensor(getattr(term, field), dtype=torch.float32).detach())
                averaged.append(field == "weight")
        keys.append(f"{prefix}total")
        values.append(self.total.detach())
        averaged.append(True)
        device = values[0].device
        stacked = torch.stack([v.float().to(device) for v in values])
        world = world_size() if across_ranks else 1
        if world > 1:
            dist.all_reduce(stacked)
            divisor = torch.tensor([world if a else 1 for a in averaged], dtype=stacked.dtype, device=device)
            stacked = stacked / divisor
        return dict(zip(keys, stacked.tolist(), strict=True))

    def table(self) -> str:
        """A fixed-width table, one row per term, for terminals and logs."""
        flat = self.as_dict()
        header = (
            f"{'term':<8} {'value':>11} {'raw_sum':>12} {'normalizer':>22} {'weight':>8} {'elements':>10} {'pos':>8}"
        )
        rows = [header, "-" * len(header)]
        for name, term in self._terms.items():
            norm = f"{flat[f'{name}/normalizer']:.4g} ({term.normalizer_name})"
            rows.append(
                f"{name:<8} {flat[name]:>11.5g} {flat[f'{name}/raw_sum']:>12.5g} {norm:>22} "
                f"{flat[f'{name}/weight']:>8.4g} {flat[f'{name}/num_elements']:>10.0f} {flat[f'{name}/num_pos']:>8.4g}"
            )
        rows.append(f"{'total':<8} {flat['total']:>11.5g}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"LossReport({', '.join(self._terms)})\n{self.table()}"
