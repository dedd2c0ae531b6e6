"""Cylinder3D on spconv 2: cylindrical partition, asymmetric residual sparse U-Net, point-wise refinement head.

The published architecture (Zhu et al., the ``Asymm_3d_spconv`` + ``cylinder_fea`` pair of the
public code), layer for layer:

* point input, 9 dims: offset of the point to its voxel centre (d_rho, d_phi, d_z), rho, phi, z,
  x, y, intensity; point MLP ``BN(9) -> 2s -> 4s -> 8s -> 8s`` (Linear + BN + ReLU, the last
  Linear bare), max-pooled per voxel (torch-scatter), compressed ``8s -> s/2`` (Linear + ReLU):
  at s = 32 the published 64-128-256-256 and 16;
* asymmetric residual blocks: two branches, (1x3x3 then 3x1x3) and (3x1x3 then 1x3x3), each conv
  followed by LeakyReLU then BN (that order, as published), summed; widths s*(1, 2, 4, 8, 16);
  the encoder blocks end with a strided 3x3x3 sparse conv, strides (2,2,2), (2,2,2), (2,2,1),
  (2,2,1); the decoder blocks apply a 3x3x3 SubM, the inverse of the matching strided conv,
  add the skip, then 1x3x3, 3x1x3, 3x3x3 SubMs;
* dimension-decomposition context block: three rank-1 SubM convs 3x1x1, 1x3x1, 1x1x3, each BN
  then sigmoid, summed, multiplying the features; its output concatenated with its input (4s);
* SubM 3x3x3 head to the classes (with bias; kept as a separate parameter, see ``logits_bias``).

Teacher s = 32 gives 55.85 M parameters and the 0.5x student s = 16 gives 13.99 M, both without
the point head: the published 55.9 M and 14.0 M (``tests/test_models.py`` checks both). The
student is the teacher with *every* width halved, the point MLP and the compression included
(the published code hard-wires them; a student keeping the teacher's point MLP would count
14.07 M, and that MLP's ~13 GMACs on a 120k-point scan, unchanged, would hold the student's
MACs at ~0.29 of the teacher's instead of the paper's ~0.25). All three can be set explicitly.

Kernels: ``kernels`` (a model param) picks between two readings of the published layer list.

* ``declared`` (the default): every conv runs the kernel its line of the published code declares.
  In spconv 1.x, SubM convs that shared an ``indice_key`` silently reused the index pairs of the
  first conv computed under that key, whatever their own kernel, so a 3x1x3 conv could run with a
  1x3x3 geometry (and the rank-1 convs of the context block were not rank-1 along their own
  axes). Here an index key is ``<level>_<kernel>``: layers share pairs only when the resolution
  *and* the kernel shape agree, which is exactly when their geometry is identical, and spconv 2
  asserts the kernel sizes match on reuse. The 3x1x3 / 1x3x3 kernels and the 3x1x1 / 1x3x1 /
  1x1x3 rank-1 convs therefore see the neighbours along their own axes (the MAC test counts
  their pairs by hand).
* ``published``: every conv runs the kernel the published weights were trained with under
  spconv 1.x's sharing (each block's convs share one key, so all take the geometry of the
  block's first conv): the input block every conv 1x3x3, the encoder residual blocks every conv
  3x1x3, the decoder refinement convs 1x3x3 (the declared 3x3x3 ``conv3`` read only its first
  slab, ``weight[0]``), the dimension-decomposition block every conv 3x1x1. With these kernels
  the converted published checkpoints compute the published function on spconv 2
  (``pvkd import-teacher``, :mod:`pvkd.convert`); ``tests/test_convert.py`` checks it against a
  pure-torch reference of spconv 1.x.

Differences from the published code, on purpose:

* **Sparse logits.** The published model densifies the 480x360x32x20 logits (~420 MiB per
  sample); here voxel logits stay on the sparse rows.
* **Point-wise refinement head** (the paper's, absent from the published code): each point takes
  its voxel's features (``voxel_features[point_to_voxel]``, 4s), concatenated with its own
  point-MLP features (8s), through ``Linear + BN + ReLU`` twice (width ``point_head_width``,
  default 4s) to the point features, then a Linear to the point logits. With ``point_head:
  false`` there is no head, as in the published model: a point's logits and features are those
  of its voxel (what the published code predicts for it).

The BN of the context block is applied, as on the official master (``resA.features =
self.bn1(resA.features)``). Some community spconv-2 ports of that code rewrote the line as
``reaA = resA.replace_feature(self.bn1(resA.features))`` (e.g. the spconv-2 port of Cylinder3D pull
request #154), a misspelt variable that leaves the BN dead; weights trained with such a port would
need that BN skipped.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from torch import nn
from torch.profiler import record_function
from torch_scatter import scatter_max

from pvkd.errors import ParamsError
from pvkd.grid import Grid
from pvkd.models.common import (
    CONSTRUCTION_ALGO,
    PointBatch,
    SegOutput,
    SparseSegmentationModel,
    linear_bn_relu,
    voxelize,
)

K333, K133, K313 = (3, 3, 3), (1, 3, 3), (3, 1, 3)
K311, K131, K113 = (3, 1, 1), (1, 3, 1), (1, 1, 3)

# The kernels of each group of SubM convs, in the order the blocks below take them:
#   context: (branch a first, branch a second, branch b first, branch b second) of the input block
#   down:    the same four convs of each encoder residual block
#   refine:  the 1x3x3, 3x1x3, 3x3x3 convs after each decoder block's skip addition
#   recon:   the three rank-1 convs of the dimension-decomposition block
# "published": the geometry spconv 1.x ran them with (each group shared one indice_key, first conv's kernel).
KERNELS = {
    "declared": {
        "context": (K133, K313, K313, K133),
        "down": (K313, K133, K133, K313),
        "refine": (K133, K313, K333),
        "recon": (K311, K131, K113),
    },
    "published": {
        "context": (K133,) * 4,
        "down": (K313,) * 4,
        "refine": (K133,) * 3,
        "recon": (K311,) * 3,
    },
}


def subm(in_ch: int, out_ch: int, kernel: tuple[int, int, int], level: int) -> spconv.SubMConv3d:
    """A SubM conv whose index pairs are shared only with convs of the same level and kernel shape."""
    key = f"L{level}_{''.join(map(str, kernel))}"
    padding = tuple(k // 2 for k in kernel)
    return spconv.SubMConv3d(
        in_ch, out_ch, kernel_size=kernel, padding=padding, bias=False, indice_key=key, algo=CONSTRUCTION_ALGO
    )


class ConvActBN(nn.Module):
    """Sparse conv -> LeakyReLU -> BN: the published order (activation before normalisation)."""

    def __init__(self, conv: spconv.SparseConvolution, channels: int):
        super().__init__()
        self.conv, self.act, self.bn = conv, nn.LeakyReLU(), nn.BatchNorm1d(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.conv(x)
        return x.replace_feature(self.bn(self.act(x.features)))


class AsymmetricResidualBlock(nn.Module):
    """Two asymmetric branches summed: (first then second kernel) + (second then first kernel).

    ``kernels``: the four convs' kernels (branch a first, second, branch b first, second); as
    declared, ``(first, second, second, first)``."""

    def __init__(self, in_ch: int, out_ch: int, level: int, kernels: tuple[tuple[int, int, int], ...]):
        super().__init__()
        a1, a2, b1, b2 = kernels
        self.branch_a = nn.Sequential(
            ConvActBN(subm(in_ch, out_ch, a1, level), out_ch), ConvActBN(subm(out_ch, out_ch, a2, level), out_ch)
        )
        self.branch_b = nn.Sequential(
            ConvActBN(subm(in_ch, out_ch, b1, level), out_ch), ConvActBN(subm(out_ch, out_ch, b2, level), out_ch)
        )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        a, b = self.branch_a(x), self.branch_b(x)
        return b.replace_feature(a.features + b.features)


class DownBlock(nn.Module):
    """Asymmetric residual block (3x1x3 branch first as declared), then a strided 3x3x3 conv to the next level."""

    def __init__(self, in_ch: int, out_ch: int, level: int, stride: tuple[int, int, int], kernels: tuple):
        super().__init__()
        self.res = AsymmetricResidualBlock(in_ch, out_ch, level, kernels)
        # keyed, so the decoder's inverse conv restores exactly these rows
        self.pool = spconv.SparseConv3d(
            out_ch, out_ch, 3, stride=stride, padding=1, bias=False, indice_key=f"pool{level}", algo=CONSTRUCTION_ALGO
        )

    def forward(self, x: spconv.SparseConvTensor) -> tuple[spconv.SparseConvTensor, spconv.SparseConvTensor]:
        skip = self.res(x)
        return self.pool(skip), skip


class UpBlock(nn.Module):
    """3x3x3 SubM at the coarse level, inverse conv up to ``level``, add the skip, three SubMs (``kernels``:
    declared 1x3x3 / 3x1x3 / 3x3x3)."""

    def __init__(self, in_ch: int, out_ch: int, level: int, kernels: tuple):
        super().__init__()
        self.reduce = ConvActBN(subm(in_ch, out_ch, K333, level + 1), out_ch)
        self.up = spconv.SparseInverseConv3d(
            out_ch, out_ch, 3, indice_key=f"pool{level}", bias=False, algo=CONSTRUCTION_ALGO
        )
        self.refine = nn.Sequential(*(ConvActBN(subm(out_ch, out_ch, k, level), out_ch) for k in kernels))

    def forward(self, x: spconv.SparseConvTensor, skip: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        up = self.up(self.reduce(x))
        return self.refine(up.replace_feature(up.features + skip.features))


class DimensionDecompositionContext(nn.Module):
    """Three rank-1 convs (``kernels``: declared 3x1x1, 1x3x1, 1x1x3), each BN + sigmoid, summed, gating the input."""

    def __init__(self, channels: int, level: int, kernels: tuple):
        super().__init__()
        self.convs = nn.ModuleList(subm(channels, channels, k, level) for k in kernels)
        self.bns = nn.ModuleList(nn.BatchNorm1d(channels) for _ in range(3))

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        gate = sum(torch.sigmoid(bn(conv(x).features)) for conv, bn in zip(self.convs, self.bns))
        return x.replace_feature(gate * x.features)


class Cylinder3D(SparseSegmentationModel):
    """Cylinder3D with the paper's point-wise refinement head; ``width`` is the base width s.

    ``kernels``: ``declared`` (each conv its declared kernel) or ``published`` (the kernels the
    published weights were trained with, see the module docstring). ``point_head``: False for no
    head, each point then taking its voxel's logits and features.
    """

    arch = "cylinder3d"
    ENCODER_STRIDES = ((2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1))

    def __init__(
        self,
        grid: Grid,
        num_classes: int,
        width: int = 32,
        point_mlp: tuple[int, ...] | None = None,
        point_feature_dim: int | None = None,
        compressed_dim: int | None = None,
        point_head_width: int | None = None,
        kernels: str = "declared",
        point_head: bool = True,
    ):
        super().__init__(grid, num_classes, width)
        if grid.kind != "cylinder":
            raise ValueError(f"Cylinder3D needs a cylinder grid, got {grid.kind!r}")
        if kernels not in KERNELS:
            raise ParamsError(f"cylinder3d kernels must be one of {sorted(KERNELS)}, got {kernels!r}")
        self.kernels = kernels
        plan = KERNELS[kernels]
        s = self.width
        # every width follows s: at s = 32 these are the published 64-128-256, 256 and 16
        point_mlp = tuple(point_mlp or (2 * s, 4 * s, 8 * s))
        point_feature_dim = point_feature_dim or 8 * s
        compressed_dim = compressed_dim or max(s // 2, 1)
        layers: list[nn.Module] = [nn.BatchNorm1d(9)]
        dims = (9, *point_mlp)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += linear_bn_relu(a, b)
        layers.append(nn.Linear(dims[-1], point_feature_dim))
        self.point_mlp = nn.Sequential(*layers)
        self.compress = nn.Sequential(nn.Linear(point_feature_dim, compressed_dim), nn.ReLU(inplace=True))

        widths = [s, 2 * s, 4 * s, 8 * s, 16 * s]
        self.context = AsymmetricResidualBlock(compressed_dim, s, 0, plan["context"])
        self.down = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], i, stride, plan["down"])
            for i, stride in enumerate(self.ENCODER_STRIDES)
        )
        # decoder: 16s -> 16s -> 8s -> 4s -> 2s, back down to level 0
        up_in = [16 * s, 16 * s, 8 * s, 4 * s]
        up_out = [16 * s, 8 * s, 4 * s, 2 * s]
        self.up = nn.ModuleList(UpBlock(up_in[n], up_out[n], 3 - n, plan["refine"]) for n in range(4))
        self.recon = DimensionDecompositionContext(2 * s, 0, plan["recon"])
        # the head's bias lives outside the conv: spconv's eval path fuses a conv bias into the
        # kernel, which its CPU build refuses ("bias and act don't support cpu")
        self.logits = subm(4 * s, num_classes, K333, 0)
        self.logits_bias = nn.Parameter(torch.zeros(num_classes))

        head = point_head_width or 4 * s
        self.point_head = (
            nn.ModuleDict(
                {
                    "fuse": nn.Sequential(
                        *linear_bn_relu(4 * s + point_feature_dim, head), *linear_bn_relu(head, head)
                    ),
                    "classify": nn.Linear(head, num_classes),
                }
            )
            if point_head
            else None
        )

    def point_input_features(self, points: PointBatch, grid_coords: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The 9 published point features: offset to the voxel centre, (rho, phi, z), (x, y), intensity."""
        centre = self.grid.cell_centre(cells, grid_coords.dtype)
        return torch.cat(
            [grid_coords - centre, grid_coords, points.xyz[:, :2], points.intensity[:, None].to(grid_coords.dtype)], 1
        )

    def segment(self, points: PointBatch) -> SegOutput:
        # record_function labels name the phases in a profile (bench/model_latency.py --profile)
        with record_function("voxelize"):
            vox = voxelize(self.grid, points)
        with record_function("point_mlp"):
            point_mlp_features = self.point_mlp(self.point_input_features(points, vox.grid_coords, vox.point_cells))
            pooled = scatter_max(point_mlp_features, vox.point_to_voxel, dim=0, dim_size=vox.num_voxels)[0]
            x = spconv.SparseConvTensor(self.compress(pooled), vox.coords, list(self.grid.size), points.batch_size)

        with record_function("sparse_unet"):
            x = self.context(x)
            skips = []
            for block in self.down:
                x, skip = block(x)
                skips.append(skip)
            for block, skip in zip(self.up, reversed(skips)):
                x = block(x, skip)
            x = x.replace_feature(torch.cat([self.recon(x).features, x.features], 1))
            voxel_features = x.features
            voxel_logits = self.logits(x).features + self.logits_bias

        with record_function("point_head"):
            if self.point_head is None:  # the published model: a point is labelled as its voxel
                point_features = voxel_features[vox.point_to_voxel]
                point_logits = voxel_logits[vox.point_to_voxel]
            else:
                fused = torch.cat([voxel_features[vox.point_to_voxel], point_mlp_features], 1)
                point_features = self.point_head["fuse"](fused)
                point_logits = self.point_head["classify"](point_features)
        return SegOutput(
            point_logits=point_logits,
            voxel_logits=voxel_logits,
            point_features=point_features,
            voxel_features=voxel_features,
            voxel_coords=vox.coords,
            point_to_voxel=vox.point_to_voxel,
        )
