"""Augmentation, the dataset over the shards, collation, and the samplers of a run."""

from collections import Counter

import numpy as np
import pytest
import torch

from pvkd.shards import ProcessedData
from pvkd.train.augment import augment, random_transform
from pvkd.train.data import RunBatchSampler, ScanDataset, collate, make_loader, split_batches

from train_fixtures import augment_config, make_processed

AUG = augment_config(rotation_deg=45.0, flip_x=True, flip_y=True, scale=[0.95, 1.05], translate_std=0.1)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("data"), {"00": 5, "08": 3}, {"train": ["00"], "val": ["08"]})


def test_transform_is_a_scaled_rotation_or_reflection_about_z():
    rng = np.random.default_rng(0)
    angles, flips = [], Counter()
    for _ in range(2000):
        a, t = random_transform(AUG, rng)
        xy = a[:2, :2]
        scale = np.sqrt(abs(np.linalg.det(xy)))
        assert 0.95 <= scale <= 1.05
        assert np.allclose(xy.T @ xy, scale**2 * np.eye(2))  # a similarity of the x-y plane
        assert np.array_equal(a[2], [0, 0, 1]) and np.array_equal(a[:2, 2], [0, 0])  # z only translated
        flips[np.sign(np.linalg.det(xy))] += 1
        # undo the flips to read the angle: the first column of the rotation
        angles.append(np.degrees(np.arctan2(abs(a[1, 0]), abs(a[0, 0]))))
        assert np.all(np.abs(t) < 1.0)
    assert max(angles) <= 45.0 + 1e-9
    # x flip and y flip independent with p = 1/2: the determinant is negative half of the time
    assert abs(flips[-1.0] - 1000) < 150


def test_switched_off_augmentation_is_the_identity():
    off = augment_config(rotation_deg=0.0, flip_x=False, flip_y=False, scale=[1.0, 1.0], translate_std=0.0)
    xyz = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    assert np.allclose(augment(xyz, off, np.random.default_rng(1)), xyz)


def test_dataset_reads_the_scan_and_augments_it_the_same_for_the_same_key(processed):
    data = ProcessedData(processed)
    plain = ScanDataset(processed, "train")
    row = data.scans("train").iloc[3]
    scan = data.read(row)
    sample = plain[(0, 3)]
    assert np.array_equal(sample["xyz"], scan.xyz)
    assert np.array_equal(sample["label"], scan.label.astype(np.int64))
    aug = ScanDataset(processed, "train", AUG, seed=7)
    a, b, c = aug[(2, 3)]["xyz"], aug[(2, 3)]["xyz"], aug[(3, 3)]["xyz"]
    assert np.array_equal(a, b) and not np.allclose(a, c)
    # the points keep their order: the z offset is one translation for every point
    dz = a[:, 2] - scan.xyz[:, 2]
    assert np.allclose(dz, dz[0], atol=1e-5)


def test_collate_concatenates_with_sample_indices(processed):
    ds = ScanDataset(processed, "train")
    samples = [ds[(0, 1)], ds[(0, 4)]]
    batch = collate(samples)
    n0, n1 = len(samples[0]["label"]), len(samples[1]["label"])
    assert batch.points.batch_size == 2 and batch.points.num_points == n0 + n1
    assert batch.points.batch.tolist() == [0] * n0 + [1] * n1
    assert torch.equal(batch.labels[n0:], torch.from_numpy(samples[1]["label"]))
    assert batch.positions.tolist() == [1, 4]


def test_run_sampler_shares_each_epoch_disjointly_and_resumes_mid_run():
    n, batch, world, epochs = 11, 2, 2, 3
    ranks = [RunBatchSampler(n, batch, epochs, seed=5, rank=r, world_size=world) for r in range(world)]
    assert ranks[0].steps_per_epoch == 2 and len(ranks[0]) == 6
    per_rank = [list(s) for s in ranks]
    for step in range(6):
        keys = per_rank[0][step] + per_rank[1][step]
        assert len({k[0] for k in keys}) == 1  # one epoch per step
    for epoch in range(epochs):
        seen = [p for r in range(world) for b in per_rank[r][2 * epoch : 2 * epoch + 2] for _, p in b]
        assert len(seen) == len(set(seen)) == 8  # disjoint; 3 of 11 sit this epoch out
    # one process with the global batch sees exactly the union, step by step
    single = list(RunBatchSampler(n, batch * world, epochs, seed=5))
    assert all(single[s] == per_rank[0][s] + per_rank[1][s] for s in range(6))
    # a run resumed at step 4 gets the batches the uninterrupted run used from step 4 on
    assert list(RunBatchSampler(n, batch, epochs, seed=5, rank=1, world_size=world, start_step=4)) == per_rank[1][4:]


