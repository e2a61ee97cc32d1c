"""``YOLO("yolov8n.yaml").train(...)`` with detloss attached: one CPU epoch on a tiny shapes dataset."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("ultralytics", reason="needs ultralytics: pip install -e '.[ultralytics]' (run by .ci/run)")
from ultralytics import YOLO  # noqa: E402

from detloss.integrations.ultralytics import DetectionLoss, attach  # noqa: E402
from .yolo_dataset import write_yolo_dataset  # noqa: E402

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


def _doctor_run(tmp_path, name, cls_gain):
    data = tmp_path / "data" / "data.yaml"
    if not data.exists():
        write_yolo_dataset(tmp_path / "data", train=16, val=4, image_size=64)
    model = YOLO("yolov8n.yaml")
    doctor = attach(model, doctor_every=1)
    model.train(data=str(data), project=str(tmp_path), name=name, cls=cls_gain, **TRAIN)
    with open(tmp_path / name / "doctor.csv") as f:
        return doctor, list(csv.DictReader(f))


def test_doctor_in_yolo_training_finds_a_large_cls_gain(tmp_path):
    """A cls gain of 35 on top of ultralytics' box 7.5 / dfl 1.5 (the over-correction a team made to
    balance a mean-normalized class loss) drowns the other terms' gradients at every step:
    GRAD_DOMINANCE on cls. With ultralytics' own gain 0.5, cls dominates only the first step, when
    the untrained head's boxes are all equally wrong."""
    doctor, rows = _doctor_run(tmp_path, "gain35", 35.0)
    assert [int(float(r["step"])) for r in rows] == [0, 1]  # every training step, none from validation
    for r in rows:
        shares = [float(r[f"{t}/grad_share"]) for t in ("box", "cls", "dfl")]
        norms = [float(r[f"{t}/grad_norm"]) for t in ("box", "cls", "dfl")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
        assert shares[1] == pytest.approx(norms[1] / sum(norms), rel=1e-6)  # share = norm / sum of norms
        assert float(r["cls/weight"]) == 35.0 and float(r["box/weight"]) == 7.5
        assert shares[1] > 0.9
    found = [f for f in doctor.findings() if f.code == "GRAD_DOMINANCE"]
    assert [f.term for f in found] == ["cls"] and "Seen at 2 of 2 measured steps" in found[0].message
    assert "GRAD_DOMINANCE" in (tmp_path / "gain35" / "findings.txt").read_text()

    _, default_rows = _doctor_run(tmp_path, "gain05", 0.5)
    assert float(default_rows[1]["cls/grad_share"]) < 0.9 < float(rows[1]["cls/grad_share"])
