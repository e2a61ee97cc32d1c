"""Grid windows over a large image: the tiles that tiled training and tiled inference share.

A window is ``size x size`` with top-left corner ``(x0, y0)``. Along each axis windows start every
``size - overlap`` pixels and the last one is shifted to end exactly at the border, so consecutive windows
overlap by at least ``overlap`` and together cover the image. An axis shorter than ``size`` has one
window at 0 (the caller pads the tile).
"""

from __future__ import annotations

__all__ = ["check_tiling", "grid_origins", "grid_windows"]


def check_tiling(size: int, overlap: int) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if int(overlap) != overlap or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int in [0, size={size}), got {overlap!r}")


def grid_origins(length: int, size: int, overlap: int) -> list[int]:
    """Window starts along one axis of ``length`` pixels: every ``size - overlap``, the last at ``length - size``.

    >>> grid_origins(1000, 256, 64)
    [0, 192, 384, 576, 744]
    >>> grid_origins(200, 256, 64)
    [0]
    """
    check_tiling(size, overlap)
    if length <= size:
        return [0]
    return list(range(0, length - size, size - overlap)) + [length - size]


def grid_windows(height: int, width: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of the grid tiles of an ``height x width`` image, row by row."""
    return [(x, y) for y in grid_origins(height, size, overlap) for x in grid_origins(width, size, overlap)]
