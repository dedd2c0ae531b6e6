"""MinkUNet on spconv 2: a sparse residual U-Net on a cubic grid (the MinkowskiNet family of PVKD).

The layout of the MinkUNet used by SPVNAS / torchsparse (MinkUNet18-style, two residual blocks
per stage): a stem of two 3x3x3 SubM convs; four encoder stages, each a 2x2x2 stride-2 conv then
residual blocks; four decoder stages, each the inverse of the matching stride-2 conv (spconv's
``SparseInverseConv3d`` restores exactly the finer rows, so the skip concatenation is row-aligned),
concatenation with the skip, then residual blocks; a Linear classifier on the voxels. Channels
are ``width * (1, 1, 2, 4, 8, 8, 4, 3, 3)`` (width 32 gives the published 32, 32, 64, 128, 256,
256, 128, 96, 96), so ``width`` means the same as Cylinder3D's s: the full model is width 32,
the 0.5x student width 16. ``blocks`` (8 numbers, residual blocks per encoder and decoder stage)
gives MinkUNet34-style depths: ``[2, 3, 4, 6, 2, 2, 2, 2]``.

Input: per voxel, the mean of its points' (x, y, z, intensity). The network has no point branch:
point logits and features are those of the point's voxel (``SegOutput`` still has them, so this
model can be a teacher or a student of any other). The spatial shape handed to spconv is padded
up to a multiple of 2**4, so every stride-2 level has room for the parent of every cell (with an
odd size spconv's 2x2x2 stride-2 conv would silently drop the last slab of cells).

The blocks here are shared with SPVCNN (``pvkd.models.spvcnn``), which adds the point branch.
"""

from __future__ import annotations

import math

import spconv.pytorch as spconv
import torch
from torch import nn
from torch.profiler import record_function
from torch_scatter import scatter_mean

from pvkd.grid import Grid
from pvkd.models.common import CONSTRUCTION_ALGO, PointBatch, SegOutput, SparseSegmentationModel, voxelize

NUM_LEVELS = 4
CHANNEL_MULTIPLIERS = (1, 1, 2, 4, 8, 8, 4, 3, 3)
DEFAULT_BLOCKS = (2, 2, 2, 2, 2, 2, 2, 2)


def cubic_channels(width: int) -> list[int]:
    return [width * m for m in CHANNEL_MULTIPLIERS]


def padded_spatial_shape(grid: Grid, levels: int = NUM_LEVELS) -> list[int]:
    """The grid's size rounded up to a multiple of 2**levels: every cell keeps a parent at every level."""
    step = 2**levels
    return [int(math.ceil(s / step) * step) for s in grid.size]


def point_features_xyzi(points: PointBatch) -> torch.Tensor:
    return torch.cat([points.xyz, points.intensity[:, None].to(points.xyz.dtype)], 1)


class SubmBNReLU(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, level: int):
        super().__init__()
        self.conv = spconv.SubMConv3d(
            in_ch, out_ch, 3, padding=1, bias=False, indice_key=f"subm{level}", algo=CONSTRUCTION_ALGO
        )
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.conv(x)
        return x.replace_feature(torch.relu(self.bn(x.features)))


class ResidualBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus the input (projected by Linear + BN when the width changes), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, level: int):
        super().__init__()
        key = f"subm{level}"
        self.conv1 = spconv.SubMConv3d(in_ch, out_ch, 3, padding=1, bias=False, indice_key=key, algo=CONSTRUCTION_ALGO)
        self.bn1 = nn.BatchNorm1d(out_ch)
        self.conv2 = spconv.SubMConv3d(out_ch, out_ch, 3, padding=1, bias=False, indice_key=key, algo=CONSTRUCTION_ALGO)
        self.bn2 = nn.BatchNorm1d(out_ch)
        # a 1x1x1 conv is a per-row linear map: no index pairs needed
        self.project = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(nn.Linear(in_ch, out_ch, bias=False), nn.BatchNorm1d(out_ch))
        )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.bn2(out.features) + self.project(x.features)))


