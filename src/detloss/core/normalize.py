"""Named loss normalizers and their reduction across ``torch.distributed`` ranks.

Every term is ``weight * sum(w * l) / D``; this module computes ``D`` from counts a criterion
measured on its batch. Data-dependent counts are summed over ranks, clamped to the floor, and the
global ``D`` is divided by the world size ``k``, so that DDP's gradient averaging over ``k`` ranks
reproduces the gradient of one process on the concatenated batch exactly, floor and empty shards
included::

    grad_ddp = 1/k * sum_r grad(S_r / (C/k)) = grad(sum_r S_r / C) = grad_single    (C = sum_r c_r)

``sum`` and ``fixed:k`` are divided by the world size too, so they are exact as well.

**Two running means of the positives.** ``ema_num_pos:m`` starts at the first count it sees and
applies the floor to the running value: ``e_1 = n_1``, ``e_t = m e_{t-1} + (1 - m) n_t``,
``D = max(e_t, floor)``. ``ema_num_pos:m:init=v`` is detectron2's rule (RetinaNet ``v = 100``, FCOS
``v = 300``, ``m = 0.9``): it floors each count before averaging and starts from ``v``:
``e_0 = v``, ``e_t = m e_{t-1} + (1 - m) max(n_t, floor)``, ``D = e_t``. Both average the count
summed over all ranks (detectron2 averages each rank's own count), so ``v`` is in whole-batch units:
detectron2's ``v`` on ``k`` GPUs is ``init=v*k`` here. Both keep their state in buffers, so unlike
detectron2's attribute it survives a checkpoint and resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from detloss.core.distributed import global_sums, world_size

#: Count keys a criterion may provide. ``num_cells`` (cells or anchors per image) is a constant.
COUNT_KEYS = (
    "num_elements",
    "num_pos",
    "target_sum",
    "num_samples",
    "batch_size",
    "images_with_fg",
    "num_cells",
)

#: What each normalizer name means (``D``), shown in error messages and the README.
NORMALIZERS = {
    "sum": "1",
    "mean": "number of elements",
    "num_pos": "number of positives",
    "target_sum": "sum of soft targets",
    "num_samples": "sampled positives + negatives (mmdet avg_factor)",
    "batch_size": "number of images",
    "images_with_fg": "images with at least one object",
    "fixed:k": "the constant k",
    "density": "B * (1 + positives / (B * cells))",
    "ema_num_pos:m": "running mean of positives with momentum m, from the first count, floored after",
    "ema_num_pos:m:init=v": "running mean of max(positives, floor) with momentum m, from v (detectron2)",
}

_SIMPLE = {
    "mean": "num_elements",
    "num_pos": "num_pos",
    "target_sum": "target_sum",
    "num_samples": "num_samples",
    "batch_size": "batch_size",
    "images_with_fg": "images_with_fg",
}


def _unknown(spec: str) -> ValueError:
    return ValueError(f"unknown normalizer {spec!r}; valid names: {', '.join(NORMALIZERS)}")


def _number(spec: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _unknown(spec) from None


class Normalizer(nn.Module):
    """The denominator ``D`` of one loss term, chosen by name (see :data:`NORMALIZERS`).

    Args:
        spec: ``"sum"``, ``"mean"``, ``"num_pos"``, ``"target_sum"``, ``"num_samples"``,
            ``"batch_size"``, ``"images_with_fg"``, ``"fixed:k"`` (``k > 0``), ``"density"`` or
            ``"ema_num_pos:m"`` (``0 <= m < 1``) or ``"ema_num_pos:m:init=v"`` (``v >= 0``).
        floor: lower bound on a data-dependent ``D``, applied to the count summed over all ranks
            (for ``ema_num_pos:m:init=v``, to each count before it enters the running mean).

    :meth:`forward` takes counts summed over every rank and returns the global ``D``; use
    :func:`denominators` to get the per-rank value. The EMA normalizer keeps its running value in
    buffers (it travels with ``state_dict``) and updates in training mode only; ``ema_num_pos:m``
    starts at the first observed count, ``ema_num_pos:m:init=v`` at ``v`` (module docstring).

    Example:
        >>> Normalizer("num_pos")({"num_pos": torch.tensor(0.0)})
        tensor(1.)
        >>> Normalizer("density")({"batch_size": torch.tensor(4.0), "num_pos": torch.tensor(40.0),
        ...                        "num_cells": torch.tensor(100.0)})
        tensor(4.4000)
        >>> Normalizer("ema_num_pos:0.9:init=100")({"num_pos": torch.tensor(0.0)})  # 0.9 * 100 + 0.1 * 1
        tensor(90.1000)
    """

    def __init__(self, spec: str, floor: float = 1.0) -> None:
        super().__init__()
        if not isinstance(spec, str):
            raise ValueError(f"normalizer must be a name (str), got {type(spec).__name__}")
        name, _, arg = spec.partition(":")
        self.spec = spec
        self.kind = name
        self.floor = float(floor)
        self.constant: float | None = None
        self.momentum: float | None = None
        self.init: float | None = None
        if name == "fixed":
            value = _number(spec, arg)
            if not value > 0:
                raise ValueError(f"normalizer {spec!r}: k must be > 0")
            self.constant = value
        elif name == "ema_num_pos":
            m, has_init, init = arg.partition(":")
            self.momentum = _number(spec, m)
            if not 0.0 <= self.momentum < 1.0:
                raise ValueError(f"normalizer {spec!r}: momentum m must be in [0, 1)")
            if has_init:
                key, eq, value = init.partition("=")
                if key != "init" or not eq:
                    raise _unknown(spec)
                self.init = _number(spec, value)
                if not (math.isfinite(self.init) and self.init >= 0):
                    raise ValueError(f"normalizer {spec!r}: init v must be a finite number >= 0")
            # with init the running mean exists from the start; without, the first count starts it
            self.register_buffer("ema_value", torch.tensor(self.init or 0.0))
            self.register_buffer("ema_started", torch.tensor(self.init is not None))
        elif arg or (name not in _SIMPLE and name not in ("sum", "density")):
            raise _unknown(spec)

    @property
    def needs(self) -> tuple[str, ...]:
        """Count keys this normalizer reads."""
        if self.kind in _SIMPLE:
            return (_SIMPLE[self.kind],)
        if self.kind == "density":
            return ("batch_size", "num_pos", "num_cells")
        if self.kind == "ema_num_pos":
            return ("num_pos",)
        return ()

    def forward(self, counts: Mapping[str, Tensor]) -> Tensor:
        """Global ``D`` (0-dim float32) from counts summed over all ranks."""
        missing = [k for k in self.needs if k not in counts]
        if missing:
            raise ValueError(
                f"normalizer {self.spec!r} needs counts {missing}, which this criterion does not provide "
                f"(it provides {sorted(counts)})"
            )
        if self.kind == "sum":
            return torch.ones(())
        if self.constant is not None:
            return torch.tensor(self.constant)
        if self.kind in _SIMPLE:
            d = counts[_SIMPLE[self.kind]]
        elif self.kind == "density":
            b, p, cells = counts["batch_size"], counts["num_pos"], counts["num_cells"]
            d = b + p / cells  # = B * (1 + P / (B * cells)); written so that B = 0 stays finite
        elif self.init is not None:
            return self._ema(counts["num_pos"].clamp_min(self.floor))  # floored before averaging
        else:
            d = self._ema(counts["num_pos"])
        return d.clamp_min(self.floor)

    def _ema(self, num_pos: Tensor) -> Tensor:
        if not self.training:
            return torch.where(self.ema_started, self.ema_value, num_pos)
        m = self.momentum
        value = torch.where(self.ema_started, m * self.ema_value + (1.0 - m) * num_pos, num_pos).detach()
        self.ema_value.copy_(value)
        self.ema_started.fill_(True)
        return value

    def extra_repr(self) -> str:
        return repr(self.spec)


def denominators(
    normalizers: Mapping[str, Normalizer],
    counts_by_term: Mapping[str, Mapping[str, Tensor | float]],
    device: torch.device | None = None,
) -> dict[str, Tensor]:
    """Per-rank ``D`` of each term: global ``D`` ÷ world size, with one collective for all terms.

    Args:
        normalizers: term name -> :class:`Normalizer`.
        counts_by_term: term name -> that term's counts on this rank, keyed by :data:`COUNT_KEYS`.
            Counts shared by every term go under ``"*"``; a term's own entries override them.
            ``num_cells`` (cells or anchors per image) is a constant and is not summed.
        device: where the denominators live (defaults to the first tensor count's device).

    Dividing the global ``D`` by the world size ``k`` makes DDP's ``1/k`` gradient averaging give
    exactly the single-process gradient on the concatenated batch, for every normalizer, the floor
    and zero-positive shards included; the mean of the ranks' term values equals the
    single-process value.
    """
    for term, counts in counts_by_term.items():
        unknown = set(counts) - set(COUNT_KEYS)
        if unknown:
            raise ValueError(f"counts for {term!r} have unknown keys {sorted(unknown)}; valid: {COUNT_KEYS}")
    shared = counts_by_term.get("*", {})
    flat: dict[str, Tensor | float] = {}
    constants: dict[str, dict[str, Tensor]] = {}
    for term, norm in normalizers.items():
        own = counts_by_term.get(term, {})
        for key in norm.needs:
            source = own if key in own else shared
            if key not in source:
                continue
            if key == "num_cells":
                constants.setdefault(term, {})[key] = torch.as_tensor(source[key], dtype=torch.float32)
            else:
                flat[f"{term}/{key}"] = source[key]
    sums = global_sums(flat, device)
    k = world_size()
    out = {}
    for term, norm in normalizers.items():
        prefix = f"{term}/"
        counts = {key[len(prefix) :]: v for key, v in sums.items() if key.startswith(prefix)}
        counts.update({key: v.to(device) for key, v in constants.get(term, {}).items()})
        out[term] = norm(counts).to(device) / k
    return out


def build_normalizers(specs: Mapping[str, str], floor: float = 1.0) -> nn.ModuleDict:
    """A ``ModuleDict`` of :class:`Normalizer` from ``{term: name}``; EMA state rides in ``state_dict``."""
    return nn.ModuleDict({term: Normalizer(spec, floor) for term, spec in specs.items()})
