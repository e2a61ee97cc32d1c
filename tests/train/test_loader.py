"""data.workers: worker processes give exactly the main process's batches (augmentations included), from
any start batch; a cached YOLO folder trains to the same weights; config ranges are checked."""

from __future__ import annotations

import pytest
import torch
from yolo_folder import write_yolo_split

from detloss.testing.tiny import TINY_RUN
from detloss.train.config import load_config
from detloss.train.trainer import Trainer

AUG = ["data.vflip=0.5", "data.rot90=0.5", "data.scale_jitter=0.3", "data.hsv=[0.02,0.5,0.3]"]


def _batches(trainer: Trainer, epoch: int, start: int = 0) -> list:
    return [(images, dict(targets)) for images, targets in trainer.batches(epoch, start)]


def _equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), key


def test_worker_batches_equal_main_process_batches(tmp_path):
    base = [*TINY_RUN, f"out_dir={tmp_path}", *AUG]
    main = Trainer(load_config(None, base))
    workers = Trainer(load_config(None, [*base, "data.workers=2"]))
    assert workers.loader is None
    for epoch in (0, 1):
        ref = _batches(main, epoch)
        _equal(_batches(workers, epoch), ref)
        _equal(_batches(workers, epoch, start=2), ref[2:])  # a resume mid-epoch
    assert workers.loader is not None  # built once, kept across epochs
    # the augmentations changed the batches (not a vacuous equality)
    plain = Trainer(load_config(None, [*TINY_RUN, f"out_dir={tmp_path}"]))
    assert not torch.equal(_batches(plain, 0)[0][0], _batches(main, 0)[0][0])


def test_fit_with_workers_and_cache_equals_plain_fit(tmp_path):
    root = tmp_path / "data"
    write_yolo_split(root, "train", 8)
    write_yolo_split(root, "val", 4)
    common = [f"data.root={root}", "data.kind=yolo", "data.num_classes=6", "data.image_size=64", "model.width=8",
              "batch_size=4", "epochs=1", "loss.reg_max=4", "loss.num_vertices=6", "eval.plots=false", "threads=1",
              "data.rot90=0.5"]
    a = Trainer(load_config(None, [*common, f"out_dir={tmp_path / 'a'}"]))
    a.fit()
    b = Trainer(load_config(None, [*common, f"out_dir={tmp_path / 'b'}", "data.workers=2", "data.cache=disk",
                                   f"data.cache_dir={tmp_path / 'cache'}"]))
    b.fit()
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 8 + 4  # train and val images


@pytest.mark.parametrize(
    "override, word",
    [("data.workers=-1", "workers"), ("data.vflip=1.5", "vflip"), ("data.rot90=-0.5", "rot90"),
     ("data.scale_jitter=1", "scale_jitter"), ("data.hsv=[0.1,1.5,0]", "hsv"), ("data.hsv=[0.1,0.1]", "hsv"),
     ("data.cache=gpu", "cache"), ("data.cache=disk", "cache_dir"), ("data.crop_min_visible=2", "crop_min_visible")],
)
def test_pipeline_fields_are_validated(override, word):
    with pytest.raises(ValueError, match=word):
        load_config(None, [override])
