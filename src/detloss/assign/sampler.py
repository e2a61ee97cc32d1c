"""Random positive/negative sampling per image (mmdet ``RandomSampler`` semantics) and hashed sampling keys.

Per image (a *group*): positives are ``gt_index >= 0``, negatives ``gt_index == -1``, ignored ``-2``.

* ``take_pos = min(num_pos, int(num * pos_fraction))`` positives are drawn at random;
* ``expected_neg = num - take_pos``, capped at ``int(neg_pos_ub * max(1, take_pos))`` if ``neg_pos_ub >= 0``;
* ``take_neg = min(num_neg, expected_neg)`` negatives are drawn at random.

So an image with few positives fills its budget with negatives, and an image without GT samples
``num`` negatives. "At random" means: the elements with the smallest *keys*. Keys are either uniform
draws from a ``torch.Generator`` (:meth:`RandomSampler.__call__` with ``generator=``) or given, e.g.
from :func:`hashed_keys`, a counter-based hash of ``(seed, image key, element index)`` computed on
the device. Hashed keys make the sample of an image a function of that image alone, not of its
position in the batch or of the process it runs in — which is what a DDP run needs to sample
exactly what one process on the whole batch samples. Ties between keys are broken by index
(stable sort). All of it is vectorized over images; no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RandomSampler", "SampleResult", "content_keys", "hashed_keys", "image_keys", "mix", "rank_in_bucket"]

_MASK = 0x7FFFFFFF  # keys live in [0, 2**31): products with the 27-bit constant below fit in int64
_MULT = 0x45D9F3B


def mix(x: Tensor) -> Tensor:
    """An integer hash of int64 values, elementwise, into ``[0, 2**31)`` (the ``hash32`` mixer on 31 bits).

    Deterministic on every device (integer ops only, no overflow).

    >>> mix(torch.tensor([0, 1, 2]))
    tensor([         0,  824515495, 1722258072])
    """
    x = x.long() & _MASK
    x = (((x >> 16) ^ x) * _MULT) & _MASK
    x = (((x >> 16) ^ x) * _MULT) & _MASK
    return (x >> 16) ^ x


def hashed_keys(seed: int, image_keys: Tensor, index: Tensor, group: Tensor | None = None, epoch: int = 0) -> Tensor:
    """Sampling keys ``mix(mix(mix(mix(seed) ^ epoch) ^ image_key) ^ index)``, int64 in ``[0, 2**31)``.

    Args:
        seed: any int (a criterion's ``seed``).
        image_keys: ``(B,)`` int64 key per image (a global image id, or :func:`content_keys`).
        index: ``(B, N)`` or ``(N,)`` int element index within its image.
        group: with a 1-d ``index``, ``(N,)`` image of each element; ``None`` for a 2-d ``index``.
        epoch: mixed in so that an image is sampled differently in each epoch.

    Returns:
        keys of ``index``'s shape.
    """
    salt = mix(mix(torch.tensor(seed, device=image_keys.device)) ^ epoch)
    base = mix(salt ^ image_keys.long())  # (B,)
    per = base[:, None] if group is None else base[group.long()]
    return mix(per ^ index.long())


def content_keys(gt_boxes: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    """``(B,)`` int64 key per image from its GT boxes: an order-independent hash of the coordinates
    rounded to 1/16 px and of the number of boxes (images without GT share one key).

    >>> a = content_keys([torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]])])
    >>> b = content_keys([torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0]])])
    >>> bool(a == b)
    True
    """
    if device is None:
        device = gt_boxes[0].device if len(gt_boxes) else torch.device("cpu")
    b = len(gt_boxes)
    counts = torch.tensor([int(g.shape[0]) for g in gt_boxes], dtype=torch.long, device=device)
    if b == 0:
        return counts
    q = torch.cat([g.detach().to(device).reshape(-1, 4) for g in gt_boxes]).double().mul(16).round().long()
    h = mix(q[:, 0])
    for c in range(1, 4):
        h = mix(h ^ q[:, c])
    image = torch.repeat_interleave(torch.arange(b, device=device), counts)
    total = torch.zeros(b, dtype=torch.long, device=device).index_add_(0, image, h) & _MASK
    return mix(total ^ mix(counts))


def image_keys(gt_boxes: Sequence[Tensor], image_ids: Sequence[int] | Tensor | None = None, device=None) -> Tensor:
    """``(B,)`` int64 sampling key per image: the given global ``image_ids`` (e.g. dataset indices), or
    else :func:`content_keys` of the GT boxes."""
    if image_ids is None:
        return content_keys(gt_boxes, device)
    ids = torch.as_tensor(image_ids, device=device).long()
    if ids.shape != (len(gt_boxes),):
        raise ValueError(f"image_ids must have shape ({len(gt_boxes)},) (one id per image), got {tuple(ids.shape)}")
    return ids


@dataclass(frozen=True)
class SampleResult:
    """Sampled elements, bool masks of the input's shape: ``pos``, ``neg``; ``mask = pos | neg``."""

    pos: Tensor
    neg: Tensor

    @property
    def mask(self) -> Tensor:
        return self.pos | self.neg


