"""Supervoxels and difficulty-aware sampling, on the student's grid.

The student's grid ``(s0, s1, s2)`` is cut into fixed blocks of ``(b0, b1, b2)`` cells,
``ceil(s_a / b_a)`` per axis (the last block of an axis may be partial); block ids are global
over a batch: ``batch * blocks_per_scan + linear block index``. Per scan, ``K`` blocks are drawn
without replacement with probability proportional to a weight (PVKD's difficulty-aware
sampling: blocks holding rarer classes and farther points are drawn more often)::

    class term     c_b = max_{labelled voxels v in b} r(label_v)   (1 if none is labelled)
    distance term  d_b = (1 + mean_{v in b} range_v / scale) ** power
    weight         w_b = c_b * d_b (difficulty) | c_b (class) | d_b (distance) | 1 (uniform);  0 if b is empty
    rarity         r_c = (f_c / max_c' f_c') ** -class_power   (0 for class 0 and absent classes)

Then a random subset of each drawn block's points and voxels takes part in the affinity losses
(:func:`group_members`).

Randomness: every draw takes an optional ``torch.Generator``; with ``None`` the default generator
of the tensors' device is used (on CUDA: the CUDA generator, whose state a resumable run must save
as well as the CPU one). With a generator, the draws are made on the generator's device and moved.
"""

from __future__ import annotations

import math

import torch
from torch_scatter import scatter_max, scatter_mean

MODES = ("difficulty", "class", "distance", "uniform")


def blocks_per_axis(grid_size, block_size) -> tuple[int, int, int]:
    """``ceil(s_a / b_a)`` blocks along each of the three axes."""
    if len(grid_size) != 3 or len(block_size) != 3:
        raise ValueError(f"grid_size and block_size need three entries, got {tuple(grid_size)}, {tuple(block_size)}")
    return tuple(math.ceil(int(s) / int(b)) for s, b in zip(grid_size, block_size))


def blocks_per_scan(grid_size, block_size) -> int:
    """Number of blocks of one scan: the product of :func:`blocks_per_axis` (96 for 480x360x32 in 120x60x8)."""
    return math.prod(blocks_per_axis(grid_size, block_size))


