"""What every criterion shares: its term names, their gains and named normalizers, and the term builder."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from detloss.core.normalize import build_normalizers
from detloss.core.report import TermRecord, make_term


class TermCriterion(nn.Module):
    """Base of the criteria.

    ``weights`` (term -> gain) are the criterion's *base* gains: the criterion never changes them. A
    call's gains are ``weights`` overridden by that call's ``forward(..., weights=...)``; a schedule or a
    balancer (:class:`detloss.weighting.policy.WeightPolicy`) computes them outside the criterion.
    ``normalizers`` (term -> normalizer name) become a ``ModuleDict``, so EMA normalizer state rides in
    ``state_dict``.
    """

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
            self._check_terms(what, given)
        self.weights = {t: default_weights[t] for t in self.terms} | dict(weights or {})
        self.normalizers = build_normalizers({t: default_normalizers[t] for t in self.terms} | dict(normalizers or {}))

    def _check_terms(self, what: str, given: Mapping[str, object]) -> None:
        unknown = set(given) - set(self.terms)
        if unknown:
            raise ValueError(f"{what} has unknown terms {sorted(unknown)}; this criterion's terms are {self.terms}")

    def call_weights(self, weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """The gains of one call: the base ``weights`` overridden by ``weights`` (term -> gain)."""
        if weights is None:
            return dict(self.weights)
        if not isinstance(weights, Mapping):
            raise ValueError(f"weights must be a dict term -> gain, got {type(weights).__name__}")
        self._check_terms("weights", weights)
        return self.weights | dict(weights)

    def set_epoch(self, epoch: float) -> None:
        """Samplers that draw anew each epoch override this; the trainer calls it every step."""

    def _term(
        self,
        name: str,
        elements: Tensor | list[Tensor],
        denom: Mapping[str, Tensor],
        *,
        gains: Mapping[str, float],
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
            weight=gains[name],
            num_pos=num_pos,
            anchor=anchor,
            num_elements=num_elements,
        )


def config_options(cfg: object) -> dict[str, object]:
    """The fields of a config section as a dict: a pydantic model (``model_dump``), a dataclass, or a
    mapping. Criteria's ``from_config`` pass them as keyword options, so a field that is not an option
    raises ``TypeError`` naming it."""
    if hasattr(cfg, "model_dump"):
        return dict(cfg.model_dump())
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ValueError(f"cfg must be a pydantic model, a dataclass or a dict of options, got {type(cfg).__name__}")
