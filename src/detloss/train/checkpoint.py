"""Training checkpoints: written atomically, read back with errors that name the file and what is wrong,
and checked against the config of the run that resumes from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic
import torch

from detloss.core.atomic import atomic_write
from detloss.train.config import TrainConfig

__all__ = ["RESUMABLE_FIELDS", "CheckpointError", "config_differences", "load_part", "read_resume", "save_checkpoint"]

#: What every checkpoint holds (``balancer``, ``ema`` and a subclass's parts are optional).
REQUIRED_KEYS = ("step", "model", "optimizer", "criterion", "config")

#: Config fields (and sections) a resumed run may change. None of them changes the steps already taken:
#: where files go, the device and threads, logging, evaluation, and how long to train. ``epochs`` and
#: ``max_steps`` set the total steps, so a longer run also stretches the rest of the cosine schedule.
RESUMABLE_FIELDS = ("out_dir", "device", "threads", "log_every", "eval", "epochs", "max_steps")
#: How batches are loaded (the same samples either way), also resumable.
RESUMABLE_FIELDS += ("data.workers", "data.cache", "data.cache_dir")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the run loading it."""


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` through :func:`~detloss.core.atomic.atomic_write`: a crash keeps the previous file."""
    with atomic_write(path, "wb") as f:
        torch.save(dict(state), f)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved at ``path`` (tensors on the CPU), or :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    try:
        # weights_only: a checkpoint is dicts, lists, numbers, strings and tensors; nothing to execute
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ValueError, ... by format
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({size} bytes; truncated, or not written by torch.save): {reason}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a detloss training checkpoint: it holds a {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a detloss training checkpoint: missing {missing} (it holds {sorted(state)[:8]})"
        )
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be an integer >= 0, got {step!r}")
    return state


def config_differences(
    saved: Mapping[str, Any], requested: Mapping[str, Any], allowed: Sequence[str] = RESUMABLE_FIELDS
) -> dict[str, tuple[Any, Any]]:
    """``dotted.field -> (saved, requested)`` for every field that differs, except those under ``allowed``
    (field names or sections).

    >>> config_differences({"optim": {"lr": 0.002}, "epochs": 8}, {"optim": {"lr": 0.01}, "epochs": 12})
    {'optim.lr': (0.002, 0.01)}
    """
    a, b = _flatten(saved), _flatten(requested)
    out = {}
    for key in sorted(set(a) | set(b)):
        if _under(key, allowed):
            continue
        before, after = a.get(key, UNSET), b.get(key, UNSET)
        if before != after:
            out[key] = (before, after)
    return out


def _under(key: str, fields: Sequence[str]) -> bool:
    return any(key == f or key.startswith(f + ".") for f in fields)


class _Unset:
    def __repr__(self) -> str:
        return "unset"


#: Stands for a field one of two configs does not have (e.g. ``loss.weights.cls`` when only one sets it).
UNSET = _Unset()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_resume(
    path: str | Path | None, config: TrainConfig, allow_changes: Sequence[str] = ()
) -> tuple[dict[str, Any] | None, dict[str, tuple[Any, Any]]]:
    """The checkpoint a run with ``config`` resumes from (``None`` without ``path``) and the fields of
    ``allow_changes`` (names or sections, e.g. ``loss.weights``) that the run knowingly changes.

    Refused with the list of differing fields when the checkpoint was saved under a config that differs
    elsewhere than in :data:`RESUMABLE_FIELDS` and ``allow_changes``. Call it before the run writes
    anything, so a refused resume leaves the run folder as it was.
    """
    if path is None:
        return None, {}
    state = read_checkpoint(path)
    try:  # through the model, so fields added since the save take their defaults on both sides
        saved = TrainConfig.model_validate(state["config"]).model_dump(mode="json")
    except pydantic.ValidationError as err:
        raise CheckpointError(f"{path}: its saved config is not valid here:\n{err}") from err
    requested = config.model_dump(mode="json")
    known = set(_flatten(requested)) | set(_flatten(saved))
    unknown = [f for f in allow_changes if not any(_under(k, [f]) for k in known)]
    if unknown:
        raise CheckpointError(f"allow_changes names no config field: {unknown}")
    diffs = config_differences(saved, requested, (*RESUMABLE_FIELDS, *allow_changes))
    if diffs:
        listed = "\n".join(f"  {k}: saved {s!r}, requested {r!r}" for k, (s, r) in diffs.items())
        raise CheckpointError(
            f"{path}: the checkpoint was saved by a run whose config differs in {len(diffs)} field(s):\n{listed}\n"
            f"Resume with the saved values, allow each change you mean (--allow-change FIELD), or start a new "
            f"run; {', '.join(RESUMABLE_FIELDS)} may always change."
        )
    return state, config_differences(saved, requested, RESUMABLE_FIELDS)


def load_part(path: str | Path, state: Mapping[str, Any], name: str, target: Any) -> None:
    """``target.load_state_dict(state[name])``; a mismatch raises :class:`CheckpointError` naming the file
    and the part."""
    try:
        target.load_state_dict(state[name])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        lines = str(err).strip().splitlines()  # torch lists every mismatched tensor: keep the first few
        detail = "\n".join(lines[:4]) + (f"\n\t... and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise CheckpointError(f"{path}: its {name!r} state does not fit this run: {detail}") from err
