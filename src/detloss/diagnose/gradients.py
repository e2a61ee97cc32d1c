"""Gradient accounting: how much of the gradient each loss term contributes, and how much it kills.

For every term of a :class:`~detloss.core.report.LossReport` the gradient of that term alone is taken
with respect to a shared set of tensors ``wrt`` (by default one would pass the head outputs
``feats``; any parameter list works) with one ``torch.autograd.grad`` call per term and the graph
retained. **Cost**: about one backward pass per term (3-5 terms: 3-5 backwards of the loss graph
down to ``wrt``; cheap when ``wrt`` is the head outputs, a full backward each when ``wrt`` is the
model's parameters), plus one host sync per term. Nothing is accumulated into ``.grad``.

Measured per term ``t``:

``norm``
    ``||scale * d value_t / d wrt||_2`` over all ``wrt`` tensors together: the L2 norm of the term's
    contribution to the gradient of ``report.total`` (``scale`` is the report's total factor, 1
    except in the ultralytics preset). It is linear in the term's weight.
``share``
    ``norm_t / sum_u norm_u`` (NaN when every norm is 0).
``ratios``
    ``ratios[(a, b)] = norm_a / norm_b`` for every ordered pair (``inf`` when only ``norm_b`` is 0,
    NaN when both are).
``dead``
    Among the elements of ``wrt`` the term *depends on* (a boolean mask per ``wrt`` tensor, given by
    the caller in ``depends``; :func:`detloss.diagnose.dense.dense_dependencies` builds them for a
    :class:`~detloss.criteria.dense.DenseCriterion`), the fraction whose gradient is exactly zero.
    Hard masks (``x * mask``), clamps and ``nan_to_num`` on the loss path give exactly zero, so the
    elements behind them stop learning; a term without a mask has no ``dead`` entry. NaN when the mask
    is empty.
``saturated``
    For each group of logits passed in ``saturation_logits``, the fraction of elements with
    ``|logit| > saturation_limit`` (default 15: ``sigmoid(15) = 1 - 3e-7``, where the sigmoid's
    derivative is ~3e-7 and a clamp-before-sigmoid would give exactly zero). For the MGIoU polygon
    loss, :func:`detloss.diagnose.dense.polygon_axis_saturation` adds the groups ``poly_axis_giou_pos`` /
    ``poly_axis_giou_neg``: the fraction of (positive, axis) pairs whose per-axis 1-D GIoU
    (:func:`~detloss.functional.polygon.axis_giou`) is within
    :data:`~detloss.diagnose.dense.AXIS_GIOU_TOL` of ``+1`` (the projections coincide on that axis) or of
    ``-1`` (two projections that are points far apart compared with their lengths: the GIoU's gradient
    ``~ 1 / gap`` vanishes there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from detloss.core.report import LossReport, TermRecord

__all__ = [
    "AXIS_GIOU_GROUPS",
    "SATURATION_LIMIT",
    "GradientAccount",
    "gradient_accounting",
    "gradient_norm",
    "saturation",
    "term_grad_norms",
    "term_gradients",
]

#: ``|logit|`` beyond which a sigmoid counts as saturated.
SATURATION_LIMIT = 15.0

#: Saturation groups that count (positive, axis) pairs at a per-axis GIoU of ``±1``, not logits.
AXIS_GIOU_GROUPS = {"poly_axis_giou_pos": "+1", "poly_axis_giou_neg": "-1"}


@dataclass(frozen=True)
class GradientAccount:
    """Per-term gradient measurements of one loss report (see the module docstring for definitions).

    Attributes:
        norms: term -> L2 norm of its gradient contribution over all ``wrt`` tensors.
        shares: term -> ``norm / sum of norms``.
        ratios: ``(a, b)`` -> ``norm_a / norm_b`` for every ordered pair of distinct terms.
        dead: term -> fraction of its dependent elements with exactly zero gradient (only terms
            given a dependency mask).
        saturated: logit group -> fraction of its elements beyond ``±saturation_limit``; and the
            :data:`AXIS_GIOU_GROUPS` -> fraction of (positive, axis) pairs at a per-axis GIoU of ``±1``
            (added by :func:`~detloss.diagnose.dense.polygon_axis_saturation`, see :meth:`Doctor.measure
            <detloss.diagnose.doctor.Doctor.measure>`).
        weights: term -> its gain when measured (gradient norms scale linearly with it).
        values: term -> its value when measured.
        normalizers: term -> its normalizer as ``"value (name)"`` (``"value"`` when read from ``doctor.csv``;
            only ``"name"`` for a value wrapped by :meth:`LossReport.from_losses`, whose ``D`` is unknown).
        nonfinite: terms whose gradient had a NaN or Inf element.
    """

    norms: dict[str, float]
    shares: dict[str, float]
    ratios: dict[tuple[str, str], float]
    dead: dict[str, float] = field(default_factory=dict)
    saturated: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    normalizers: dict[str, str] = field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()

    def table(self) -> str:
        """A fixed-width table, one row per term, then the saturation counters."""
        header = (
            f"{'term':<8} {'value':>11} {'normalizer':>22} {'weight':>8} {'grad_norm':>11} {'share':>7} {'dead':>7}"
        )
        rows = [header, "-" * len(header)]
        for name, norm in self.norms.items():
            dead = self.dead.get(name)
            dead_s = "-" if dead is None else f"{100 * dead:6.1f}%"
            share = self.shares[name]
            share_s = "-" if math.isnan(share) else f"{100 * share:6.1f}%"
            value = self.values.get(name, float("nan"))
            weight = self.weights.get(name, float("nan"))
            rows.append(
                f"{name:<8} {value:>11.5g} {self.normalizers.get(name, '-'):>22} {weight:>8.4g} "
                f"{norm:>11.4g} {share_s:>7} {dead_s:>7}"
            )
        for group, frac in self.saturated.items():
            if group in AXIS_GIOU_GROUPS:
                what = f"of (positive, axis) pairs with a per-axis GIoU at {AXIS_GIOU_GROUPS[group]}"
            else:
                what = f"of logits beyond ±{SATURATION_LIMIT:g}"
            rows.append(f"saturated {group}: {100 * frac:.2f}% {what}")
        if self.nonfinite:
            rows.append(f"non-finite gradient in: {', '.join(self.nonfinite)}")
        return "\n".join(rows)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{term: {"grad_norm", "grad_share", "dead_fraction", "weight", "value"}}`` (JSON-friendly)."""
        return {
            name: {
                "value": self.values.get(name, float("nan")),
                "weight": self.weights.get(name, float("nan")),
                "grad_norm": norm,
                "grad_share": self.shares[name],
                "dead_fraction": self.dead.get(name, float("nan")),
            }
            for name, norm in self.norms.items()
        }


