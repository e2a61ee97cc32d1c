"""The loss doctor: gradient accounting during training, every finding over a run, tables, JSON and a plot.

:class:`Doctor` measures a step (the trainer calls it every ``doctor.every_steps`` steps on the main
rank: :meth:`Doctor.measure` for a ``DenseCriterion``, :meth:`Doctor.measure_outputs` for any other
criterion) and writes one ``doctor.csv`` row per measurement: the accounting's cost in seconds, per
term ``grad_norm``, ``grad_share``, ``dead_fraction``, ``weight``, ``value`` and ``normalizer``, and the
saturation counters (``saturated/<group>``).
:meth:`Doctor.findings` runs every check of :mod:`detloss.diagnose.findings` over the measurements and
the logged rows. :func:`run_doctor` trains a configured run for a few steps with the doctor on
(``detloss doctor``); :func:`read_run` does the same from a finished run's CSV files.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from detloss.core.debug import NonFiniteOp
from detloss.diagnose.findings import (
    Finding,
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
from detloss.core.report import LossReport

__all__ = [
    "Doctor",
    "DoctorRun",
    "Measurement",
    "findings_table",
    "plot_shares",
    "read_measurements",
    "read_run",
    "recommended_overrides",
    "run_doctor",
    "shares_table",
]

_ORDER = {"error": 0, "warning": 1, "info": 2}

#: Fewer logged steps than this: no ``PLATEAU`` check (a line fitted to a handful of noisy steps says little).
PLATEAU_MIN_STEPS = 20


@dataclass(frozen=True)
class Measurement:
    """One gradient accounting: the (1-based) training step it measured, its cost and the result."""

    step: int
    seconds: float
    account: GradientAccount


def _row(m: Measurement) -> dict[str, float]:
    """A ``doctor.csv`` row."""
    a = m.account
    row: dict[str, float] = {"step": m.step, "seconds": m.seconds}
    for t in a.norms:
        row[f"{t}/grad_norm"] = a.norms[t]
        row[f"{t}/grad_share"] = a.shares[t]
        row[f"{t}/dead_fraction"] = a.dead.get(t, math.nan)
        row[f"{t}/weight"] = a.weights.get(t, math.nan)
        row[f"{t}/value"] = a.values.get(t, math.nan)
        row[f"{t}/normalizer"] = float(a.normalizers.get(t, "nan").split()[0])
    row.update({f"saturated/{g}": v for g, v in a.saturated.items()})
    return row


def _account(row: Mapping[str, float]) -> GradientAccount:
    """Rebuild a :class:`GradientAccount` from a ``doctor.csv`` row."""
    terms = [k[: -len("/grad_norm")] for k in row if k.endswith("/grad_norm")]
    norms = {t: row[f"{t}/grad_norm"] for t in terms}
    ratios = {}
    for a in terms:
        for b in terms:
            if a != b:
                ratios[(a, b)] = norms[a] / norms[b] if norms[b] else (math.nan if norms[a] == 0 else math.inf)
    return GradientAccount(
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


def read_measurements(path: str | Path) -> list[Measurement]:
    """The measurements in a ``doctor.csv``."""
    from detloss.train.logs import read_csv

    return [Measurement(int(r["step"]), r["seconds"], _account(r)) for r in read_csv(Path(path))]


class Doctor:
    """Gradient accounting every ``every_steps`` steps and the run's findings.

    Args:
        every_steps: measure when ``step % every_steps == 0`` (0-based step); ``None``: never.
        dominance, target_ratio: ``check_dominance``'s threshold and the ratio its weights (and
            ``check_starved``'s) aim at.
        starved_ratio: ``check_starved``'s bound on the gradient-norm ratio of any two terms.
        dead: ``check_dead``'s threshold.
        skew_ratio: ``check_normalizer_skew``'s ratio.
        plateau_window, plateau_tolerance: ``check_plateau``'s window and tolerance.
        path: ``doctor.csv`` to append a row to per measurement (``None``: keep in memory only).
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
        path: str | Path | None = None,
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
        self.log = None
        if path is not None:
            from detloss.train.logs import CsvLog

            self.log = CsvLog(Path(path))

    @classmethod
    def from_config(cls, cfg, path: str | Path | None = None) -> Doctor:
        """From a ``DoctorConfig``-like object (:mod:`detloss.train.config`)."""
        return cls(
            cfg.every_steps,
            dominance=cfg.dominance,
            target_ratio=cfg.target_ratio,
            starved_ratio=cfg.starved_ratio,
            dead=cfg.dead,
            skew_ratio=cfg.skew_ratio,
            plateau_window=cfg.plateau_window,
            plateau_tolerance=cfg.plateau_tolerance,
            path=path,
        )

    def due(self, step: int) -> bool:
        """Whether the 0-based ``step`` is measured."""
        return self.every_steps is not None and step % self.every_steps == 0

    def measure(
        self, step: int, report: LossReport, feats: Sequence[Tensor], crit, targets: Mapping[str, Tensor]
    ) -> Measurement:
        """Account ``report``'s gradients w.r.t. ``feats`` (graph alive) for a ``DenseCriterion`` ``crit``.

        Besides the norms, shares and dead fractions (:func:`dense_dependencies`), counts saturation: the
        class logits beyond ``±15`` (group ``cls``) and, for an MGIoU polygon branch, the (positive, axis)
        pairs at a per-axis GIoU of ``±1`` (``poly_axis_giou_pos`` / ``poly_axis_giou_neg``,
        :func:`polygon_axis_saturation`). The assignment is computed once for both.

        Args:
            step: the 1-based step number to record (the ``step`` of ``steps.csv``).
            report, feats, targets: the step's report, the float head outputs ``(B, 4R + C [+ 2K], H, W)``
                it was computed from, and its targets.
            crit: the criterion (for the dependency masks and the class-logit channels).
        """
        start = time.perf_counter()
        logits = {"cls": [crit.layout.split(f.detach())[1] for f in feats]}
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
        if self.log is not None:
            self.log.write(_row(m))
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
                        f"the gradient of {t} w.r.t. the head outputs is non-finite (norm {m.account.norms[t]}).",
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
        step_rows: Sequence[Mapping[str, float]] = (),
        epoch_rows: Sequence[Mapping[str, float]] = (),
        val_rows: Sequence[Mapping[str, float]] = (),
    ) -> list[Finding]:
        """Every check: the gradient findings, then over the logged rows ``NONFINITE``, ``NORMALIZER_SKEW``
        (train rows vs. each other and vs. ``val_rows``, keys ``val/<term>/normalizer``),
        ``DETECTION_COLLAPSE`` (``val/dets_per_image`` of ``epoch_rows``) and ``PLATEAU`` (from
        :data:`PLATEAU_MIN_STEPS` rows on); errors first."""
        values = check_nonfinite(step_rows)
        bad = {f.term for f in values}  # a non-finite value explains its non-finite gradient: report it once
        found = [f for f in self.gradient_findings() if not (f.code == "NONFINITE" and f.term in bad)]
        found += values
        finite = [r for r in step_rows if all(_finite(r.get(t, 0.0)) for t in term_names(r))]
        found += check_normalizer_skew(finite, val_rows, self.skew_ratio)
        found += check_detection_collapse(epoch_rows)
        found += check_plateau(finite, self.plateau_window, self.plateau_tolerance, PLATEAU_MIN_STEPS)
        return sorted(found, key=lambda f: _ORDER[f.severity])


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


