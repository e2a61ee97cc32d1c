"""examples/plain_loop.py runs: a user's own model and loop with a detloss criterion and the doctor."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plain_loop.py"


def _load():
    spec = importlib.util.spec_from_file_location("plain_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_trains_and_the_doctor_measures_every_tenth_step(capsys):
    example = _load()
    totals, doctor = example.train(steps=30, every=10)
    assert len(totals) == 30 and all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5  # it learns
    assert [m.step for m in doctor.measurements] == [0, 10, 20]
    for m in doctor.measurements:
        norms = m.account.norms
        assert list(norms) == ["box", "cls", "dfl"]
        assert sum(m.account.shares.values()) == pytest.approx(1.0, abs=1e-9)
        assert m.account.shares["cls"] == pytest.approx(norms["cls"] / sum(norms.values()), rel=1e-9)
    assert [int(r["step"]) for r in doctor.rows] == [0, 10, 20]  # observe recorded the losses it saw
    example.main(["--steps", "3", "--every", "1"])
    out = capsys.readouterr().out
    assert "gradient share per term" in out and "findings" in out