def saturation(logits: Tensor | Sequence[Tensor], limit: float = SATURATION_LIMIT) -> float:
    """Fraction of the elements of ``logits`` (one tensor or several) with ``|x| > limit``; NaN if empty."""
    tensors = [logits] if isinstance(logits, Tensor) else list(logits)
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return float("nan")
    beyond = torch.stack([(t.detach().abs() > limit).sum() for t in tensors]).sum()
    return float(beyond) / total


def term_gradients(report: LossReport, name: str, wrt: Sequence[Tensor]) -> tuple[Tensor | None, ...]:
    """``d report[name].value / d wrt``: one ``autograd.grad`` with the graph retained, nothing accumulated
    into ``.grad``; ``None`` for a tensor the term does not reach (every entry when the value has no graph)."""
    value = report[name].value
    if not value.requires_grad:
        return (None,) * len(wrt)
    return torch.autograd.grad(value, list(wrt), retain_graph=True, allow_unused=True)


def gradient_norm(grads: Sequence[Tensor | None], device: torch.device) -> Tensor:
    """The L2 norm of several gradients taken together (``None`` entries count as zero): 0-dim float32 on
    ``device``, no host sync."""
    parts = [torch.linalg.vector_norm(g.detach().float()).to(device) for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(parts)) if parts else torch.zeros((), device=device)


def term_grad_norms(report: LossReport, wrt: Sequence[Tensor], terms: Sequence[str] | None = None) -> Tensor:
    """Each term's gradient norm ``||d value_t / d wrt||_2`` over all ``wrt`` tensors together: the one
    per-term gradient-norm routine (the doctor's accounting, the balancers and ``detloss report`` use it).

    One ``autograd.grad`` per term (graph retained), no host sync, this rank only; the report's ``scale``
    is not applied.

    Args:
        report: the report, its graph alive.
        wrt: tensors the gradients are taken with respect to.
        terms: the terms to measure, in this order (default: all, in report order).

    Returns:
        ``(T,)`` float32 on ``wrt[0]``'s device.

    Example:
        >>> x = torch.tensor([3.0, 4.0], requires_grad=True)
        >>> from detloss.core.report import make_term
        >>> one = torch.ones(())
        >>> report = LossReport({"a": make_term("a", 2 * x, one, "sum"), "b": make_term("b", x[1], one, "sum")})
        >>> term_grad_norms(report, [x])  # |(2, 2)| = sqrt(8), |(0, 1)| = 1
        tensor([2.8284, 1.0000])
    """
    wrt = list(wrt)
    if not wrt:
        raise ValueError("wrt must name at least one tensor to take gradients with respect to")
    names = list(report) if terms is None else list(terms)
    unknown = [n for n in names if n not in report]
    if unknown:
        raise ValueError(f"terms {unknown} are not in the report (it has {list(report)})")
    device = wrt[0].device
    return torch.stack([gradient_norm(term_gradients(report, n, wrt), device) for n in names])


def _as_float(x: float | Tensor) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def _normalizer_text(term: TermRecord, value: float) -> str:
    """``"12 (num_pos)"``; only the name for a wrapped value (:meth:`LossReport.from_losses`), whose ``D`` is unknown."""
    return term.normalizer_name if term.wrapped else f"{value:.4g} ({term.normalizer_name})"


def _ratio(a: float, b: float) -> float:
    if b == 0.0:
        return float("nan") if a == 0.0 else float("inf")
    return a / b


