"""The one place a training step's term gains come from: base gains, per-term schedules and ramps, then a
balancer. Criteria never change their own gains; the trainer asks the policy and passes the result to
``criterion(..., weights=...)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from detloss.weighting.balancers import Balancer

__all__ = ["Schedule", "WeightPolicy"]


class Schedule(Protocol):
    """Anything with ``value(epoch) -> float`` (e.g. :class:`~detloss.weighting.schedule.WarmupSchedule`)."""

    def value(self, epoch: float) -> float: ...


class WeightPolicy:
    """Term gains per (fractional) epoch.

    ``weights(epoch)`` is, for each term ``t`` of ``base``: ``schedules[t].value(epoch)`` (the gain
    itself, e.g. the background penalty's ``lambda_bg`` warm-up), else ``base[t] * ramps[t].value(epoch)``
    (a ramp of the base gain, e.g. the unlabelled terms of teacher-student training), else ``base[t]``;
    then ``balancer.weights(...)`` of that, when a balancer is given (its multipliers change as it
    measures the run).

    Args:
        base: term -> gain (the criterion's ``weights``); copied.
        schedules: term -> schedule of the gain.
        ramps: term -> schedule multiplying the base gain.
        balancer: a :class:`~detloss.weighting.balancers.Balancer` over some of the terms, or ``None``.

    Example:
        >>> from detloss.weighting.schedule import WarmupSchedule
        >>> policy = WeightPolicy({"box": 7.5, "bg": 1.0}, schedules={"bg": WarmupSchedule(2.0, burn_in=1, warmup=2)})
        >>> [policy.weights(e)["bg"] for e in (0, 2, 5)], policy.weights(2)["box"]
        ([0.0, 1.0, 2.0], 7.5)
    """

    def __init__(
        self,
        base: Mapping[str, float],
        *,
        schedules: Mapping[str, Schedule] | None = None,
        ramps: Mapping[str, Schedule] | None = None,
        balancer: Balancer | None = None,
    ) -> None:
        self.base = dict(base)
        self.schedules = dict(schedules or {})
        self.ramps = dict(ramps or {})
        self.balancer = balancer
        for what, given in (("schedules", self.schedules), ("ramps", self.ramps)):
            unknown = set(given) - set(self.base)
            if unknown:
                raise ValueError(f"{what} has terms {sorted(unknown)} without a base weight (terms: {list(self.base)})")
        both = set(self.schedules) & set(self.ramps)
        if both:
            raise ValueError(f"terms {sorted(both)} have both a schedule and a ramp; give one")

    def weights(self, epoch: float) -> dict[str, float | Tensor]:
        """The gains at ``epoch`` (0-based, fractional), in ``base``'s term order."""
        out: dict[str, float | Tensor] = {}
        for term, w in self.base.items():
            if term in self.schedules:
                out[term] = self.schedules[term].value(epoch)
            elif term in self.ramps:
                out[term] = w * self.ramps[term].value(epoch)
            else:
                out[term] = w
        return out if self.balancer is None else self.balancer.weights(out)
