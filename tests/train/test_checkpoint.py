"""Checkpoints: a kill during the save keeps the previous one and --resume continues from it with the
repeated log rows gone; unreadable, foreign and mismatched files and changed configs are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detloss.testing.tiny import TINY_RUN
from detloss.train.checkpoint import CheckpointError, read_checkpoint
from detloss.train.config import load_config
from detloss.train.logs import read_csv
from detloss.train.trainer import Trainer

#: 16 images in batches of 4: 4 steps per epoch, a checkpoint after each of the 2 epochs.
RUN = [*TINY_RUN, "log_every=1", "epochs=2", "optim.ema_decay=0.9", "optim.warmup_steps=2"]
SRC = Path(__file__).resolve().parents[2] / "src"

#: ``detloss train`` in a child process whose second checkpoint save writes half the file and then
#: SIGKILLs the process: no exception handler, finally block or atexit hook runs.
KILLED_DURING_SECOND_SAVE = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from detloss.cli import main

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
    main(["train", *sys.argv[1:]])
    """
)


def _config(out: Path, *extra: str):
    return load_config(None, [*RUN, f"out_dir={out}", *extra])


def test_kill_during_save_keeps_the_previous_checkpoint_and_resume_drops_the_repeated_rows(tmp_path):
    torch.set_num_threads(1)
    straight = Trainer(_config(tmp_path / "straight"))
    straight.fit()

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILLED_DURING_SECOND_SAVE, *RUN, f"out_dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert read_checkpoint(out / "last.pt")["step"] == 4  # the epoch-1 checkpoint, whole
    torn = out / ".last.pt.tmp"
    assert torn.is_file() and torn.stat().st_size > 0  # killed half-way through the new checkpoint
    assert [r["step"] for r in read_csv(out / "steps.csv")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["epoch"] for r in read_csv(out / "epochs.csv")] == [1, 2]

    resumed = Trainer(_config(out), resume=out / "last.pt")
    assert resumed.step == 4
    assert [r["step"] for r in read_csv(out / "steps.csv")] == [1, 2, 3, 4]  # steps 5-8 are logged again
    assert [r["epoch"] for r in read_csv(out / "epochs.csv")] == [1]
    resumed.fit()
    assert not torn.exists()  # the next save went through the same temporary file
    assert read_csv(out / "steps.csv") == read_csv(tmp_path / "straight" / "steps.csv")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real checkpoint of the tiny run at step 0 (no training needed)."""
    out = tmp_path_factory.mktemp("saved")
    Trainer(_config(out)).save(out / "last.pt")
    return out / "last.pt"


def _bad_files(saved: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a file, what the error must say about it)."""
    data = saved.read_bytes()
    files = {
        "empty": (b"", "empty (0 bytes)"),
        "truncated": (data[: len(data) // 2], f"not a readable checkpoint ({len(data) // 2} bytes; truncated"),
        "text": (b"step: 4\nmodel: weights\n", "not a readable checkpoint"),
    }
    out = {}
    for name, (content, message) in files.items():
        (folder / f"{name}.pt").write_bytes(content)
        out[name] = (folder / f"{name}.pt", message)
    torch.save(torch.zeros(3), folder / "tensor.pt")
    out["tensor"] = (folder / "tensor.pt", "not a detloss training checkpoint: it holds a Tensor")
    torch.save({"model": {}, "step": 3}, folder / "partial.pt")
    out["partial"] = (folder / "partial.pt", "missing ['optimizer', 'criterion', 'config']")
    out["missing"] = (folder / "nowhere.pt", "checkpoint not found")
    return out


@pytest.mark.parametrize("name", ["empty", "truncated", "text", "tensor", "partial", "missing"])
def test_unreadable_or_foreign_files_are_named_with_what_is_wrong(saved, tmp_path, name):
    path, message = _bad_files(saved, tmp_path)[name]
    with pytest.raises(CheckpointError) as err:
        Trainer(_config(tmp_path / "run"), resume=path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything


def test_a_checkpoint_of_another_model_names_the_part_that_does_not_fit(saved, tmp_path):
    state = torch.load(saved, weights_only=True)
    other = Trainer(_config(tmp_path / "wide", "model.width=16"))
    state["model"] = other.model.state_dict()  # the config still says width 8
    torch.save(state, tmp_path / "swapped.pt")
    with pytest.raises(CheckpointError) as err:
        Trainer(_config(tmp_path / "run"), resume=tmp_path / "swapped.pt")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'swapped.pt'}: its 'model' state does not fit this run"), text
    assert "size mismatch for stem.0.0.weight" in text and text.count("\n") < 8  # the first mismatches only


def test_a_changed_config_is_refused_with_every_differing_field(saved, tmp_path):
    before = (saved.parent / "config.yaml").read_text()
    with pytest.raises(CheckpointError) as err:
        Trainer(_config(saved.parent, "optim.lr=0.01", "loss.weights.cls=2"), resume=saved)
    text = str(err.value)
    assert "differs in 2 field(s)" in text
    assert "optim.lr: saved 0.002, requested 0.01" in text
    assert "loss.weights.cls: saved unset, requested 2.0" in text
    assert (saved.parent / "config.yaml").read_text() == before  # the run folder is untouched


def test_resumable_and_allowed_changes_are_accepted_and_announced(saved, tmp_path, capsys):
    longer = Trainer(_config(tmp_path / "a", "epochs=5", "max_steps=9", "eval.every_epochs=1"), resume=saved)
    assert longer.step == 0 and longer.total_steps == 9
    assert capsys.readouterr().err == ""  # resumable fields change silently: they do not alter past steps
    Trainer(_config(tmp_path / "b", "optim.lr=0.01"), resume=saved, allow_changes=("optim",))
    assert "optim.lr 0.002 -> 0.01" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"allow_changes names no config field: \['optim.learning_rate'\]"):
        Trainer(_config(tmp_path / "c"), resume=saved, allow_changes=("optim.learning_rate",))


def test_a_non_finite_loss_stops_the_run_before_it_saves(tmp_path, monkeypatch):
    from detloss.criteria.dense import DenseCriterion

    calls, original = [], DenseCriterion._polygon_elements

    def poisoned(self, pred, target, valid):  # the polygon term turns NaN at step 6 (epoch 2)
        calls.append(1)
        elements = original(self, pred, target, valid)
        return elements * float("nan") if len(calls) == 6 else elements

    monkeypatch.setattr(DenseCriterion, "_polygon_elements", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 6: the loss is not finite \(terms \['poly'\]\)"):
        Trainer(_config(tmp_path)).fit()
    rows = read_csv(tmp_path / "steps.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["poly"] != rows[-1]["poly"]  # NaN logged
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 4  # epoch 1's, not the NaN weights


def test_cli_resume_refuses_a_changed_field_unless_it_is_allowed(saved, tmp_path, capsys):
    from detloss.cli import main

    args = ["train", "--resume", str(saved), *RUN, f"out_dir={tmp_path}", "max_steps=1", "optim.lr=0.01"]
    assert main(args) == 2
    assert "optim.lr: saved 0.002, requested 0.01" in capsys.readouterr().err
    assert main([*args, "--allow-change", "optim.lr"]) == 0
    assert "at step 0: optim.lr 0.002 -> 0.01" in capsys.readouterr().err
    assert [r["step"] for r in read_csv(tmp_path / "steps.csv")] == [1]
