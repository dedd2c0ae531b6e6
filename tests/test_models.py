"""The backbones' contract on tiny scans: shapes, gradients, point-order independence, training, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from spconv.core import ConvAlgo
from spconv.pytorch.conv import SparseConvolution

from pvkd.errors import ParamsError
from pvkd.grid import Grid
from pvkd.models import PointBatch, build_model, conv_algo_for, parameter_counts, use_conv_algo
from pvkd.models.macs import synthetic_scan

NUM_CLASSES = 5
# tiny grids: the cylinder survives Cylinder3D's four poolings (16x16x8 -> 1x1x2); the cubic one is 25x25x6 cells
GRID_PARAMS = {
    "cylinder": {"size": [16, 16, 8], "min_bound": [0.0, -np.pi, -4.0], "max_bound": [50.0, np.pi, 2.0]},
    "cubic": {"min_bound": [-50.0, -50.0, -4.0], "max_bound": [50.0, 50.0, 2.0], "voxel_size": [4.0, 4.0, 1.0]},
}
ARCHS = ["cylinder3d", "minkunet", "spvcnn"]



def tiny_model(arch: str, width: int = 4, **options):
    torch.manual_seed(0)
    return build_model({"arch": arch, "width": width, "num_classes": NUM_CLASSES, **options}, GRID_PARAMS)


@pytest.fixture(scope="module")
def points() -> PointBatch:
    return synthetic_scan(400, batch_size=2, seed=1)


def height_labels(points: PointBatch) -> torch.Tensor:
    """A learnable labelling: the class is the height band of the point."""
    return torch.bucketize(points.xyz[:, 2].contiguous(), torch.tensor([-2.0, -1.0, 0.0, 1.0]))


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_dtypes_and_voxel_indexing(arch, width, points):
    model = tiny_model(arch, width)
    out = model(points)
    n = points.num_points
    grid = model.grid
    # the voxels, counted independently in numpy from the grid's own cell rule
    cells = grid.cell_of(grid.to_grid_coords(points.xyz.numpy()))
    expected_voxels = np.unique(np.concatenate([points.batch.numpy()[:, None], cells], 1), axis=0)
    v = len(expected_voxels)
    assert out.point_logits.shape == (n, NUM_CLASSES) and out.voxel_logits.shape == (v, NUM_CLASSES)
    assert out.point_features.shape[0] == n and out.voxel_features.shape[0] == v
    assert out.voxel_coords.shape == (v, 4) and out.voxel_coords.dtype == torch.int32
    assert out.point_to_voxel.shape == (n,) and out.point_to_voxel.dtype == torch.int64
    for t in (out.point_logits, out.voxel_logits, out.point_features, out.voxel_features):
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    np.testing.assert_array_equal(np.unique(out.voxel_coords.numpy(), axis=0), expected_voxels)
    # each point's voxel row holds the point's own (batch, cell)
    own = out.voxel_coords[out.point_to_voxel].numpy()
    np.testing.assert_array_equal(own, np.concatenate([points.batch.numpy()[:, None], cells], 1))
    if arch == "cylinder3d":
        assert out.voxel_features.shape[1] == 4 * width  # the concatenated context + decoder features


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_every_parameter(arch, points):
    model = tiny_model(arch)
    out = model(points)
    labels = height_labels(points)
    voxel_labels = torch.zeros(out.voxel_logits.shape[0], dtype=torch.long).scatter_(0, out.point_to_voxel, labels)
    loss = F.cross_entropy(out.point_logits, labels) + F.cross_entropy(out.voxel_logits, voxel_labels)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("arch", ARCHS)
def test_prediction_does_not_depend_on_point_order(arch, points):
    model = tiny_model(arch).eval()
    order = torch.randperm(points.num_points, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(points)
        b = model(points.index_select(order))
    torch.testing.assert_close(b.point_logits, a.point_logits[order], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.point_features, a.point_features[order], rtol=1e-4, atol=1e-4)
    assert torch.equal(b.voxel_coords, a.voxel_coords)  # voxel order is a function of the occupied cells
    torch.testing.assert_close(b.voxel_logits, a.voxel_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.voxel_coords[a.point_to_voxel][order], b.voxel_coords[b.point_to_voxel])


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_a_few_steps_on_cpu(arch, points):
    model = tiny_model(arch, width=4, **({"dropout": 0.0} if arch == "spvcnn" else {}))
    labels = height_labels(points)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        out = model(points)
        loss = F.cross_entropy(out.point_logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_one_place_picks_the_algorithm_and_it_switches_after_construction(points):
    assert conv_algo_for("cpu") == ConvAlgo.Native
    assert conv_algo_for(torch.device("cuda", 0)) == ConvAlgo.MaskImplicitGemm
    model = tiny_model("cylinder3d", width=2)
    convs = [m for m in model.modules() if isinstance(m, SparseConvolution)]
    weights = {n: p.shape for n, p in model.named_parameters()}
    # as if the model had last run on the GPU: every layer on implicit GEMM
    use_conv_algo(model, ConvAlgo.MaskImplicitGemm)
    model._conv_device_type = "cuda"
    assert all(c.algo == ConvAlgo.MaskImplicitGemm for c in convs)
    model(points)  # a CPU forward switches every layer back to Native (it would fail otherwise)
    assert all(c.algo == ConvAlgo.Native for c in convs)
    # the weight layout does not depend on the algorithm (KRSC either way): nothing was re-laid out
    assert {n: p.shape for n, p in model.named_parameters()} == weights
    from spconv.pytorch import SubMConv3d

    a = SubMConv3d(3, 5, (3, 1, 3), algo=ConvAlgo.Native)
    b = SubMConv3d(3, 5, (3, 1, 3), algo=ConvAlgo.MaskImplicitGemm)
    assert a.weight.shape == b.weight.shape == (5, 3, 1, 3, 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight, b.weight)


def published_cylinder3d_parameters(s: int, num_classes: int = 20, point_in: int = 9) -> int:
    """The published Cylinder3D's parameter count, from its layer list (no point head), computed by hand.

    Every width follows s: the point MLP 2s-4s-8s-8s and the compression s/2 are the published
    64-128-256-256 and 16 at s = 32.
    """
    compressed = s // 2

    def conv(k, cin, cout):  # spconv weights, no bias
        return int(np.prod(k)) * cin * cout

    def bn(c):
        return 2 * c

    def linear(cin, cout):
        return cin * cout + cout

    # cylinder_fea: BN(9), 9-64-128-256 with BN, Linear 256->256, compression 256->16 (at s = 32)
    a, b, c = 2 * s, 4 * s, 8 * s
    total = bn(point_in) + linear(point_in, a) + bn(a) + linear(a, b) + bn(b) + linear(b, c) + bn(c)
    total += linear(c, c) + linear(c, compressed)

    def res_block(cin, cout):  # four asymmetric 9-tap convs, four BNs
        return 2 * conv(9, cin, cout) + 2 * conv(9, cout, cout) + 4 * bn(cout)

    total += res_block(compressed, s)  # ResContextBlock
    for cin, cout in ((s, 2 * s), (2 * s, 4 * s), (4 * s, 8 * s), (8 * s, 16 * s)):
        total += res_block(cin, cout) + conv(27, cout, cout)  # ResBlock + strided pool conv
    for cin, cout in ((16 * s, 16 * s), (16 * s, 8 * s), (8 * s, 4 * s), (4 * s, 2 * s)):
        # trans 3x3x3 + BN, inverse 3x3x3, 1x3x3 + BN, 3x1x3 + BN, 3x3x3 + BN
        total += conv(27, cin, cout) + bn(cout) + conv(27, cout, cout) + 2 * (conv(9, cout, cout) + bn(cout))
        total += conv(27, cout, cout) + bn(cout)
    total += 3 * (conv(3, 2 * s, 2 * s) + bn(2 * s))  # ReconBlock
    total += conv(27, 4 * s, num_classes) + num_classes  # logits, with bias
    return total


@pytest.mark.parametrize(("width", "published_millions"), [(32, 55.9), (16, 14.0)])
def test_full_config_parameter_counts(width, published_millions):
    grid = Grid("cylinder", (480, 360, 32), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
    with torch.device("meta"):  # 56 M parameters without allocating them
        model = build_model({"arch": "cylinder3d", "width": width, "num_classes": 20}, grid)
    counts = parameter_counts(model)
    assert counts["without_point_head"] == published_cylinder3d_parameters(width)
    assert abs(counts["without_point_head"] / 1e6 - published_millions) / published_millions < 0.01
    head = 4 * width
    assert (
        counts["point_head"]
        == (4 * width + 8 * width) * head + head + 2 * head + head * head + head + 2 * head + head * 20 + 20
    )


def test_build_model_reads_params_sections_and_rejects_bad_ones():
    model = build_model(
        {"arch": "minkunet", "width": 2, "num_classes": 3, "grid": {"cubic": {"voxel_size": [5.0, 5.0, 2.0]}}},
        GRID_PARAMS,
    )
    assert model.grid.kind == "cubic" and model.grid.size == (20, 20, 3)
    assert build_model({"arch": "cylinder3d", "width": 2, "num_classes": 3}, GRID_PARAMS).grid.size == (16, 16, 8)
    with pytest.raises(ParamsError, match="arch"):
        build_model({"arch": "pointnet", "width": 2, "num_classes": 3}, GRID_PARAMS)
    with pytest.raises(ParamsError, match="unknown option"):
        build_model({"arch": "minkunet", "width": 2, "num_classes": 3, "dropout": 0.1}, GRID_PARAMS)
    with pytest.raises(ParamsError, match="width"):
        build_model({"arch": "minkunet", "num_classes": 3}, GRID_PARAMS)
    cylinder = Grid("cylinder", (16, 16, 8), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
    with pytest.raises(ParamsError, match="cubic grid"):
        build_model({"arch": "spvcnn", "width": 2, "num_classes": 3}, cylinder)


def test_cylinder3d_point_features_are_the_published_nine(points):
    model = tiny_model("cylinder3d", width=2)
    from pvkd.models.common import voxelize

    vox = voxelize(model.grid, points)
    feats = model.point_input_features(points, vox.grid_coords, vox.point_cells).numpy()
    xyz = points.xyz.numpy().astype(np.float64)
    rho, phi = np.hypot(xyz[:, 0], xyz[:, 1]), np.arctan2(xyz[:, 1], xyz[:, 0])
    polar = np.stack([rho, phi, xyz[:, 2]], 1)
    lo, hi, size = np.array([0.0, -np.pi, -4.0]), np.array([50.0, np.pi, 2.0]), np.array([16, 16, 8])
    interval = (hi - lo) / (size - 1)
    cell = np.floor((np.clip(polar, lo, hi) - lo) / interval)
    centre = (cell + 0.5) * interval + lo
    expected = np.concatenate([polar - centre, polar, xyz[:, :2], points.intensity.numpy()[:, None]], 1)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_gives_the_same_predictions(arch, points):
    trained = tiny_model(arch, width=2).eval()
    with torch.no_grad():
        for p in trained.parameters():  # move every weight off its initial value
            p.add_(0.01 * torch.randn_like(p))
        expected = trained(points).point_logits
    torch.manual_seed(123)
    fresh = build_model({"arch": arch, "width": 2, "num_classes": NUM_CLASSES}, GRID_PARAMS).eval()
    fresh.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(points).point_logits, expected)
