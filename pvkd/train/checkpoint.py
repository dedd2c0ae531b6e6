"""What checkpoints hold, and writing them whole.

Two kinds of file, both written to a temporary name in the target folder, flushed to disk and
renamed over the target (a crash leaves the old file or the new one, never half of one):

* a **model record** (``models/teacher.pt``, and ``best.pt`` of a run): the weights plus
  everything needed to rebuild and trust them: the model section that built the network
  (``arch``, ``width``, ``num_classes``, options), the grid it voxelizes on, the hash of the
  processed shards it was trained on (``meta.json``'s ``shards_hash``), the dataset and class
  names, the step and the validation scores. :func:`load_model` rebuilds the network from it.
* a **training state** (``last.pt`` of a run): the model record's content plus the optimizer,
  scheduler, gradient scaler, step, every process's RNG states and the metric history, so a
  killed run continues where it stopped (see :mod:`pvkd.train.engine`).

Both contain tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads
them: loading a model never runs pickled code.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvkd.atomic import atomic_path
from pvkd.errors import DataError, ParamsError
from pvkd.grid import Grid
from pvkd.models import SparseSegmentationModel, build_model
from pvkd.shards import ProcessedData

MODEL_FORMAT = "pvkd-model/1"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_info(model_cfg: dict, grid: Grid, shards_hash: str, dataset: str, class_names: list[str]) -> dict:
    """The description of a model that travels with its weights (and identifies a training run)."""
    return {
        "model": {k: v for k, v in model_cfg.items() if k != "grid"},  # the grid is stored resolved
        "grid": asdict(grid),
        "shards_hash": shards_hash,
        "dataset": dataset,
        "class_names": list(class_names),
    }


def grid_params(grid: Grid) -> dict:
    """A grid as the ``grid`` params section that builds it (a model section's own ``grid:`` merges over it)."""
    bounds = {"min_bound": list(grid.min_bound), "max_bound": list(grid.max_bound)}
    if grid.kind == "cylinder":
        return {"type": "cylinder", "cylinder": {"size": list(grid.size), **bounds}}
    return {"type": "cubic", "cubic": {**bounds, "voxel_size": list(grid.cell_size)}}


def model_for_data(
    model_cfg: dict, data: ProcessedData, grid_section: dict | None = None
) -> tuple[SparseSegmentationModel, dict]:
    """Build a params.yaml model section for a processed dataset: its classes, and its grid (the one
    the shards were binned on) unless the section brings its own ``grid:``. A model of the other grid
    kind (a cubic-grid student of cylinder-binned shards) takes that kind from ``grid_section`` (the
    params ``grid`` section). Returns ``(model, info)``."""
    classes = int(data.meta["num_classes"])
    if model_cfg.get("num_classes", classes) != classes:
        raise ParamsError(f"model num_classes {model_cfg['num_classes']} != the data's {classes} ({data.root})")
    cfg = {**model_cfg, "num_classes": classes}
    grids = {**(grid_section or {}), **grid_params(data.grid)}
    model = build_model(cfg, grids)
    info = model_info(cfg, model.grid, data.meta["shards_hash"], data.meta["dataset"], data.meta["class_names"])
    return model, info


def model_record(state_dict: dict, info: dict, **extra: Any) -> dict:
    """A model record: ``info`` (see :func:`model_info`), a CPU copy of the weights, and ``extra`` (step, scores).

    A copy even on the CPU, where ``.cpu()`` would alias the live tensors that training keeps updating."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    return {"format": MODEL_FORMAT, **info, "state_dict": weights, **extra}


def grid_of(record: dict) -> Grid:
    g = record["grid"]
    return Grid(g["kind"], tuple(g["size"]), tuple(g["min_bound"]), tuple(g["max_bound"]))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SparseSegmentationModel, dict]:
    """Rebuild the network of a model record and load its weights; returns ``(model in eval mode, record)``."""
    record = load(path)
    if record.get("format") != MODEL_FORMAT:
        raise DataError(f"{path}: not a pvkd model record (format {record.get('format')!r}, expected {MODEL_FORMAT})")
    model = build_model(record["model"], grid_of(record))
    model.load_state_dict(record["state_dict"])
    return model.to(device).eval(), record


def rng_state() -> dict:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"])}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].numpy()}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the nested tuples that a save/load round trip may have turned into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
