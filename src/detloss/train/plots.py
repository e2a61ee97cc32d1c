"""PNG plots of a run (matplotlib, the ``plot`` extra): terms, normalizers, AP, predictions; run comparison."""

from __future__ import annotations

from collections.abc import Sequence

import math
from pathlib import Path

import torch

from detloss.train.logs import read_csv


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'detloss[plot]'") from err
    return plt


def _series(rows: list[dict[str, float]], prefix: str, suffix: str = "") -> dict[str, list[float]]:
    keys = [
        k
        for k in rows[0]
        if k.startswith(prefix) and k.endswith(suffix) and k.count("/") == prefix.count("/") + suffix.count("/")
    ]
    return {k[len(prefix) : len(k) - len(suffix) or None]: [r[k] for r in rows] for k in keys}


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_epochs(ax, epochs: list[dict[str, float]], key: str, **style) -> None:
    points = [(r["epoch"], r[key]) for r in epochs if key in r and not math.isnan(r[key])]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", **style)


def plot_losses(run: Path) -> Path:
    """Per-epoch term values, per-step normalizer values, and validation AP: ``run/curves.png``."""
    plt = _pyplot()
    epochs = read_csv(run / "epochs.csv")
    steps = read_csv(run / "steps.csv")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [r["epoch"] for r in epochs]
    for name, values in _series(epochs, "train/").items():
        if name != "total":
            axes[0].plot(x, values, marker="o", label=name)
    axes[0].set(title="loss terms (epoch mean)", xlabel="epoch", yscale="log")
    s = [r["step"] for r in steps]
    for name, values in _series(steps, "", "/normalizer").items():
        axes[1].plot(s, values, label=name)
    axes[1].set(title="normalizer D per step", xlabel="step", yscale="log")
    for key in ("val/map50", "val/map", "val/poly_map50", "val/poly_map"):
        _plot_epochs(axes[2], epochs, key, label=key[4:])
    axes[2].set(title="validation AP", xlabel="epoch", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(plt, fig, run / "curves.png")


def plot_predictions(run: Path, images: torch.Tensor, preds: list[dict], conf: float, names=None) -> Path:
    """A grid of validation images with predicted boxes and polygons above ``conf``: ``run/predictions.png``."""
    plt = _pyplot()
    n = images.shape[0]
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, image, pred in zip(axes.flat, images, preds, strict=False):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        keep = pred["scores"] >= conf
        for j in torch.nonzero(keep).flatten().tolist():
            x1, y1, x2, y2 = pred["boxes"][j].tolist()
            c = colors(int(pred["labels"][j]) % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=c, lw=1))
            if "polygons" in pred:
                poly = pred["polygons"][j]
                if "polygon_valid" in pred:  # hull vertices first, padding after
                    poly = poly[pred["polygon_valid"][j]]
                ax.add_patch(plt.Polygon(poly.numpy(), closed=True, fill=False, color=c, lw=1.5, ls="--"))
            label = names[int(pred["labels"][j])] if names else str(int(pred["labels"][j]))
            ax.text(x1, y1, f"{label} {float(pred['scores'][j]):.2f}", color=c, fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    return _save(plt, fig, run / "predictions.png")


def plot_pseudo_labels(run: Path) -> Path:
    """A teacher-student run per epoch: the pseudo-labels' precision and recall against the hidden labels
    (class-aware, and class-agnostic dashed), how many were kept, teacher vs student AP50 with the
    pseudo-labels' class-aware precision/recall, and the teacher's EMA decay (its ramp):
    ``run/pseudo_labels.png``. Whether the filters help is read off the first panel."""
    plt = _pyplot()
    epochs = read_csv(run / "epochs.csv")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for what, color in (("precision", "C0"), ("recall", "C1")):
        _plot_epochs(axes[0], epochs, f"pseudo/{what}", color=color, label=what)
        _plot_epochs(axes[0], epochs, f"pseudo/box_{what}", color=color, ls="--", label=f"{what}, any class")
    axes[0].set(title="pseudo-labels vs hidden labels", xlabel="epoch", ylim=(0, 1))
    _plot_epochs(axes[1], epochs, "pseudo/kept", label="kept")
    axes[1].set(title="pseudo-labels kept per epoch", xlabel="epoch")
    _plot_epochs(axes[2], epochs, "val/map50", label="teacher (before burn-in ends: EMA)")
    _plot_epochs(axes[2], epochs, "val/student/map50", label="student")
    _plot_epochs(axes[2], epochs, "pseudo/precision", color="C2", ls=":", label="pseudo-label precision")
    _plot_epochs(axes[2], epochs, "pseudo/recall", color="C3", ls=":", label="pseudo-label recall")
    axes[2].set(title="validation AP50 and pseudo-labels", xlabel="epoch", ylim=(0, 1))
    _plot_epochs(axes[3], epochs, "semi/teacher_decay", label="EMA decay")
    axes[3].set(title="teacher EMA decay (end of epoch)", xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(plt, fig, run / "pseudo_labels.png")


def plot_run(run: Path, trainer) -> None:
    """All plots of a finished run."""
    from detloss.data.collate import collate
    from detloss.train.evaluation import predict

    plot_losses(run)
    teacher = getattr(trainer, "teacher", None)  # a teacher-student run shows the teacher's predictions
    if teacher is not None:
        plot_pseudo_labels(run)
    model = teacher.module if teacher is not None else trainer.ema.module if trainer.ema is not None else trainer.model
    samples = [trainer.val_set[i] for i in range(min(8, len(trainer.val_set)))]
    images, _ = collate(samples)
    preds = predict(trainer.task, model, images.to(trainer.dist.device), trainer.cfg)
    names = getattr(trainer.val_set, "class_names", None)
    plot_predictions(run, images, [{k: v.cpu() for k, v in p.items()} for p in preds], trainer.cfg.eval.conf, names)


def _mean_shares(run: Path) -> dict[str, float]:
    """``grad_share/<term>``: the mean gradient share of each term over a run's ``doctor.csv`` (if any)."""
    if not (run / "doctor.csv").is_file():
        return {}
    rows = read_csv(run / "doctor.csv")
    terms = [k[: -len("/grad_share")] for k in rows[0] if k.endswith("/grad_share")] if rows else []
    return {f"grad_share/{t}": sum(r[f"{t}/grad_share"] for r in rows) / len(rows) for t in terms}


def compare_runs(runs: Sequence[Path], out: Path) -> tuple[Path, str]:
    """Overlay the runs' epoch curves in one figure and return a table of their last epochs, with each
    term's mean gradient share when every run logged ``doctor.csv`` (``doctor.every_steps``)."""
    if len(runs) < 2:
        raise ValueError(f"runs: compare needs two runs at least, got {len(runs)}")
    plt = _pyplot()
    epochs = [read_csv(run / "epochs.csv") for run in runs]
    keys = [
        k
        for k in epochs[0][0]
        if all(k in e[0] for e in epochs) and (k.startswith("val/") or (k.startswith("train/") and k.count("/") == 1))
    ]
    plot_keys = [k for k in keys if k.startswith("train/") or k in ("val/map50", "val/map", "val/poly_map50")]
    cols = min(4, len(plot_keys))
    rows = math.ceil(len(plot_keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, plot_keys, strict=False):
        for rows_, run in zip(epochs, runs, strict=True):
            ax.plot([r["epoch"] for r in rows_], [r[key] for r in rows_], marker="o", label=run.name)
        ax.set(title=key, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(plot_keys) :]:
        ax.axis("off")
    out.mkdir(parents=True, exist_ok=True)
    path = _save(plt, fig, out / f"compare_{'_vs_'.join(run.name for run in runs)}.png")
    last = [dict(e[-1]) for e in epochs]
    shares = [_mean_shares(run) for run in runs]
    keys += [k for k in shares[0] if all(k in s for s in shares)]
    for row, s in zip(last, shares, strict=True):
        row.update(s)
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}} " + " ".join(f"{run.name[:14]:>14}" for run in runs)]
    lines += [f"{k:<{width}} " + " ".join(f"{row[k]:>14.5g}" for row in last) for k in keys]
    return path, "\n".join(lines)
