"""MAC counting against hand counts, the asymmetric/rank-1 kernel geometry, and the helpers of the point branch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
from spconv.core import ConvAlgo
from torch import nn

from pvkd.models.common import SparseRowLookup
from pvkd.models.macs import count_macs, synthetic_scan

# four hand-placed voxels in one sample: three touching, one apart
TOY_CELLS = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (2, 2, 2)]



class OneLayer(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def toy_tensor(cells, channels: int) -> spconv.SparseConvTensor:
    indices = torch.tensor([(0, *c) for c in cells], dtype=torch.int32)
    return spconv.SparseConvTensor(torch.randn(len(cells), channels), indices, [4, 4, 4], 1)


def brute_force_subm_pairs(cells, kernel) -> int:
    """Ordered (input, output) pairs of a SubM conv: input within the kernel's reach of the output, itself included."""
    reach = np.array(kernel) // 2
    return sum(bool((np.abs(np.subtract(a, b)) <= reach).all()) for a in cells for b in cells)


@pytest.mark.parametrize(
    ("kernel", "hand_pairs"),
    [
        # 4 self pairs + both directions of (000,001), (000,011), (001,011): the 3x3x3 reach
        ((3, 3, 3), 4 + 6),
        # 3x1x3 needs equal j: only (000,001) -> 4 + 2
        ((3, 1, 3), 4 + 2),
        # 1x3x3 needs equal i: all three close pairs -> 4 + 6
        ((1, 3, 3), 4 + 6),
        # rank-1: along k only (000,001) qualifies, along j only (001,011), along i none
        ((1, 1, 3), 4 + 2),
        ((1, 3, 1), 4 + 2),
        ((3, 1, 1), 4 + 0),
    ],
)
def test_subm_macs_by_hand(kernel, hand_pairs):
    c_in, c_out = 3, 5
    conv = spconv.SubMConv3d(
        c_in, c_out, kernel, padding=tuple(k // 2 for k in kernel), bias=False, algo=ConvAlgo.Native
    )
    report = count_macs(OneLayer(conv), toy_tensor(TOY_CELLS, c_in))
    assert [layer.rows for layer in report.layers] == [hand_pairs]
    assert report.total == hand_pairs * c_in * c_out
    assert hand_pairs == brute_force_subm_pairs(TOY_CELLS, kernel)


def test_subm_pairs_match_brute_force_on_random_voxels():
    rng = np.random.default_rng(0)
    cells = sorted({tuple(int(v) for v in rng.integers(0, 4, 3)) for _ in range(30)})
    for kernel in ((3, 3, 3), (3, 1, 3), (1, 3, 3), (3, 1, 1), (1, 3, 1), (1, 1, 3)):
        conv = spconv.SubMConv3d(2, 2, kernel, padding=tuple(k // 2 for k in kernel), bias=False, algo=ConvAlgo.Native)
        report = count_macs(OneLayer(conv), toy_tensor(cells, 2))
        assert report.layers[0].rows == brute_force_subm_pairs(cells, kernel), kernel


class DownUp(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = spconv.SparseConv3d(2, 3, 3, stride=2, padding=1, bias=False, indice_key="p", algo=ConvAlgo.Native)
        self.up = spconv.SparseInverseConv3d(3, 2, 3, indice_key="p", bias=False, algo=ConvAlgo.Native)

    def forward(self, x):
        return self.up(self.down(x))


def test_strided_and_inverse_conv_macs_by_hand():
    # stride 2, pad 1, kernel 3: input index i feeds outputs o with 2o - 1 <= i <= 2o + 1, per axis
    # (000) -> 1 output, (001) -> 1*1*2, (011) -> 1*2*2, (222) -> 1: 8 pairs; the inverse conv reuses them
    report = count_macs(DownUp(), toy_tensor(TOY_CELLS, 2))
    assert [(layer.name, layer.rows, layer.macs) for layer in report.layers] == [
        ("down", 8, 8 * 2 * 3),
        ("up", 8, 8 * 3 * 2),
    ]


def test_linear_and_batchnorm_macs():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    report = count_macs(model, torch.randn(10, 4))
    assert report.by_kind() == {"linear": 10 * 4 * 6, "batchnorm": 10 * 6}


def test_halving_the_width_quarters_the_conv_macs_on_the_same_rows():
    """Rows (pairs) depend on the scan only; every conv but the class head costs 4x less at s/2."""
    from pvkd.models import build_model

    grid = {"cylinder": {"size": [16, 16, 8], "min_bound": [0.0, -np.pi, -4.0], "max_bound": [50.0, np.pi, 2.0]}}
    points = synthetic_scan(300, batch_size=1, seed=2)
    reports = {}
    for width in (4, 8):
        model = build_model({"arch": "cylinder3d", "width": width, "num_classes": 5}, grid)
        reports[width] = {layer.name: layer for layer in count_macs(model, points).layers}
    assert reports[4].keys() == reports[8].keys()
    scaled = 0
    for name, small in reports[4].items():
        big = reports[8][name]
        assert small.rows == big.rows, name
        if small.kind == "sparse_conv" and name != "logits":  # the head ends at the classes, not at a width
            assert big.macs == 4 * small.macs, name
            scaled += 1
    assert scaled > 40


def test_row_lookup_finds_rows_and_reports_missing():
    rng = np.random.default_rng(1)
    cells = np.array(sorted({(int(b), *map(int, rng.integers(0, 6, 3))) for b in rng.integers(0, 2, 40)}))
    shuffled = cells[rng.permutation(len(cells))]
    lookup = SparseRowLookup(torch.tensor(shuffled, dtype=torch.int32), (6, 6, 6))
    rows = lookup.rows(torch.tensor(cells, dtype=torch.int32))
    np.testing.assert_array_equal(shuffled[rows.numpy()], cells)
    present = {tuple(c) for c in cells.tolist()}
    absent = [c for c in itertools.product(range(2), range(6), range(6), range(6)) if c not in present][:10]
    queries = torch.tensor(absent + [(0, 6, 0, 0), (0, -1, 0, 0)], dtype=torch.int32)
    assert (lookup.rows(queries) == -1).all()


def test_trilinear_devoxelize_reproduces_a_linear_field():
    """With every cell occupied, interpolating the cell centres' coordinates gives back the point's position."""
    from pvkd.models.spvcnn import PointVoxelBridge

    cells = torch.tensor(list(itertools.product(range(4), range(4), range(4))), dtype=torch.int32)
    indices = torch.cat([torch.zeros(len(cells), 1, dtype=torch.int32), cells], 1)
    tensor = spconv.SparseConvTensor(torch.zeros(len(cells), 1), indices, [4, 4, 4], 1)
    gen = torch.Generator().manual_seed(0)
    position = 0.5 + 3.0 * torch.rand(50, 3, generator=gen)  # inside the hull of the centres
    bridge = PointVoxelBridge(tensor, 0, position, torch.zeros(50, dtype=torch.long))
    centres = cells.float() + 0.5
    torch.testing.assert_close(bridge.devoxelize(centres, trilinear=True), position)
    torch.testing.assert_close(bridge.devoxelize(centres, trilinear=False), torch.floor(position) + 0.5)
    # voxelize = mean of the points in each cell
    means = bridge.voxelize(position)
    row = int(bridge.nearest[0])
    inside = bridge.nearest == row
    torch.testing.assert_close(means[row], position[inside].mean(0))


def test_synthetic_scan_is_deterministic_and_in_range():
    a, b = synthetic_scan(1000, batch_size=2, seed=5), synthetic_scan(1000, batch_size=2, seed=5)
    assert torch.equal(a.xyz, b.xyz) and a.batch_size == 2 and a.num_points == 2000
    r = torch.linalg.norm(a.xyz[:, :2], dim=1)
    assert float(r.min()) >= 2.0 and float(r.max()) <= 50.1
    assert float(a.xyz[:, 2].min()) > -1.9  # nothing below the ground