def rank_in_bucket(bucket: Tensor, keys: Tensor, num_buckets: int) -> Tensor:
    """Rank (0-based) of each element among the elements of its bucket, by increasing key (ties by index)."""
    n = bucket.shape[0]
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(bucket[order], stable=True).indices]  # by bucket, then key, then index
    sizes = torch.zeros(num_buckets, dtype=torch.long, device=bucket.device).index_add_(
        0, bucket, torch.ones_like(bucket)
    )
    start = sizes.cumsum(0) - sizes
    rank = torch.empty(n, dtype=torch.long, device=bucket.device)
    rank[order] = torch.arange(n, device=bucket.device) - start[bucket[order]]
    return rank


class RandomSampler:
    """Sample up to ``num`` elements per image, at most a ``pos_fraction`` of them positive (module docstring).

    Args:
        num: sample budget per image.
        pos_fraction: largest share of positives.
        neg_pos_ub: if ``>= 0``, at most ``neg_pos_ub * max(1, positives taken)`` negatives.

    Example:
        >>> gt_index = torch.tensor([[0, 1, -1, -1, -1, -2]])
        >>> s = RandomSampler(num=4, pos_fraction=0.25)(gt_index, keys=torch.arange(6.0).flip(0)[None])
        >>> s.pos, s.neg
        (tensor([[False,  True, False, False, False, False]]), tensor([[False, False,  True,  True,  True, False]]))
    """

    def __init__(self, num: int = 256, pos_fraction: float = 0.5, neg_pos_ub: float = -1) -> None:
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = float(neg_pos_ub)

    def __repr__(self) -> str:
        return f"RandomSampler(num={self.num}, pos_fraction={self.pos_fraction}, neg_pos_ub={self.neg_pos_ub})"

    @property
    def expected_pos(self) -> int:
        return int(self.num * self.pos_fraction)

    @torch.no_grad()
    def __call__(
        self,
        gt_index: Tensor,
        *,
        keys: Tensor | None = None,
        generator: torch.Generator | None = None,
        group: Tensor | None = None,
        num_groups: int | None = None,
    ) -> SampleResult:
        """Sample per image.

        Args:
            gt_index: ``(B, N)`` assignment per image (rows are images), or ``(N,)`` with ``group``.
            keys: random keys of ``gt_index``'s shape (smaller is taken first); default: uniform draws.
            generator: used for the default keys (``torch.rand``; on the generator's device).
            group: ``(N,)`` image of each element of a 1-d ``gt_index``; ``None``: one image.
            num_groups: number of images for ``group`` (default ``B`` of the 2-d layout, or 1).

        Returns:
            :class:`SampleResult` of ``gt_index``'s shape.
        """
        if not isinstance(gt_index, Tensor) or gt_index.dim() not in (1, 2):
            raise ValueError(
                f"gt_index must be a tensor of shape (B, N) or (N,), got {getattr(gt_index, 'shape', None)}"
            )
        device, shape = gt_index.device, gt_index.shape
        if keys is None:
            gen_device = generator.device if generator is not None else device
            keys = torch.rand(shape, generator=generator, device=gen_device).to(device)
        elif keys.shape != shape:
            raise ValueError(f"keys must have the shape of gt_index {tuple(shape)}, got {tuple(keys.shape)}")
        if gt_index.dim() == 2:
            if group is not None:
                raise ValueError("group is only used with a 1-d gt_index")
            num_groups = shape[0]
            group = torch.arange(shape[0], device=device).repeat_interleave(shape[1])
        elif group is None:
            group, num_groups = torch.zeros(shape[0], dtype=torch.long, device=device), 1
        else:
            if group.shape != shape:
                raise ValueError(f"group must have shape ({shape[0]},), got {tuple(group.shape)}")
            group = group.to(device).long()
            if num_groups is None:
                raise ValueError("num_groups is needed with group")
        gi, k = gt_index.reshape(-1), keys.reshape(-1)
        pos, neg = gi >= 0, gi == -1
        kind = torch.where(pos, 0, torch.where(neg, 1, 2))
        bucket = group * 3 + kind
        rank = rank_in_bucket(bucket, k, 3 * num_groups)
        count = torch.zeros(3 * num_groups, dtype=torch.long, device=device).index_add_(
            0, bucket, torch.ones_like(bucket)
        )
        count = count.view(num_groups, 3)
        take_pos = count[:, 0].clamp(max=self.expected_pos)
        expected_neg = self.num - take_pos
        if self.neg_pos_ub >= 0:
            upper = (self.neg_pos_ub * take_pos.clamp_min(1).double()).floor().long()
            expected_neg = torch.minimum(expected_neg, upper)
        take_neg = torch.minimum(count[:, 1], expected_neg)
        sel_pos = pos & (rank < take_pos[group])
        sel_neg = neg & (rank < take_neg[group])
        return SampleResult(pos=sel_pos.view(shape), neg=sel_neg.view(shape))
