"""Decoded-image cache: PNG / JPEG decoding is paid once, later epochs read the decoded pixels.

:class:`ImageCache` is a drop-in for :func:`detloss.data.yolo.load_image` (``path -> (3, H, W)`` float32
in ``[0, 1]``); :func:`cache_images` gives a reader that decodes through it. A reader qualifies when it
decodes through its ``load_image`` attribute (:class:`~detloss.data.yolo.YoloDataset`,
:class:`~detloss.data.coco.CocoDataset`) and its samples hold ``image`` and ``path``.

* ``ram``: a dict in this process. Under a ``DataLoader`` with workers each worker fills its own copy.
* ``disk``: one ``.npy`` file per image in ``folder``, written atomically (a crash leaves no torn file),
  shared by workers and later runs.

Key: the resolved path, the file size and its modification time (ns), so an edited file is decoded
again (its old ``.npy`` stays in the folder, unused). Pixels are stored as ``uint8`` when that is
exact (every value a multiple of 1/255, as decoded 8-bit images are), else as float32: a cached image
always equals the decoded one.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from detloss.core.atomic import atomic_write
from detloss.data.yolo import _numpy, load_image

__all__ = ["ImageCache", "cache_images"]


class ImageCache:
    """``cache(path)``: the decoded image of ``path``, decoded at most once per key (see the module).

    Args:
        kind: ``"ram"`` or ``"disk"``.
        folder: the ``.npy`` folder (``disk`` only; created when missing).
        loader: the decoder (default :func:`~detloss.data.yolo.load_image`).

    ``hits`` and ``misses`` count this process's look-ups.
    """

    def __init__(self, kind: Literal["ram", "disk"] = "ram", folder: str | Path | None = None, loader=load_image):
        if kind not in ("ram", "disk"):
            raise ValueError(f"kind must be 'ram' or 'disk', got {kind!r}")
        if kind == "disk":
            if folder is None:
                raise ValueError("folder is required for kind='disk' (the .npy cache folder)")
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
        self.kind, self.folder, self.loader = kind, folder, loader
        self.items: dict[str, tuple[str, Tensor]] = {}  # ram: path -> (key, stored image)
        self.hits = self.misses = 0

    @staticmethod
    def key(path: str | Path) -> str:
        """``sha1(resolved path | size | mtime_ns)``: changes when the file is replaced or edited."""
        path = Path(path).resolve()
        st = os.stat(path)
        return hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()

    def __call__(self, path: str | Path) -> Tensor:
        key = self.key(path)
        if self.kind == "ram":
            held = self.items.get(str(path))
            if held is not None and held[0] == key:
                self.hits += 1
                return _unpack(held[1])
            image = self.loader(path)
            self.misses += 1
            self.items[str(path)] = (key, _pack(image))
            return image
        np = _numpy()
        file = self.folder / f"{key}.npy"
        if file.is_file():
            self.hits += 1
            return _unpack(torch.from_numpy(np.load(file, allow_pickle=False)))
        image = self.loader(path)
        self.misses += 1
        with atomic_write(file, "wb") as f:
            np.save(f, _pack(image).numpy())
        return image

    def __getstate__(self) -> dict[str, Any]:  # spawned workers start with an empty ram cache
        state = dict(self.__dict__)
        state["items"] = {}
        return state


def _pack(image: Tensor) -> Tensor:
    """uint8 when ``round(255 x) / 255`` gives back exactly ``image`` (float32 arithmetic), else float32."""
    u8 = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return u8 if torch.equal(u8.float() / 255.0, image) else image.float().contiguous()


def _unpack(stored: Tensor) -> Tensor:
    return stored.float() / 255.0 if stored.dtype == torch.uint8 else stored.clone()


def cache_images(reader, cache: ImageCache):
    """A shallow copy of ``reader`` that decodes through ``cache`` (``reader`` itself is unchanged).

    Raises ``ValueError`` when ``reader`` has no ``load_image`` attribute to route decoding through.
    """
    if not callable(getattr(reader, "load_image", None)):
        raise ValueError(
            f"{type(reader).__name__} cannot be cached: it must decode images through its `load_image` "
            "attribute (as YoloDataset and CocoDataset do)"
        )
    out = copy.copy(reader)
    out.load_image = cache
    return out
