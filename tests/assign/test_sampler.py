"""RandomSampler: budgets, positive fraction, fill with negatives, no GT, determinism; hashed keys."""

from __future__ import annotations

import torch

from detloss.assign.sampler import RandomSampler, content_keys, hashed_keys


def _gt_index(pos: int, neg: int, ignored: int = 0) -> torch.Tensor:
    return torch.tensor([0] * pos + [-1] * neg + [-2] * ignored)


def _sizes(s) -> tuple[int, int]:
    return int(s.pos.sum()), int(s.neg.sum())


def test_more_positives_than_the_fraction_are_cut_and_negatives_fill_the_rest():
    sampler = RandomSampler(num=8, pos_fraction=0.25)
    s = sampler(_gt_index(5, 20, 3)[None], generator=torch.Generator().manual_seed(0))
    assert _sizes(s) == (2, 6)


def test_fewer_positives_than_the_fraction_take_all_and_fill_with_negatives():
    sampler = RandomSampler(num=8, pos_fraction=0.5)
    gt = _gt_index(1, 20, 3)[None]
    s = sampler(gt, generator=torch.Generator().manual_seed(0))
    assert _sizes(s) == (1, 7)
    assert s.pos[0, 0]
    assert not (s.mask & (gt == -2)).any()  # ignored never sampled


def test_no_gt_samples_only_negatives_and_small_images_take_everything():
    sampler = RandomSampler(num=8, pos_fraction=0.5)
    assert _sizes(sampler(_gt_index(0, 20)[None])) == (0, 8)
    s = sampler(_gt_index(2, 3, 4)[None])  # fewer candidates than the budget
    assert _sizes(s) == (2, 3)
    assert s.mask[0, :5].all() and not s.mask[0, 5:].any()


def test_neg_pos_upper_bound():
    sampler = RandomSampler(num=16, pos_fraction=0.5, neg_pos_ub=2)
    assert _sizes(sampler(_gt_index(3, 20)[None])) == (3, 6)
    assert _sizes(sampler(_gt_index(0, 20)[None])) == (0, 2)  # max(1, pos) * ub


def test_the_smallest_keys_are_taken_with_ties_broken_by_index():
    gt = torch.tensor([[0, 1, 2, -1, -1, -1, -1]])
    keys = torch.tensor([[5.0, 1.0, 3.0, 2.0, 0.0, 2.0, 9.0]])
    s = RandomSampler(num=4, pos_fraction=0.5)(gt, keys=keys)
    assert s.pos[0].tolist() == [False, True, True, False, False, False, False]
    assert s.neg[0].tolist() == [False, False, False, True, True, False, False]  # key 2.0 tie: index 3 first


def test_per_image_budgets_in_2d_and_flat_layouts_agree():
    gen = torch.Generator().manual_seed(1)
    gt = torch.randint(-2, 3, (3, 40), generator=gen)
    gt[1] = torch.where(gt[1] >= 0, -1, gt[1])  # image 1 has no positive
    keys = torch.rand(3, 40, generator=gen)
    sampler = RandomSampler(num=10, pos_fraction=0.3)
    two_d = sampler(gt, keys=keys)
    group = torch.arange(3).repeat_interleave(40)
    flat = sampler(gt.reshape(-1), keys=keys.reshape(-1), group=group, num_groups=3)
    assert torch.equal(flat.pos.view(3, 40), two_d.pos) and torch.equal(flat.neg.view(3, 40), two_d.neg)
    for i in range(3):
        num_pos = int((gt[i] >= 0).sum())
        assert int(two_d.pos[i].sum()) == min(num_pos, 3)
        assert int(two_d.neg[i].sum()) == min(int((gt[i] == -1).sum()), 10 - min(num_pos, 3))


def test_deterministic_given_a_generator_and_actually_random():
    gt = _gt_index(30, 100)[None]
    sampler = RandomSampler(num=16, pos_fraction=0.5)
    a = sampler(gt, generator=torch.Generator().manual_seed(3))
    b = sampler(gt, generator=torch.Generator().manual_seed(3))
    c = sampler(gt, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg)
    assert not torch.equal(a.mask, c.mask)
    # every positive is drawn about equally often
    hits = torch.zeros(30)
    for seed in range(300):
        hits += sampler(gt, generator=torch.Generator().manual_seed(seed)).pos[0, :30].float()
    assert hits.min() > 0.5 * 300 * 8 / 30 and hits.max() < 1.5 * 300 * 8 / 30


def test_hashed_keys_depend_on_the_image_key_not_its_position():
    image_keys = torch.tensor([11, 22, 33])
    index = torch.arange(50).expand(3, 50)
    keys = hashed_keys(0, image_keys, index)
    swapped = hashed_keys(0, image_keys.flip(0), index)
    assert torch.equal(keys.flip(0), swapped)
    assert not torch.equal(keys[0], keys[1])
    assert not torch.equal(keys, hashed_keys(1, image_keys, index))
    assert not torch.equal(keys, hashed_keys(0, image_keys, index, epoch=1))
    assert keys.min() >= 0 and keys.max() < 2**31
    group = torch.tensor([2, 0, 2])
    flat = hashed_keys(0, image_keys, torch.tensor([5, 5, 7]), group=group)
    assert flat.tolist() == [keys[2, 5].item(), keys[0, 5].item(), keys[2, 7].item()]


def test_content_keys_are_order_independent_and_tell_images_apart():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 20.0, 30.0]])
    k = content_keys([a, a.flip(0), a[:1], torch.zeros(0, 4), torch.zeros(0, 4)])
    assert k[0] == k[1] and k[0] != k[2] and k[3] == k[4] and k[3] != k[2]
