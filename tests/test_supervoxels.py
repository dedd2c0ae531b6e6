"""Supervoxel partition and difficulty-aware sampling against hand computations."""

import pytest
import torch

from pvkd.distill.supervoxels import (
    block_index,
    block_weights,
    blocks_per_axis,
    blocks_per_scan,
    class_rarity,
    group_members,
    sample_blocks,
)

try:
    from scipy.stats import chi2
except ImportError:  # the venv has no scipy
    chi2 = None

# chi-square 0.999 quantiles, from scipy.stats.chi2.ppf(0.999, df) (also any chi-square table)
CHI2_999 = {3: 16.266, 9: 27.877, 11: 31.264}


def critical(df):
    return float(chi2.ppf(0.999, df)) if chi2 is not None else CHI2_999[df]


def chi_square(observed, expected):
    return float(((observed - expected) ** 2 / expected).sum())


def test_blocks_per_scan_of_the_paper_and_default_grids():
    assert blocks_per_axis((480, 360, 32), (120, 60, 8)) == (4, 6, 4)
    assert blocks_per_scan((480, 360, 32), (120, 60, 8)) == 96
    assert blocks_per_scan((160, 120, 16), (40, 20, 4)) == 96
    assert blocks_per_axis((4, 6, 2), (2, 4, 2)) == (2, 2, 1)  # ceil: a partial block on axis 1


def test_block_index_by_hand_with_a_batch_of_two():
    # grid 4 x 6 x 2 in blocks of 2 x 4 x 2 -> 2 x 2 x 1 = 4 blocks per scan; id = b*4 + (i//2)*2 + j//4
    coords = torch.tensor([
        [0, 0, 0, 0], [0, 1, 3, 1], [0, 2, 0, 0], [0, 0, 5, 1], [0, 3, 5, 0],
        [1, 3, 5, 1], [1, 0, 4, 0], [1, 1, 0, 1],
    ], dtype=torch.int32)
    got = block_index(coords, (4, 6, 2), (2, 4, 2))
    assert got.dtype == torch.int64
    assert got.tolist() == [0, 0, 2, 1, 3, 7, 5, 4]


def test_class_rarity_by_hand():
    # class 0 ignored, class 3 absent; max f = 200: r = (50/200)^-0.5 = 2, (200/200) = 1, (8/200)^-0.5 = 5
    r = class_rarity(torch.tensor([100, 50, 200, 0, 8]), 0.5)
    assert torch.allclose(r, torch.tensor([0.0, 2.0, 1.0, 0.0, 5.0]))
    assert torch.allclose(class_rarity([100, 50, 200, 0, 8], 0.0), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))


# two scans of 3 blocks: block 0 labels (1, 2) ranges (10, 30); block 1 unlabelled, range 5; block 2 empty;
# block 3 labels (4, 0) ranges (0, 10); block 4 label 3 (absent class, rarity 0) range 40; block 5 empty
BLOCKS = torch.tensor([0, 0, 1, 3, 3, 4])
LABELS = torch.tensor([1, 2, 0, 4, 0, 3])
RANGES = torch.tensor([10.0, 30.0, 5.0, 0.0, 10.0, 40.0])
RARITY = torch.tensor([0.0, 2.0, 1.0, 0.0, 5.0])
# class term (2, 1, -, 5, 1, -); distance term (1 + mean / 10)^2 = (9, 2.25, -, 2.25, 25, -)
EXPECTED = {
    "difficulty": [18.0, 2.25, 0.0, 11.25, 25.0, 0.0],
    "class": [2.0, 1.0, 0.0, 5.0, 1.0, 0.0],
    "distance": [9.0, 2.25, 0.0, 2.25, 25.0, 0.0],
    "uniform": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_block_weights_by_hand(mode):
    got = block_weights(BLOCKS, 6, LABELS, RANGES, RARITY, mode, 10.0, 2.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(EXPECTED[mode]))


def test_block_weights_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="difficulty, class, distance, uniform"):
        block_weights(BLOCKS, 6, LABELS, RANGES, RARITY, "rarest", 10.0, 1.0)


