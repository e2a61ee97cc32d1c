"""The few facts about ``torch.distributed`` every layer needs: the world size, one all-reduce of
named sums, and the check that a batch splits evenly over the ranks. Outside a process group
everything is the one-process identity."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["check_divisible", "global_sums", "world_size"]


def world_size() -> int:
    """Ranks in the default process group; 1 outside ``torch.distributed``."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sums(values: Mapping[str, Tensor | float], device: torch.device | None = None) -> dict[str, Tensor]:
    """Sum each value over all ranks with a single ``all_reduce``; identity outside DDP. No host sync."""
    if not values:
        return {}
    if device is None:
        device = next((v.device for v in values.values() if isinstance(v, Tensor)), None)
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in values.values()])
    if world_size() > 1:
        dist.all_reduce(stacked)
    return dict(zip(values, stacked.unbind(0), strict=True))


def check_divisible(name: str, value: int, world: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` (the user's setting ``name``, a batch size) splits into equal
    per-rank shares over ``world`` ranks (default :func:`world_size`): each rank takes ``value // world``.

    Example:
        >>> check_divisible("batch_size", 8, world=3)
        Traceback (most recent call last):
        ...
        ValueError: batch_size 8 must divide by the 3 ranks
    """
    world = world_size() if world is None else world
    if value % world:
        raise ValueError(f"{name} {value} must divide by the {world} ranks")
