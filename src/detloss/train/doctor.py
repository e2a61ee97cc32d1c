"""``detloss doctor``: the doctor driven by the harness, and its advice as configuration keys.

:func:`run_doctor` trains a configured run for a few steps with the :class:`~detloss.diagnose.doctor.Doctor`
on; :func:`read_run` runs every check over a finished run's CSV files (``steps.csv``, ``epochs.csv``,
``doctor.csv``). The findings speak in the loss's own terms (a term's weight, its normalizer);
:func:`weight_key` and :func:`recommended_overrides` map the weights they recommend onto this harness's
configuration keys (``loss.weights.cls=...``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from detloss.core.debug import NonFiniteLossError, NonFiniteOp, locate_nonfinite
from detloss.data.collate import collate
from detloss.diagnose.doctor import Doctor, Measurement, findings_table, plot_shares, shares_table
from detloss.diagnose.findings import Finding, _finite
from detloss.train.config import DoctorConfig
from detloss.train.logs import CsvLog, read_csv
from detloss.train.build import build_trainer

__all__ = [
    "DoctorRun",
    "read_measurements",
    "read_run",
    "recommended_overrides",
    "run_doctor",
    "weight_key",
]


def read_measurements(path: str | Path) -> list[Measurement]:
    """The measurements in a ``doctor.csv``."""
    return [Measurement.from_row(r) for r in read_csv(Path(path))]


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


def _val_rows(trainer, batches: int = 4) -> list[dict[str, float]]:
    """The criterion's report on up to ``batches`` validation batches, keys prefixed ``val/``."""
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
        kind = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("model", {}).get("kind", "dense")
    return DoctorRun(run, findings, doctor.measurements, steps, epochs, kind=kind)
