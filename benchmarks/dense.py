"""Forward+backward time and peak extra memory of ``DenseCriterion`` versus a naive YOLOv8 loss (CPU).

    python benchmarks/dense.py [--case a|b|all] [--repeats 5]

Cases (640x640 input, strides 8/16/32 -> 8400 anchors, 80 classes, reg_max 16):

* ``a``: B = 16, 8 objects per image;
* ``b``: B = 8, 300 objects per image.

Rows: ``naive`` (ultralytics' own data flow, kept below: permute + contiguous of all predictions, decode of
*all* anchors with grad, dense ``(B, M, A)`` assigner tensors, BCE over ``(B, A, C)``), ``DenseCriterion``
with default options, ``DenseCriterion(preset="ultralytics")``, and ``unavoidable``: BCE over every anchor and
class plus the DFL softmax over every anchor, forward and backward (no assignment at all), as a floor.

Memory and time of every (case, row) are measured in two fresh subprocesses. The memory one runs with
``MALLOC_MMAP_THRESHOLD_=65536`` (large buffers are mmapped, so freed memory leaves the resident set at once;
the timed one keeps glibc's default, which reuses freed memory). Peak extra memory = the resident-set high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``) during one forward+backward after a warm-up, minus the
resident set just before it, with the inputs already allocated (gradients of the inputs count as extra).
(Without a resettable high-water mark, the ``ru_maxrss`` growth over the first call is reported instead.)
Time = median of ``--repeats`` forward+backward calls after one warm-up, at torch's default thread count; on
a shared machine each timed call first waits (up to ``--wait-idle`` seconds) for the CPUs to be idle.
``checks ms`` (``DenseCriterion`` rows): the part of each timed call spent in the value checks of the targets
(:class:`~detloss.criteria.target_checks.ValueChecks`: building the masks of bad entries and the one read of
all flags, which also fetches the most objects per image that the padding needs), median over the same calls.
Targets (2 cores): case a ``DenseCriterion`` under 140 ms and at least 2x faster than naive; case b peak
extra memory under 150 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from detloss.ops.head_layout import HeadLayout
from detloss.testing.reference_yolo import v8_detection_loss

CASES = {"a": {"batch": 16, "objects": 8}, "b": {"batch": 8, "objects": 300}}
ROWS = ("naive", "default", "ultralytics", "unavoidable")
LABELS = {
    "naive": "naive (ultralytics layout)",
    "default": "DenseCriterion()",
    "ultralytics": 'DenseCriterion(preset="ultralytics")',
    "unavoidable": "unavoidable: BCE + DFL softmax",
}
IMAGE, STRIDES, NUM_CLASSES, REG_MAX = 640, (8, 16, 32), 80, 16
LAYOUT = HeadLayout(REG_MAX, NUM_CLASSES)


def naive_loss(feats, targets, nc=NUM_CLASSES, strides=STRIDES, reg_max=REG_MAX):
    """``(total, {box, cls, dfl}, fg)`` of YOLOv8's loss computed the straightforward (ultralytics) way."""
    terms = v8_detection_loss(feats, targets, nc, strides, reg_max)
    fg = terms.pop("fg")
    return sum(terms.values()) * feats[0].shape[0], terms, fg


def unavoidable_loss(feats, layout=LAYOUT):
    """BCE (against the all-background target: ``softplus(x)``) over every anchor and class, plus the DFL
    softmax expectation over every anchor, in the head's own layout (no permute, no assignment)."""
    total = feats[0].new_zeros(())
    for f in feats:
        box, cls, _, _ = layout.split(f.flatten(2))  # split: backward writes, no zero-fill
        total = total + F.softplus(cls).sum() + layout.decode_boxes(box, dim=1).sum()
    return total


# ----------------------------------------------------------------------------------------------------------
# Measurement (one subprocess per case and row)
# ----------------------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cpu_idle_fraction(interval: float = 0.2) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(total1 - total0, 1)


