"""Run a function in ``k`` gloo processes on CPU and compare DDP gradients with one process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _entry(rank: int, world: int, workdir: str, fn: Callable[..., Any], args: tuple) -> None:
    code = 0
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world)
        try:
            result = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(workdir, f"result{rank}.pt"))
    except BaseException:
        with open(os.path.join(workdir, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        code = 1
    # Skip interpreter teardown: gloo's threads occasionally abort it ("terminate called without an
    # active exception") after the work is done and saved, which would fail a finished rank.
    os._exit(code)


def torchrun_train(overrides: Sequence[str], nproc: int = 2, timeout: float = 240.0) -> str:
    """Run ``detloss train *overrides`` under ``torchrun --standalone`` with ``nproc`` CPU processes (one
    thread each) and return its stdout; a non-zero exit raises ``RuntimeError`` with the end of stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "detloss.cli", "train", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def spawn_gloo(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 300.0) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined by a gloo group.

    ``fn`` and ``args`` must be picklable (module-level functions). Returns each rank's return value
    (saved with ``torch.save``), in rank order. A failing rank raises ``RuntimeError`` with its traceback.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as workdir:
        procs = [ctx.Process(target=_entry, args=(r, world_size, workdir, fn, args)) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                raise RuntimeError(f"rank {r} did not finish within {timeout} s")
            error = os.path.join(workdir, f"error{r}.txt")
            if p.exitcode != 0:
                detail = f"exit code {p.exitcode}"
                if os.path.exists(error):
                    with open(error) as f:
                        detail = f.read()
                raise RuntimeError(f"rank {r} failed:\n{detail}")
        return [torch.load(os.path.join(workdir, f"result{r}.pt"), weights_only=False) for r in range(world_size)]


def _ddp_rank(
    rank: int, world: int, builds: Sequence[Callable[[], nn.Module]], loss_fn: Callable, shards: Sequence[Any]
) -> list[list[list[torch.Tensor]]]:
    out = []
    for build in builds:
        model = build()
        ddp = nn.parallel.DistributedDataParallel(model)
        out.append(_grads(ddp, model, loss_fn, [step[rank] for step in shards]))
    return out


def _grads(runner: nn.Module, model: nn.Module, loss_fn: Callable, batches: Sequence[Any]) -> list[list[torch.Tensor]]:
    out = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(runner, batch).backward()
        out.append([p.grad.detach().clone() for p in model.parameters()])
    return out


def ddp_and_single_gradients(
    builds: Sequence[Callable[[], nn.Module]],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    shards: Sequence[Sequence[Any]],
    concat: Callable[[Sequence[Any]], Any],
) -> list[tuple[list[list[list[torch.Tensor]]], list[list[torch.Tensor]]]]:
    """Gradients of ``loss_fn`` under ``len(shards[0])``-rank DDP and in one process, for each model.

    Args:
        builds: each returns a freshly initialised model (seed inside it so every call gives the
            same weights); all are run in one set of spawned processes.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (the criterion's ``total``).
        shards: ``shards[step][rank]`` is rank ``rank``'s batch at step ``step``; steps run in order
            without an optimizer step, so only state such as an EMA normalizer carries over.
        concat: joins the ranks' batches of one step into the single-process batch.

    Returns:
        For each build, ``(ddp, single)`` with ``ddp[rank][step][param]`` and ``single[step][param]``.
    """
    world = len(shards[0])
    per_rank = spawn_gloo(_ddp_rank, world, builds, loss_fn, shards)
    results = []
    for i, build in enumerate(builds):
        model = build()
        single = _grads(model, model, loss_fn, [concat(step) for step in shards])
        results.append(([per_rank[r][i] for r in range(world)], single))
    return results
