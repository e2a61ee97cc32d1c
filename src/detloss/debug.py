"""Opt-in non-finite checks: ``DETLOSS_DEBUG_NAN=1`` or :func:`set_debug_nan` (these sync the host)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

_forced: bool | None = None


class NonFiniteLossError(FloatingPointError):
    """A loss term's value or gradient was NaN or infinite; ``term`` names it."""

    def __init__(self, term: str, where: str) -> None:
        super().__init__(f"non-finite {where} in loss term {term!r}")
        self.term = term
        self.where = where


def set_debug_nan(enabled: bool | None) -> None:
    """Force the check on or off; ``None`` returns control to ``DETLOSS_DEBUG_NAN``."""
    global _forced
    _forced = enabled


def debug_nan_enabled() -> bool:
    if _forced is not None:
        return _forced
    return os.environ.get("DETLOSS_DEBUG_NAN", "0").lower() not in ("", "0", "false", "no")


def watch(term: str, value: Tensor, wrt: Tensor) -> None:
    """Raise :class:`NonFiniteLossError` if ``value`` or its gradient with respect to ``wrt`` is non-finite.

    The gradient is taken for this term alone (``autograd.grad`` with the graph retained), so the
    error names the term even when several terms share ``wrt``; it costs one extra backward per term.
    """
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(term, "value")
    if value.requires_grad and wrt.requires_grad:
        (grad,) = torch.autograd.grad(value, wrt, retain_graph=True, allow_unused=True)
        if grad is not None and not bool(torch.isfinite(grad).all()):
            raise NonFiniteLossError(term, "gradient")
