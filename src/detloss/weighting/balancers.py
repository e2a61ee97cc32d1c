"""Automatic term weighting: fixed, uncertainty (Kendall et al. 2018), GradNorm (Chen et al. 2018), EMA-norm.

Every balancer turns the criterion's *base* weights (``loss.weights`` or the defaults, after schedules)
into the weights of one step through a multiplier ``m_i`` per balanced term: ``weight_i = base_i * m_i``.
So ``L_i`` below always means the term *with its base weight*, ``value_i / m_i``.

The trainer's step, in order::

    weights = balancer.weights(base)                 # before the forward: the report records them
    report = crit(feats, targets, weights=weights)
    if balancer.due(step):
        balancer.update(report, feats)               # graph still alive; changes the next step's weights
    total = report.total + (balancer.regularizer(report) or 0)
    total.backward()

``fixed``
    ``m_i = 1``.
``uncertainty``
    Learned log-variances ``s_i``: ``total = scale * sum_i (exp(-s_i) * L_i + s_i)``. Convention: Kendall's
    regression form ``L / (2 sigma^2) + log sigma`` times 2 with ``s = log sigma^2``, for every term
    (classification included), so the optimum for a fixed ``L_i`` is ``s_i* = log L_i`` and there
    ``exp(-s_i) L_i = 1``. ``s_i = lo + (hi - lo) * sigmoid(raw_i)`` keeps it in ``(lo, hi)``: since
    ``exp(-s) L >= 0``, each term's part of the objective stays above ``lo`` (the total above
    ``scale * n * lo``) instead of going to ``-inf`` as ``L_i -> 0``. ``raw_i`` are parameters for the
    optimizer (:meth:`Balancer.parameters`); ``s_i`` starts at 0 (``m_i = 1``).
``gradnorm``
    Every ``every_steps`` steps, with ``G_i`` the gradient norm of term ``i`` w.r.t. the shared tensors
    (the head outputs) and ``Gbar`` their mean, ``r_i = (L_i(t) / L_i(0)) / mean_j (L_j(t) / L_j(0))``
    (the relative inverse training rate), targets ``T_i = Gbar * t_i * r_i^alpha`` (``t_i`` the
    configured ratios scaled to mean 1). One step on ``sum_i |G_i - T_i| / Gbar`` (targets held
    constant, as in the paper) with ``m_i = exp(lambda_i)``: ``lambda_i -= lr * sign(G_i - T_i) * G_i / Gbar``,
    then ``m`` is renormalized to sum to the number of terms and clamped to ``weight_bounds``. Dividing
    by ``Gbar`` and stepping ``log m`` make ``lr`` a relative step, free of the gradients' scale.
``ema_norm`` (ours)
    Every ``every_steps`` steps, ``h_i = G_i / m_i`` (the norm at multiplier 1) updates an EMA
    ``H_i <- ema * H_i + (1 - ema) * h_i`` (started at the first measurement). The multipliers that
    give the target ratios are ``m_i* ∝ t_i / H_i`` (sum = number of terms); each update moves
    ``log m_i`` by ``rate * (log m_i* - log m_i)``, bounded to ``±log(max_step)``, then renormalizes
    and clamps to ``weight_bounds``. One ``autograd.grad`` per term per measurement.

Terms with zero or non-finite gradient norm (no positives in the batch, base weight 0) or non-finite
loss are left out of an update. Under DDP the squared norms and losses are summed over ranks, so
every rank makes the same update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detloss.core.report import LossReport
from detloss.diagnose.gradients import term_grad_norms

__all__ = [
    "BALANCERS",
    "Balancer",
    "EmaNormBalancer",
    "FixedBalancer",
    "GradNormBalancer",
    "UncertaintyBalancer",
    "build_balancer",
]


def _norms_and_losses(report: LossReport, wrt: Sequence[Tensor], terms: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Each term's gradient norm w.r.t. ``wrt`` (:func:`~detloss.diagnose.gradients.term_grad_norms`) and its
    loss with weight 1 (``raw_sum / normalizer``). Under an initialized process group the squared norms
    and the losses are summed over ranks with one ``all_reduce`` (so the norms are those of the whole batch).

    Returns:
        ``norms (T,)`` and ``losses (T,)``, float32, on ``wrt[0]``'s device.
    """
    device = wrt[0].device
    norms = term_grad_norms(report, wrt, terms)
    losses = torch.stack([(report[t].raw_sum.float() / report[t].normalizer.float()).to(device) for t in terms])
    stats = torch.stack([norms.square(), losses])  # (2, T)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    return stats[0].sqrt(), stats[1]


