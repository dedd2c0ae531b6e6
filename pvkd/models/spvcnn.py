"""SPVCNN on spconv 2: the MinkUNet voxel U-Net plus a point branch fused at four stages (the SPVNAS family).

Sparse point-voxel convolution (Tang et al.): the points keep their own features all the way
through the network; at the stem, at the bottleneck, after the second decoder stage and at the
end, the voxel features are brought to the points (*devoxelize*: trilinear interpolation from
the 8 nearest voxel centres of that level, empty ones given weight 0 and the rest renormalised;
or nearest = the point's own voxel, ``devoxelize: nearest``), added to a Linear + BN + ReLU
transform of the previous point features, and averaged back into the voxels (*voxelize*:
torch-scatter ``scatter_mean``) to feed the next stage, as in the published SPVCNN.

Point -> voxel lookup on a level: the 2x2x2 stride-2 convs of the U-Net make the parent of cell
``c`` at level ``l`` exactly ``c // 2**l``; :class:`~pvkd.models.common.SparseRowLookup` finds
its row in the level's sparse tensor (every parent exists, because every voxel has points).

Outputs: the point logits come from the point branch (its classifier, as published); the voxel
logits from a Linear on the final voxel features (so PVKD's voxel terms have a real voxel head);
point features = the final point-branch features, voxel features = the final voxel features.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch_scatter import scatter_mean

from pvkd.grid import Grid
from pvkd.models.common import PointBatch, SegOutput, SparseRowLookup, SparseSegmentationModel, linear_bn_relu, voxelize
from pvkd.models.minkunet import DEFAULT_BLOCKS, SparseUNet, padded_spatial_shape, point_features_xyzi

TRILINEAR_CORNERS = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])


class PointVoxelBridge:
    """Moves features between the points and the voxels of one U-Net level (for one forward)."""

    def __init__(self, tensor: spconv.SparseConvTensor, level: int, cell_units: torch.Tensor, batch: torch.Tensor):
        self.rows = SparseRowLookup(tensor.indices, tensor.spatial_shape)
        self.num_voxels = int(tensor.indices.shape[0])
        # point positions in units of this level's cells (cell c spans [c, c + 1))
        self.position = cell_units / (2**level)
        self.batch = batch[:, None].to(torch.int32)
        parent = torch.floor(self.position).to(torch.int32)
        self.nearest = self.rows.rows(torch.cat([self.batch, parent], 1))
        if bool((self.nearest < 0).any()):
            raise RuntimeError(f"a point's voxel is missing at U-Net level {level}: the grid and the tensor disagree")

    def voxelize(self, point_features: torch.Tensor) -> torch.Tensor:
        return scatter_mean(point_features, self.nearest, dim=0, dim_size=self.num_voxels)

    def devoxelize(self, voxel_features: torch.Tensor, trilinear: bool) -> torch.Tensor:
        if not trilinear:
            return voxel_features[self.nearest]
        # the 8 voxel centres around the point: centres sit at c + 0.5
        base = torch.floor(self.position - 0.5)
        frac = self.position - 0.5 - base
        corners = TRILINEAR_CORNERS.to(base.device)
        cells = base.to(torch.int32)[:, None, :] + corners[None].to(torch.int32)  # (N, 8, 3)
        weight = torch.where(corners[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(2)  # (N, 8)
        n = cells.shape[0]
        rows = self.rows.rows(torch.cat([self.batch[:, None, :].expand(n, 8, 1), cells], 2).reshape(-1, 4)).view(n, 8)
        weight = torch.where(rows >= 0, weight, torch.zeros_like(weight))
        # the point's own voxel always exists, so the sum is > 0 unless the point sits exactly on a far corner
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-8)
        # a weighted gather-sum in one fused op: never materialises the (N, 8, C) gather
        # (1 GB at 120k points x 256 channels); gradients flow to the voxel features
        return F.embedding_bag(
            rows.clamp_min(0), voxel_features, per_sample_weights=weight.to(voxel_features.dtype), mode="sum"
        )


class SPVCNN(SparseSegmentationModel):
    """MinkUNet voxel branch + point branch, fused at the stem, the bottleneck, decoder stage 2 and the end."""

    arch = "spvcnn"

    def __init__(
        self,
        grid: Grid,
        num_classes: int,
        width: int = 32,
        blocks: tuple[int, ...] = DEFAULT_BLOCKS,
        devoxelize: str = "trilinear",
        dropout: float = 0.3,
    ):
        super().__init__(grid, num_classes, width)
        if grid.kind != "cubic":
            raise ValueError(f"SPVCNN needs a cubic grid, got {grid.kind!r}")
        if devoxelize not in ("trilinear", "nearest"):
            raise ValueError(f"devoxelize must be 'trilinear' or 'nearest', got {devoxelize!r}")
        self.trilinear = devoxelize == "trilinear"
        self.unet = SparseUNet(4, self.width, tuple(blocks))
        c = self.unet.channels
        # point features at the stem (c0), then after the bottleneck (c4), decoder stage 2 (c6), the end (c8)
        self.point_transforms = nn.ModuleList(
            nn.Sequential(*linear_bn_relu(a, b)) for a, b in ((c[0], c[4]), (c[4], c[6]), (c[6], c[8]))
        )
        self.dropout = nn.Dropout(dropout)
        self.point_classifier = nn.Linear(c[8], num_classes)
        self.voxel_classifier = nn.Linear(c[8], num_classes)

    def cell_units(self, vox) -> torch.Tensor:
        """Point positions in level-0 cell units, clipped like the binning and kept inside the point's own cell."""
        lo = torch.tensor(self.grid.min_bound, device=vox.grid_coords.device)
        hi = torch.tensor(self.grid.max_bound, device=vox.grid_coords.device)
        cell = torch.tensor(self.grid.cell_size, device=vox.grid_coords.device)
        units = (torch.clamp(vox.grid_coords, lo, hi) - lo) / cell
        own = vox.point_cells.to(units.dtype)
        # float rounding must not move a point out of the cell the binning gave it
        return torch.minimum(torch.maximum(units, own), own + 1.0 - 1e-4)

    def segment(self, points: PointBatch) -> SegOutput:
        with record_function("voxelize"):
            vox = voxelize(self.grid, points)
            cell_units = self.cell_units(vox)
            features = scatter_mean(point_features_xyzi(points), vox.point_to_voxel, dim=0, dim_size=vox.num_voxels)
        with record_function("sparse_unet"):
            x0 = spconv.SparseConvTensor(features, vox.coords, padded_spatial_shape(self.grid), points.batch_size)
            x0 = self.unet.stem(x0)
        with record_function("point_voxel_fusion"):
            fine = PointVoxelBridge(x0, 0, cell_units, points.batch)
            z0 = fine.devoxelize(x0.features, self.trilinear)
            x = x0.replace_feature(fine.voxelize(z0))
        with record_function("sparse_unet"):
            skips = [x]
            for stage in self.unet.down:
                x = stage(x)
                skips.append(x)
            x4 = skips.pop()
        with record_function("point_voxel_fusion"):
            coarse = PointVoxelBridge(x4, 4, cell_units, points.batch)
            z1 = coarse.devoxelize(x4.features, self.trilinear) + self.point_transforms[0](z0)
            y = x4.replace_feature(self.dropout(coarse.voxelize(z1)))
        with record_function("sparse_unet"):
            for stage in self.unet.up[:2]:
                y = stage(y, skips.pop())
        with record_function("point_voxel_fusion"):
            middle = PointVoxelBridge(y, 2, cell_units, points.batch)
            z2 = middle.devoxelize(y.features, self.trilinear) + self.point_transforms[1](z1)
            y = y.replace_feature(self.dropout(middle.voxelize(z2)))
        with record_function("sparse_unet"):
            for stage in self.unet.up[2:]:
                y = stage(y, skips.pop())
        with record_function("point_voxel_fusion"):
            z3 = fine.devoxelize(y.features, self.trilinear) + self.point_transforms[2](z2)

        return SegOutput(
            point_logits=self.point_classifier(z3),
            voxel_logits=self.voxel_classifier(y.features),
            point_features=z3,
            voxel_features=y.features,
            voxel_coords=vox.coords,
            point_to_voxel=vox.point_to_voxel,
        )
