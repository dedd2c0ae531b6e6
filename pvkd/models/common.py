"""What every backbone shares: the input and output contract, on-the-fly voxelization, the spconv algorithm.

Contract
--------
Input: a :class:`PointBatch`, the points of ``batch_size`` scans concatenated (no padding), each
point tagged with its sample index. Output: a :class:`SegOutput`, the four things PVKD distils
(point logits, voxel logits, point features, voxel features) plus the indexing that ties points
to voxels. Every model voxelizes the points itself, in torch, on its own :class:`~pvkd.grid.Grid`,
so augmented points (rotated, flipped, scaled) are binned after augmentation, and a student with
another grid or backbone reads the same points. Logits stay on the sparse rows; nothing here ever
builds the dense grid.

Choosing the spconv algorithm
-----------------------------
spconv 2.3.8 has two families of sparse-conv kernels: ``ConvAlgo.Native`` (gather - GEMM -
scatter-add over explicit index pairs; the only one with a CPU implementation) and the implicit
GEMM ones (``MaskImplicitGemm``, spconv's default for kernels of volume <= 32 on a CUDA build;
CUDA only). What the source says (``spconv/pytorch/conv.py``, ``spconv/constants.py``):

* the algorithm is a plain attribute, ``SparseConvolution.algo``, read at the top of every
  forward (``algo = self.algo``); nothing else is derived from it at construction;
* the weight layout does *not* depend on it: ``ALL_WEIGHT_IS_KRSC = True`` makes every weight
  ``[out, *kernel, in]`` whatever the algorithm (only the optional ``SPCONV_SAVED_WEIGHT_LAYOUT``
  load-time permutation looks at ``algo``, and it is off unless that variable is set), so a
  checkpoint saved on the GPU loads on the CPU and the reverse;
* index pairs live on the ``SparseConvTensor`` of one forward (``indice_dict``), never on the
  module, and layers that share an ``indice_key`` must use the same algorithm (an assert).

So the algorithm can be switched after construction by walking the modules, and that is the
design: layers are built with ``Native`` (valid everywhere), and :class:`SparseSegmentationModel`
calls :func:`use_conv_algo` with :func:`conv_algo_for` the device of the input points at the top
of every forward. That is the one place the choice is made; switching every layer at once keeps
layers sharing an ``indice_key`` consistent; deciding from the input (rather than hooking
``.to()``) also covers models moved by wrappers (DDP, ``to_empty``, ``load_state_dict(assign=)``).
The walk happens only when the device type changes, so its cost is nil in a training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from spconv.core import ConvAlgo
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from pvkd.grid import Grid

# the algorithm every sparse layer is built with; swapped per device by use_conv_algo
CONSTRUCTION_ALGO = ConvAlgo.Native


@dataclass
class PointBatch:
    """Points of ``batch_size`` scans, concatenated: point ``n`` belongs to scan ``batch[n]``."""

    xyz: torch.Tensor  # (N, 3) float32, cartesian metres
    intensity: torch.Tensor  # (N,) float32
    batch: torch.Tensor  # (N,) int64 sample index in [0, batch_size)
    batch_size: int

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def device(self) -> torch.device:
        return self.xyz.device

    def to(self, device: torch.device | str) -> PointBatch:
        return PointBatch(self.xyz.to(device), self.intensity.to(device), self.batch.to(device), self.batch_size)

    def index_select(self, order: torch.Tensor) -> PointBatch:
        """The same points in another order (or a subset): rows ``order`` of every per-point tensor."""
        return PointBatch(self.xyz[order], self.intensity[order], self.batch[order], self.batch_size)

    @classmethod
    def from_scans(cls, scans: list[tuple[torch.Tensor, torch.Tensor]]) -> PointBatch:
        """Concatenate ``[(xyz (N_i, 3), intensity (N_i,)), ...]`` into one batch."""
        xyz = torch.cat([torch.as_tensor(s[0], dtype=torch.float32) for s in scans])
        intensity = torch.cat([torch.as_tensor(s[1], dtype=torch.float32) for s in scans])
        batch = torch.cat([torch.full((len(s[0]),), b, dtype=torch.long) for b, s in enumerate(scans)])
        return cls(xyz, intensity, batch, len(scans))


@dataclass
class SegOutput:
    """What a backbone returns: logits and features on points and on non-empty voxels."""

    point_logits: torch.Tensor  # (N, C)
    voxel_logits: torch.Tensor  # (V, C)
    point_features: torch.Tensor  # (N, Fp)
    voxel_features: torch.Tensor  # (V, Fv)
    voxel_coords: torch.Tensor  # (V, 4) int32 [batch, i, j, k] in the model's grid
    point_to_voxel: torch.Tensor  # (N,) int64: row of the point's voxel

    def detach(self) -> SegOutput:
        return SegOutput(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


@dataclass
class Voxelization:
    """Points binned into the non-empty cells of a grid, per sample."""

    coords: torch.Tensor  # (V, 4) int32 [batch, i, j, k], sorted by (batch, linear cell index)
    point_to_voxel: torch.Tensor  # (N,) int64
    point_cells: torch.Tensor  # (N, 3) int32 cell of each point
    grid_coords: torch.Tensor  # (N, 3) the points in the grid's coordinates (rho, phi, z) or (x, y, z), unclipped

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


def voxelize(grid: Grid, points: PointBatch) -> Voxelization:
    """Unique (sample, cell) pairs -> voxel rows, and each point's row; independent of the points' order."""
    grid_coords = grid.to_grid_coords(points.xyz)
    cells = grid.cell_of(grid_coords)
    keys = points.batch.long() * grid.num_cells + grid.linear_index(cells)
    # sorted unique keys: the voxel order is a function of the occupied cells only
    unique_keys, point_to_voxel = torch.unique(keys, sorted=True, return_inverse=True)
    s0, s1, s2 = grid.size
    batch_index, cell = unique_keys // grid.num_cells, unique_keys % grid.num_cells
    coords = torch.stack([batch_index, cell // (s1 * s2), (cell // s2) % s1, cell % s2], 1).to(torch.int32)
    return Voxelization(coords, point_to_voxel, cells, grid_coords)


class SparseRowLookup:
    """Find the row of a (batch, i, j, k) cell among the rows of a sparse tensor (sorted keys + binary search).

    spconv keeps no cell -> row map; the point branch of SPVCNN needs one at every level it fuses.
    """

    def __init__(self, indices: torch.Tensor, spatial_shape: tuple[int, int, int]):
        self.shape = tuple(int(s) for s in spatial_shape)
        keys = self.keys(indices)
        self.sorted_keys, self.order = torch.sort(keys)

    def keys(self, indices: torch.Tensor) -> torch.Tensor:
        s0, s1, s2 = self.shape
        c = indices.long()
        return ((c[:, 0] * s0 + c[:, 1]) * s1 + c[:, 2]) * s2 + c[:, 3]

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """(M, 4) cells -> (M,) rows, -1 where the cell is empty or outside the shape."""
        inside = ((indices[:, 1:] >= 0) & (indices[:, 1:] < torch.tensor(self.shape, device=indices.device))).all(1)
        keys = self.keys(indices.clamp(min=0))
        pos = torch.searchsorted(self.sorted_keys, keys).clamp(max=max(len(self.sorted_keys) - 1, 0))
        if len(self.sorted_keys) == 0:
            return torch.full_like(keys, -1)
        found = inside & (self.sorted_keys[pos] == keys)
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


def conv_algo_for(device: torch.device | str) -> ConvAlgo:
    """The spconv algorithm for a device: Native on the CPU (the only CPU kernels), implicit GEMM on CUDA."""
    return ConvAlgo.MaskImplicitGemm if torch.device(device).type == "cuda" else ConvAlgo.Native


def use_conv_algo(module: nn.Module, algo: ConvAlgo) -> None:
    """Set the algorithm of every sparse conv under ``module`` (weights are KRSC either way: no re-layout)."""
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo


class SparseSegmentationModel(nn.Module):
    """Base of every backbone: owns its grid, picks the spconv algorithm from the input's device.

    Subclasses implement :meth:`segment`; modules under the attribute ``point_head`` are the
    point-wise refinement head (counted apart by :func:`parameter_counts`).
    """

    arch: str = ""

    def __init__(self, grid: Grid, num_classes: int, width: int):
        super().__init__()
        self.grid = grid
        self.num_classes = int(num_classes)
        self.width = int(width)
        self._conv_device_type: str | None = None

    def forward(self, points: PointBatch) -> SegOutput:
        device_type = points.xyz.device.type
        if device_type != self._conv_device_type:
            use_conv_algo(self, conv_algo_for(points.xyz.device))
            self._conv_device_type = device_type
        return self.segment(points)

    def segment(self, points: PointBatch) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters in total and without the point-wise refinement head (``model.point_head``)."""
    total = sum(p.numel() for p in model.parameters())
    head = getattr(model, "point_head", None)
    head_count = sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0
    return {"total": total, "point_head": head_count, "without_point_head": total - head_count}


def linear_bn_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)]
