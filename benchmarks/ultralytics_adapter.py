"""Cost of detloss inside ultralytics: the adapter's loss vs ``v8DetectionLoss``, and the doctor every N steps.

    python benchmarks/ultralytics_adapter.py [--imgsz 640] [--batch 8] [--objects 8] [--repeats 7]

Runs where ultralytics is installed (the integration environment of ``.ci/run``). A real
``DetectionModel`` from ``yolov8n.yaml`` (80 classes, random weights) gives one batch of head outputs;
then, on those outputs as fresh leaves, the median of ``--repeats`` interleaved loss forward+backward
calls of each row: ultralytics' own ``v8DetectionLoss``, ``DetectionLoss(preset="ultralytics")`` and
``DetectionLoss()`` (detloss defaults). The doctor row: one ``Doctor.observe`` (a gradient per term
w.r.t. the head outputs), and its cost spread over ``--every`` steps relative to one whole training step
(model forward + loss + backward) at the same size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch


def _batch(b: int, objects: int, nc: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = b * objects
    wh = 0.02 + 0.3 * torch.rand(n, 2, generator=g)
    c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
    return {
        "batch_idx": torch.arange(b).repeat_interleave(objects).float(),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat((c, wh), 1),
    }


def _leaves(preds: dict) -> dict:
    return {
        "boxes": preds["boxes"].detach().clone().requires_grad_(),
        "scores": preds["scores"].detach().clone().requires_grad_(),
        "feats": [f.detach() for f in preds["feats"]],
    }


def main(argv: list[str] | None = None) -> None:
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    from detloss.diagnose.doctor import Doctor
    from detloss.integrations.ultralytics import DetectionLoss

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--objects", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--every", type=int, default=50)
    a = p.parse_args(argv)

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    model.train()
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz)
    batch = _batch(a.batch, a.objects, 80)
    with torch.no_grad():
        preds = model(x)
    rows = {
        "ultralytics v8DetectionLoss": v8DetectionLoss(model),
        'detloss DetectionLoss(preset="ultralytics")': DetectionLoss(model, preset="ultralytics"),
        "detloss DetectionLoss()": DetectionLoss(model),
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    for i in range(a.repeats + 1):  # interleaved, so a busy moment costs every row alike
        for name, loss_fn in rows.items():
            leaves = _leaves(preds)
            t0 = time.perf_counter()
            loss_fn(leaves, batch)[0].sum().backward()
            if i:  # the first round is a warm-up
                times[name].append((time.perf_counter() - t0) * 1e3)

    doctor, adapter, doctor_ms, step_ms = Doctor(), rows["detloss DetectionLoss()"], [], []
    for step in range(3):
        t0 = time.perf_counter()
        out = model(x)
        loss, _ = adapter(out, batch)
        t1 = time.perf_counter()
        doctor.observe(step, adapter.last_report, wrt=[out["boxes"], out["scores"]])
        t2 = time.perf_counter()
        loss.sum().backward()
        model.zero_grad()
        doctor_ms.append((t2 - t1) * 1e3)
        step_ms.append((t1 - t0 + time.perf_counter() - t2) * 1e3)

    base = statistics.median(times["ultralytics v8DetectionLoss"])
    print(f"yolov8n, {a.imgsz}x{a.imgsz}, batch {a.batch}, {a.objects} objects per image, CPU, {torch.get_num_threads()} threads")
    print(f"{'loss forward+backward':46s} {'ms':>8s} {'vs ultralytics':>15s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:46s} {m:8.1f} {m / base:14.2f}x")
    d, s = statistics.median(doctor_ms), statistics.median(step_ms)
    print(f"\nwhole training step (model fwd + loss + bwd): {s:.0f} ms")
    print(f"Doctor.observe w.r.t. the head outputs: {d:.1f} ms = {d / s:.3f} of a step; "
          f"every {a.every} steps: {d / s / a.every:.4f} of training time")


if __name__ == "__main__":
    main()