def _wait_idle(max_seconds: float) -> bool:
    """Wait until the other processes leave the CPUs idle (>= 90 %) or ``max_seconds`` pass; True if idle."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        if _cpu_idle_fraction() >= 0.9:
            return True
    return max_seconds <= 0


class _CheckTimer:
    """Accumulates the wall time spent inside :class:`ValueChecks` methods (wraps them in this process)."""

    def __init__(self) -> None:
        from detloss.criteria.target_checks import ValueChecks

        self.seconds = 0.0
        for name in ("integers", "bool_mask", "boxes", "finite_points", "verify"):
            setattr(ValueChecks, name, self._wrap(getattr(ValueChecks, name)))

    def _wrap(self, method):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def worker(case: str, row: str, what: str, repeats: int, wait_idle: float = 0.0) -> dict:
    """Measure ``what`` (``"memory"`` or ``"time"``) of one row in this (fresh) process."""
    from detloss.criteria.dense import DenseCriterion
    from detloss.data.synthetic import random_feats, random_targets

    cfg = CASES[case]
    feats = random_feats(cfg["batch"], LAYOUT.num_channels, IMAGE, STRIDES, seed=0)
    targets = random_targets(cfg["batch"], NUM_CLASSES, cfg["objects"], seed=0)
    if row == "naive":

        def step():
            total, terms, fg = naive_loss(feats, targets)
            total.backward()
            return terms, fg
    elif row == "unavoidable":

        def step():
            unavoidable_loss(feats).backward()
            return {}, None
    else:
        crit = DenseCriterion(NUM_CLASSES, STRIDES, REG_MAX, preset=None if row == "default" else row)

        def step():
            report = crit(feats, targets)
            report.total.backward()
            return {k: report[k].value for k in ("box", "cls", "dfl")}, int(report["box"].num_pos)

    def clear():
        for f in feats:
            f.grad = None
        gc.collect()

    if what == "memory":
        exact = _reset_peak()
        if not exact:  # no resettable high-water mark: the first (cold) call against the inputs' peak
            before_kb = _status_kb("VmHWM")
        else:
            step()  # warm-up
            clear()
            _reset_peak()
            before_kb = _status_kb("VmRSS")
        terms, fg = step()
        return {
            "mb": (_status_kb("VmHWM") - before_kb) / 1024,
            "exact_peak": exact,
            "terms": {k: float(v.detach()) for k, v in terms.items()},
            "fg": fg,
        }
    checks = _CheckTimer() if row in ("default", "ultralytics") else None
    step()  # warm-up
    times, check_times, busy = [], [], 0
    for _ in range(repeats):
        clear()
        busy += not _wait_idle(wait_idle)
        if checks is not None:
            checks.seconds = 0.0
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        if checks is not None:
            check_times.append(checks.seconds * 1e3)
    checks_ms = statistics.median(check_times) if check_times else None
    return {"ms": statistics.median(times), "checks_ms": checks_ms, "threads": torch.get_num_threads(), "busy": busy}


def run_row(case: str, row: str, repeats: int, wait_idle: float) -> dict:
    """Memory in one fresh process (fixed mmap threshold), time in another (the default allocator)."""
    result = {}
    for what in ("memory", "time"):
        env = dict(os.environ)
        if what == "memory":
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{case}:{row}:{what}"]
        cmd += ["--repeats", str(repeats), "--wait-idle", str(wait_idle)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"worker {case}:{row}:{what} failed:\n{out.stderr}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("a", "b", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median reported)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=20.0,
        help="before each timed call wait up to this many seconds for idle CPUs (shared machines); 0: off",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        case, row, what = args.worker.split(":")
        print(json.dumps(worker(case, row, what, args.repeats, args.wait_idle)))
        return

    cases = ("a", "b") if args.case == "all" else (args.case,)
    load0 = os.getloadavg()[0]
    results = {(c, r): run_row(c, r, args.repeats, args.wait_idle) for c in cases for r in ROWS}
    any_row = next(iter(results.values()))
    method = "VmHWM reset via /proc/self/clear_refs" if any_row["exact_peak"] else "ru_maxrss growth, cold call"
    print(
        f"CPU, torch {torch.__version__}, {any_row['threads']} threads, median of {args.repeats} fwd+bwd after "
        f"1 warm-up; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"peak extra MB: resident-set high-water mark minus resident set before the call ({method}), fresh process")
    print("ratio = ms / naive ms (<= 0.50 means at least 2x faster than naive)")
    busy = sum(r["busy"] for r in results.values())
    if busy:
        print(f"warning: {busy} timed calls started while other processes kept the CPUs busy (see --wait-idle)")
    header = (
        f"{'case':<24} {'implementation':<38} {'fwd+bwd ms':>10} {'ratio vs naive':>14} {'peak extra MB':>13} "
        f"{'checks ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for c in cases:
        cfg = CASES[c]
        label = f"{c}: B={cfg['batch']}, {cfg['objects']} obj/img"
        naive = results[(c, "naive")]["ms"]
        for r in ROWS:
            res = results[(c, r)]
            checks = "-" if res["checks_ms"] is None else f"{res['checks_ms']:.2f}"
            print(
                f"{label:<24} {LABELS[r]:<38} {res['ms']:>10.1f} {res['ms'] / naive:>14.2f} {res['mb']:>13.1f} "
                f"{checks:>9}"
            )
    for c in cases:  # the naive loss and the preset compute the same numbers
        a, b = results[(c, "naive")], results[(c, "ultralytics")]
        rel = max(abs(a["terms"][k] / b["terms"][k] - 1) for k in a["terms"])
        print(f"case {c}: naive vs preset: max relative term difference {rel:.1e}, fg {a['fg']} vs {b['fg']}")


if __name__ == "__main__":
    main()
