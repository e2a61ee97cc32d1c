"""The EMA teacher of teacher-student training: a frozen copy of the student, averaged after each step."""

from __future__ import annotations

from torch import nn

from detloss.models.ema import ModelEMA


class EMATeacher(ModelEMA):
    """``teacher = d * teacher + (1 - d) * student`` for every floating tensor of the state dict (integer
    buffers are copied), after each optimizer step of the student.

    ``d = decay``, or with ``ramp`` ``d = min(decay, 1 - 1 / (updates + 1))`` (Mean Teacher's ramp: the
    first update copies the student, the n-th averages over about n steps until ``1 / (1 - decay)``).
    The teacher's parameters have ``requires_grad=False`` and it stays in eval mode: it receives no gradient.

    Example:
        >>> import torch
        >>> student = nn.Linear(1, 1, bias=False)
        >>> teacher = EMATeacher(student, decay=0.5, ramp=False)
        >>> with torch.no_grad():
        ...     _ = student.weight.fill_(1.0), teacher.module.weight.fill_(0.0)
        >>> teacher.update(student); float(teacher.module.weight)
        0.5
    """

    def __init__(self, student: nn.Module, decay: float = 0.999, ramp: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        super().__init__(student, float(decay))
        self.ramp = bool(ramp)

    def current_decay(self) -> float:
        """The ``d`` the next :meth:`update` uses."""
        if not self.ramp:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.updates + 2))
