"""Opt-in non-finite checks: ``DETLOSS_DEBUG_NAN=1`` or :func:`set_debug_nan` (these sync the host).

With the check on, :func:`watch` raises :class:`NonFiniteLossError` naming the first term whose value
or gradient is NaN or Inf. To name the *operation* that made it, run the failing computation again
under :func:`locate_nonfinite`: a :class:`NonFiniteOpMode` (a ``TorchDispatchMode``) sees every aten
operation, forward and backward, and records the first one whose floating output is non-finite while
its inputs were finite, with the source line that called it (for a backward operation: the autograd
node, e.g. ``SqrtBackward0``, and the line of the forward operation it differentiates, recorded by
``torch.autograd.detect_anomaly``). This costs one extra pass with a host sync per operation, so it is
meant for the one failing step only.
"""

from __future__ import annotations

import os
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "NonFiniteLossError",
    "NonFiniteOp",
    "NonFiniteOpMode",
    "debug_nan",
    "debug_nan_enabled",
    "locate_nonfinite",
    "set_debug_nan",
    "watch",
]

_forced: bool | None = None


class NonFiniteLossError(FloatingPointError):
    """A loss term's value or gradient was NaN or infinite; ``term`` names it, ``where`` is
    ``"value"`` or ``"gradient"``."""

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


@contextmanager
def debug_nan(enabled: bool | None) -> Iterator[None]:
    """:func:`set_debug_nan` for the ``with`` block, then the previous setting again."""
    global _forced
    before = _forced
    _forced = enabled
    try:
        yield
    finally:
        _forced = before


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


# -- naming the operation ------------------------------------------------------------------------

_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_DETLOSS_DIR = str(Path(__file__).resolve().parent.parent)  # the package root, above core/
_THIS_FILE = str(Path(__file__).resolve())
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


@dataclass(frozen=True)
class NonFiniteOp:
    """The first operation that made a non-finite value out of finite ones.

    Attributes:
        op: the aten overload, e.g. ``"aten.log.default"`` or ``"aten.div.Tensor"``.
        produced: ``"nan"`` or ``"inf"`` (NaN wins when the output holds both).
        phase: ``"forward"`` or ``"backward"``.
        node: in the backward pass, the autograd node that ran it, e.g. ``"SqrtBackward0"``; else ``None``.
        location: ``"file:line in function"`` of the innermost calling frame outside torch (in the
            backward pass: of the forward operation the node differentiates), or ``None``.
        detloss_location: the same for the innermost frame inside the ``detloss`` package, written
            ``detloss/<path>:line in function``, or ``None``.
        after_inf: for ``produced="nan"``: the first operation of the same pass that made an Inf out of
            finite values, if one ran before (``0 * inf``, ``inf - inf``: the Inf is the cause).
    """

    op: str
    produced: str
    phase: str
    node: str | None = None
    location: str | None = None
    detloss_location: str | None = None
    after_inf: NonFiniteOp | None = None

    def describe(self) -> str:
        """One phrase, e.g. ``"aten.log.default (forward, made nan) at tests/test_x.py:12 in f, called from
        detloss/criteria/dense.py:240 in forward"``."""
        what = f"{self.op} ({self.phase}{' in ' + self.node if self.node else ''}, made {self.produced})"
        where = f" at {self.location}" if self.location else ""
        if self.detloss_location and self.detloss_location != self.location:
            where += f", called from {self.detloss_location}"
        cause = f"; the Inf came first from {self.after_inf.describe()}" if self.after_inf else ""
        return what + where + cause


def _display(path: str) -> str:
    """A frame's file for messages: ``detloss/...`` inside the package, relative to the working
    directory when below it, else as given."""
    resolved = Path(path).resolve()
    text = str(resolved)
    if text.startswith(_DETLOSS_DIR + os.sep):
        return f"detloss/{resolved.relative_to(_DETLOSS_DIR).as_posix()}"
    try:
        return resolved.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def _locations(frames: list[tuple[str, int, str]]) -> tuple[str | None, str | None]:
    """(innermost frame outside torch and this module, innermost frame inside detloss), formatted."""
    user = package = None
    for file, line, func in reversed(frames):  # innermost first
        resolved = str(Path(file).resolve()) if not file.startswith("<") else file
        if resolved.startswith(_TORCH_DIR + os.sep) or resolved == _THIS_FILE:
            continue
        text = f"{_display(file)}:{line} in {func}"
        if user is None:
            user = text
        if resolved.startswith(_DETLOSS_DIR + os.sep):
            package = text
            break
    return user, package


def _stack_frames() -> list[tuple[str, int, str]]:
    return [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_stack()]


def _anomaly_frames(node) -> list[tuple[str, int, str]]:
    """The forward stack ``detect_anomaly`` stored on an autograd node (empty without anomaly mode)."""
    try:
        lines = node.metadata.get("traceback_", [])
    except (AttributeError, RuntimeError):
        return []
    frames = []
    for entry in lines:
        m = _FRAME.search(entry)
        if m:
            frames.append((m["file"], int(m["line"]), m["func"]))
    return frames


