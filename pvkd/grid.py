"""Voxel grids: the cylindrical grid of Cylinder3D and a cubic grid for cubic-voxel backbones.

Both map a point to an integer cell ``(i, j, k)`` and back to the cell centre, in numpy
(preprocess) or torch (training on augmented points) with the same code.

Cylindrical grid (Cylinder3D's convention, kept so our cells match the published model):
coordinates are ``(rho, phi, z)`` with ``rho = sqrt(x^2 + y^2)`` and ``phi = atan2(y, x)``;
the cell size is ``(max - min) / (size - 1)``, so index ``size - 1`` holds only points at or
beyond the upper bound. Cubic grid: cell size = ``voxel_size``, ``size = ceil(range / voxel)``.

Points outside the range are *kept*, never dropped (every point needs a prediction for
scoring): their coordinates are clipped to the range before binning, so they fall into the
border cells, as in Cylinder3D. Their features still carry their true coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pvkd.errors import ParamsError


def _lib(a):
    return torch if isinstance(a, torch.Tensor) else np


@dataclass(frozen=True)
class Grid:
    kind: str  # "cylinder" | "cubic"
    size: tuple[int, int, int]
    min_bound: tuple[float, float, float]
    max_bound: tuple[float, float, float]

    @property
    def cell_size(self) -> tuple[float, float, float]:
        denom = [s - 1 if self.kind == "cylinder" else s for s in self.size]
        return tuple((hi - lo) / d for lo, hi, d in zip(self.min_bound, self.max_bound, denom))

    @property
    def num_cells(self) -> int:
        return int(np.prod(self.size))

    def to_grid_coords(self, xyz):
        """Cartesian (N, 3) -> the grid's coordinate system: (rho, phi, z) or (x, y, z)."""
        if self.kind == "cubic":
            return xyz
        lib = _lib(xyz)
        x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        return lib.stack([lib.sqrt(x * x + y * y), lib.arctan2(y, x), z], 1)

    def cell_of(self, coords):
        """Grid coordinates (N, 3) -> int32 cell indices (N, 3), clipped into the grid."""
        lib = _lib(coords)
        if lib is torch:
            lo = torch.tensor(self.min_bound, dtype=coords.dtype, device=coords.device)
            hi = torch.tensor(self.max_bound, dtype=coords.dtype, device=coords.device)
            cell = torch.tensor(self.cell_size, dtype=coords.dtype, device=coords.device)
            top = torch.tensor(self.size, device=coords.device) - 1
            idx = torch.floor((torch.clamp(coords, lo, hi) - lo) / cell).to(torch.int32)
            return torch.minimum(idx, top.to(torch.int32))
        lo, hi = np.asarray(self.min_bound, coords.dtype), np.asarray(self.max_bound, coords.dtype)
        cell = np.asarray(self.cell_size, coords.dtype)
        idx = np.floor((np.clip(coords, lo, hi) - lo) / cell).astype(np.int32)
        # float rounding at the upper bound must not step outside the grid
        return np.minimum(idx, np.asarray(self.size, np.int32) - 1)

    def cell_centre(self, cells, dtype: torch.dtype | None = None):
        """Cell indices (N, 3) -> centres in grid coordinates (N, 3); torch: in ``dtype`` (default float32)."""
        lib = _lib(cells)
        if lib is torch:
            lo = torch.tensor(self.min_bound, dtype=dtype, device=cells.device)
            cell = torch.tensor(self.cell_size, dtype=dtype, device=cells.device)
            return (cells.to(lo.dtype) + 0.5) * cell + lo
        return (cells.astype(np.float64) + 0.5) * np.asarray(self.cell_size) + np.asarray(self.min_bound)

    def linear_index(self, cells):
        """(N, 3) cells -> (N,) int64 row-major index into the flattened grid."""
        _, s1, s2 = self.size
        c = cells.long() if isinstance(cells, torch.Tensor) else cells.astype(np.int64)
        return (c[:, 0] * s1 + c[:, 1]) * s2 + c[:, 2]


def grid_from_params(p: dict) -> Grid:
    """Build the grid from the ``grid`` section of params.yaml."""
    kind = p.get("type", "cylinder")
    if kind == "cylinder":
        c = p["cylinder"]
        lo, hi = (tuple(float(v) for v in c[k]) for k in ("min_bound", "max_bound"))
        return Grid("cylinder", tuple(int(s) for s in c["size"]), lo, hi)
    if kind == "cubic":
        c = p["cubic"]
        lo, hi, vox = (np.asarray(c[k], dtype=np.float64) for k in ("min_bound", "max_bound", "voxel_size"))
        size = tuple(int(s) for s in np.ceil((hi - lo) / vox - 1e-9))
        # keep the cell exactly voxel_size: stretch the upper bound to a whole number of cells
        hi = lo + np.asarray(size) * vox
        return Grid("cubic", size, tuple(lo.tolist()), tuple(hi.tolist()))
    raise ParamsError(f"grid.type must be 'cylinder' or 'cubic', got {kind!r} (params.yaml)")