class Balancer(nn.Module):
    """Common interface; the base class is the ``fixed`` balancer (every multiplier 1).

    Args:
        terms: the balanced terms (others keep their base weight).
    """

    kind = "fixed"

    def __init__(self, terms: Sequence[str]) -> None:
        super().__init__()
        self.terms = list(terms)
        if not self.terms or len(set(self.terms)) != len(self.terms):
            raise ValueError(f"terms must be distinct and at least one, got {self.terms}")

    def multipliers(self) -> dict[str, float | Tensor]:
        """Term -> ``m_i``."""
        return {t: 1.0 for t in self.terms}

    def weights(self, base: Mapping[str, float]) -> dict[str, float | Tensor]:
        """The step's weights ``base_i * m_i`` for every term of ``base`` (unbalanced terms unchanged)."""
        missing = [t for t in self.terms if t not in base]
        if missing:
            raise ValueError(f"base has no weight for balanced terms {missing} (it has {list(base)})")
        m = self.multipliers()
        return {t: (w * m[t] if t in m else w) for t, w in base.items()}

    def due(self, step: int) -> bool:
        """Whether :meth:`update` wants this (0-based) step's report."""
        return False

    def update(self, report: LossReport, feats: Sequence[Tensor]) -> None:
        """Measure ``report`` (graph alive) w.r.t. the shared tensors ``feats``; adjust the multipliers."""

    def regularizer(self, report: LossReport) -> Tensor | None:
        """A term to add to ``report.total`` before backward, or ``None``."""
        return None

    def log(self) -> dict[str, float]:
        """Scalars to log besides the weights (already in the report)."""
        return {}

    def _check(self, name: str, given: Mapping[str, float]) -> dict[str, float]:
        unknown = sorted(set(given) - set(self.terms))
        if unknown:
            raise ValueError(f"{name} has terms {unknown} that are not balanced (balanced: {self.terms})")
        bad = {k: v for k, v in given.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"{name} must be finite and > 0, got {bad}")
        return {t: float(given.get(t, 1.0)) for t in self.terms}


FixedBalancer = Balancer


class UncertaintyBalancer(Balancer):
    """Kendall et al. 2018 with bounded log-variances (module docstring).

    Args:
        terms: balanced terms.
        bounds: ``(lo, hi)`` of each ``s_i``, ``lo < 0 < hi``.
    """

    kind = "uncertainty"

    def __init__(self, terms: Sequence[str], bounds: tuple[float, float] = (-4.0, 4.0)) -> None:
        super().__init__(terms)
        lo, hi = (float(b) for b in bounds)
        if not lo < 0 < hi:
            raise ValueError(f"bounds must satisfy lo < 0 < hi (s starts at 0), got {bounds}")
        self.lo, self.hi = lo, hi
        start = math.log(-lo / hi)  # sigmoid(start) = -lo / (hi - lo): s = 0
        self.raw = nn.Parameter(torch.full((len(self.terms),), start))

    def log_vars(self) -> Tensor:
        """``s (T,)`` in ``(lo, hi)``, differentiable."""
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.raw)

    def multipliers(self) -> dict[str, Tensor]:
        m = torch.exp(-self.log_vars())
        return {t: m[i] for i, t in enumerate(self.terms)}

    def regularizer(self, report: LossReport) -> Tensor:
        """``scale * sum_i s_i`` (``scale`` = ``report.scale``, so ``s_i* = log L_i`` in every preset)."""
        return self.log_vars().sum() * float(report.scale)

    def log(self) -> dict[str, float]:
        return {f"balance/s/{t}": v for t, v in zip(self.terms, self.log_vars().tolist(), strict=True)}


