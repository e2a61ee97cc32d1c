"""EMA teacher (hand-computed updates, no gradient), strong augmentation, pseudo-label targets, labelled split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detloss.semi.augment import strong_photometric
from detloss.semi.teacher import EMATeacher
from detloss.train.data import split_labelled
from detloss.train.semi import detections_to_targets


def test_ema_update_matches_a_hand_computation():
    student = nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(4.0)
    teacher = EMATeacher(student, decay=0.9, ramp=False)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(0.0)
    teacher.update(student)
    # 0.9 * old + 0.1 * new
    torch.testing.assert_close(teacher.module.weight, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2]]))
    assert teacher.module.bias.item() == pytest.approx(0.9 * 4.0)
    teacher.update(student)  # again: 0.9 * 1.2 + 0.1 * 3 = 1.38
    assert teacher.module.weight[0, 0].item() == pytest.approx(1.38)


def test_ramped_decay_copies_first_then_averages():
    student = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        student.weight.fill_(0.0)
    teacher = EMATeacher(student, decay=0.99, ramp=True)
    assert teacher.current_decay() == 0.5  # 1 - 1/2
    values = []
    for w in (2.0, 4.0, 6.0):
        with torch.no_grad():
            student.weight.fill_(w)
        teacher.update(student)
        values.append(teacher.module.weight.item())
    # d = 1/2, 2/3, 3/4 from w0 = 0: the running mean of (0, 2, 4, 6)
    assert values == pytest.approx([1.0, 2.0, 3.0])
    for _ in range(500):
        teacher.update(student)
    assert teacher.current_decay() == 0.99  # capped at decay


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    student = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    teacher = EMATeacher(student, decay=0.5)
    x = torch.randn(5, 3)
    loss = student(x).sum() + teacher.module(x).sum()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.module.training
    out1, out2 = teacher.module(x), teacher.module(x)
    assert torch.equal(out1, out2)  # dropout off


def test_teacher_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(nn.Linear(1, 1), decay=1.0)


def test_strong_augmentation_keeps_range_and_geometry_free_regions():
    images = torch.full((2, 3, 20, 20), 0.5)
    images[:, :, 5:10, 5:10] = 0.9
    g = torch.Generator().manual_seed(0)
    out = strong_photometric(images, g, brightness=0.0, contrast=0.0, noise=0.0, cutout=0)
    assert torch.allclose(out, images)  # all factors 1: unchanged
    g = torch.Generator().manual_seed(0)
    out = strong_photometric(images, g, brightness=0.0, contrast=0.0, noise=0.0, cutout=1, cutout_size=0.5)
    grey = (out == 0.5).all(1).sum((1, 2))
    assert (grey >= 100).all()  # a 10x10 patch of 0.5 in each image (plus the image's own 0.5 pixels)
    out = strong_photometric(images, torch.Generator().manual_seed(1), noise=0.5)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        strong_photometric(images[0], g)


def test_detections_to_targets_is_the_collated_layout():
    dets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([0, 1])},
    ]
    t = detections_to_targets(dets, (40, 40))
    assert t["batch_idx"].tolist() == [0, 2, 2]
    assert t["cls"].tolist() == [2, 0, 1]
    expected = [[5 / 40, 10 / 40, 10 / 40, 20 / 40], [20 / 40, 15 / 40, 20 / 40, 10 / 40], [0.5, 0.5, 1.0, 1.0]]
    torch.testing.assert_close(t["bboxes"], torch.tensor(expected))
    empty = detections_to_targets(dets[1:2], (40, 40))
    assert empty["bboxes"].shape == (0, 4) and empty["batch_idx"].shape == (0,)


def test_labelled_split_is_seeded_disjoint_and_sized():
    lab, unl = split_labelled(100, 0.1, seed=3)
    assert len(lab) == 10 and len(unl) == 90 and not set(lab) & set(unl)
    assert sorted(lab + unl) == list(range(100))
    assert split_labelled(100, 0.1, seed=3) == (lab, unl)
    assert split_labelled(100, 0.1, seed=4)[0] != lab
    assert split_labelled(5, 0.01, seed=0)[0].__len__() == 1  # at least one labelled image
    with pytest.raises(ValueError, match="labelled_fraction"):
        split_labelled(10, 0.0, seed=0)
