"""Datasets for the trainer, and per-sample augmentation that depends only on (seed, epoch, index)."""

from __future__ import annotations

import torch

from detloss.data.augment import Augment
from detloss.data.tiling import TiledDataset
from detloss.data.transforms import hflip, letterbox
from detloss.train.config import DataConfig


def build_datasets(cfg: DataConfig, num_vertices: int):
    """``(train, val, num_classes)`` for ``cfg.kind``; YOLO/COCO samples are letterboxed to ``image_size``.

    ``data.num_classes`` bounds the labels: a YOLO label line with a larger class is an error naming its
    file and line, and a value below the COCO categories or the shapes' classes is refused here.
    ``voc``, ``csv`` and ``yolo`` with a data.yaml (``data.yaml``, or ``data.root`` ending in ``.yaml``) take
    the class count and names from the data (:mod:`detloss.train.data_readers`); their samples keep the
    ``ignore`` (VOC ``difficult``) objects flagged: ignore regions in the dense loss (other kinds: background;
    :func:`~detloss.data.collate.collate` leaves them out of the targets) and ignored ground truth in AP.
    """
    if cfg.kind == "shapes":
        from detloss.data.shapes import ShapesDataset

        k = num_vertices if num_vertices >= 3 else 8
        train = ShapesDataset(cfg.train_images, cfg.image_size, cfg.max_objects, k, seed=cfg.seed, split="train")
        val = ShapesDataset(cfg.val_images, cfg.image_size, cfg.max_objects, k, seed=cfg.seed, split="val")
        _check_num_classes(cfg, train.num_classes, "the shapes dataset has")
        return _Cached(train), _Cached(val), cfg.num_classes or train.num_classes
    if 0 < num_vertices < 4:
        raise ValueError(
            f"loss.num_vertices={num_vertices}: data.kind={cfg.kind!r} gives boxes 4-vertex rectangles; use 0 or >= 4"
        )
    k = num_vertices or 8
    yaml_path = cfg.yaml or (cfg.root if cfg.kind == "yolo" and str(cfg.root).endswith((".yaml", ".yml")) else None)
    if cfg.kind in ("voc", "csv") or yaml_path is not None:
        from detloss.train.data_readers import build_box_datasets

        train, val = build_box_datasets(cfg, k, yaml_path)
        _check_num_classes(cfg, train.num_classes, f"the training data ({train.class_names}) has")
        return (*_sized(cfg, train, val), cfg.num_classes or train.num_classes)
    if cfg.root is None:
        raise ValueError(f"data.root is required for data.kind={cfg.kind!r}")
    if cfg.kind == "yolo":
        from detloss.data.yolo import YoloDataset

        train = YoloDataset(cfg.root, "train", num_vertices=k, num_classes=cfg.num_classes)
        val = YoloDataset(cfg.root, "val", num_vertices=k, num_classes=cfg.num_classes)
    else:
        from detloss.data.coco import CocoDataset

        if cfg.train_annotations is None or cfg.val_annotations is None:
            raise ValueError("data.train_annotations and data.val_annotations are required for data.kind='coco'")
        train = CocoDataset(cfg.root, cfg.train_annotations, num_vertices=k)
        val = CocoDataset(cfg.root, cfg.val_annotations, num_vertices=k)
        _check_num_classes(cfg, train.num_classes, f"{cfg.train_annotations} has categories for")
    num_classes = cfg.num_classes or getattr(train, "num_classes", None)
    if num_classes is None:
        raise ValueError("set data.num_classes: it cannot be inferred from this dataset")
    return (*_sized(cfg, train, val), num_classes)


def _sized(cfg: DataConfig, train, val) -> tuple:
    """``(train, val)`` at ``data.image_size``, decoded through ``data.cache`` when set: full-resolution tiles
    with ``data.tile`` (large images; objects cut by ``data.tile.cut``), else letterboxed."""
    if cfg.cache is not None:  # decode each image once (data.cache: ram or a .npy folder)
        from detloss.data.cache import ImageCache, cache_images

        cache = ImageCache(cfg.cache, cfg.cache_dir)
        train, val = cache_images(train, cache), cache_images(val, cache)
    if cfg.tile is None:
        return _Letterboxed(train, cfg.image_size), _Letterboxed(val, cfg.image_size)
    t = cfg.tile
    train = TiledDataset(train, cfg.image_size, t.overlap, t.min_visible, mode=t.train, seed=cfg.seed, cut=t.cut)
    return train, TiledDataset(val, cfg.image_size, t.overlap, t.min_visible, mode="grid", cut=t.cut)


def build_augment(cfg: DataConfig) -> Augment:
    """The augmentations after the horizontal flip: ``data.vflip``, ``rot90``, ``scale_jitter``, ``hsv``."""
    return Augment(cfg.vflip, cfg.rot90, cfg.scale_jitter, tuple(cfg.hsv), cfg.crop_min_visible)


def _check_num_classes(cfg: DataConfig, found: int, source: str) -> None:
    if cfg.num_classes is not None and cfg.num_classes < found:
        raise ValueError(f"data.num_classes={cfg.num_classes} but {source} {found} classes (labels 0..{found - 1})")


def split_labelled(num_images: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(labelled, unlabelled)`` dataset indices: a seeded choice of ``round(fraction * num_images)`` (at
    least one) images, the same on every rank and run, each list sorted."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.labelled_fraction must be in (0, 1], got {fraction}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 7919 + 17)).tolist()
    n = max(1, round(fraction * num_images))
    return sorted(order[:n]), sorted(order[n:])


class Subset:
    """``dataset`` restricted to ``indices`` (keeps ``num_classes`` and ``class_names``)."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.num_classes = getattr(dataset, "num_classes", None)
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]


class _Cached:
    """Generated samples kept in memory (images as uint8: 4x smaller), so later epochs skip generation."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.items: dict[int, dict] = {}
        self.num_classes = getattr(dataset, "num_classes", None)
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if i not in self.items:
            sample = dict(self.dataset[i])
            sample["image"] = (sample["image"] * 255).round().to(torch.uint8)
            self.items[i] = sample
        sample = dict(self.items[i])
        sample["image"] = sample["image"].float() / 255
        return sample


class _Letterboxed:
    def __init__(self, dataset, size: int) -> None:
        self.dataset, self.size = dataset, size
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return letterbox(self.dataset[i], self.size)


def load_sample(dataset, index: int, epoch: int, seed: int, hflip_p: float, augment: Augment | None = None) -> dict:
    """``dataset[index]`` (for tiles: the tile drawn for ``epoch``), flipped with probability ``hflip_p`` by a
    draw seeded from (seed, epoch, index), then ``augment`` from the same generator: identical on every rank,
    in any worker and after a resume."""
    sample = dataset.get(index, epoch) if isinstance(dataset, TiledDataset) else dataset[index]
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)
    if hflip_p > 0:
        if torch.rand((), generator=g).item() < hflip_p:
            sample = hflip(sample)
    if augment is not None and augment.enabled:
        sample = augment(sample, g)
    return sample