class _Measured(Balancer):
    """Multipliers as Python floats, updated from measured gradient norms every ``every_steps`` steps."""

    def __init__(
        self,
        terms: Sequence[str],
        targets: Mapping[str, float] | None,
        every_steps: int,
        weight_bounds: tuple[float, float],
    ) -> None:
        super().__init__(terms)
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        lo, hi = (float(b) for b in weight_bounds)
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"weight_bounds must satisfy 0 < lo <= 1 <= hi, got {weight_bounds}")
        self.targets = self._check("targets", targets or {})
        self.every_steps = every_steps
        self.weight_bounds = (lo, hi)
        self.m = [1.0] * len(self.terms)
        self.updates = 0

    def multipliers(self) -> dict[str, float]:
        return dict(zip(self.terms, self.m, strict=True))

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def update(self, report: LossReport, feats: Sequence[Tensor]) -> None:
        norms, losses = _norms_and_losses(report, feats, self.terms)
        g, loss = norms.tolist(), losses.tolist()  # one host sync
        h = [gi / mi for gi, mi in zip(g, self.m, strict=True)]  # norms at multiplier 1
        active = [math.isfinite(hi) and hi > 0 and math.isfinite(li) for hi, li in zip(h, loss, strict=True)]
        if any(active):
            self._step(h, loss, active)
            self._renormalize()
        self.updates += 1

    def _step(self, h: list[float], loss: list[float], active: list[bool]) -> None:
        raise NotImplementedError

    def _renormalize(self) -> None:
        s = sum(self.m)
        lo, hi = self.weight_bounds
        self.m = [min(hi, max(lo, m * len(self.m) / s)) for m in self.m]

    def _target_ratios(self, active: list[bool]) -> list[float]:
        """``t_i`` scaled to mean 1 over the active terms."""
        t = [self.targets[n] for n in self.terms]
        mean = sum(ti for ti, a in zip(t, active, strict=True) if a) / sum(active)
        return [ti / mean for ti in t]

    def log(self) -> dict[str, float]:
        return {f"balance/m/{t}": m for t, m in zip(self.terms, self.m, strict=True)}

    def get_extra_state(self) -> dict:
        return {"m": list(self.m), "updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        self.m = [float(v) for v in state["m"]]
        self.updates = int(state["updates"])


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


class GradNormBalancer(_Measured):
    """Chen et al. 2018 (module docstring).

    Args:
        terms: balanced terms.
        targets: term -> relative gradient-norm target ``t_i`` (default 1 each).
        alpha: restoring-force exponent (0: equal norms regardless of training rates).
        lr: step on ``log m`` per unit of the normalized GradNorm gradient.
        every_steps: measure and update every this many steps.
        weight_bounds: ``(lo, hi)`` clamp of each multiplier after renormalization.
    """

    kind = "gradnorm"

    def __init__(
        self,
        terms: Sequence[str],
        targets: Mapping[str, float] | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        every_steps: int = 1,
        weight_bounds: tuple[float, float] = (0.01, 100.0),
    ) -> None:
        super().__init__(terms, targets, every_steps, weight_bounds)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        self.initial: list[float] | None = None

    def _step(self, h: list[float], loss: list[float], active: list[bool]) -> None:
        if self.initial is None:
            self.initial = list(loss)
        # a term that starts at loss 0 (or non-finite) gets its L(0) at its first positive loss
        self.initial = [l0 if _positive(l0) else li for l0, li in zip(self.initial, loss, strict=True)]
        active = [a and _positive(l0) for a, l0 in zip(active, self.initial, strict=True)]
        if not any(active):
            return
        idx = [i for i, a in enumerate(active) if a]
        grad = [self.m[i] * h[i] for i in idx]
        gbar = sum(grad) / len(idx)
        rate = [loss[i] / self.initial[i] for i in idx]
        mean_rate = sum(rate) / len(idx)
        t = self._target_ratios(active)
        for k, i in enumerate(idx):
            r = rate[k] / mean_rate if mean_rate > 0 else 1.0
            target = gbar * t[i] * r**self.alpha
            sign = (grad[k] > target) - (grad[k] < target)
            self.m[i] *= math.exp(-self.lr * sign * grad[k] / gbar)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "initial": self.initial}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.initial = None if state["initial"] is None else [float(v) for v in state["initial"]]


