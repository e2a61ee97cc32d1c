"""CSV logs (per step, per epoch), optional TensorBoard, and a dependency-free progress bar."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from detloss.core.atomic import atomic_write


class CsvLog:
    """Appends rows to a CSV. A row with new keys (e.g. validation metrics that only some epochs have)
    extends the header and the file is rewritten, earlier rows getting empty cells."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with open(path) as f:
                self.fields = next(csv.reader(f))

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        elif any(k not in self.fields for k in row):
            self._extend([k for k in row if k not in self.fields])
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _extend(self, keys: list[str]) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.fields = [*self.fields, *keys]
        _rewrite(self.path, self.fields, rows)


def drop_rows_after(path: Path, step: int) -> int:
    """Keep the rows of the log ``path`` up to ``step`` (its ``step`` column) and drop the rest: what a run
    logged after the checkpoint it resumes from, which the resumed run logs again. Rows are in step
    order, so everything from the first row past ``step`` goes, and so does a torn row (a process killed
    while appending leaves a partial last line). Returns the number of rows dropped; rewrites atomically.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames
    if fields is None or "step" not in fields:
        raise ValueError(f"{path}: a run log needs a 'step' column, got {fields}")
    keep = 0
    for row in rows:
        if None in row.values() or None in row or not _at_most(row["step"], step):
            break
        keep += 1
    if keep < len(rows):
        _rewrite(path, fields, rows[:keep])
    return len(rows) - keep


def _at_most(cell: str, step: int) -> bool:
    try:
        return float(cell) <= step
    except ValueError:  # a torn number
        return False


def _rewrite(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a log as floats (empty cells become NaN)."""
    with open(path) as f:
        return [
            {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()} for row in csv.DictReader(f)
        ]


class TensorBoard:
    """Scalars to TensorBoard when it is installed (the ``tensorboard`` extra); silent otherwise."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step; TensorBoard hides the events a killed run logged from
        it on, as :func:`drop_rows_after` does for the CSV logs."""
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """One self-updating line on a terminal; a plain line every ``every`` steps otherwise (CI logs)."""

    def __init__(self, total: int, prefix: str, every: int = 10, stream=None) -> None:
        self.total, self.prefix, self.every = total, prefix, max(1, every)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, text: str = "") -> None:
        if not self.tty and done % self.every and done != self.total:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 24
        bar = "#" * int(width * done / max(self.total, 1))
        line = f"{self.prefix} [{bar:<{width}}] {done}/{self.total} {rate:.2f} it/s eta {eta:4.0f}s {text}"
        if self.tty:
            self.stream.write("\r" + line[:160])
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
