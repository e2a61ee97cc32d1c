"""What every criterion shares: its term names, their gains and named normalizers, and the term builder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from detloss.core.normalize import build_normalizers
from detloss.core.report import TermRecord, make_term


class TermCriterion(nn.Module):
    """Base of the criteria. ``weights`` is a plain dict (schedules and balancers change it between
    steps); ``normalizers`` a ``ModuleDict``, so EMA normalizer state rides in ``state_dict``."""

    def setup_terms(
        self,
        terms: Iterable[str],
        default_weights: Mapping[str, float],
        default_normalizers: Mapping[str, str],
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
    ) -> None:
        self.terms = list(terms)
        for what, given in (("weights", weights or {}), ("normalizers", normalizers or {})):
            unknown = set(given) - set(self.terms)
            if unknown:
                raise ValueError(f"{what} has unknown terms {sorted(unknown)}; this criterion's terms are {self.terms}")
        self.weights = {t: default_weights[t] for t in self.terms} | dict(weights or {})
        self.normalizers = build_normalizers({t: default_normalizers[t] for t in self.terms} | dict(normalizers or {}))

    def set_epoch(self, epoch: float) -> None:
        """Schedules and samplers that change with the epoch override this; the trainer calls it every step."""

    def _term(
        self,
        name: str,
        elements: Tensor | list[Tensor],
        denom: Mapping[str, Tensor],
        *,
        num_pos: Tensor,
        anchor: Tensor,
        weights: Tensor | None = None,
        num_elements: int | None = None,
    ) -> TermRecord:
        return make_term(
            name,
            elements,
            denom[name],
            self.normalizers[name].spec,
            weights=weights,
            weight=self.weights[name],
            num_pos=num_pos,
            anchor=anchor,
            num_elements=num_elements,
        )