@dataclass
class DoctorRun:
    """What ``detloss doctor`` found: the findings, the measurements, the rows and the step times."""

    out: Path
    findings: list[Finding]
    measurements: list[Measurement]
    step_rows: list[dict[str, float]] = field(default_factory=list)
    epoch_rows: list[dict[str, float]] = field(default_factory=list)
    step_seconds: dict[int, float] = field(default_factory=dict)
    kind: str = "dense"  # the run's model.kind: where its term weights live in the config

    def cost(self) -> dict[str, float]:
        """Mean wall time of measured and plain steps (the first step, warm-up, left out) and their ratio."""
        measured = {m.step for m in self.measurements}
        times = {s: t for s, t in self.step_seconds.items() if s != 1}
        doc = [t for s, t in times.items() if s in measured]
        plain = [t for s, t in times.items() if s not in measured]
        if not doc or not plain:
            return {}
        d, p = sum(doc) / len(doc), sum(plain) / len(plain)
        return {
            "doctor_step_s": d,
            "plain_step_s": p,
            "ratio": d / p,
            "doctor_steps": len(doc),
            "plain_steps": len(plain),
        }

    def exit_code(self) -> int:
        """1 if any finding is an error, else 0."""
        return int(any(f.severity == "error" for f in self.findings))

    def summary(self) -> str:
        """The last account's per-term table, the gradient shares over the steps, the findings, the cost."""
        parts = []
        if self.measurements:
            last = self.measurements[-1]
            parts += [f"gradient accounting w.r.t. the head outputs at step {last.step}:", last.account.table(), ""]
            parts += ["gradient share per term over the measured steps:", shares_table(self.measurements), ""]
        evaluated = [r for r in self.epoch_rows if "val/dets_per_image" in r]
        if evaluated:
            last = evaluated[-1]
            metrics = ", ".join(f"{k[4:]} {last[k]:.3g}" for k in ("val/map50", "val/dets_per_image") if k in last)
            parts += [f"validation after step {int(last['step'])}: {metrics}", ""]
        parts += [findings_table(self.findings)]
        overrides = recommended_overrides(self.findings, self.kind)
        if overrides:
            parts += ["", "recommended weights (GRAD_DOMINANCE, GRAD_STARVED; as overrides):"]
            parts += ["  " + " ".join(overrides)]
        cost = self.cost()
        if cost:
            parts += [
                "",
                f"doctor cost: {1000 * cost['doctor_step_s']:.1f} ms per measured step vs "
                f"{1000 * cost['plain_step_s']:.1f} ms per plain step ({cost['ratio']:.2f}×)",
            ]
        return "\n".join(parts)

    def as_dict(self) -> dict:
        """``{"account", "terms", "findings", "measurements", "cost"}``: ``account`` (alias ``terms``) is the
        last measurement's per-term dict with the normalizer; non-finite floats become strings."""
        terms: dict = {}
        if self.measurements:
            acc = self.measurements[-1].account
            terms = {t: {**v, "normalizer": acc.normalizers.get(t)} for t, v in acc.as_dict().items()}
        data = {
            "account": terms,
            "terms": terms,
            "findings": [f.as_dict() for f in self.findings],
            "measurements": [
                {"step": m.step, "seconds": m.seconds, "account": m.account.as_dict()} for m in self.measurements
            ],
            "cost": self.cost(),
        }
        return _jsonable(data)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


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


