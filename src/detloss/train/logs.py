"""CSV logs (per step, per epoch), optional TensorBoard, and a dependency-free progress bar."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path


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
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
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

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(log_dir))

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
