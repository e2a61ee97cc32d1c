"""Input validation shared by every loss: bad input raises ``ValueError`` naming the argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(name: str, x: object, shape: Sequence[int | str | None], *, floating: bool = False) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of the given rank and sizes.

    ``shape`` lists one entry per dimension: an ``int`` fixes that size, a ``str`` or ``None`` leaves it
    free (the string names it in the message, e.g. ``("N", 4)``).
    """
    expected = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != len(shape) or any(isinstance(s, int) and x.shape[i] != s for i, s in enumerate(shape)):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {expected}, got dtype {x.dtype}")


def check_same(
    name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, dims: Sequence[int] | None = None
) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` share device and the listed dims (all dims if ``None``)."""
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; put both on one device")
    if dims is None:
        if a.shape != b.shape:
            raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")
        return
    for d in dims:
        if a.shape[d] != b.shape[d]:
            raise ValueError(f"{name_b} must match {name_a} in dim {d} (size {a.shape[d]}), got shape {tuple(b.shape)}")


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """Losses compute in float32 even under autocast; float64 is kept (gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


def common_float(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in float32 (:func:`as_float32`), or both in float64 when either is float64."""
    a, b = as_float32(a), as_float32(b)
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    return a, b


def check_float_pair(
    name_a: str, a: object, name_b: str, b: object, trailing: Sequence[int | str | None] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two floating tensors of one shape ending in ``trailing``, on one device, and return
    them through :func:`common_float`."""
    check_trailing(name_a, a, trailing, floating=True)
    check_trailing(name_b, b, trailing, floating=True)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    check_same(name_a, a, name_b, b)
    return common_float(a, b)


def check_trailing(name: str, x: object, trailing: Sequence[int | str | None] = (), *, floating: bool = False) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor whose last dims match ``trailing``, any leading dims.

    ``trailing=()`` accepts any shape (including 0-d); ``trailing=(4,)`` accepts ``(..., 4)``.
    """
    expected = "(" + ", ".join(["..."] + ["?" if s is None else str(s) for s in trailing]) + ")"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    k = len(trailing)
    if x.dim() < k or any(isinstance(s, int) and x.shape[x.dim() - k + i] != s for i, s in enumerate(trailing)):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {expected}, got dtype {x.dtype}")
