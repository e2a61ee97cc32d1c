"""ImageCache: decoded once per (path, size, mtime), exact pixels, atomic .npy files, readers unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from detloss.data.cache import ImageCache, cache_images
from detloss.data.yolo import YoloDataset, load_image

PIL = pytest.importorskip("PIL.Image")


def _png(path, seed: int, size=(12, 16)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    PIL.fromarray(arr).save(path)
    return arr


def _folder(tmp_path, n: int = 2):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        _png(tmp_path / "images" / "train" / f"{i}.png", i)
        (tmp_path / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    return YoloDataset(tmp_path, "train")


class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return load_image(path)


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_cached_reader_decodes_once_and_equals_the_reader(tmp_path, kind):
    reader = _folder(tmp_path / "data")
    loader = _Counting()
    cache = ImageCache(kind, tmp_path / "cache" if kind == "disk" else None, loader=loader)
    cached = cache_images(reader, cache)
    assert reader.load_image is not cache  # the reader itself is unchanged
    for _ in range(3):
        for i in range(len(reader)):
            a, b = reader[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
            assert a["path"] == b["path"]
    assert loader.calls == 2 and (cache.misses, cache.hits) == (2, 4)
    if kind == "disk":
        files = sorted((tmp_path / "cache").iterdir())
        assert len(files) == 2 and all(f.suffix == ".npy" and not f.name.startswith(".") for f in files)
        assert np.load(files[0]).dtype == np.uint8  # 8-bit pixels stored exactly as uint8
        again = ImageCache("disk", tmp_path / "cache", loader=loader)  # a later run: no decoding
        assert torch.equal(cache_images(reader, again)[1]["image"], reader[1]["image"]) and loader.calls == 2


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_an_edited_image_is_decoded_again(tmp_path, kind):
    reader = _folder(tmp_path / "data", 1)
    cache = ImageCache(kind, tmp_path / "cache" if kind == "disk" else None)
    cached = cache_images(reader, cache)
    first = cached[0]["image"]
    path = reader.image_paths[0]
    st = os.stat(path)
    new = _png(path, 99)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks
    second = cached[0]["image"]
    assert not torch.equal(first, second)
    assert torch.equal(second, torch.from_numpy(new).permute(2, 0, 1).float() / 255)
    assert cache.misses == 2


def test_float_images_are_cached_exactly(tmp_path):
    arr = np.linspace(0, 1, 3 * 5 * 7, dtype=np.float32).reshape(5, 7, 3) ** 2  # not multiples of 1/255
    np.save(tmp_path / "x.npy", arr)
    cache = ImageCache("disk", tmp_path / "cache")
    first = cache(tmp_path / "x.npy")
    second = cache(tmp_path / "x.npy")
    assert cache.hits == 1 and torch.equal(first, second) and torch.equal(second, load_image(tmp_path / "x.npy"))
    assert np.load(next((tmp_path / "cache").iterdir())).dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        ImageCache("gpu")
    with pytest.raises(ValueError, match="folder"):
        ImageCache("disk")
    with pytest.raises(ValueError, match="load_image"):
        cache_images([1, 2], ImageCache("ram"))