def test_split_batches_cover_the_split_once_without_padding():
    shares = [split_batches(7, 2, rank=r, world_size=3) for r in range(3)]
    positions = [p for share in shares for b in share for _, p in b]
    assert sorted(positions) == list(range(7))


def test_worker_processes_deliver_the_same_batches(processed):
    ds = ScanDataset(processed, "train", AUG, seed=1)
    sampler = RunBatchSampler(len(ds), 2, 2, seed=1)
    inline = list(make_loader(ds, sampler, workers=0))
    spawned = list(make_loader(ds, sampler, workers=1))
    assert len(inline) == len(spawned) == 4
    for a, b in zip(inline, spawned):
        assert torch.equal(a.points.xyz, b.points.xyz) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("batch_size, world_size, ratio", [(1, 1, 1), (2, 1, 2), (2, 2, 1)])
def test_unlabelled_scans_are_added_after_exactly_the_baselines_labelled_scans(batch_size, world_size, ratio):
    labelled, unlabelled, epochs = 20, 7, 5
    for rank in range(world_size):
        plain = RunBatchSampler(labelled, batch_size, epochs, seed=3, rank=rank, world_size=world_size)
        added = RunBatchSampler(labelled, batch_size, epochs, seed=3, rank=rank, world_size=world_size,
                                unlabelled_scans=unlabelled, unlabelled_ratio=ratio)
        assert len(added) == len(plain)
        for base, batch in zip(plain, added, strict=True):
            # the labelled scans of every step are the baseline's, in its order; then ratio x as many unlabelled
            assert batch[:batch_size] == base
            assert len(batch) == batch_size * (1 + ratio)
            assert all(labelled <= p < labelled + unlabelled for _, p in batch[batch_size:])
        resumed = RunBatchSampler(labelled, batch_size, epochs, seed=3, rank=rank, world_size=world_size,
                                  unlabelled_scans=unlabelled, unlabelled_ratio=ratio, start_step=7)
        assert list(resumed) == list(added)[7:]
    # within an epoch the unlabelled scans come as permutations: each used before any is used again
    added = RunBatchSampler(labelled, 1, 1, seed=3, unlabelled_scans=unlabelled, unlabelled_ratio=1)
    drawn = [batch[1][1] for batch in added]
    assert sorted(drawn[:7]) == list(range(20, 27)) and sorted(drawn[7:14]) == list(range(20, 27))
    # processes take disjoint unlabelled scans of a step
    ranks = [RunBatchSampler(labelled, 1, 1, seed=3, rank=r, world_size=2, unlabelled_scans=unlabelled,
                             unlabelled_ratio=1).batch(0) for r in range(2)]
    assert ranks[0][1] != ranks[1][1]
    with pytest.raises(Exception, match="unlabelled"):
        RunBatchSampler(labelled, 1, 2, seed=3, unlabelled_ratio=1)


def test_unlabelled_splits_come_after_the_labelled_ones_without_labels(tmp_path):
    # the shards of split val hold labels: used as an unlabelled split, the dataset still hides them
    processed = make_processed(tmp_path, {"00": 2, "01": 3}, {"train": ["00"], "val": ["01"]})
    stored = ProcessedData(processed)
    assert (stored.read(stored.scans("val").iloc[0], ["label"])["label"] > 0).any()
    dataset = ScanDataset(processed, ["train", "val"], unlabelled=["val"])
    assert len(dataset) == 5 and dataset.count("train") == 2 and dataset.count("val") == 3
    assert dataset.labelled.tolist() == [True, True, False, False, False]
    first, third = dataset[(0, 0)], dataset[(0, 2)]
    assert first["labelled"].all() and (first["label"] > 0).any()
    assert not third["labelled"].any() and not third["label"].any()
    batch = collate([first, third])
    assert batch.unlabelled_points().tolist() == [False] * len(first["label"]) + [True] * len(third["label"])