def _floating(x: Any) -> bool:
    return isinstance(x, Tensor) and (x.is_floating_point() or x.is_complex())


def _state(values: list[Any], count_scalars: bool) -> tuple[bool, bool]:
    """``(has_nan, has_inf)`` over the floating tensors (and, if ``count_scalars``, Python floats)."""
    nan = inf = False
    for v in values:
        if _floating(v) and v.numel():
            if bool(torch.isnan(v).any()):
                nan = True
            if bool(torch.isinf(v).any()):
                inf = True
        elif count_scalars and isinstance(v, float):
            nan |= v != v
            inf |= v in (float("inf"), float("-inf"))
    return nan, inf


#: Ops whose output is uninitialized memory: whatever bits it holds are no one's fault.
_UNINITIALIZED = ("empty", "resize")


class NonFiniteOpMode(TorchDispatchMode):
    """Records, per pass (forward and backward), the first aten operation whose floating output holds
    a NaN while its inputs held none (``nan``), and the first whose output holds an Inf while its
    inputs were finite (``inf``).

    "Inputs" are the tensor arguments, all read before the operation when it writes one in place
    (``out=`` arguments are not inputs). A NaN written as a Python constant (``x * math.nan``) is
    charged to the operation that uses it; an Inf constant (``masked_fill(mask, -inf)``, a deliberate
    mask) is not an event.
    Operations producing uninitialized memory (``empty``) are skipped. The pass is the backward one
    while an autograd node runs (``torch._C._current_autograd_node()``).

    Attributes:
        first: ``{(phase, produced): NonFiniteOp}``, e.g. ``first[("forward", "nan")]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[tuple[str, str], NonFiniteOp] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if any(word in name for word in _UNINITIALIZED):
            return func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        phase = "forward" if node is None else "backward"
        if (phase, "nan") in self.first and (phase, "inf") in self.first:
            return func(*args, **kwargs)
        schema = func._schema
        read, written, before = [], [], None
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if arg.is_out:
                continue
            is_write = arg.alias_info is not None and arg.alias_info.is_write
            (written if is_write else read).append(value)
        if written:  # in place: what it read is gone afterwards (an input may alias the written one)
            before = _state(tree_flatten(read + written)[0], count_scalars=False)
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if _floating(t)]
        made_nan, made_inf = _state(outputs, count_scalars=False)
        if not (made_nan or made_inf):
            return out
        in_nan, in_inf = _state(tree_flatten(read)[0], count_scalars=False) if before is None else before
        sc_nan, sc_inf = _state([a for a in tree_flatten(read)[0] if isinstance(a, float)], count_scalars=True)
        events = []
        if made_nan and not in_nan:
            events.append("nan")
        if made_inf and not (in_nan or in_inf or sc_inf or sc_nan):
            events.append("inf")
        for produced in events:
            if (phase, produced) in self.first:
                continue
            frames = _stack_frames() if node is None else _anomaly_frames(node)
            location, package = _locations(frames)
            cause = self.first.get((phase, "inf")) if produced == "nan" and in_inf else None
            self.first[(phase, produced)] = NonFiniteOp(
                name, produced, phase, None if node is None else node.name(), location, package, cause
            )
        return out

    def found(self, phase: str) -> NonFiniteOp | None:
        """The first NaN event of ``phase`` (``"forward"`` / ``"backward"``), else its first Inf event."""
        return self.first.get((phase, "nan")) or self.first.get((phase, "inf"))


def locate_nonfinite(fn: Callable[[], Any], where: str = "value") -> tuple[NonFiniteOp | None, BaseException | None]:
    """Run ``fn()`` under ``detect_anomaly(check_nan=False)`` and a :class:`NonFiniteOpMode`; name the
    first operation of the forward pass (``where="value"``) or of the backward passes (``"gradient"``)
    that made a non-finite value out of finite ones.

    ``fn`` is typically the failing step run again (with :class:`NonFiniteLossError` raised by
    :func:`watch` once more); any exception it raises is caught and returned, so the operation is still
    named. Returns ``(operation or None, the exception or None)``.

    Example:
        >>> x = torch.tensor([1.0, -1.0])
        >>> op, _ = locate_nonfinite(lambda: torch.log(x * 2).sum())
        >>> op.op, op.produced
        ('aten.log.default', 'nan')
    """
    if where not in ("value", "gradient"):
        raise ValueError(f"where must be 'value' or 'gradient', got {where!r}")
    mode = NonFiniteOpMode()
    error: BaseException | None = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
        with torch.autograd.detect_anomaly(check_nan=False):
            try:
                with mode:
                    fn()
            except Exception as err:  # the step fails again: that is expected
                error = err
    return mode.found("forward" if where == "value" else "backward"), error
