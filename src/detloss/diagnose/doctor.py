"""The loss doctor as a recorder: gradient accounting per step, every finding over the steps, tables and a plot.

:class:`Doctor` needs no trainer. :meth:`Doctor.observe` takes a step's losses (a
:class:`~detloss.core.report.LossReport`, or any dict of 0-dim loss tensors, wrapped by
:meth:`LossReport.from_losses <detloss.core.report.LossReport.from_losses>`) and the tensors, parameters or
module to take each term's gradient with respect to; :meth:`Doctor.findings` then runs every check of
:mod:`detloss.diagnose.findings` over what it recorded. Findings speak in the loss's own terms (a term's
weight, its normalizer); mapping them onto a training configuration is the harness's job
(:mod:`detloss.train.doctor`, which also drives ``detloss doctor``).

Each measurement can be handed to a ``sink`` as a flat row (:meth:`Measurement.row`: the accounting's cost
in seconds, per term ``grad_norm``, ``grad_share``, ``dead_fraction``, ``weight``, ``value`` and
``normalizer``, and the saturation counters ``saturated/<group>``); :meth:`Measurement.from_row` reads it back.

Example:
    >>> import torch
    >>> heads = torch.nn.ModuleDict({"box": torch.nn.Linear(2, 1), "cls": torch.nn.Linear(2, 1)})
    >>> x = torch.ones(3, 2)
    >>> doctor = Doctor()
    >>> m = doctor.observe(1, {"box": heads["box"](x).square().mean(), "cls": heads["cls"](x).mean()}, wrt=heads)
    >>> sorted(m.account.norms)
    ['box', 'cls']
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import Tensor, nn

from detloss.core.report import LossReport
from detloss.diagnose.findings import (
    Finding,
    _finite,
    check_dead,
    check_detection_collapse,
    check_dominance,
    check_nonfinite,
    check_normalizer_skew,
    check_plateau,
    check_starved,
    term_names,
)
from detloss.diagnose.dense import dense_dependencies, polygon_axis_saturation
from detloss.diagnose.gradients import GradientAccount, gradient_accounting

__all__ = [
    "Doctor",
    "Measurement",
    "findings_table",
    "plot_shares",
    "shares_table",
]

_ORDER = {"error": 0, "warning": 1, "info": 2}

#: Fewer logged steps than this: no ``PLATEAU`` check (a line fitted to a handful of noisy steps says little).
PLATEAU_MIN_STEPS = 20


def _leading_float(text: str) -> float:
    """``12.0`` from ``"12 (num_pos)"``; NaN when the text has no number (a wrapped value's bare name)."""
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Measurement:
    """One gradient accounting: the (1-based) training step it measured, its cost and the result."""

    step: int
    seconds: float
    account: GradientAccount

    def row(self) -> dict[str, float]:
        """The flat row a sink receives (one ``doctor.csv`` row in the harness)."""
        a = self.account
        row: dict[str, float] = {"step": self.step, "seconds": self.seconds}
        for t in a.norms:
            row[f"{t}/grad_norm"] = a.norms[t]
            row[f"{t}/grad_share"] = a.shares[t]
            row[f"{t}/dead_fraction"] = a.dead.get(t, math.nan)
            row[f"{t}/weight"] = a.weights.get(t, math.nan)
            row[f"{t}/value"] = a.values.get(t, math.nan)
            row[f"{t}/normalizer"] = _leading_float(a.normalizers.get(t, "nan"))
        row.update({f"saturated/{g}": v for g, v in a.saturated.items()})
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, float]) -> Measurement:
        """The measurement of a :meth:`row` (e.g. read back from ``doctor.csv``)."""
        terms = [k[: -len("/grad_norm")] for k in row if k.endswith("/grad_norm")]
        norms = {t: row[f"{t}/grad_norm"] for t in terms}
        ratios = {}
        for a in terms:
            for b in terms:
                if a != b:
                    ratios[(a, b)] = norms[a] / norms[b] if norms[b] else (math.nan if norms[a] == 0 else math.inf)
        account = GradientAccount(
            norms=norms,
            shares={t: row[f"{t}/grad_share"] for t in terms},
            ratios=ratios,
            dead={t: row[f"{t}/dead_fraction"] for t in terms if not math.isnan(row[f"{t}/dead_fraction"])},
            saturated={k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("saturated/")},
            weights={t: row[f"{t}/weight"] for t in terms},
            values={t: row[f"{t}/value"] for t in terms},
            normalizers={t: f"{row[f'{t}/normalizer']:.4g}" for t in terms},
            nonfinite=tuple(t for t in terms if not math.isfinite(norms[t])),
        )
        return cls(int(row["step"]), row["seconds"], account)


