"""Training batches from ``DataLoader`` worker processes (``data.workers``), sample for sample the batches the
main process would build: every sample is augmented from its own (seed, epoch, index) generator, so
neither the worker that loads it nor the number of workers changes it, and a resumed run is exact."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from detloss.data.augment import Augment
from detloss.data.collate import collate
from detloss.train.data import load_sample


class _Samples(torch.utils.data.Dataset):
    """``samples[(epoch, index)]``: :func:`load_sample` of ``dataset[index]`` for ``epoch``."""

    def __init__(self, dataset, seed: int, hflip: float, augment: Augment | None) -> None:
        self.dataset, self.seed, self.hflip, self.augment = dataset, seed, hflip, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        return load_sample(self.dataset, index, epoch, self.seed, self.hflip, self.augment)


class _Plan:
    """The batch sampler: the index lists set for the current epoch (read in the main process)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(samples: Sequence[dict]) -> tuple[Tensor, dict[str, Tensor]]:
    images, targets = collate(samples)
    return images, {k: v for k, v in targets.items() if torch.is_tensor(v)}


class BatchLoader:
    """Collated batches ``(images (B, 3, H, W), targets)`` of given dataset indices, loaded by ``workers``
    persistent processes (kept across epochs, so a ``ram`` image cache stays warm in each of them).

    ``pin_memory`` is for CUDA targets; ``prefetch`` batches per worker are loaded ahead. The loader's
    own generator is seeded, so it does not draw from the global torch RNG.
    """

    def __init__(
        self, dataset, seed: int, hflip: float, augment: Augment | None, workers: int, pin_memory: bool = False,
        prefetch: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (0 loads in the main process), got {workers}")
        self.plan = _Plan()
        self.loader = torch.utils.data.DataLoader(
            _Samples(dataset, seed, hflip, augment),
            batch_sampler=self.plan,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=True,
            prefetch_factor=prefetch,
            generator=torch.Generator().manual_seed(seed),
        )

    def __call__(self, epoch: int, batches: Sequence[Sequence[int]]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """The batches of ``epoch``, in order; ``batches`` are lists of dataset indices."""
        self.plan.batches = [[(epoch, int(j)) for j in ids] for ids in batches]
        return iter(self.loader)