class DownStage(nn.Module):
    """2x2x2 stride-2 conv (level -> level + 1) with BN + ReLU, then residual blocks."""

    def __init__(self, in_ch: int, out_ch: int, level: int, blocks: int):
        super().__init__()
        self.down = spconv.SparseConv3d(
            in_ch, in_ch, 2, stride=2, bias=False, indice_key=f"down{level}", algo=CONSTRUCTION_ALGO
        )
        self.bn = nn.BatchNorm1d(in_ch)
        self.blocks = nn.Sequential(
            *(ResidualBlock(in_ch if b == 0 else out_ch, out_ch, level + 1) for b in range(blocks))
        )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.down(x)
        return self.blocks(x.replace_feature(torch.relu(self.bn(x.features))))


class UpStage(nn.Module):
    """Inverse of the stride-2 conv (level + 1 -> level) with BN + ReLU, concatenate the skip, residual blocks."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, level: int, blocks: int):
        super().__init__()
        self.up = spconv.SparseInverseConv3d(
            in_ch, out_ch, 2, indice_key=f"down{level}", bias=False, algo=CONSTRUCTION_ALGO
        )
        self.bn = nn.BatchNorm1d(out_ch)
        self.blocks = nn.Sequential(
            *(ResidualBlock(out_ch + skip_ch if b == 0 else out_ch, out_ch, level) for b in range(blocks))
        )

    def forward(self, x: spconv.SparseConvTensor, skip: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.up(x)
        x = x.replace_feature(torch.cat([torch.relu(self.bn(x.features)), skip.features], 1))
        return self.blocks(x)


class SparseUNet(nn.Module):
    """The voxel U-Net of MinkUNet and SPVCNN; the stages are called one by one so SPVCNN can fuse between them."""

    def __init__(self, in_dim: int, width: int, blocks: tuple[int, ...] = DEFAULT_BLOCKS):
        super().__init__()
        if len(blocks) != 2 * NUM_LEVELS:
            raise ValueError(f"blocks needs {2 * NUM_LEVELS} numbers (encoder then decoder stages), got {blocks}")
        c = cubic_channels(width)
        self.channels = c
        self.stem = nn.Sequential(SubmBNReLU(in_dim, c[0], 0), SubmBNReLU(c[0], c[0], 0))
        self.down = nn.ModuleList(DownStage(c[i], c[i + 1], i, blocks[i]) for i in range(NUM_LEVELS))
        # decoder stage n goes from level 4 - n to level 3 - n; its skip is the encoder output at that level
        self.up = nn.ModuleList(
            UpStage(c[4 + n], c[3 - n], c[5 + n], 3 - n, blocks[NUM_LEVELS + n]) for n in range(NUM_LEVELS)
        )


class MinkUNet(SparseSegmentationModel):
    """Sparse residual U-Net on a cubic grid; point outputs are their voxel's."""

    arch = "minkunet"

    def __init__(self, grid: Grid, num_classes: int, width: int = 32, blocks: tuple[int, ...] = DEFAULT_BLOCKS):
        super().__init__(grid, num_classes, width)
        if grid.kind != "cubic":
            raise ValueError(f"MinkUNet needs a cubic grid, got {grid.kind!r}")
        self.unet = SparseUNet(4, self.width, tuple(blocks))
        self.classifier = nn.Linear(self.unet.channels[-1], num_classes)

    def segment(self, points: PointBatch) -> SegOutput:
        with record_function("voxelize"):
            vox = voxelize(self.grid, points)
            features = scatter_mean(point_features_xyzi(points), vox.point_to_voxel, dim=0, dim_size=vox.num_voxels)
        with record_function("sparse_unet"):
            x = spconv.SparseConvTensor(features, vox.coords, padded_spatial_shape(self.grid), points.batch_size)
            x = self.unet.stem(x)
            skips = [x]
            for stage in self.unet.down:
                x = stage(x)
                skips.append(x)
            for stage, skip in zip(self.unet.up, reversed(skips[:-1])):
                x = stage(x, skip)
            voxel_features = x.features
            voxel_logits = self.classifier(voxel_features)
        return SegOutput(
            point_logits=voxel_logits[vox.point_to_voxel],
            voxel_logits=voxel_logits,
            point_features=voxel_features[vox.point_to_voxel],
            voxel_features=voxel_features,
            voxel_coords=vox.coords,
            point_to_voxel=vox.point_to_voxel,
        )