def _wrt_tensors(wrt: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    """``wrt`` as a list of tensors requiring grad: a module gives its trainable parameters."""
    if isinstance(wrt, nn.Module):
        tensors = [p for p in wrt.parameters() if p.requires_grad]
        if not tensors:
            raise ValueError(f"wrt: the module {type(wrt).__name__} has no parameter that requires grad")
        return tensors
    if isinstance(wrt, Tensor):
        return [wrt]
    try:
        tensors = list(wrt)
    except TypeError:
        raise ValueError(
            f"wrt must be a module, a tensor or an iterable of tensors (parameters), got {type(wrt).__name__}"
        ) from None
    return tensors


class Doctor:
    """Gradient accounting of training steps and the findings over them.

    Any training loop calls :meth:`observe` with its losses; the harness calls :meth:`measure` (a
    ``DenseCriterion``) or :meth:`measure_outputs` (any other criterion) on the steps :meth:`due` selects.

    Args:
        every_steps: measure when ``step % every_steps == 0`` (0-based step); ``None``: never.
        dominance, target_ratio: ``check_dominance``'s threshold and the ratio its weights (and
            ``check_starved``'s) aim at.
        starved_ratio: ``check_starved``'s bound on the gradient-norm ratio of any two terms.
        dead: ``check_dead``'s threshold.
        skew_ratio: ``check_normalizer_skew``'s ratio.
        plateau_window, plateau_tolerance: ``check_plateau``'s window and tolerance.
        sink: called with each measurement's :meth:`Measurement.row` (the harness appends it to
            ``doctor.csv``); ``None``: keep in memory only.

    What it records: :attr:`measurements` (gradient accountings) and, from :meth:`observe`, :attr:`rows`
    (each step's flat :meth:`LossReport.as_dict` with its ``step``), which :meth:`findings` checks when no
    rows are passed to it.
    """

    def __init__(
        self,
        every_steps: int | None = None,
        *,
        dominance: float = 0.9,
        target_ratio: float = 1.0,
        starved_ratio: float = 100.0,
        dead: float = 0.5,
        skew_ratio: float = 10.0,
        plateau_window: int = 100,
        plateau_tolerance: float = 0.05,
        sink: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 or None, got {every_steps}")
        if not 0 < target_ratio <= starved_ratio:
            raise ValueError(f"target_ratio must be in (0, starved_ratio={starved_ratio}], got {target_ratio}")
        self.every_steps = every_steps
        self.starved_ratio = starved_ratio
        self.dominance, self.target_ratio, self.dead = dominance, target_ratio, dead
        self.skew_ratio = skew_ratio
        self.plateau_window, self.plateau_tolerance = plateau_window, plateau_tolerance
        self.measurements: list[Measurement] = []
        self.rows: list[dict[str, float]] = []
        self.sink = sink

    @classmethod
    def from_config(cls, cfg, sink: Callable[[dict[str, float]], None] | None = None) -> Doctor:
        """From an object with the thresholds as attributes (``every_steps``, ``dominance``, ...), such as
        the harness's ``DoctorConfig``."""
        return cls(
            cfg.every_steps,
            dominance=cfg.dominance,
            target_ratio=cfg.target_ratio,
            starved_ratio=cfg.starved_ratio,
            dead=cfg.dead,
            skew_ratio=cfg.skew_ratio,
            plateau_window=cfg.plateau_window,
            plateau_tolerance=cfg.plateau_tolerance,
            sink=sink,
        )

    def due(self, step: int) -> bool:
        """Whether the 0-based ``step`` is measured."""
        return self.every_steps is not None and step % self.every_steps == 0

    def observe(
        self,
        step: int,
        losses: LossReport | Mapping[str, Tensor],
        wrt: nn.Module | Tensor | Iterable[Tensor] | None = None,
        *,
        normalizers: Mapping[str, str] | None = None,
        depends: Mapping[str, Sequence[Tensor | None]] | None = None,
        saturation_logits: Sequence[Tensor] | Mapping[str, Tensor | Sequence[Tensor]] | None = None,
    ) -> Measurement | None:
        """Record one step of any training loop: its losses and, with ``wrt``, each term's gradient.

        Call it after the forward and before ``backward()`` (the graph must be alive), or after a
        ``backward(retain_graph=True)``. It takes one ``autograd.grad`` per term (about one backward
        each; with ``wrt`` a whole model, a full backward each) and nothing is accumulated into ``.grad``.

        Args:
            step: the step number to record.
            losses: a :class:`~detloss.core.report.LossReport`, or a dict term name -> 0-dim loss tensor
                (torchvision's or detectron2's loss dict), wrapped by :meth:`LossReport.from_losses`.
            wrt: what the gradients are taken with respect to: a module (its trainable parameters),
                a tensor, or an iterable of tensors or parameters (e.g. head outputs); ``None``: record
                the losses only.
            normalizers: with a dict of losses, term -> the name of the normalizer its value was divided
                by (recorded, and named in the findings).
            depends, saturation_logits: as in :func:`~detloss.diagnose.gradients.gradient_accounting`.

        Returns:
            the :class:`Measurement`, or ``None`` without ``wrt``.
        """
        if isinstance(losses, LossReport):
            if normalizers is not None:
                raise ValueError("normalizers is for a dict of losses; a LossReport records its own")
            report = losses
        else:
            report = LossReport.from_losses(losses, normalizers)
        tensors = None if wrt is None else _wrt_tensors(wrt)
        start = time.perf_counter()
        account = None
        if tensors is not None:
            account = gradient_accounting(report, tensors, depends=depends, saturation_logits=saturation_logits or ())
        self.rows.append({"step": step, **report.as_dict()})  # after the checks: bad input records nothing
        return None if account is None else self._record(step, time.perf_counter() - start, account)

    def measure(
        self, step: int, report: LossReport, feats: Sequence[Tensor], crit, targets: Mapping[str, Tensor]
    ) -> Measurement:
        """Account ``report``'s gradients w.r.t. ``feats`` (graph alive) for a ``DenseCriterion`` ``crit``.

        Besides the norms, shares and dead fractions (:func:`dense_dependencies`), counts saturation: the
        class logits beyond ``±15`` (group ``cls``; the objectness logits, group ``obj``) and, for an MGIoU
        polygon branch, the (positive, axis) pairs at a per-axis GIoU of ``±1`` (``poly_axis_giou_pos`` /
        ``poly_axis_giou_neg``, :func:`polygon_axis_saturation`). The assignment is computed once for both.

        Args:
            step: the 1-based step number to record (the ``step`` of ``steps.csv``).
            report, feats, targets: the step's report, the float head outputs ``(B, 4R + C [+ O] [+ 2K], H, W)``
                it was computed from, and its targets.
            crit: the criterion (for the dependency masks and the class-logit channels).
        """
        start = time.perf_counter()
        parts = [crit.layout.split(f.detach()) for f in feats]
        logits = {"cls": [p[1] for p in parts]} | ({"obj": [p[2] for p in parts]} if crit.layout.objectness else {})
        assigned = crit.assign(feats, targets)
        deps = dense_dependencies(crit, feats, targets, assigned)
        account = gradient_accounting(report, feats, depends=deps, saturation_logits=logits)
        axes = polygon_axis_saturation(crit, feats, targets, assigned)
        if axes:
            account = replace(account, saturated={**account.saturated, **axes})
        return self._record(step, time.perf_counter() - start, account)

    def measure_outputs(
        self,
        step: int,
        report: LossReport,
        wrt: Sequence[Tensor],
        depends: Mapping[str, Sequence[Tensor | None]] | None = None,
        saturation_logits: Sequence[Tensor] | Mapping[str, Tensor | Sequence[Tensor]] | None = None,
    ) -> Measurement:
        """Account ``report``'s gradients w.r.t. any tensors ``wrt`` (graph alive), for criteria that are
        not a ``DenseCriterion`` (two-stage, grid): :func:`gradient_accounting` with the given dependency
        masks and logit groups, recorded and written like :meth:`measure`.

        Args:
            step: the 1-based step number to record.
            report: the step's report.
            wrt: the tensors its terms were computed from (head outputs), each requiring grad.
            depends: term -> one bool mask per ``wrt`` tensor (``None`` entries: no dependency there), for
                the dead fractions; terms left out get none.
            saturation_logits: logits to count beyond ``±15`` (a sequence: group ``"logits"``; a mapping:
                group -> tensor(s)).
        """
        start = time.perf_counter()
        account = gradient_accounting(report, wrt, depends=depends, saturation_logits=saturation_logits or ())
        return self._record(step, time.perf_counter() - start, account)

    def _record(self, step: int, seconds: float, account: GradientAccount) -> Measurement:
        m = Measurement(step, seconds, account)
        self.measurements.append(m)
        if self.sink is not None:
            self.sink(m.row())
        return m

    def gradient_findings(self) -> list[Finding]:
        """Dominance, starved terms, dead and non-finite gradients over the measurements, one per (code, term):
        the last measured (the first for ``NONFINITE``), its message prefixed with the step."""
        seen: dict[tuple[str, str | None], list[tuple[int, Finding]]] = {}
        for m in self.measurements:
            found = check_dominance(m.account, self.dominance, self.target_ratio)
            found += check_starved(m.account, self.starved_ratio, self.target_ratio)
            found += check_dead(m.account, self.dead)
            for t in m.account.nonfinite:
                found.append(
                    Finding(
                        "NONFINITE",
                        "error",
                        f"the gradient of {t} w.r.t. the measured tensors is non-finite (norm {m.account.norms[t]}).",
                        {t: m.account.norms[t]},
                        "rerun with DETLOSS_DEBUG_NAN=1 to name the operation; check the term's inputs for "
                        "degenerate geometry (sqrt/division at 0) at this step",
                        t,
                    )
                )
            for f in found:
                seen.setdefault((f.code, f.term), []).append((m.step, f))
        out = []
        for (code, _), hits in seen.items():
            step, f = hits[0] if code == "NONFINITE" else hits[-1]
            steps = [s for s, _ in hits]
            also = f" Seen at {len(steps)} of {len(self.measurements)} measured steps ({steps[0]}..{steps[-1]})."
            out.append(replace(f, message=f"step {step}: {f.message}{also}", numbers={**f.numbers, "step": step}))
        return out

    def findings(
        self,
        step_rows: Sequence[Mapping[str, float]] | None = None,
        epoch_rows: Sequence[Mapping[str, float]] = (),
        val_rows: Sequence[Mapping[str, float]] = (),
    ) -> list[Finding]:
        """Every check: the gradient findings, then over the logged rows ``NONFINITE``, ``NORMALIZER_SKEW``
        (train rows vs. each other and vs. ``val_rows``, keys ``val/<term>/normalizer``),
        ``DETECTION_COLLAPSE`` (``val/dets_per_image`` of ``epoch_rows``) and ``PLATEAU`` (from
        :data:`PLATEAU_MIN_STEPS` rows on); errors first. ``step_rows`` defaults to the rows :meth:`observe`
        recorded."""
        step_rows = self.rows if step_rows is None else step_rows
        values = check_nonfinite(step_rows)
        bad = {f.term for f in values}  # a non-finite value explains its non-finite gradient: report it once
        found = [f for f in self.gradient_findings() if not (f.code == "NONFINITE" and f.term in bad)]
        found += values
        finite = [r for r in step_rows if all(_finite(r.get(t, 0.0)) for t in term_names(r))]
        found += check_normalizer_skew(finite, val_rows, self.skew_ratio)
        found += check_detection_collapse(epoch_rows)
        found += check_plateau(finite, self.plateau_window, self.plateau_tolerance, PLATEAU_MIN_STEPS)
        return sorted(found, key=lambda f: _ORDER[f.severity])


def findings_table(findings: Sequence[Finding], width: int = 110) -> str:
    """One header line per finding (code, severity, term), then its message and fix, wrapped."""
    if not findings:
        return "findings: none"
    header = f"{'code':<20} {'severity':<8} term"
    lines = [f"findings ({len(findings)}):", header, "-" * len(header)]
    for f in findings:
        lines.append(f"{f.code:<20} {f.severity:<8} {f.term or '-'}")
        lines += textwrap.wrap(f.message, width, initial_indent="    ", subsequent_indent="    ")
        lines += textwrap.wrap(f"fix: {f.fix}", width, initial_indent="    ", subsequent_indent="         ")
    return "\n".join(lines)


def shares_table(measurements: Sequence[Measurement]) -> str:
    """Steps down, terms across: each term's share of the summed gradient norms, in percent."""
    terms = list(measurements[0].account.norms)
    rows = [f"{'step':>6} " + " ".join(f"{t:>8}" for t in terms)]
    for m in measurements:
        cells = (m.account.shares.get(t, math.nan) for t in terms)
        rows.append(f"{m.step:>6} " + " ".join(f"{'-':>8}" if math.isnan(s) else f"{100 * s:7.1f}%" for s in cells))
    return "\n".join(rows)


def plot_shares(measurements: Sequence[Measurement], path: str | Path) -> Path | None:
    """Stacked bars of each term's gradient share per measured step; ``None`` without matplotlib or data."""
    if not measurements:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    terms = list(measurements[0].account.norms)
    x = list(range(len(measurements)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(x) + 2), 3.5))
    bottom = [0.0] * len(x)
    for t in terms:
        h = [m.account.shares.get(t, math.nan) for m in measurements]
        h = [0.0 if math.isnan(v) else v for v in h]
        ax.bar(x, h, bottom=bottom, label=t)
        bottom = [b + v for b, v in zip(bottom, h, strict=True)]
    ax.set_xticks(x, [str(m.step) for m in measurements])
    ax.set(xlabel="step", ylabel="share of summed gradient norms", ylim=(0, 1), title="gradient share per term")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