def gradient_accounting(
    report: LossReport,
    wrt: Sequence[Tensor],
    *,
    depends: Mapping[str, Sequence[Tensor | None]] | None = None,
    saturation_logits: Sequence[Tensor] | Mapping[str, Tensor | Sequence[Tensor]] = (),
    saturation_limit: float = SATURATION_LIMIT,
    terms: Sequence[str] | None = None,
) -> GradientAccount:
    """Measure each term's gradient with respect to ``wrt``; see the module docstring.

    Args:
        report: the criterion's report; its graph must still be alive (call this before
            ``report.total.backward()``, which frees it, or backward with ``retain_graph=True``).
        wrt: tensors the gradients are taken with respect to (head outputs or parameters); they must
            be part of the graph (leaves requiring grad or intermediate results).
        depends: term -> one bool mask per ``wrt`` tensor (same shape; ``None`` = depends on nothing
            there): the elements the term depends on, for the ``dead`` fraction.
        saturation_logits: logits to count saturation on: a sequence (reported as group ``"logits"``)
            or a mapping group name -> tensor(s).
        saturation_limit: ``|logit|`` beyond which a logit counts as saturated.
        terms: the terms to measure (default: all, in report order).

    Cost: one ``autograd.grad`` call (about one backward) per measured term.

    Example:
        >>> x = torch.tensor([3.0, 4.0], requires_grad=True)
        >>> from detloss.core.report import make_term
        >>> one = torch.ones(())
        >>> report = LossReport({"a": make_term("a", 2 * x[0], one, "sum"), "b": make_term("b", x[1], one, "sum")})
        >>> acc = gradient_accounting(report, [x])
        >>> acc.norms, acc.ratios[("a", "b")]
        ({'a': 2.0, 'b': 1.0}, 2.0)
    """
    wrt = list(wrt)
    if not wrt:
        raise ValueError("wrt must name at least one tensor to take gradients with respect to")
    for i, t in enumerate(wrt):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise ValueError(f"wrt[{i}] must be a tensor that requires grad (part of the loss graph)")
    names = list(report) if terms is None else list(terms)
    unknown = [n for n in names if n not in report]
    if unknown:
        raise ValueError(f"terms {unknown} are not in the report (it has {list(report)})")
    depends = dict(depends or {})
    for name, masks in depends.items():
        if name not in report:
            raise ValueError(f"depends has term {name!r}, which is not in the report (it has {list(report)})")
        if len(masks) != len(wrt):
            raise ValueError(f"depends[{name!r}] must have one mask per wrt tensor ({len(wrt)}), got {len(masks)}")
        for i, (m, t) in enumerate(zip(masks, wrt, strict=True)):
            if m is not None and tuple(m.shape) != tuple(t.shape):
                raise ValueError(f"depends[{name!r}][{i}] must have shape {tuple(t.shape)}, got {tuple(m.shape)}")

    scale = float(report.scale)
    device = wrt[0].device
    norms: dict[str, float] = {}
    dead: dict[str, float] = {}
    nonfinite: list[str] = []
    for name in names:
        grads = term_gradients(report, name, wrt)
        # float32 norms, int64 counts, one fraction on the device: no float64 (unsupported on some backends)
        stats = [gradient_norm(grads, device) * abs(scale)]
        masks = depends.get(name)
        if masks is not None:
            on = torch.zeros((), dtype=torch.long, device=device)
            zero = torch.zeros((), dtype=torch.long, device=device)
            for g, t, m in zip(grads, wrt, masks, strict=True):
                if m is None:
                    continue
                m = m.to(device=t.device, dtype=torch.bool)
                on = on + m.sum().to(device)
                zero = zero + (m if g is None else (g == 0) & m).sum().to(device)
            stats.append(zero.float() / on.float())  # 0 / 0 = NaN: an empty mask
        numbers = torch.stack(stats).tolist()  # one host sync per term
        norms[name] = numbers[0]
        if not math.isfinite(numbers[0]):
            nonfinite.append(name)
        if masks is not None:
            dead[name] = numbers[1]

    total = sum(norms.values())
    finite_total = math.isfinite(total) and total > 0
    shares = {n: (v / total if finite_total else float("nan")) for n, v in norms.items()}
    ratios = {(a, b): _ratio(norms[a], norms[b]) for a in names for b in names if a != b}

    groups: Mapping[str, Tensor | Sequence[Tensor]]
    if isinstance(saturation_logits, Mapping):
        groups = saturation_logits
    elif isinstance(saturation_logits, Tensor) or len(saturation_logits):
        groups = {"logits": saturation_logits}
    else:
        groups = {}
    saturated = {g: saturation(t, saturation_limit) for g, t in groups.items()}

    flat = report.as_dict()
    return GradientAccount(
        norms=norms,
        shares=shares,
        ratios=ratios,
        dead=dead,
        saturated=saturated,
        weights={n: _as_float(report[n].weight) for n in names},
        values={n: flat[n] for n in names},
        normalizers={n: _normalizer_text(report[n], flat[f"{n}/normalizer"]) for n in names},
        nonfinite=tuple(nonfinite),
    )
