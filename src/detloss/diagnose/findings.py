"""Health findings: pure checks over measured data, each with a code, the numbers and a concrete fix.

Every check takes measurements (a :class:`~detloss.diagnose.gradients.GradientAccount`, or rows of
flat numbers such as :meth:`LossReport.as_dict() <detloss.core.report.LossReport.as_dict>` or the rows of
``steps.csv`` / ``epochs.csv`` read by :func:`detloss.train.logs.read_csv`) and returns a list of
:class:`Finding` (empty when healthy). Terms are found in flat rows as the keys ``name`` that have a
``name/normalizer`` companion, so prefixed rows (``train/box``, ``val/box``) work too.

=====================  ========  ===========================================================
code                   severity  fires when
=====================  ========  ===========================================================
``GRAD_DOMINANCE``     warning   one term's share of the summed gradient norms > ``threshold``
``GRAD_STARVED``       warning   another term's gradient norm > ``ratio`` × this term's (every
                                 pair, both ways round)
``DEAD_GRADIENT``      warning   a term's dead fraction > ``threshold``
``NONFINITE``          error     a term's value / raw sum / normalizer is NaN or Inf
``NORMALIZER_SKEW``    warning   a normalizer's max/min over steps > ``ratio``, or train vs.
                                 validation medians differ by more than ``ratio``
``DETECTION_COLLAPSE`` error     detections per image fell below ``drop`` × their peak, or
                                 below ``floor`` after having been above it
``PLATEAU``            warning   a term's fitted relative change over the window is not below
                                 ``-tolerance`` while another term's is
=====================  ========  ===========================================================
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from detloss.diagnose.gradients import GradientAccount

__all__ = [
    "Finding",
    "check_dead",
    "check_detection_collapse",
    "check_dominance",
    "check_nonfinite",
    "check_normalizer_skew",
    "check_plateau",
    "check_starved",
    "term_names",
]

Severity = Literal["info", "warning", "error"]
_SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    Attributes:
        code: stable identifier, e.g. ``"GRAD_DOMINANCE"``.
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        message: what was measured, with the numbers and arithmetic.
        numbers: the measurements behind the message (JSON-friendly floats).
        fix: a concrete change to make.
        term: the loss term concerned, if one.
    """

    code: str
    severity: Severity
    message: str
    numbers: dict[str, float] = field(default_factory=dict)
    fix: str = ""
    term: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in _SEVERITIES:
            raise ValueError(f"severity must be one of {_SEVERITIES}, got {self.severity!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message}\n  fix: {self.fix}"


def _g(x: float) -> str:
    """3 significant digits, the way the messages show numbers."""
    return f"{x:.3g}"


# -- gradient findings --------------------------------------------------------------------------


def check_dominance(account: GradientAccount, threshold: float = 0.9, target_ratio: float = 1.0) -> list[Finding]:
    """``GRAD_DOMINANCE`` when one term's share of the summed gradient norms exceeds ``threshold``.

    Gradient norms are linear in the weights (``value = weight * raw / D``), so for the dominant term
    ``d`` and each other term ``o`` with measured ratio ``r = norm_d / norm_o``, the ratio becomes
    ``target_ratio`` (``d : o = target_ratio : 1``) by either

    - lowering ``d``'s weight: ``w_d * target_ratio * norm_o / norm_d``, or
    - raising ``o``'s weight: ``w_o * norm_d / (target_ratio * norm_o)``.

    Raising every other weight is the joint solution (each pair then at ``target_ratio``; the values
    are in ``numbers["<o>/weight"]``); lowering ``d``'s weight fixes one pair at a time (the values
    are in ``numbers["<d>/weight_vs_<o>"]``). Raising weights also raises the step size: with SGD
    scale the learning rate by the old/new total gradient norm if needed. Terms with zero gradient
    cannot be balanced by a weight and are reported as such.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not target_ratio > 0:
        raise ValueError(f"target_ratio must be > 0, got {target_ratio}")
    shares = {n: s for n, s in account.shares.items() if not math.isnan(s)}
    if len(shares) < 2:
        return []
    d = max(shares, key=shares.get)
    if shares[d] <= threshold:
        return []
    nd, wd = account.norms[d], account.weights.get(d, float("nan"))
    t = target_ratio
    tf = "" if t == 1 else f"{_g(t)} × "
    numbers: dict[str, float] = {"share": shares[d], f"{d}/grad_norm": nd, f"{d}/weight_now": wd, "target_ratio": t}
    parts, raises, dead = [], [], []
    mildest: tuple[float, str] | None = None
    for o in account.norms:
        if o == d:
            continue
        no, wo = account.norms[o], account.weights.get(o, float("nan"))
        numbers[f"{o}/grad_norm"] = no
        numbers[f"{o}/weight_now"] = wo
        if no == 0 or not math.isfinite(no):
            dead.append(o)
            continue
        r = nd / no
        new_d = wd * t * no / nd
        new_o = wo * nd / (t * no)
        numbers[f"ratio/{d}:{o}"] = r
        numbers[f"{d}/weight_vs_{o}"] = new_d
        numbers[f"{o}/weight"] = new_o
        below = _g(no) if t == 1 else f"({_g(t)} × {_g(no)})"
        parts.append(
            f"{d} {_g(nd)} vs {o} {_g(no)}: ratio {_g(r)}; to reach {_g(t)}:1 set {d} weight {_g(wd)} → "
            f"{_g(wd)} × {tf}{_g(no)}/{_g(nd)} = {_g(new_d)} or {o} weight {_g(wo)} → "
            f"{_g(wo)} × {_g(nd)}/{below} = {_g(new_o)}"
        )
        raises.append(f"{o} ×{_g(new_o / wo)} ({_g(wo)} → {_g(new_o)})" if wo else f"{o} to {_g(new_o)}")
        if mildest is None or new_d > mildest[0]:
            mildest = (new_d, o)  # the largest other term: lowering d to match it leaves d >= the rest
    message = f"{d} carries {100 * shares[d]:.1f}% of the gradient norm (threshold {100 * threshold:.0f}%)."
    if parts:
        message += " " + "; ".join(parts) + "."
    if dead:
        message += f" {', '.join(dead)} ha{'s' if len(dead) == 1 else 've'} zero gradient: no weight fixes that."
    fix = ""
    if raises:
        s_ = "s" if len(raises) > 1 else ""
        fix = f"raise the weight{s_} of {', '.join(raises)} (each then {_g(t)}:1 against {d})"
        if mildest is not None:
            fix += f", or lower {d}'s weight to {_g(mildest[0])} ({_g(t)}:1 against {mildest[1]})"
            k = nd / (t * account.norms[mildest[1]])  # D_d this much larger: d's gradient falls to t:1
            now = _normalizer_name(account.normalizers.get(d))
            fix += (
                f"; or change {d}'s normalizer{f' from {now}' if now else ''} to one {_g(k)}× larger "
                f"({_g(t)}:1 against {mildest[1]}; e.g. one that counts its elements)"
            )
    if dead:
        fix += ("; " if fix else "") + f"find why {', '.join(dead)} get no gradient (see DEAD_GRADIENT)"
    return [Finding("GRAD_DOMINANCE", "warning", message, numbers, fix + ".", term=d)]


def _normalizer_name(text: str | None) -> str | None:
    """``"num_pos"`` from an account's normalizer text ``"12 (num_pos)"`` or a wrapped term's bare ``"num_pos"``;
    ``None`` when only the value is known (read back from a CSV row)."""
    text = (text or "").strip()
    if text.endswith(")") and "(" in text:
        return text[text.rindex("(") + 1 : -1]
    try:
        float(text)
    except ValueError:
        return text or None
    return None


def _leading_number(text: str | None) -> float | None:
    """``2.02e+05`` from an account's normalizer text ``"2.02e+05 (mean)"``; ``None`` if there is none."""
    try:
        value = float((text or "").split()[0])
    except (IndexError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def check_starved(account: GradientAccount, ratio: float = 100.0, target_ratio: float = 1.0) -> list[Finding]:
    """``GRAD_STARVED`` for each term ``s`` whose gradient norm is more than ``ratio`` times smaller than
    another term's. Every ordered pair is checked, so the weaker term of a pair is found whichever
    comes first; ``s``'s finding lists every term that starves it.

    Gradient norms are proportional to ``weight / D`` (``value = weight * raw / D``). With ``b`` the
    strongest term and ``f = norm_b / (target_ratio * norm_s)``, multiplying ``s``'s gradient by ``f``
    puts every pair with ``s`` at ``target_ratio``:1 or closer, by either

    - raising ``s``'s weight: ``w_s * f`` (``numbers["<s>/weight"]``; the smallest weight within the
      bound, ``w_s * norm_b / (ratio * norm_s)``, is ``numbers["<s>/weight_min"]``), or
    - a normalizer ``f`` times smaller: ``D_s / f`` (``numbers["<s>/normalizer"]``), e.g. one that
      counts the positives instead of every element.

    Terms with a zero or non-finite gradient norm are skipped: no weight changes a zero gradient
    (``DEAD_GRADIENT`` and ``NONFINITE`` cover them), and a term with weight 0 is off, not starved.
    """
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    if not 0 < target_ratio <= ratio:
        raise ValueError(f"target_ratio must be in (0, ratio={ratio}], got {target_ratio}")
    norms = {k: n for k, n in account.norms.items() if math.isfinite(n) and n > 0}
    t = target_ratio
    tf = "" if t == 1 else f"{_g(t)} × "
    out = []
    for s, ns in norms.items():
        stronger = {b: nb for b, nb in norms.items() if nb / ns > ratio}
        if not stronger:
            continue
        b = max(stronger, key=stronger.get)
        nb, ws, d_now = norms[b], account.weights.get(s, math.nan), _leading_number(account.normalizers.get(s))
        numbers: dict[str, float] = {"ratio": ratio, "target_ratio": t, f"{s}/grad_norm": ns}
        pairs = []
        for o, no in stronger.items():
            numbers[f"{o}/grad_norm"] = no
            numbers[f"ratio/{o}:{s}"] = no / ns
            pairs.append(f"{o} {_g(no)} vs {s} {_g(ns)}: ratio {_g(no / ns)}")
        message = f"{s}'s gradient is starved (bound {_g(ratio)}:1): " + "; ".join(pairs) + "."
        steps, fixes = [], []
        below = _g(ns) if t == 1 else f"({_g(t)} × {_g(ns)})"
        if math.isfinite(ws):
            new_w, min_w = ws * nb / (t * ns), ws * nb / (ratio * ns)
            numbers.update({f"{s}/weight_now": ws, f"{s}/weight": new_w, f"{s}/weight_min": min_w})
            steps.append(
                f"set {s} weight {_g(ws)} → {_g(ws)} × {_g(nb)}/{below} = {_g(new_w)} (the least within "
                f"{_g(ratio)}:1 is {_g(ws)} × {_g(nb)}/({_g(ratio)} × {_g(ns)}) = {_g(min_w)})"
            )
            fixes.append(
                f"raise the weight of {s} ×{_g(nb / (t * ns))} ({_g(ws)} → {_g(new_w)}; {_g(t)}:1 against {b}; "
                f"at least {_g(min_w)} for {_g(ratio)}:1)"
            )
        if d_now is not None:
            new_d = d_now * t * ns / nb
            numbers.update({f"{s}/normalizer_now": d_now, f"{s}/normalizer": new_d})
            now = account.normalizers[s]
            steps.append(f"normalize {s} by {_g(d_now)} × {tf}{_g(ns)}/{_g(nb)} = {_g(new_d)} instead of {now}")
            # a mean divides by every element, the usual way a sparse term starves
            hint = " (a count of its positives, num_pos or target_sum, not of every element)" if "(mean)" in now else ""
            fixes.append(
                f"change {s}'s normalizer from {now} to one {_g(nb / (t * ns))}× smaller, about {_g(new_d)}{hint}"
            )
        if steps:
            message += f" To reach {_g(t)}:1 against {b}: " + "; or ".join(steps) + "."
        name = _normalizer_name(account.normalizers.get(s))
        fix = "; or ".join(fixes) or (
            f"raise the weight of {s} ×{_g(nb / (t * ns))}, or change its normalizer"
            f"{f' from {name}' if name else ''} to one {_g(nb / (t * ns))}× smaller"
        )
        out.append(Finding("GRAD_STARVED", "warning", message, numbers, fix + ".", term=s))
    return out


def check_dead(account: GradientAccount, threshold: float = 0.5) -> list[Finding]:
    """``DEAD_GRADIENT`` for each term whose dead fraction (see :mod:`detloss.diagnose.gradients`)
    exceeds ``threshold``."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    out = []
    sat = {g: f for g, f in account.saturated.items() if f > 0}
    for name, frac in account.dead.items():
        if math.isnan(frac) or frac <= threshold:
            continue
        message = (
            f"{name}: {100 * frac:.1f}% of the prediction elements it depends on receive exactly zero gradient "
            f"(threshold {100 * threshold:.0f}%)."
        )
        if sat:
            message += " Saturated logits: " + ", ".join(f"{g} {100 * f:.2f}%" for g, f in sat.items()) + "."
        fix = (
            f"look in {name}'s element loss for what returns exactly zero gradient: a hard mask multiplied in "
            "(x * mask over padded vertices/axes: select the valid elements by indexing, or give padding a copy "
            "of a valid element), clamp()/clip on the value path (drop it, or clamp the inputs instead), "
            "nan_to_num (keep the inputs finite rather than repairing the output), or logits clamped before a "
            "sigmoid (logit_clamp); then re-measure"
        )
        out.append(
            Finding("DEAD_GRADIENT", "warning", message, {"dead_fraction": frac, "threshold": threshold}, fix, name)
        )
    return out


# -- history findings ---------------------------------------------------------------------------

Row = Mapping[str, float]


def _flat(row) -> Row:
    as_dict = getattr(row, "as_dict", None)  # a LossReport
    return as_dict() if callable(as_dict) else row


def term_names(row: Row) -> list[str]:
    """Keys ``name`` of a flat row that have a ``name/normalizer`` companion (the loss terms)."""
    return [k for k in row if f"{k}/normalizer" in row]


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def check_nonfinite(history: Iterable[Row]) -> list[Finding]:
    """``NONFINITE`` at the first row (step) where a term's value, raw sum or normalizer, or the total,
    is NaN or Inf.

    ``history`` is a list of flat per-step dicts (:meth:`LossReport.as_dict`, LossReports themselves,
    or ``steps.csv`` rows); the step is the row's ``step`` entry, else its index. Only term keys and
    ``total`` are checked, so empty CSV cells of other columns (read as NaN) do not fire.
    """
    for index, row in enumerate(history):
        row = _flat(row)
        step = row.get("step", index)
        step = int(step) if _finite(step) else index
        bad: dict[str, float] = {}
        first_term = None
        for name in term_names(row):
            for key in (name, f"{name}/raw_sum", f"{name}/normalizer", f"{name}/weight"):
                if key in row and not _finite(row[key]):
                    bad[key] = float(row[key])
                    first_term = first_term or name
        totals = [k for k in row if k == "total" or k.endswith("/total")]
        for key in totals:
            if not _finite(row[key]):
                bad[key] = float(row[key])
        if not bad:
            continue
        where = f"term {first_term!r}" if first_term else "the total"
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        message = f"first non-finite value at step {step} in {where} ({shown})."
        others = sorted({k.split("/")[0] for k in bad if k.split("/")[0] not in (first_term, "total")})
        if others:
            message += f" Also non-finite: {', '.join(others)}."
        fix = (
            f"rerun from the last checkpoint before step {step} with DETLOSS_DEBUG_NAN=1, which raises at the first "
            f"non-finite value or gradient and names the term and whether its value or gradient failed; then check "
            f"{first_term or 'each term'}'s inputs at that step (degenerate boxes or polygons, logits overflowing "
            "under autocast, a normalizer of 0); lower the learning rate or clip the gradient norm; do not "
            "nan_to_num the loss (it zeroes the gradient of every element it repairs, so they stop learning)"
        )
        return [Finding("NONFINITE", "error", message, {"step": float(step), **bad}, fix, first_term)]
    return []


def _strip(key: str) -> str:
    head, sep, rest = key.partition("/")
    return rest if sep and head in ("train", "val") else key


def _normalizers(rows: Sequence[Row]) -> dict[str, list[float]]:
    """Stripped term name -> its finite, positive normalizers over the rows."""
    out: dict[str, list[float]] = {}
    for row in rows:
        row = _flat(row)
        for name in term_names(row):
            v = row[f"{name}/normalizer"]
            if _finite(v) and float(v) > 0:
                out.setdefault(_strip(name), []).append(float(v))
    return out


_SKEW_FIX = (
    "change {term}'s normalizer to one that does not depend on the batch's content: "
    "'batch_size', 'fixed:{k}' (about its median), 'density', or 'ema_num_pos:0.99' (a running mean of the "
    "positives); keep the same normalizer for training and validation so their losses compare"
)


def check_normalizer_skew(
    train_rows: Sequence[Row],
    val_rows: Sequence[Row] | None = None,
    ratio: float = 10.0,
    val_ratio: float | None = None,
) -> list[Finding]:
    """``NORMALIZER_SKEW`` for a term whose ``*/normalizer`` varies by more than ``ratio`` (max / min)
    across the training rows, or whose median differs between training and validation rows by more
    than ``val_ratio`` (default: ``ratio``), either way round.

    Keys may carry a ``train/`` or ``val/`` prefix; terms are matched without it.
    """
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    val_ratio = ratio if val_ratio is None else val_ratio
    train = _normalizers(train_rows)
    val = _normalizers(val_rows or [])
    out = []
    for term, values in train.items():
        lo, hi, med = min(values), max(values), statistics.median(values)
        if hi / lo > ratio:
            message = (
                f"{term}'s normalizer ranges {_g(lo)}..{_g(hi)} over {len(values)} steps ({_g(hi / lo)}×, "
                f"threshold {_g(ratio)}×): the same error weighs {_g(hi / lo)}× more in some batches than in others."
            )
            numbers = {"min": lo, "max": hi, "median": med, "spread": hi / lo, "ratio": ratio}
            fix = _SKEW_FIX.format(term=term, k=_g(med))
            out.append(Finding("NORMALIZER_SKEW", "warning", message, numbers, fix, term))
        if term in val:
            vmed = statistics.median(val[term])
            skew = max(med / vmed, vmed / med)
            if skew > val_ratio:
                message = (
                    f"{term}'s median normalizer is {_g(med)} in training and {_g(vmed)} in validation "
                    f"({_g(skew)}×, threshold {_g(val_ratio)}×): training and validation losses are not comparable."
                )
                numbers = {"train_median": med, "val_median": vmed, "skew": skew, "ratio": val_ratio}
                fix = _SKEW_FIX.format(term=term, k=_g(med))
                out.append(Finding("NORMALIZER_SKEW", "warning", message, numbers, fix, term))
    return out


def check_detection_collapse(
    epoch_rows: Sequence[Row],
    key: str = "val/dets_per_image",
    drop: float = 0.2,
    floor: float = 0.05,
) -> list[Finding]:
    """``DETECTION_COLLAPSE`` when the latest value of ``key`` (detections per image above the
    confidence threshold) is below ``drop`` × its peak so far, or below ``floor`` after the peak
    was at least ``floor``. Rows without a finite ``key`` (epochs without evaluation) are skipped;
    at least two evaluations are needed. A model that never reached ``floor`` has not collapsed.
    """
    series = [(i, float(_flat(r)[key])) for i, r in enumerate(epoch_rows) if key in _flat(r) and _finite(_flat(r)[key])]
    if len(series) < 2:
        return []
    peak_at, peak = max(series, key=lambda p: p[1])
    last_at, last = series[-1]
    if peak < floor or not (last < drop * peak or last < floor):
        return []
    row = _flat(epoch_rows[last_at])
    epoch = row.get("epoch", last_at)
    peak_epoch = _flat(epoch_rows[peak_at]).get("epoch", peak_at)
    message = (
        f"{key} fell from {_g(peak)} (epoch {_g(peak_epoch)}) to {_g(last)} (epoch {_g(epoch)}): "
        f"{_g(last / peak) if peak else '0'}× the peak (thresholds: {_g(drop)}× the peak, or {_g(floor)})."
    )
    numbers = {"peak": peak, "last": last, "peak_epoch": float(peak_epoch), "epoch": float(epoch), "drop": drop}
    fix = (
        "the classifier is learning to say 'background' everywhere: lower or delay the background penalty "
        "(its max_value, burn-in or warm-up), check that the cls normalizer does not shrink the positives' "
        "gradient (a 'mean' over every anchor-class divides each positive by B·A·C), raise positive weights "
        "(pos_weight / class weights), and inspect the assigner's positives per image; evaluate at a lower "
        "confidence to see whether scores shrank or detections vanished"
    )
    return [Finding("DETECTION_COLLAPSE", "error", message, numbers, fix)]


def _relative_change(ys: Sequence[float]) -> float:
    """Least-squares slope × (n − 1) / mean(|y|): the fitted line's change over the window, relative."""
    n = len(ys)
    xm = (n - 1) / 2
    ym = sum(ys) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sxx
    scale = sum(abs(y) for y in ys) / n
    return slope * (n - 1) / scale if scale > 0 else 0.0


def check_plateau(
    step_rows: Sequence[Row],
    window: int = 100,
    tolerance: float = 0.05,
    min_points: int = 8,
) -> list[Finding]:
    """``PLATEAU`` for each term that is not decreasing over the last ``window`` rows while at least
    one other term is.

    "Decreasing": fit a least-squares line to the term's unweighted loss ``value / weight`` (so
    weight schedules do not count as learning) over the last ``window`` rows (all rows when fewer,
    at least ``min_points``); its relative change is ``slope × (n − 1) / mean(|y|)``, the fitted
    change over the window as a fraction of the level. A term decreases when that is below
    ``-tolerance``. Terms with weight 0 somewhere in the window, or non-finite values, are skipped.
    """
    if window < 2 or min_points < 2:
        raise ValueError("window and min_points must be >= 2")
    rows = [_flat(r) for r in step_rows][-window:]
    if len(rows) < min_points:
        return []
    changes: dict[str, float] = {}
    for name in term_names(rows[-1]):
        ys = []
        for row in rows:
            v, w = row.get(name), row.get(f"{name}/weight", 1.0)
            if not (_finite(v) and _finite(w)) or float(w) == 0:
                break
            ys.append(float(v) / float(w))
        else:
            changes[name] = _relative_change(ys)
    decreasing = [n for n, c in changes.items() if c < -tolerance]
    if not decreasing:
        return []
    out = []
    for name, change in changes.items():
        if name in decreasing:
            continue
        others = ", ".join(f"{n} {100 * changes[n]:+.1f}%" for n in decreasing)
        message = (
            f"{name} changed {100 * change:+.1f}% over the last {len(rows)} steps (least-squares fit, "
            f"unweighted) while {others}; decreasing means below {-100 * tolerance:.1f}%."
        )
        numbers = {"relative_change": change, "window": float(len(rows)), "tolerance": tolerance}
        numbers.update({f"{n}/relative_change": changes[n] for n in decreasing})
        fix = (
            f"measure {name}'s gradient (gradient_accounting / detloss doctor): if another term dominates "
            f"(GRAD_DOMINANCE), raise {name}'s weight by the ratio it reports or give its head its own learning "
            f"rate (its own optimizer parameter group); if much of it is zero (DEAD_GRADIENT), remove the hard mask, "
            f"clamp or nan_to_num on its path"
        )
        out.append(Finding("PLATEAU", "warning", message, numbers, fix, name))
    return out
