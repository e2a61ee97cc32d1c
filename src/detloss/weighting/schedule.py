"""Weight schedules the trainer evaluates once per epoch (fractional epochs allowed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupSchedule:
    """Zero during ``burn_in`` epochs, then a warm-up over ``warmup`` epochs to ``max_value``.

    ``mode="linear"``: ``max_value * min(1, (epoch - burn_in) / warmup)``.
    ``mode="step"``: zero until ``burn_in + warmup``, then ``max_value``.

    Example:
        >>> s = WarmupSchedule(max_value=1.5, burn_in=5, warmup=5)
        >>> [s.value(e) for e in (0, 5, 7.5, 10, 20)]
        [0.0, 0.0, 0.75, 1.5, 1.5]
    """

    max_value: float
    burn_in: float = 0.0
    warmup: float = 0.0
    mode: str = "linear"

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "step"):
            raise ValueError(f"mode must be 'linear' or 'step', got {self.mode!r}")
        if self.burn_in < 0 or self.warmup < 0:
            raise ValueError(f"burn_in and warmup must be >= 0, got {self.burn_in} and {self.warmup}")

    def value(self, epoch: float) -> float:
        """The weight at ``epoch`` (0-based; fractional epochs interpolate in linear mode)."""
        since = epoch - self.burn_in
        if since < 0:
            return 0.0
        if self.warmup == 0 or since >= self.warmup:
            return float(self.max_value)
        return 0.0 if self.mode == "step" else float(self.max_value) * since / self.warmup
