"""``DetectionLoss(preset="ultralytics")`` against the real ultralytics ``v8DetectionLoss`` on a real
``DetectionModel`` built from ``yolov8n.yaml`` (random weights, no download)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("ultralytics", reason="needs ultralytics: pip install -e '.[ultralytics]' (run by .ci/run)")
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402

from detloss.integrations.ultralytics import DetectionLoss, attach, level_maps  # noqa: E402


def _model(nc: int = 3, **gains) -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    model.args = SimpleNamespace(**{"box": 7.5, "cls": 0.5, "dfl": 1.5, **gains})
    return model.train()


def _batch(seed: int, n_images: int, n_boxes: int, nc: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wh = 0.05 + 0.5 * torch.rand(n_boxes, 2, generator=g)
    c = wh / 2 + (1 - wh) * torch.rand(n_boxes, 2, generator=g)
    return {
        "batch_idx": torch.randint(0, n_images, (n_boxes,), generator=g).sort().values.float(),
        "cls": torch.randint(0, nc, (n_boxes, 1), generator=g).float(),
        "bboxes": torch.cat((c, wh), 1),
    }


CASES = [(0, 2, 5, 64), (1, 4, 12, 96), (2, 3, 1, 64), (3, 2, 0, 64), (4, 2, 30, 128)]


def _leaves(preds: dict, dtype: torch.dtype) -> dict:
    """The head outputs as fresh leaves (``feats`` only give the level sizes)."""
    return {
        "boxes": preds["boxes"].detach().to(dtype).requires_grad_(),
        "scores": preds["scores"].detach().to(dtype).requires_grad_(),
        "feats": [f.detach() for f in preds["feats"]],
    }


def _loss_and_head_grads(loss_fn, preds, batch):
    loss, items = loss_fn(preds, batch)
    loss.sum().backward()
    grads = torch.cat((preds["boxes"].grad.flatten(), preds["scores"].grad.flatten()))
    return loss.detach().double(), torch.stack(list(items.values())).double(), grads.double()


@pytest.mark.parametrize("seed,n_images,n_boxes,size", CASES)
def test_preset_matches_v8_detection_loss_values_and_gradients(seed, n_images, n_boxes, size):
    """detloss in float32 within 1e-5 of ultralytics run in float64 on the same head outputs and batch,
    values and gradients w.r.t. the head outputs; and the whole model's parameter gradients of the
    two float32 losses within 1e-5.

    float64 is the reference because ultralytics' own float32 class sum is off by up to 1.5e-5
    relative on an all-background batch (detloss's by 1e-7)."""
    model = _model()
    x = torch.rand(n_images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    batch = _batch(seed, n_images, n_boxes, 3)
    preds = model(x)
    got, got_items, got_grads = _loss_and_head_grads(
        DetectionLoss(model, preset="ultralytics"), _leaves(preds, torch.float32), batch
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # ultralytics pads its targets in the default dtype
    try:
        batch64 = {k: v.double() for k, v in batch.items()}
        ref, ref_items, ref_grads = _loss_and_head_grads(v8DetectionLoss(model), _leaves(preds, torch.float64), batch64)
    finally:
        torch.set_default_dtype(previous)
    assert got.shape == (3,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_items, ref_items, rtol=1e-5, atol=1e-7)
    scale = ref_grads.abs().max()
    assert scale > 0
    assert (got_grads - ref_grads).abs().max() <= 1e-5 * scale

    params = []
    for loss_fn in (v8DetectionLoss(model), DetectionLoss(model, preset="ultralytics")):
        model.zero_grad()
        loss_fn(model(x), batch)[0].sum().backward()
        params.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (params[1] - params[0]).abs().max() <= 1e-5 * params[0].abs().max()


def test_items_keep_ultralytics_names_and_gains_come_from_model_args():
    model = _model(cls=4.0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    batch = _batch(5, 2, 4, 3)
    preds = model(x)
    _, ref = v8DetectionLoss(model)(preds, batch)  # ultralytics reads the same cls gain 4.0 from model.args
    loss, items = DetectionLoss(model, preset="ultralytics")(preds, batch)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss"] == list(ref)
    assert float(items["cls_loss"]) == pytest.approx(float(ref["cls_loss"]), rel=1e-5)
    # a detloss weight overrides model.args: cls gain 1 instead of 4 divides the item by 4
    _, quarter = DetectionLoss(model, preset="ultralytics", weights={"cls": 1.0})(preds, batch)
    assert float(quarter["cls_loss"]) == pytest.approx(float(ref["cls_loss"]) / 4, rel=1e-5)


def test_level_maps_rebuild_the_head_from_ultralytics_outputs():
    model = _model()
    preds = model(torch.rand(1, 3, 64, 96))
    maps = level_maps(preds)
    assert [tuple(m.shape) for m in maps] == [(1, 67, 8, 12), (1, 67, 4, 6), (1, 67, 2, 3)]
    # anchor 5 of level 1 (row 0, col 5) is column 8 * 12 + 5 of ultralytics' flat outputs
    torch.testing.assert_close(maps[1][0, :64, 0, 5], preds["boxes"][0, :, 101])
    torch.testing.assert_close(maps[1][0, 64:, 0, 5], preds["scores"][0, :, 101])


def test_attach_to_a_model_replaces_its_criterion_and_bad_targets_raise():
    model = _model()
    assert attach(model, normalizers={"cls": "num_pos"}) is None
    assert isinstance(model.criterion, DetectionLoss)
    assert model.criterion.criterion.normalizers["cls"].spec == "num_pos"
    with pytest.raises(ValueError, match="model must be an ultralytics DetectionModel"):
        DetectionLoss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="doctor_every"):
        attach(model, doctor_every=-1)
    bad = _batch(0, 2, 3, 3)
    bad["cls"][1] = 7.0
    with pytest.raises(ValueError, match=r"targets\['cls'\]"):
        model.loss(bad, model(torch.rand(2, 3, 64, 64)))


def test_background_penalty_and_its_schedule_follow_ultralytics_epochs():
    from ultralytics import YOLO

    from detloss.criteria import BackgroundPenalty
    from detloss.weighting.schedule import WarmupSchedule

    model = _model()
    warmup = {"bg": WarmupSchedule(2.0, burn_in=1, warmup=2)}  # gain 0 until epoch 1, then up to 2 by epoch 3
    loss_fn = DetectionLoss(model, background=BackgroundPenalty("max"), schedules=warmup)
    preds = model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7)))
    batch = _batch(7, 2, 3, 3)
    seen = {}
    for epoch in (0, 2, 5):
        loss_fn.epoch = epoch
        loss, items = loss_fn(preds, batch)
        bg = loss_fn.last_report["bg"]
        seen[epoch] = (float(bg.weight), float(items["bg_loss"]), float(bg.raw_sum / bg.normalizer))
        assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "bg_loss"] and loss.shape == (4,)
    assert [seen[e][0] for e in (0, 2, 5)] == [0.0, 1.0, 2.0]
    for epoch, (weight, item, mean_penalty) in seen.items():
        assert item == pytest.approx(weight * mean_penalty, rel=1e-6)  # bg = gain x mean penalty over background
    assert seen[5][2] > 0
    # attach on a YOLO object: its epoch-start callback sets the epoch of the trained and the EMA criteria
    yolo = YOLO("yolov8n.yaml")
    attach(yolo, background=BackgroundPenalty("max"), schedules=warmup)
    trained, ema = _model(), _model()
    trainer = SimpleNamespace(model=trained, ema=SimpleNamespace(ema=ema), epoch=3)
    yolo.callbacks["on_train_start"][-1](trainer)
    yolo.callbacks["on_train_epoch_start"][-1](trainer)
    assert trained.criterion.epoch == ema.criterion.epoch == 3.0
    assert trained.criterion.policy.weights(3.0)["bg"] == 2.0
