"""Sparse 3D backbones: Cylinder3D (the paper's teacher and student), MinkUNet, SPVCNN; all share one contract.

``build_model(cfg, grid)`` builds any of them from a params.yaml model section::

    teacher:
      model: {arch: cylinder3d, width: 32, num_classes: 20}
    students:
      half:
        model: {arch: cylinder3d, width: 16, num_classes: 20}
      mink:
        model: {arch: minkunet, width: 16, num_classes: 20, grid: {cubic: {voxel_size: [0.2, 0.2, 0.2]}}}

Every model takes a :class:`PointBatch` and returns a :class:`SegOutput` (see ``common``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from pvkd.errors import ParamsError
from pvkd.grid import Grid, grid_from_params
from pvkd.models.common import (
    PointBatch,
    SegOutput,
    SparseSegmentationModel,
    Voxelization,
    conv_algo_for,
    parameter_counts,
    use_conv_algo,
    voxelize,
)
from pvkd.models.cylinder3d import Cylinder3D
from pvkd.models.minkunet import MinkUNet
from pvkd.models.spvcnn import SPVCNN

ARCHITECTURES: dict[str, type[SparseSegmentationModel]] = {
    "cylinder3d": Cylinder3D,
    "minkunet": MinkUNet,
    "spvcnn": SPVCNN,
}
# the grid each architecture is defined on
GRID_KIND = {"cylinder3d": "cylinder", "minkunet": "cubic", "spvcnn": "cubic"}
# keys of a model section that are not constructor options
_RESERVED = {"arch", "width", "num_classes", "grid"}

__all__ = [
    "ARCHITECTURES",
    "Cylinder3D",
    "MinkUNet",
    "PointBatch",
    "SPVCNN",
    "SegOutput",
    "SparseSegmentationModel",
    "Voxelization",
    "build_model",
    "conv_algo_for",
    "model_grid",
    "parameter_counts",
    "use_conv_algo",
    "voxelize",
]


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_grid(cfg: dict[str, Any], grid: Grid | dict | None) -> Grid:
    """The grid a model section runs on: the ``grid`` params section (its subsection of the arch's kind),
    with the model's own ``grid:`` keys merged over it; or a ready :class:`Grid` of the right kind."""
    arch = cfg.get("arch")
    kind = GRID_KIND.get(arch)
    if kind is None:
        raise ParamsError(f"model arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    override = cfg.get("grid") or {}
    if isinstance(grid, Grid) and not override:
        if grid.kind != kind:
            raise ParamsError(f"{arch} runs on a {kind} grid, got a {grid.kind} grid")
        return grid
    params = {} if grid is None or isinstance(grid, Grid) else dict(grid)
    params = _merge(params, override)
    params["type"] = kind
    if kind not in params:
        raise ParamsError(f"{arch} needs a grid.{kind} section (params.yaml grid, or the model's own grid:)")
    return grid_from_params(params)


def build_model(cfg: dict[str, Any], grid: Grid | dict | None) -> SparseSegmentationModel:
    """A backbone from a model section ``{arch, width, num_classes, ...options, grid?}`` and the grid params."""
    for key in ("arch", "width", "num_classes"):
        if key not in cfg:
            raise ParamsError(f"model section needs '{key}' (got keys {sorted(cfg)})")
    arch = cfg["arch"]
    if arch not in ARCHITECTURES:
        raise ParamsError(f"model arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k not in _RESERVED}
    accepted = set(inspect.signature(ARCHITECTURES[arch]).parameters) - {"grid", "num_classes", "width"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ParamsError(f"unknown option(s) {unknown} for {arch}; it accepts {sorted(accepted)}")
    return ARCHITECTURES[arch](model_grid(cfg, grid), int(cfg["num_classes"]), int(cfg["width"]), **options)
