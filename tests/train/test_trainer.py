"""Trainer: smoke run and files, exact resume, 1-process vs 2-process step equality, compare."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from detloss.testing import spawn_gloo, torchrun_train
from detloss.testing.tiny import TINY_RUN
from detloss.train.config import load_config
from detloss.train.logs import read_csv
from detloss.train.trainer import Trainer

TINY = [*TINY_RUN, "log_every=1"]


def _config(tmp: Path, *extra: str):
    return load_config(None, [*TINY, f"out_dir={tmp}", *extra])


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_smoke_run_writes_logs_config_and_checkpoint(tmp_path):
    trainer = Trainer(_config(tmp_path, "epochs=2", "max_steps=6"))
    metrics = trainer.fit()
    assert trainer.step == 6
    for name in ("config.yaml", "steps.csv", "epochs.csv", "last.pt"):
        assert (tmp_path / name).is_file(), name
    steps = (tmp_path / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 6 and "cls/normalizer" in steps[0] and "poly" in steps[0]
    assert {"map", "map50", "map75", "dets_per_image", "poly_map50"} <= set(metrics)
    assert load_config(tmp_path / "config.yaml").model_dump() == trainer.cfg.model_dump()


def test_resume_continues_exactly(tmp_path):
    extra = ("epochs=2", "optim.ema_decay=0.9", "optim.warmup_steps=2")
    straight = Trainer(_config(tmp_path / "a", *extra, "max_steps=6"))
    straight.fit()
    half = Trainer(_config(tmp_path / "b", *extra, "max_steps=3"))
    half.fit()  # stops mid-epoch 1 (4 steps per epoch) and writes last.pt
    resumed = Trainer(_config(tmp_path / "b", *extra, "max_steps=6"), resume=tmp_path / "b" / "last.pt")
    assert resumed.step == 3
    resumed.fit()
    for key, value in _weights(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.ema.module.state_dict().items():
        assert torch.equal(value, resumed.ema.module.state_dict()[key]), key


def _one_step(rank: int, world: int, out: str) -> dict[str, torch.Tensor]:
    trainer = Trainer(_config(Path(out), "optim.name=sgd", "optim.ema_decay=null", "optim.warmup_steps=1"))
    images, targets = next(trainer.batches(0))
    trainer.train_step(images, targets)
    return _weights(trainer)


def test_two_processes_take_the_same_step_as_one(tmp_path):
    torch.set_num_threads(1)
    single = _one_step(0, 1, str(tmp_path / "single"))
    per_rank = spawn_gloo(_one_step, 2, str(tmp_path / "ddp"))
    for weights in per_rank:
        for key, value in single.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun smoke test runs on Linux CI")
def test_torchrun_two_process_run_logs_the_one_process_numbers(tmp_path):
    torch.set_num_threads(1)
    stdout = torchrun_train([*TINY, f"out_dir={tmp_path / 'ddp'}", "epochs=1", "max_steps=2"])
    assert "map50" in stdout
    assert len((tmp_path / "ddp" / "steps.csv").read_text().splitlines()) == 1 + 2
    Trainer(_config(tmp_path / "single", "epochs=1", "max_steps=2")).fit()
    steps = [read_csv(tmp_path / run / "steps.csv") for run in ("ddp", "single")]
    # every rank's report combined, not rank 0's half of the batch (whose cls count is half of 2016)
    assert steps[1][0]["cls/num_elements"] == 4 * 504  # 4 images x (64 + 16 + 4 anchors) x 6 classes
    epochs = [read_csv(tmp_path / run / "epochs.csv") for run in ("ddp", "single")]
    for ddp, single in [*zip(*steps, strict=True), *zip(*epochs, strict=True)]:
        assert set(ddp) == set(single)
        for key in set(single) - {"seconds"}:  # val/*: rank 0 evaluates alone in both runs
            if not key.startswith("val/"):
                assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


def test_compare_writes_a_figure_and_a_table_of_any_number_of_runs(tmp_path):
    pytest.importorskip("matplotlib")
    import csv

    from detloss.train.plots import compare_runs

    runs = [tmp_path / name for name in ("slow", "mid", "fast")]
    for run, lr in zip(runs, ("0.002", "0.003", "0.004"), strict=True):
        Trainer(_config(run, "epochs=2", f"optim.lr={lr}", "doctor.every_steps=2")).fit()
    figure, table = compare_runs(runs, tmp_path)
    assert figure.is_file() and figure.stat().st_size > 1000
    header, *lines = table.splitlines()
    assert header.split()[1:] == ["slow", "mid", "fast"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines}
    assert "val/map50" in rows and "train/cls" in rows
    for i, run in enumerate(runs):  # the mean gradient share over the run's doctor.csv rows
        with open(run / "doctor.csv") as f:
            shares = [float(r["cls/grad_share"]) for r in csv.DictReader(f)]
        assert len(shares) >= 2
        assert rows["grad_share/cls"][i] == pytest.approx(sum(shares) / len(shares), rel=1e-4)
    with pytest.raises(ValueError, match="two runs"):
        compare_runs(runs[:1], tmp_path)


def test_bad_overrides_and_config_values_raise():
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ValueError, match="valid names"):
        load_config(None, ["loss.normalizers={cls: avg}"])
    with pytest.raises(ValueError, match="extra"):
        load_config(None, ["optim.learning_rate=0.1"])


def _sgd_step_delta(tmp: Path, cpu_amp: bool) -> tuple[list[torch.dtype], torch.Tensor, dict[str, torch.Tensor]]:
    trainer = Trainer(_config(tmp, "optim.name=sgd", "optim.ema_decay=null", f"optim.cpu_amp={cpu_amp}"))
    before = _weights(trainer)
    outputs: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda module, args, out: outputs.extend(o.dtype for o in out))
    images, targets = next(trainer.batches(0))
    total = trainer.train_step(images, targets).total
    return outputs, total, {k: v - before[k] for k, v in _weights(trainer).items() if v.is_floating_point()}


def test_cpu_amp_runs_the_model_in_bfloat16_and_takes_the_float32_step(tmp_path):
    outputs, total, delta = _sgd_step_delta(tmp_path / "fp32", False)
    amp_outputs, amp_total, amp_delta = _sgd_step_delta(tmp_path / "bf16", True)
    assert set(outputs) == {torch.float32} and set(amp_outputs) == {torch.bfloat16}
    assert amp_total.dtype == torch.float32 and all(d.dtype == torch.float32 for d in amp_delta.values())
    # bf16 keeps 8 mantissa bits: the loss within ~1%, the step's direction nearly the float32 one
    assert amp_total.item() == pytest.approx(total.item(), rel=0.02)
    flat = torch.cat([d.flatten() for d in delta.values()])
    amp_flat = torch.cat([d.flatten() for d in amp_delta.values()])
    assert torch.nn.functional.cosine_similarity(flat, amp_flat, dim=0) > 0.98
    assert (amp_flat != flat).any()


def test_cpu_amp_warns_where_the_cpu_emulates_bf16(tmp_path, monkeypatch):
    import detloss.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_cpu_bf16", lambda: False)
    with pytest.warns(UserWarning, match="optim.cpu_amp: this CPU has no native bf16"):
        Trainer(_config(tmp_path, "optim.cpu_amp=true"))
