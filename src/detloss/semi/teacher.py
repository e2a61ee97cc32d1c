"""The EMA teacher of teacher-student training: a frozen copy of the student, averaged after each step."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher:
    """``teacher = d * teacher + (1 - d) * student`` for every floating tensor of the state dict (integer
    buffers are copied), after each optimizer step of the student.

    ``d = decay``, or with ``ramp`` ``d = min(decay, 1 - 1 / (updates + 1))`` (Mean Teacher's ramp: the
    first update copies the student, the n-th averages over about n steps until ``1 / (1 - decay)``).
    The teacher's parameters have ``requires_grad=False`` and it stays in eval mode: it receives no gradient.

    Example:
        >>> student = nn.Linear(1, 1, bias=False)
        >>> teacher = EMATeacher(student, decay=0.5, ramp=False)
        >>> with torch.no_grad():
        ...     student.weight.fill_(1.0); teacher.module.weight.fill_(0.0)
        >>> teacher.update(student); float(teacher.module.weight)
        0.5
    """

    def __init__(self, student: nn.Module, decay: float = 0.999, ramp: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(student).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = float(decay), bool(ramp), 0

    def current_decay(self) -> float:
        """The ``d`` the next :meth:`update` uses."""
        if not self.ramp:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.updates + 2))

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        d = self.current_decay()
        source = student.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
