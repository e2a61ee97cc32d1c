"""Process-group setup for ``torchrun`` (gloo on CPU, nccl on GPU); a no-op in one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(device: str = "auto") -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, if any (idempotent)."""
    want = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        return DistContext(0, 1, want)
    if not dist.is_initialized():
        backend = "nccl" if want.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if want.type == "cuda":
        want = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(want)
    return DistContext(rank, dist.get_world_size(), want)