def weight_key(term: str, kind: str = "dense") -> str:
    """The config key of ``term``'s weight for a ``model.kind`` run: ``loss.weights.cls`` (dense),
    ``grid.weights.obj``, ``rpn.weights.box`` / ``roi.weights.cls`` (two-stage ``rpn_box`` / ``roi_cls``);
    the unlabelled ``u_*`` terms of teacher-student runs scale with ``semi.unsup_weight``."""
    if term.startswith("u_"):
        return "semi.unsup_weight"
    if kind == "grid":
        return f"grid.weights.{term}"
    if kind == "two_stage" and term[:4] in ("rpn_", "roi_"):
        return f"{term[:3]}.weights.{term[4:]}"
    return f"loss.weights.{term}"


def recommended_overrides(findings: Sequence[Finding], kind: str = "dense") -> list[str]:
    """``<section>.weights.<term>=<w>`` (:func:`weight_key`) for each weight a ``GRAD_DOMINANCE`` or
    ``GRAD_STARVED`` finding recommends raising; a term recommended twice keeps the first value."""
    out: dict[str, str] = {}
    for f in findings:
        if f.code in ("GRAD_DOMINANCE", "GRAD_STARVED"):
            terms = [(k[: -len("/weight")], v) for k, v in f.numbers.items() if k.endswith("/weight")]
            for t, v in terms:
                if not t.startswith("u_"):
                    out.setdefault(weight_key(t, kind), f"{weight_key(t, kind)}={v:.4g}")
    return list(out.values())


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


