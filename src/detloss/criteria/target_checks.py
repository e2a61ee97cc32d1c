"""Value checks of user targets that cost one host sync: each condition is a device-side mask of bad
entries, all masks are reduced into one tensor and read once; only a failing check pays (more syncs) for
its message, which names the argument, the first offending index and value, and the expected range."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from detloss.core.checks import check_tensor


class ValueChecks:
    """Masks of bad entries, read together by :meth:`verify`.

    Example:
        >>> checks = ValueChecks()
        >>> _ = checks.integers("targets['cls']", torch.tensor([0, 2, 5]), 0, 3)
        >>> checks.verify()
        Traceback (most recent call last):
        ...
        ValueError: targets['cls'][2] is 5; expected an integer in [0, 3) (1 of 3 entries bad)
    """

    def __init__(self) -> None:
        self._checks: list[tuple[Tensor, Callable[[Tensor], str]]] = []

    def add(self, bad: Tensor, describe: Callable[[Tensor], str]) -> Tensor:
        """Register ``bad`` (bool, any shape); ``describe(bad)`` builds the error text, on failure only."""
        self._checks.append((bad, describe))
        return bad

    def verify(self, *scalars: Tensor) -> list[int]:
        """Raise ``ValueError`` for the first registered check with a bad entry; otherwise return
        ``scalars`` (integer-valued 0-d tensors the caller needs on the host) as ints. One host sync."""
        parts = [bad.any() for bad, _ in self._checks] + list(scalars)
        if not parts:
            return []
        device = parts[0].device
        values = torch.stack([p.to(device=device, dtype=torch.long).reshape(()) for p in parts]).tolist()
        for (bad, describe), flag in zip(self._checks, values, strict=False):
            if flag:
                raise ValueError(describe(bad))
        return values[len(self._checks) :]

    def integers(
        self, name: str, x: Tensor, low: int, high: int | None, *, closed: bool = False, where: Tensor | None = None
    ) -> Tensor:
        """Entries of ``x`` that are not integers in ``[low, high)`` (``[low, high]`` if ``closed``; no upper
        bound if ``high`` is ``None``), among those ``where`` selects. Float dtypes are accepted (YOLO
        targets are often float) if integer-valued: nothing is truncated."""
        bad = x < low
        if high is not None:
            bad = bad | ((x > high) if closed else (x >= high))
        if x.is_floating_point():
            bad = bad | (x != x.round())  # also NaN
        if where is not None:
            bad = bad & where
        upper = "" if high is None else f", {high}{']' if closed else ')'}"
        expected = f"an integer in [{low}{upper}" if high is not None else f"an integer >= {low}"
        return self.add(bad, lambda b: _entry_message(name, x, b, expected))

    def bool_mask(self, name: str, x: Tensor) -> Tensor | None:
        """Entries of a mask that ``.to(bool)`` would turn into ``True`` though not 1 (``0.5``, NaN)."""
        if x.dtype == torch.bool:
            return None
        return self.add((x != 0) & (x != 1), lambda b: _entry_message(name, x, b, "0 or 1 (a bool mask)"))

    def boxes(self, name: str, boxes: Tensor, layout: str) -> Tensor:
        """Rows of ``(N, 4)`` boxes that are not finite or have a negative size; ``layout`` is ``"xyxy"``
        or ``"cxcywh"``."""
        if layout == "xyxy":
            ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
            expected = "finite x1, y1, x2, y2 with x1 <= x2 and y1 <= y2"
        else:
            ordered = (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0)
            expected = "finite cx, cy, w, h with w >= 0 and h >= 0"
        bad = ~(torch.isfinite(boxes).all(1) & ordered)
        return self.add(bad, lambda b: _row_message(name, boxes, b, expected, "rows"))

    def finite_points(self, name: str, points: Tensor, where: Tensor | None = None) -> Tensor:
        """``(..., 2)`` points with a non-finite coordinate, among those ``where`` selects."""
        bad = ~torch.isfinite(points).all(-1)
        if where is not None:
            bad = bad & where
        return self.add(bad, lambda b: _row_message(name, points, b, "finite", "points"))


def _first(bad: Tensor) -> tuple[tuple[int, ...], str]:
    index = tuple(torch.nonzero(bad)[0].tolist())
    return index, f"{int(bad.sum())} of {bad.numel()}"


def _entry_message(name: str, x: Tensor, bad: Tensor, expected: str) -> str:
    index, count = _first(bad)
    return f"{name}{list(index)} is {x[index].item():g}; expected {expected} ({count} entries bad)"


def _row_message(name: str, rows: Tensor, bad: Tensor, expected: str, what: str) -> str:
    index, count = _first(bad)
    values = ", ".join(f"{v:g}" for v in rows[index].tolist())
    return f"{name}{list(index)} is [{values}]; expected {expected} ({count} {what} bad)"


def check_gt_boxes(gt_boxes: Sequence[Tensor], device: torch.device) -> None:
    """Per-image ``(n_i, 4)`` pixel ``xyxy`` boxes (``RPNCriterion``'s ``gt_boxes``): finite, ``x1 <= x2``,
    ``y1 <= y2``. One host sync."""
    checks = ValueChecks()
    for i, g in enumerate(gt_boxes):
        check_tensor(f"gt_boxes[{i}]", g, ("n", 4), floating=True)
        checks.boxes(f"gt_boxes[{i}]", g.to(device), "xyxy")
    checks.verify()


def check_roi_targets(
    roi_image: Tensor, targets: Sequence[Mapping[str, Tensor]], num_classes: int, *, with_mask: bool
) -> None:
    """``ROICriterion``'s per-image targets (shapes already checked) and ``roi_image``: boxes as
    :func:`check_gt_boxes`, labels integers in ``[0, C)``, ``roi_image`` in ``[0, len(targets))`` and,
    for the mask term, ``polygon_counts`` in ``[0, K]``. One host sync."""
    device = roi_image.device
    checks = ValueChecks()
    checks.integers("roi_image", roi_image, 0, len(targets))
    for i, tgt in enumerate(targets):
        checks.boxes(f"targets[{i}]['boxes']", tgt["boxes"].to(device), "xyxy")
        checks.integers(f"targets[{i}]['labels']", tgt["labels"].to(device), 0, num_classes)
        if with_mask and "polygons" in tgt and "polygon_counts" in tgt:
            n = tgt["boxes"].shape[0]
            check_tensor(f"targets[{i}]['polygons']", tgt["polygons"], (n, None, 2), floating=True)
            check_tensor(f"targets[{i}]['polygon_counts']", tgt["polygon_counts"], (n,))
            k = tgt["polygons"].shape[1]
            checks.integers(f"targets[{i}]['polygon_counts']", tgt["polygon_counts"].to(device), 0, k, closed=True)
    checks.verify()


def check_grid_targets(targets: Mapping[str, Tensor], num_classes: int, device: torch.device) -> None:
    """``MultigridCriterion``'s targets (shapes already checked): 0/1 masks, and ``labels`` integers in
    ``[0, C)`` on object cells (the only cells whose label is read). One host sync."""
    checks = ValueChecks()
    obj = targets["object_mask"].to(device)
    checks.bool_mask("targets['object_mask']", obj)
    checks.bool_mask("targets['ignore_mask']", targets["ignore_mask"].to(device))
    checks.integers("targets['labels']", targets["labels"].to(device), 0, num_classes, where=obj != 0)
    checks.verify()
