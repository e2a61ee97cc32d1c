"""The training loop: data, model, criterion, optimizer, EMA, logs, checkpoints, evaluation."""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detloss.data.collate import collate
from detloss.weighting.balancers import Balancer, build_balancer
from detloss.weighting.policy import WeightPolicy
from detloss.diagnose.doctor import Doctor
from detloss.core.distributed import check_divisible
from detloss.core.report import LossReport
from detloss.train.checkpoint import load_part, read_resume, save_checkpoint
from detloss.train.config import OptimConfig, TrainConfig, save_config
from detloss.train.data import Subset, build_augment, build_datasets, load_sample, split_labelled
from detloss.train.distributed import DistContext, setup
from detloss.train.loader import BatchLoader
from detloss.models.ema import ModelEMA
from detloss.train.evaluation import evaluate
from detloss.train.logs import CsvLog, Progress, TensorBoard, drop_rows_after
from detloss.train.tasks import StepOutputs, build_task

#: The run folder's logs with a ``step`` column, cut back to a checkpoint's step when a run resumes from it.
RUN_LOGS = ("steps.csv", "epochs.csv", "doctor.csv")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Groups: decayed conv/linear weights, undecayed norms and biases, and the polygon head (own lr)."""
    poly = {id(p) for p in model.head_parameters("poly")} if hasattr(model, "head_parameters") else set()
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "poly": []}
    for p in model.parameters():
        if id(p) in poly and cfg.polygon_lr is not None:
            groups["poly"].append(p)
        else:
            groups["decay" if p.dim() > 1 else "no_decay"].append(p)
    param_groups = [
        {"params": groups["decay"], "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": groups["no_decay"], "weight_decay": 0.0, "name": "no_decay"},
    ]
    if groups["poly"]:
        param_groups.append({"params": groups["poly"], "lr": cfg.polygon_lr, "weight_decay": 0.0, "name": "poly"})
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine (or constant) down to ``final_lr_fraction``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / (total - cfg.warmup_steps))
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); else it emulates it, slowly."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Trainer:
    """Train the detector of ``config.model.kind`` (:mod:`detloss.train.tasks`: a :class:`TinyDetector` with
    :class:`DenseCriterion`, a two-stage or a grid detector) as ``config`` says.

    Under ``torchrun`` each rank takes its slice of every global batch of ``batch_size`` images; the
    criterion's normalizers are reduced across ranks, so the step equals one process on the whole batch.

    ``config.balance`` picks a term balancer (:mod:`detloss.weighting.balancers`); with the task's weight
    schedules it forms the :class:`~detloss.weighting.policy.WeightPolicy` that gives each step's term
    gains, passed to the criterion's forward (logged per step as ``<term>/weight``); ``config.doctor.every_steps`` runs
    gradient accounting on the head outputs every N steps on the main rank into ``doctor.csv``.

    ``steps.csv`` and ``epochs.csv`` hold the global numbers (every rank's report reduced, one collective
    per step), the same as one process on the whole batch would log. The run stops with
    ``FloatingPointError`` at the first step whose loss is not finite, after logging it and before saving.

    ``resume``: a checkpoint (``last.pt``, written atomically at each epoch's end) to continue from; its
    config must equal ``config`` except in :data:`~detloss.train.checkpoint.RESUMABLE_FIELDS` and the
    fields (or sections) of ``allow_changes``. The run folder's logs lose the rows past the checkpoint's
    step, which the resumed run logs again.
    """

    def __init__(
        self, config: TrainConfig, resume: str | Path | None = None, allow_changes: tuple[str, ...] = ()
    ) -> None:
        self.cfg = config
        self.dist: DistContext = setup(config.device)
        state, changes = read_resume(resume, config, allow_changes)  # before anything is written
        if config.threads:
            torch.set_num_threads(config.threads)
        check_divisible("batch_size", config.batch_size, self.dist.world_size)
        torch.manual_seed(config.seed)
        self.train_set, self.val_set, self.num_classes = build_datasets(config.data, config.loss.num_vertices)
        self.augment = build_augment(config.data)  # after data.hflip, per (seed, epoch, index)
        self.loader: BatchLoader | None = None  # data.workers > 0: built at the first epoch
        self.unlabelled_set: Subset | None = None  # the training images left out by data.labelled_fraction
        if config.data.labelled_fraction < 1:
            labelled, unlabelled = split_labelled(len(self.train_set), config.data.labelled_fraction, config.seed)
            self.unlabelled_set = Subset(self.train_set, unlabelled)
            self.train_set = Subset(self.train_set, labelled)
        device = self.dist.device
        self.task = build_task(config, self.num_classes)
        self.model = self.task.model.to(device)
        self.criterion = self.task.criterion.to(device)
        self.runner: nn.Module = self.model
        if self.dist.world_size > 1:
            self.runner = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.balancer: Balancer = build_balancer(config.balance, self.criterion.terms).to(device)
        balanced = self.balancer if self.balancer.kind != "fixed" else None
        self.policy = WeightPolicy(self.criterion.weights, schedules=self.task.schedules, balancer=balanced)
        self.step_weights: dict[str, float] | None = None  # the last step's gains; None: the base gains
        self.optimizer = build_optimizer(self.model, config.optim)
        learned = list(self.balancer.parameters())
        if learned:  # uncertainty weighting's log-variances
            lr = config.balance.log_var_lr or config.optim.lr
            self.optimizer.add_param_group({"params": learned, "lr": lr, "weight_decay": 0.0, "name": "balance"})
        self.base_lrs = [g.get("lr", config.optim.lr) for g in self.optimizer.param_groups]
        self.ema = (
            ModelEMA(self.model, config.optim.ema_decay, config.optim.ema_tau) if config.optim.ema_decay else None
        )
        self.steps_per_epoch = len(self.train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data.train_images ({len(self.train_set)}) must be at least batch_size ({config.batch_size})"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.step = 0
        if device.type == "cpu":
            self.amp = config.optim.cpu_amp
            if self.amp and not native_cpu_bf16():
                warnings.warn(
                    "optim.cpu_amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast "
                    "is emulated and slower than float32",
                    stacklevel=2,
                )
        else:
            self.amp = device.type == "cuda" and config.optim.amp and torch.cuda.is_bf16_supported()
        self.out = Path(config.out_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
        self.doctor: Doctor | None = None  # gradient accounting, main rank only
        if config.doctor is not None and config.doctor.every_steps and self.dist.is_main:
            self.doctor = Doctor.from_config(config.doctor, sink=CsvLog(self.out / "doctor.csv").write)
        self.dist.barrier()
        if state is not None:
            self.restore(state, resume, changes)

    # -- data --------------------------------------------------------------------------------

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(
            len(self.train_set), generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """This rank's slice of each global batch of ``epoch``, from batch ``start`` on; ``targets`` also holds
        ``image_ids (B,)``, the dataset indices (the two-stage samplers key on them)."""
        order, b, k = self._order(epoch), self.cfg.batch_size, self.dist.world_size
        per_rank = b // k
        plan = [
            order[i * b : (i + 1) * b][self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
            for i in range(start, self.steps_per_epoch)
        ]
        if self.cfg.data.workers:  # the same batches, loaded by worker processes
            if self.loader is None:
                self.loader = BatchLoader(
                    self.train_set, self.cfg.seed, self.cfg.data.hflip, self.augment, self.cfg.data.workers,
                    pin_memory=self.dist.device.type == "cuda",
                )
            loaded = self.loader(epoch, [ids.tolist() for ids in plan])
        else:
            hflip = self.cfg.data.hflip
            loaded = (
                collate([load_sample(self.train_set, int(j), epoch, self.cfg.seed, hflip, self.augment) for j in ids])
                for ids in plan
            )
        for ids, (images, targets) in zip(plan, loaded, strict=True):
            targets["image_ids"] = ids.clone()
            yield (
                images.to(self.dist.device),
                {key: v.to(self.dist.device) for key, v in targets.items() if torch.is_tensor(v)},
            )

    # -- one step ----------------------------------------------------------------------------

    def train_step(self, images: Tensor, targets: dict[str, Tensor]) -> LossReport:
        self.model.train()
        factor = lr_factor(self.step, self.total_steps, self.cfg.optim)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        epoch = self.step / self.steps_per_epoch
        self.criterion.set_epoch(epoch)  # the samplers' draw
        self.step_weights = self.policy.weights(epoch)  # before the forward: the report records them
        out = self.step_loss(images, targets)
        report = out.report
        if self.doctor is not None and self.doctor.due(self.step):
            self.measure(out, targets)
        if self.balancer.due(self.step):
            self.balancer.update(report, out.wrt)  # sets the next step's weights
        total = report.total
        extra = self.balancer.regularizer(report)
        if extra is not None:
            total = total + extra
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._average_balancer_grads()
        if self.cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.after_step()
        self.step += 1
        return report

    # -- what subclasses (teacher-student training) change ---------------------------------------

    def step_loss(self, images: Tensor, targets: dict[str, Tensor]) -> StepOutputs:
        """The report one step backpropagates (:attr:`step_weights` and the epoch already set)."""
        return self.forward_loss(self.runner, images, targets)

    def measure(self, out: StepOutputs, targets: dict[str, Tensor]) -> None:
        """Gradient accounting of this step (main rank, every ``doctor.every_steps``)."""
        self.task.measure(self.doctor, self.step + 1, out, targets)

    def after_step(self) -> None:
        """Called after each optimizer step (and the EMA update), before ``step`` is incremented."""

    def step_log(self) -> dict[str, float]:
        """Scalars added to this step's ``steps.csv`` row."""
        return self.balancer.log()

    def epoch_log(self) -> dict[str, float]:
        """Scalars added to this epoch's ``epochs.csv`` row (called once per epoch, on every rank)."""
        return {}

    def autocast(self):
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def forward_loss(self, runner: nn.Module, images: Tensor, targets: dict[str, Tensor]) -> StepOutputs:
        """The task's loss step with the last step's gains: ``targets`` as :meth:`batches` yields them."""
        return self.task.loss(
            runner, images, targets, targets.get("image_ids"), self.autocast, weights=self.step_weights
        )

    def _average_balancer_grads(self) -> None:
        """DDP averages the model's gradients; do the same for the balancer's parameters."""
        if self.dist.world_size == 1:
            return
        for p in self.balancer.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.dist.world_size

    # -- the run -----------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train to ``epochs`` (or ``max_steps``), evaluating and checkpointing each epoch; final metrics."""
        main = self.dist.is_main
        steps_log = CsvLog(self.out / "steps.csv") if main else None
        epochs_log = CsvLog(self.out / "epochs.csv") if main else None
        board = TensorBoard(self.out / "tensorboard", enabled=main, purge_step=self.step + 1 if self.step else None)
        metrics: dict[str, float] = {}
        while self.step < self.total_steps:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            todo = min(self.steps_per_epoch, start + self.total_steps - self.step)
            progress = Progress(todo - start, f"epoch {epoch + 1}/{self.cfg.epochs}", self.cfg.log_every)
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            for i, (images, targets) in enumerate(self.batches(epoch, start), start=1):
                report = self.train_step(images, targets)
                flat = report.as_dict(across_ranks=True)
                for key, value in flat.items():
                    sums[key] = sums.get(key, 0.0) + value
                if main:
                    row = {"step": self.step, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], **flat}
                    row.update(self.step_log())
                    steps_log.write(row)
                    board.scalars({f"train/{k}": v for k, v in flat.items()}, self.step)
                    progress.update(i, " ".join(f"{n}={flat[n]:.3g}" for n in report))
                if not math.isfinite(flat["total"]):  # global, so every rank stops here
                    board.close()
                    raise self._nonfinite(report, flat)
                if start + i >= todo:
                    break
            seen = max(1, todo - start)
            row = {"epoch": epoch + 1, "step": self.step, "seconds": time.perf_counter() - t0}
            row.update({f"train/{k}": v / seen for k, v in sums.items()})
            row.update(self.epoch_log())
            done = self.step >= self.total_steps
            if (epoch + 1) % self.cfg.eval.every_epochs == 0 or done:
                metrics = self.evaluate()
                row.update({f"val/{k}": v for k, v in metrics.items()})
            if main:
                epochs_log.write(row)
                board.scalars({k: v for k, v in row.items() if k.startswith("val/")}, self.step)
            self.save(self.out / "last.pt")
        board.close()
        if main and self.cfg.eval.plots:
            from detloss.train.plots import plot_run  # matplotlib is an extra

            plot_run(self.out, self)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """AP of the EMA weights (if any) on the validation split; rank 0 computes, others wait."""
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            model = self.ema.module if self.ema is not None else self.model
            metrics = evaluate(self.task, model, self.val_set, self.cfg, self.num_classes, self.dist.device)
        self.dist.barrier()
        return metrics

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "criterion": self.criterion.state_dict(),
            "balancer": self.balancer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": self.cfg.model_dump(mode="json"),
        }

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (main rank): a crash during the save keeps the previous one."""
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), path)
        self.dist.barrier()

    def load(self, path: str | Path, allow_changes: tuple[str, ...] = ()) -> None:
        """:meth:`restore` the checkpoint at ``path`` (checked as the constructor's ``resume`` is)."""
        state, changes = read_resume(path, self.cfg, allow_changes)
        self.restore(state, path, changes)

    def restore(self, state: dict, path: str | Path, changes: dict | None = None) -> None:
        """:meth:`load_state` from a checkpoint read from ``path``, then drop the log rows past its step.
        ``changes``: the allowed config changes, announced on stderr."""
        self.load_state(state, path)
        if self.dist.is_main:
            for name in RUN_LOGS:
                if (self.out / name).is_file():
                    drop_rows_after(self.out / name, self.step)
            for key, (before, after) in (changes or {}).items():
                print(f"resuming {path} at step {self.step}: {key} {before!r} -> {after!r}", file=sys.stderr)
        self.dist.barrier()

    def load_state(self, state: dict, path: str | Path) -> None:
        """Restore everything a step depends on, so resuming continues the run exactly."""
        load_part(path, state, "model", self.model)
        load_part(path, state, "optimizer", self.optimizer)
        load_part(path, state, "criterion", self.criterion)
        if state.get("balancer") is not None:  # checkpoints from before balancers have none
            load_part(path, state, "balancer", self.balancer)
        if self.ema is not None and state.get("ema") is not None:
            load_part(path, state, "ema", self.ema)
        self.step = state["step"]

    def _nonfinite(self, report: LossReport, flat: dict[str, float]) -> FloatingPointError:
        bad = [name for name in report if not math.isfinite(flat[name])]
        return FloatingPointError(
            f"step {self.step}: the loss is not finite (terms {bad}); the run stops before saving, so "
            f"{self.out / 'last.pt'}, if any, keeps the last finite state. Lower optim.lr ({self.cfg.optim.lr:g}) "
            "or look for the cause with `detloss doctor` (DETLOSS_DEBUG_NAN=1 names the operation)"
        )
