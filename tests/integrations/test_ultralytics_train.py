"""``YOLO("yolov8n.yaml").train(...)`` with detloss attached: one CPU epoch on a tiny shapes dataset."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("ultralytics", reason="needs ultralytics: pip install -e '.[ultralytics]' (run by .ci/run)")
from ultralytics import YOLO  # noqa: E402

from detloss.integrations.ultralytics import DetectionLoss, attach  # noqa: E402
from yolo_dataset import write_yolo_dataset  # noqa: E402

TRAIN = dict(epochs=1, imgsz=64, batch=8, device="cpu", workers=0, plots=False, amp=False, verbose=False, seed=0)


def test_one_epoch_logs_detloss_items(tmp_path):
    data = write_yolo_dataset(tmp_path / "data", train=16, val=4, image_size=64)
    model = YOLO("yolov8n.yaml")
    attach(model, normalizers={"cls": "num_pos"})
    seen = []

    def record(trainer):  # what the trainer logged vs what the detloss criterion computed this step
        criterion = trainer.model.criterion
        report = criterion.last_report
        seen.append((type(criterion), dict(trainer.loss_items), {n: float(t.value.detach()) for n, t in report.items()},
                     {n: t.normalizer_name for n, t in report.items()}))

    model.add_callback("on_train_batch_end", record)
    ema_criteria = []
    model.add_callback("on_fit_epoch_end", lambda trainer: ema_criteria.append(type(trainer.ema.ema.criterion)))
    model.train(data=str(data), project=str(tmp_path), name="run", **TRAIN)
    assert len(seen) == 2  # 16 images, batch 8
    for kind, logged, computed, normalizers in seen:
        assert kind is DetectionLoss
        assert normalizers == {"box": "target_sum", "cls": "num_pos", "dfl": "target_sum"}
        assert list(logged) == ["box_loss", "cls_loss", "dfl_loss"]
        for name in ("box", "cls", "dfl"):
            assert float(logged[f"{name}_loss"]) == pytest.approx(computed[name], rel=1e-6)
    with open(tmp_path / "run" / "results.csv") as f:
        row = next(csv.DictReader(f))
    # ultralytics logs the running mean of the items over the epoch's batches
    for name in ("box", "cls", "dfl"):
        mean = sum(s[2][name] for s in seen) / len(seen)
        assert float(row[f"train/{name}_loss"]) == pytest.approx(mean, rel=1e-4, abs=1e-5)
    # validation (on the EMA model) computed its losses with detloss too
    assert ema_criteria and set(ema_criteria) == {DetectionLoss}  # per epoch, and the final validation
    assert all(float(row[f"val/{n}_loss"]) > 0 for n in ("box", "cls", "dfl"))
