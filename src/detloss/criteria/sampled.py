"""What the RPN and ROI criteria share: max-IoU assignment, per-image random sampling with hashed keys
that change with the epoch, delta-encoded box regression settings, and the counts their normalizers read."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from detloss.assign.max_iou import MaxIoUAssigner
from detloss.assign.sampler import RandomSampler, hashed_keys, image_keys
from detloss.criteria.terms import TermCriterion


class SampledCriterion(TermCriterion):
    """Base of :class:`~detloss.criteria.rpn.RPNCriterion` and :class:`~detloss.criteria.roi.ROICriterion`.

    **Sampling determinism.** The sampler's random keys are a hash of ``(seed, epoch, image key, index)``
    (:func:`detloss.assign.sampler.hashed_keys`), computed on the device; the image key is the
    ``image_ids`` given to ``forward`` (use dataset indices) or, by default, a hash of the image's GT
    boxes. So an image is sampled the same way whichever rank or batch position it has, and a k-rank DDP
    step samples exactly what one process on the concatenated batch samples. :meth:`set_epoch` (the
    trainer calls it) draws a new sample each epoch.
    """

    def setup_sampling(
        self,
        *,
        beta: float,
        box_stds: Sequence[float],
        sample_num: int,
        pos_fraction: float,
        neg_pos_ub: float,
        pos_iou: float,
        neg_iou: float,
        min_pos_iou: float,
        allow_low_quality: bool,
        seed: int,
    ) -> None:
        """Box regression settings (smooth-L1 ``beta``, delta ``box_stds``), the assigner, the sampler."""
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.box_stds = tuple(float(s) for s in box_stds)
        if len(self.box_stds) != 4:
            raise ValueError(f"box_stds must have 4 entries, got {len(self.box_stds)}")
        self.assigner = MaxIoUAssigner(pos_iou, neg_iou, min_pos_iou, allow_low_quality)
        self.sampler = RandomSampler(sample_num, pos_fraction, neg_pos_ub)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: float) -> None:
        """Sampling changes with ``floor(epoch)``; the trainer calls this."""
        self.epoch = int(epoch // 1)

    def sample_keys(
        self, boxes: Sequence[Tensor], image_ids: Sequence[int] | Tensor | None, *index: Tensor
    ) -> Tensor:
        """The sampler's keys: a hash of the seed, the epoch, each image's key and ``index``
        (broadcast tensors naming each candidate within its image)."""
        device = index[0].device
        return hashed_keys(self.seed, image_keys(boxes, image_ids, device), *index, epoch=self.epoch)

    @staticmethod
    def sampled_counts(
        num_pos: Tensor, num_samples: Tensor, batch_size: int, images_with_fg: Tensor, num_cells: float
    ) -> dict[str, Tensor | float]:
        """The counts every sampled term's normalizer may read: ``num_pos`` and ``target_sum`` (sampled
        positives), ``num_samples``, ``batch_size``, ``images_with_fg`` and ``num_cells``."""
        return {
            "num_pos": num_pos,
            "target_sum": num_pos,
            "num_samples": num_samples,
            "batch_size": float(batch_size),
            "images_with_fg": images_with_fg,
            "num_cells": float(num_cells),
        }