def block_index(voxel_coords: torch.Tensor, grid_size, block_size) -> torch.Tensor:
    """Global block id (V,) int64 of each voxel ``[batch, i, j, k]`` (V, 4).

    ``batch * blocks_per_scan + (i // b0 * n1 + j // b1) * n2 + k // b2`` with ``n_a`` the
    blocks per axis.
    """
    _, n1, n2 = blocks_per_axis(grid_size, block_size)
    per_scan = blocks_per_scan(grid_size, block_size)
    c = voxel_coords.long()
    b0, b1, b2 = (int(b) for b in block_size)
    linear = (c[:, 1] // b0 * n1 + c[:, 2] // b1) * n2 + c[:, 3] // b2
    return c[:, 0] * per_scan + linear


def class_rarity(voxel_counts, power: float) -> torch.Tensor:
    """``r_c = (f_c / max f) ** -power`` (C,) float32 from per-class voxel counts (C,).

    ``f_c`` is class ``c``'s count (only ratios matter); the most frequent class gets 1, rarer
    ones more. Class 0 (ignored) and classes with no voxel get 0, so they never drive sampling.
    """
    counts = torch.as_tensor(voxel_counts, dtype=torch.float64).clone()
    counts[0] = 0
    rarity = torch.zeros_like(counts)
    present = counts > 0
    if present.any():
        rarity[present] = (counts[present] / counts.max()) ** -float(power)
    return rarity.float()


def block_weights(block_of_voxel: torch.Tensor, num_blocks_total: int, voxel_labels: torch.Tensor,
                  voxel_range: torch.Tensor, rarity: torch.Tensor, mode: str, distance_scale_m: float,
                  distance_power: float) -> torch.Tensor:
    """Sampling weight (num_blocks_total,) float32 of every block of the batch.

    ``block_of_voxel`` (V,) global block ids; ``voxel_labels`` (V,) int64, 0 = unlabelled;
    ``voxel_range`` (V,) metres; ``rarity`` (C,) from :func:`class_rarity`. Class term: the max
    rarity over the block's labelled voxels, 1 where that is not positive (no labelled voxel,
    or only classes of rarity 0: absent from the stats). Distance term:
    ``(1 + mean range / distance_scale_m) ** distance_power``. ``mode``: difficulty (class x
    distance), class, distance or uniform. Blocks without a voxel weigh 0 in every mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}: valid modes are {', '.join(MODES)}")
    device = block_of_voxel.device
    occupied = torch.bincount(block_of_voxel, minlength=num_blocks_total)[:num_blocks_total] > 0
    if mode == "uniform":
        return occupied.float()
    weight = torch.ones(num_blocks_total, dtype=torch.float32, device=device)
    if mode in ("difficulty", "class"):
        labels = voxel_labels.long()
        voxel_rarity = torch.where(labels > 0, rarity.float().to(device)[labels], torch.zeros((), device=device))
        class_term = scatter_max(voxel_rarity, block_of_voxel, dim=0, dim_size=num_blocks_total)[0]
        weight = weight * torch.where(class_term > 0, class_term, torch.ones_like(class_term))
    if mode in ("difficulty", "distance"):
        mean_range = scatter_mean(voxel_range.float(), block_of_voxel, dim=0, dim_size=num_blocks_total)
        weight = weight * (1.0 + mean_range / float(distance_scale_m)) ** float(distance_power)
    return weight * occupied.float()


def _uniform(shape, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) draws on ``device``, from ``generator`` (made on its own device) or the device's default."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, device=generator.device, generator=generator).to(device)


def sample_blocks(weights: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per scan (row of ``weights`` (B, P)), ``k`` blocks drawn without replacement in proportion to the weights.

    Returns the global block ids ``b * P + j`` (int64), scan by scan, each scan's in draw order;
    a scan with fewer than ``k`` blocks of positive weight gives all of them, and a block of
    weight 0 (an empty block) is never drawn. The draw is the one of ``torch.multinomial(w, k,
    replacement=False)`` (successive draws, each in proportion to the weights of the blocks not
    yet drawn), made with exponential keys (Efraimidis & Spirakis 2006): the blocks sorted by
    ``E_j / w_j``, ``E_j ~ Exp(1)``, come in exactly that order -- vectorised over the scans,
    and valid whatever the number of positive weights.
    """
    num_scans, per_scan = weights.shape
    k = min(int(k), per_scan)
    if k <= 0 or num_scans == 0:
        return torch.zeros(0, dtype=torch.long, device=weights.device)
    w = weights.float()
    exponential = -torch.log1p(-_uniform(w.shape, w.device, generator))  # Exp(1); 1 - U in (0, 1]: finite
    keys = torch.where(w > 0, exponential / w, torch.full_like(w, math.inf))
    order = keys.argsort(dim=1)[:, :k]
    drawn = torch.gather(w, 1, order) > 0
    global_ids = order + torch.arange(num_scans, device=w.device)[:, None] * per_scan
    return global_ids[drawn]


def group_members(block_of_element: torch.Tensor, chosen_blocks: torch.Tensor, max_per_group: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """For each chosen block, a uniformly random subset of at most ``max_per_group`` of its elements.

    ``block_of_element`` (E,) int64 global block id of each element (point or voxel);
    ``chosen_blocks`` (K,) distinct global block ids. Returns (K, max_per_group) int64 element
    rows, ``-1`` padding at the end of a row; a block with at most ``max_per_group`` elements
    gives all of them. Vectorised: the elements of the chosen blocks sorted by (group, random
    key), the first ``max_per_group`` of each group kept.
    """
    device = block_of_element.device
    num_groups = int(chosen_blocks.shape[0])
    out = torch.full((num_groups, max_per_group), -1, dtype=torch.long, device=device)
    if num_groups == 0 or max_per_group <= 0 or block_of_element.numel() == 0:
        return out
    sorted_blocks, block_order = chosen_blocks.long().sort()
    pos = torch.searchsorted(sorted_blocks, block_of_element).clamp_max(num_groups - 1)
    member = sorted_blocks[pos] == block_of_element
    elements = member.nonzero().squeeze(1)
    group = block_order[pos[elements]]
    # a uniformly random order within each group: sort by random keys, then (stably) by group
    by_key = _uniform(elements.shape, device, generator).argsort()
    by_group = group[by_key].sort(stable=True)[1]
    order = by_key[by_group]
    elements, group = elements[order], group[order]
    counts = torch.bincount(group, minlength=num_groups)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(elements.shape[0], device=device) - starts[group]
    keep = rank < max_per_group
    out[group[keep], rank[keep]] = elements[keep]
    return out
