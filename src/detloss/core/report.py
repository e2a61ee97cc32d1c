"""Loss results: one :class:`TermRecord` per named loss term, gathered in a :class:`LossReport`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from detloss.core.debug import debug_nan_enabled, watch
from detloss.core.distributed import world_size


@dataclass(frozen=True)
class TermRecord:
    """One term ``value = weight * raw_sum / normalizer``.

    Attributes:
        value: 0-dim, attached to the graph; what :attr:`LossReport.total` adds up.
        raw_sum: ``sum(w_i * l_i)`` on this rank, detached.
        normalizer: ``D`` used on this rank (global ``D`` ÷ world size), detached.
        normalizer_name: the name ``D`` was chosen by, e.g. ``"target_sum"``.
        weight: the term's gain (a float, or a 0-dim tensor for learned balancers).
        num_elements: number of element losses summed on this rank.
        num_pos: positives this term saw on this rank.
        wrapped: the value was reduced by other code (:meth:`LossReport.from_losses`): ``raw_sum`` is the
            value, ``normalizer`` is recorded as 1 and its true value is unknown; the counts are NaN.
    """

    value: Tensor
    raw_sum: Tensor
    normalizer: Tensor
    normalizer_name: str
    weight: float | Tensor
    num_elements: Tensor
    num_pos: Tensor
    wrapped: bool = False

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
) -> TermRecord:
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
    return TermRecord(
        value=value,
        raw_sum=raw.detach(),
        normalizer=normalizer.detach(),
        normalizer_name=normalizer_name,
        weight=weight,
        num_elements=torch.tensor(float(count), device=device),
        num_pos=torch.as_tensor(0.0 if num_pos is None else num_pos, dtype=torch.float32, device=device),
    )


class LossReport(Mapping[str, TermRecord]):
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

    def __init__(self, terms: Mapping[str, TermRecord], scale: float = 1.0) -> None:
        if not isinstance(terms, Mapping):
            raise ValueError(f"terms must be a mapping name -> TermRecord, got {type(terms).__name__}")
        if not terms:
            raise ValueError("a LossReport needs at least one term")
        self._terms = dict(terms)
        self.scale = scale

    @classmethod
    def from_losses(
        cls,
        losses: Mapping[str, Tensor] | Tensor,
        normalizers: Mapping[str, str] | None = None,
        *,
        names: Sequence[str] | None = None,
    ) -> LossReport:
        """A report over loss values computed by any other code, for the doctor and the loggers.

        Wraps torchvision's and detectron2's loss dicts (``{"loss_classifier": t, "loss_box_reg": t2, ...}``)
        or an ultralytics loss vector with its names (``names=["box", "cls", "dfl"]``). Each value becomes
        a term with weight 1 whose ``raw_sum`` is the value and whose normalizer is recorded as 1, named
        by ``normalizers`` (what the other code divided by, e.g. ``"num_pos"``) or ``"unknown"``; the
        element and positive counts are NaN (unknown). Values stay attached to their graph, so
        ``total`` can be backpropagated and the doctor can take each term's gradient.

        Args:
            losses: term name -> 0-dim tensor; or a 1-D tensor, one loss per entry of ``names``.
            normalizers: term name -> the name of the normalizer its value was divided by (recorded only).
            names: the term names of a 1-D ``losses`` vector.

        Example:
            >>> box, cls = torch.tensor(0.5), torch.tensor(2.0)
            >>> report = LossReport.from_losses({"box": box, "cls": cls}, normalizers={"cls": "target_sum"})
            >>> float(report.total), report["cls"].normalizer_name, report["box"].normalizer_name
            (2.5, 'target_sum', 'unknown')
            >>> list(LossReport.from_losses(torch.tensor([0.1, 0.2, 0.3]), names=["box", "cls", "dfl"]))
            ['box', 'cls', 'dfl']
        """
        if isinstance(losses, Tensor):
            if losses.dim() != 1 or names is None or len(names) != losses.shape[0]:
                got = "no names" if names is None else f"{len(names)} names"
                raise ValueError(
                    f"losses as a tensor must have shape (T,) with one name per entry in names, "
                    f"got shape {tuple(losses.shape)} and {got}"
                )
            losses = dict(zip(names, losses.unbind(0), strict=True))
        elif names is not None:
            raise ValueError("names is for a 1-D losses tensor; a dict of losses names its terms itself")
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError(f"losses must be a non-empty dict of 0-dim tensors, got {losses!r}")
        normalizers = dict(normalizers or {})
        unknown = set(normalizers) - set(losses)
        if unknown:
            raise ValueError(f"normalizers has terms {sorted(unknown)} that are not in losses ({list(losses)})")
        terms = {}
        for name, value in losses.items():
            if not isinstance(value, Tensor) or value.dim() != 0:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"losses[{name!r}] must be a 0-dim tensor, got {got}")
            if not value.is_floating_point():
                raise ValueError(f"losses[{name!r}] must be a floating-point tensor, got {value.dtype}")
            spec = normalizers.get(name, "unknown")
            if not isinstance(spec, str):
                raise ValueError(f"normalizers[{name!r}] must be a name (str), got {type(spec).__name__}")
            nan = torch.full((), float("nan"), device=value.device)
            terms[name] = TermRecord(
                value=value,
                raw_sum=value.detach(),
                normalizer=torch.ones((), device=value.device),
                normalizer_name=spec,
                weight=1.0,
                num_elements=nan,
                num_pos=nan,
                wrapped=True,
            )
        return cls(terms)

    def __getitem__(self, key: str) -> TermRecord:
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
            for field in TermRecord.FIELDS:
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