class EmaNormBalancer(_Measured):
    """EMA of the measured gradient norms, steering the multipliers toward the target ratios (module docstring).

    Args:
        terms: balanced terms.
        targets: term -> desired gradient-norm ratio ``t_i`` (default 1 each).
        ema: EMA decay of the norms, in ``[0, 1)``.
        rate: fraction of the log-distance to the target multipliers moved per update, in ``(0, 1]``.
        max_step: bound on each multiplier's change per update (a factor > 1), before renormalization.
        every_steps: measure and update every this many steps.
        weight_bounds: ``(lo, hi)`` clamp of each multiplier after renormalization.
    """

    kind = "ema_norm"

    def __init__(
        self,
        terms: Sequence[str],
        targets: Mapping[str, float] | None = None,
        ema: float = 0.9,
        rate: float = 0.5,
        max_step: float = 2.0,
        every_steps: int = 10,
        weight_bounds: tuple[float, float] = (0.01, 100.0),
    ) -> None:
        super().__init__(terms, targets, every_steps, weight_bounds)
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        if not (math.isfinite(max_step) and max_step > 1):
            raise ValueError(f"max_step must be a finite factor > 1, got {max_step}")
        self.ema, self.rate, self.max_step = float(ema), float(rate), float(max_step)
        self.norms: list[float | None] = [None] * len(self.terms)

    def _step(self, h: list[float], loss: list[float], active: list[bool]) -> None:
        for i, a in enumerate(active):
            if a:
                prev = self.norms[i]
                self.norms[i] = h[i] if prev is None else self.ema * prev + (1 - self.ema) * h[i]
        known = [a and self.norms[i] is not None for i, a in enumerate(active)]
        t = self._target_ratios(known)
        idx = [i for i, k in enumerate(known) if k]
        ideal = {i: t[i] / self.norms[i] for i in idx}
        scale = sum(self.m[i] for i in idx) / sum(ideal.values())  # the ideal at the active terms' current sum
        bound = math.log(self.max_step)
        for i in idx:
            gap = math.log(ideal[i] * scale) - math.log(self.m[i])
            self.m[i] *= math.exp(max(-bound, min(bound, self.rate * gap)))

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "norms": list(self.norms)}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.norms = [None if v is None else float(v) for v in state["norms"]]


BALANCERS = {
    "fixed": Balancer,
    "uncertainty": UncertaintyBalancer,
    "gradnorm": GradNormBalancer,
    "ema_norm": EmaNormBalancer,
}


def build_balancer(cfg, terms: Sequence[str]) -> Balancer:
    """A balancer from a ``BalanceConfig``-like object (attributes as in :mod:`detloss.train.config`).

    Args:
        cfg: ``kind``, ``terms`` (``None``: all), ``targets``, ``alpha``, ``lr``, ``every_steps`` (``None``:
            1 for gradnorm, 10 for ema_norm),
            ``log_var_bounds``, ``ema``, ``rate``, ``max_step``, ``weight_bounds``.
        terms: the criterion's terms.
    """
    chosen = list(terms) if cfg.terms is None else list(cfg.terms)
    unknown = sorted(set(chosen) - set(terms))
    if unknown:
        raise ValueError(f"balance.terms has {unknown}, not terms of this criterion ({list(terms)})")
    if cfg.kind == "fixed":
        return Balancer(chosen)
    if cfg.kind == "uncertainty":
        return UncertaintyBalancer(chosen, tuple(cfg.log_var_bounds))
    bounds = tuple(cfg.weight_bounds)
    every = {} if cfg.every_steps is None else {"every_steps": cfg.every_steps}  # None: the kind's default
    if cfg.kind == "gradnorm":
        return GradNormBalancer(chosen, cfg.targets, cfg.alpha, cfg.lr, weight_bounds=bounds, **every)
    if cfg.kind == "ema_norm":
        return EmaNormBalancer(chosen, cfg.targets, cfg.ema, cfg.rate, cfg.max_step, weight_bounds=bounds, **every)
    raise ValueError(f"balance.kind must be one of {tuple(BALANCERS)}, got {cfg.kind!r}")
