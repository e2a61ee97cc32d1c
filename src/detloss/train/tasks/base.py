"""What the trainer needs from a detector kind: a model, a criterion, a loss step and predictions."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from torch import Tensor, nn

from detloss.core.report import LossReport

#: A context manager factory: ``torch.autocast(...)`` on CUDA with bf16, else ``nullcontext``.
Autocast = Callable[[], AbstractContextManager]


@dataclass
class StepOutputs:
    """A loss step's report and the head outputs it was computed from (float32, graph alive): the tensors
    balancers and the doctor take gradients with respect to."""

    report: LossReport
    wrt: list[Tensor]
    outputs: object = None  # the task's own outputs (the dense head's ``feats``), for the doctor


class Task:
    """Base of the detector kinds (:mod:`detloss.train.tasks`).

    Attributes:
        model: the detector (``nn.Module``).
        criterion: its criterion: ``terms``, base ``weights`` (never changed by training), ``set_epoch``
            (samplers), ``state_dict``; its ``forward`` takes ``weights=`` (the step's gains).
        schedules: term -> schedule of its gain (e.g. ``lambda_bg``), for the trainer's weight policy.
        has_polygons: whether predictions carry polygons (polygon AP is evaluated).
    """

    kind = "base"
    model: nn.Module
    criterion: nn.Module
    schedules: dict = {}
    has_polygons = False

    def loss(
        self,
        runner: nn.Module,
        images: Tensor,
        targets: dict[str, Tensor],
        image_ids: Tensor | None,
        autocast: Autocast,
        weights: dict[str, float] | None = None,
    ) -> StepOutputs:
        """The criterion's report on ``images`` ``(B, 3, H, W)`` with collated ``targets``
        (:func:`detloss.data.collate.collate`) and the step's term gains ``weights`` (``None``: the
        criterion's base gains); ``runner`` is ``model`` or its DDP wrapper."""
        raise NotImplementedError

    def measure(self, doctor, step: int, out: StepOutputs, targets: dict[str, Tensor]) -> None:
        """Gradient accounting of ``out`` (graph alive) by the :class:`~detloss.diagnose.doctor.Doctor`."""
        doctor.measure_outputs(step, out.report, out.wrt)

    def predict(self, model: nn.Module, images: Tensor, conf: float, iou: float, max_det: int) -> list[dict]:
        """Per-image ``boxes (N, 4)`` xyxy px, ``scores (N,)``, ``labels (N,)`` (+ ``polygons``), no gradient."""
        raise NotImplementedError