def test_sampler_draws_in_proportion_to_the_weights():
    weights = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.0, 4.0])
    draws = 20000
    ids = sample_blocks(weights.expand(draws, 6), 1, torch.Generator().manual_seed(0))
    assert ids.shape == (draws,)
    scan, local = ids // 6, ids % 6
    assert torch.equal(scan, torch.arange(draws))
    counts = torch.bincount(local, minlength=6).double()
    assert counts[1] == 0 and counts[4] == 0
    nonzero = weights > 0
    expected = draws * weights[nonzero].double() / weights.sum()
    assert chi_square(counts[nonzero], expected) < critical(3)  # 4 categories -> 3 dof


def test_sampler_without_replacement_matches_successive_draws():
    # k = 2: P(i then j) = w_i / W * w_j / (W - w_i), 12 ordered pairs of the 4 positive weights
    weights = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0])
    draws = 20000
    ids = sample_blocks(weights.expand(draws, 5), 2, torch.Generator().manual_seed(1)).reshape(draws, 2) % 5
    assert (ids[:, 0] != ids[:, 1]).all()
    observed = torch.bincount(ids[:, 0] * 5 + ids[:, 1], minlength=25).double()
    w, total = weights.double(), float(weights.sum())
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j and w[i] > 0 and w[j] > 0]
    assert observed.sum() == sum(observed[i * 5 + j] for i, j in pairs)
    expected = torch.tensor([draws * w[i] / total * w[j] / (total - w[i]) for i, j in pairs])
    got = torch.stack([observed[i * 5 + j] for i, j in pairs])
    assert chi_square(got, expected) < critical(11)


def test_empty_blocks_are_never_sampled():
    weights = torch.tensor([
        [0.0, 5.0, 0.0, 1.0, 0.0],  # 2 non-empty blocks < k: both
        [1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],  # a scan without a block: none
    ])
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        ids = sample_blocks(weights, 3, g)
        scan, local = ids // 5, ids % 5
        assert (weights[scan, local] > 0).all()
        assert torch.bincount(scan, minlength=3).tolist() == [2, 3, 0]
        assert sorted(local[scan == 0].tolist()) == [1, 3]
        assert len(set(ids.tolist())) == len(ids)
    assert sample_blocks(weights, 0, g).numel() == 0


def test_group_members_properties():
    g = torch.Generator().manual_seed(3)
    block_of_element = torch.randint(0, 6, (200,), generator=g)
    block_of_element[block_of_element == 4] = 5  # block 4: no element
    block_of_element[:3] = 2  # block 2: exactly 3 elements (and element 199 is made sure not in it)
    block_of_element[3:][block_of_element[3:] == 2] = 0
    chosen = torch.tensor([5, 2, 4, 0])
    out = group_members(block_of_element, chosen, 10, g)
    assert out.shape == (4, 10) and out.dtype == torch.int64
    for row, block in zip(out, chosen.tolist()):
        members = row[row >= 0]
        assert (row[len(members):] == -1).all()  # padding at the end
        assert (block_of_element[members] == block).all()
        assert len(set(members.tolist())) == len(members)
        size = int((block_of_element == block).sum())
        assert len(members) == min(size, 10)
    assert sorted(out[1][out[1] >= 0].tolist()) == [0, 1, 2]  # small block: every element
    assert (out[2] == -1).all()  # an empty block


def test_group_members_subset_is_uniform():
    # 2000 blocks of 10 elements, 3 kept each: every element is kept with probability 0.3
    block_of_element = torch.arange(20000) // 10
    out = group_members(block_of_element, torch.arange(2000), 3, torch.Generator().manual_seed(4))
    assert (out >= 0).all()
    position = torch.bincount((out % 10).flatten(), minlength=10).double()
    # per block the kept positions are a uniform 3-subset of 10: indicator covariance 0.21 * 10/9 * (I - J/10),
    # so the Pearson statistic over the 10 positions (E = 600) is (0.7 * 10/9) * chi2 with 9 dof
    assert chi_square(position, torch.full((10,), 600.0)) / (0.7 * 10 / 9) < critical(9)