def _val_rows(trainer, batches: int = 4) -> list[dict[str, float]]:
    """The criterion's report on up to ``batches`` validation batches, keys prefixed ``val/``."""
    import torch

    from detloss.data.collate import collate

    model, b, rows = trainer.model, trainer.cfg.batch_size, []
    model.eval()
    with torch.no_grad():
        for start in range(0, min(len(trainer.val_set), batches * b), b):
            samples = [trainer.val_set[i] for i in range(start, min(start + b, len(trainer.val_set)))]
            images, targets = collate(samples)
            device = trainer.dist.device
            targets = {k: v.to(device) for k, v in targets.items() if torch.is_tensor(v)}
            rows.append(trainer.forward_loss(model, images.to(device), targets).report.as_dict("val/"))
    return rows


def run_doctor(cfg, steps: int = 50, every: int | None = None, evaluate: bool = True) -> DoctorRun:
    """Train the run ``cfg`` (a ``TrainConfig``) for ``steps`` steps with gradient accounting every ``every``
    steps (default ``steps // 5``, from the first), then evaluate every check.

    Writes ``config.yaml``, ``steps.csv``, ``doctor.csv`` and ``doctor_shares.png`` into ``cfg.out_dir``
    (replacing earlier doctor files there). The learning-rate schedule is the full run's. Stops at the
    first step with a non-finite loss (or, under ``DETLOSS_DEBUG_NAN=1``, the first failing term: that
    step, which raised before the optimizer step, then runs once more under
    :func:`~detloss.core.debug.locate_nonfinite`, so the ``NONFINITE`` finding names the operation that made
    the value, or the gradient's backward operation and the forward line it differentiates). With
    ``evaluate``, the model is evaluated after the steps (``epoch_rows``, shown in the summary) and the
    report on a few validation batches gives the validation normalizers (``NORMALIZER_SKEW``).

    ``DETECTION_COLLAPSE`` needs two evaluations of a model that has learned something, so it is checked by
    :func:`read_run` on a training run's ``epochs.csv``, not here: the untrained model's detections are no
    peak (on the shapes run they fall from about 2 per image at initialization to about 0.03 after 50
    warm-up steps, while the classifier first learns "background" everywhere, as every detector does).
    """
    from detloss.core.debug import NonFiniteLossError
    from detloss.train.config import DoctorConfig
    from detloss.train.logs import CsvLog
    from detloss.train.build import build_trainer

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    every = max(1, steps // 5) if every is None else every
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out = Path(cfg.out_dir)
    for name in ("doctor.csv", "steps.csv"):
        (out / name).unlink(missing_ok=True)
    doctor_cfg = (cfg.doctor or DoctorConfig()).model_copy(update={"every_steps": every})
    cfg = cfg.model_copy(update={"doctor": doctor_cfg})
    trainer = build_trainer(cfg)
    if trainer.dist.world_size > 1:
        raise ValueError("detloss doctor runs in one process (not under torchrun)")
    steps_log = CsvLog(out / "steps.csv")
    run = DoctorRun(out, [], [], kind=cfg.model.kind)
    failed: Finding | None = None  # from DETLOSS_DEBUG_NAN
    nonfinite = False  # a logged value: check_nonfinite reports it
    while trainer.step < steps and failed is None and not nonfinite:
        epoch, start = divmod(trainer.step, trainer.steps_per_epoch)
        for images, targets in trainer.batches(epoch, start):
            t0 = time.perf_counter()
            try:
                report = trainer.train_step(images, targets)
            except NonFiniteLossError as err:
                failed = _debug_finding(trainer.step + 1, err, *_locate(trainer, images, targets, err))
                break
            run.step_seconds[trainer.step] = time.perf_counter() - t0
            row = {"step": trainer.step, "epoch": epoch, **report.as_dict(), **trainer.step_log()}
            run.step_rows.append(row)
            steps_log.write(row)
            nonfinite = not all(_finite(row[t]) for t in [*report, "total"])
            if nonfinite or trainer.step >= steps:
                break
    run.measurements = list(trainer.doctor.measurements)
    val_rows = []
    if evaluate and failed is None and not nonfinite:
        spe = trainer.steps_per_epoch
        metrics = {f"val/{k}": v for k, v in trainer.evaluate().items()}
        run.epoch_rows.append({"epoch": trainer.step / spe, "step": float(trainer.step), **metrics})
        val_rows = _val_rows(trainer)
    run.findings = trainer.doctor.findings(run.step_rows, run.epoch_rows, val_rows)
    if failed is not None:
        run.findings.insert(0, failed)
    plot_shares(run.measurements, out / "doctor_shares.png")
    return run


def _locate(trainer, images, targets, err) -> tuple[NonFiniteOp | None, bool]:
    """Run the step that raised ``err`` again under :func:`~detloss.core.debug.locate_nonfinite` (the model
    has not been updated: the error comes from the forward, before the optimizer step) to name the
    operation. Returns it (or ``None``) and whether the step failed again the same way."""
    from detloss.core.debug import NonFiniteLossError, locate_nonfinite

    op, again = locate_nonfinite(lambda: trainer.train_step(images, targets), err.where)
    same = isinstance(again, NonFiniteLossError) and (again.term, again.where) == (err.term, err.where)
    return op, same


def _debug_finding(step: int, err, op: NonFiniteOp | None = None, reproduced: bool = True) -> Finding:
    """``NONFINITE`` from a :class:`~detloss.core.debug.NonFiniteLossError`, naming the operation ``op`` when
    :func:`_locate` found it."""
    message = f"first non-finite {err.where} at step {step} in term {err.term!r} (raised by DETLOSS_DEBUG_NAN)."
    numbers = {"step": float(step)}
    if op is not None and err.where == "gradient":
        message += (
            f" Its first non-finite gradient element ({op.produced}) was made by operation {op.op} in "
            f"{op.node or 'the backward pass'}, the derivative of the forward operation at "
            f"{op.location or 'an unknown line'}"
            + (f" (called from {op.detloss_location})" if op.detloss_location not in (None, op.location) else "")
            + (f"; the Inf came first from {op.after_inf.describe()}" if op.after_inf else "")
            + "."
        )
    elif op is not None:
        message += f" The first non-finite value was made by operation {op.describe()}."
    elif reproduced:
        message += " No single operation made it from finite inputs (a non-finite input or parameter?)."
    if not reproduced:
        message += " Running the step again did not fail the same way: the cause is not deterministic."
    if op is not None:
        at = op.location or "an unknown line"
        if op.phase == "backward":
            look = (
                f"look at the operation at {at}: its derivative ({op.node}) is {op.produced} at this step's inputs "
                "(a derivative infinite at the point: sqrt or pow < 1 at 0, the norm of a zero vector, "
                "acos/asin at ±1)"
            )
        else:
            look = (
                f"look at {op.op} at {at}: this step's inputs are outside its domain (log of <= 0, 0/0 or x/0, "
                "sqrt of < 0, overflow)"
            )
        fix = (
            f"{look}; keep the argument in the domain by construction (select safe inputs with torch.where "
            "before the operation, as MGIoU does); do not nan_to_num or clamp the loss"
        )
    else:
        fix = (
            f"check {err.term}'s inputs at this step (non-finite images, targets or parameters, degenerate "
            "boxes or polygons, overflowing logits, a normalizer of 0); do not nan_to_num the loss"
        )
    return Finding("NONFINITE", "error", message, numbers, fix, err.term)


def read_run(run: str | Path, doctor_cfg=None) -> DoctorRun:
    """Every check over a finished run folder: ``steps.csv``, ``epochs.csv`` and ``doctor.csv`` (if the run
    had ``doctor.every_steps``); ``doctor_cfg`` (a ``DoctorConfig``-like object) sets the thresholds."""
    from detloss.train.logs import read_csv

    run = Path(run)
    if not (run / "steps.csv").is_file():
        raise FileNotFoundError(f"{run / 'steps.csv'} not found: --run must be a run folder")
    steps = read_csv(run / "steps.csv")
    epochs = read_csv(run / "epochs.csv") if (run / "epochs.csv").is_file() else []
    doctor = Doctor() if doctor_cfg is None else Doctor.from_config(doctor_cfg)
    if (run / "doctor.csv").is_file():
        doctor.measurements = read_measurements(run / "doctor.csv")
    val_rows = [{k: v for k, v in r.items() if k.startswith("val/")} for r in epochs]
    findings = doctor.findings(steps, epochs, val_rows)
    plot_shares(doctor.measurements, run / "doctor_shares.png")
    kind = "dense"
    if (run / "config.yaml").is_file():
        import yaml

        kind = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("model", {}).get("kind", "dense")
    return DoctorRun(run, findings, doctor.measurements, steps, epochs, kind=kind)
