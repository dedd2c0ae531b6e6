"""What checkpoints hold, and writing them whole.

Two kinds of file, both written to a temporary name in the target folder, flushed to disk and
renamed over the target (a crash leaves the old file or the new one, never half of one):

* a **model record** (``models/teacher.pt``, and ``best.pt`` of a run): the weights plus
  everything needed to rebuild and trust them: the model section that built the network
  (``arch``, ``width``, ``num_classes``, options), the grid it voxelizes on, the shards' hash
  of every processed split it read (``data_hashes``: ``{split: hash}``), the sequences or scenes
  of the splits it trained on (``train_sequences``, for evaluate's leak guard), the dataset and
  class names, the step and the validation scores. :func:`load_model` rebuilds the network from it.
* a **training state** (``last.pt`` of a run): the model record's content plus the optimizer,
  scheduler, gradient scaler, step, every process's RNG states and the metric history, so a
  killed run continues where it stopped (see :mod:`pvkd.train.engine`).

Both contain tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads
them: loading a model never runs pickled code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
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


def load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` to the CPU. A missing file stays a ``FileNotFoundError``; a file that
    is not a whole torch file (truncated, another format) or that holds pickled objects beyond tensors and
    plain values is a :class:`DataError` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing, a folder, no permission: the OS's own message names the path
    except pickle.UnpicklingError as err:
        # weights_only names the first class it refuses ("Unsupported global: GLOBAL torch.nn...Linear"); any
        # other unpickling failure (an unknown opcode: text, random bytes) means the bytes are not a torch file
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise DataError(f"{path}: holds pickled Python objects ({refused.group(1)}), not only tensors and plain "
                            "values; pvkd loads with weights_only and never runs pickled code (save a state_dict "
                            "instead)") from None
        reason = "its bytes do not unpickle"
    except Exception as err:  # torch.load fails on a damaged file with errors of many types
        # truncated zip: RuntimeError (PytorchStreamReader ...); truncated legacy or empty file: EOFError;
        # text: KeyError or IndexError, depending on its first bytes
        reason = f"{type(err).__name__}: {_first_line(err)}"
    raise DataError(f"{path}: not a readable torch file: truncated, damaged or not a torch file at all ({reason})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else "no message"


def model_info(model_cfg: dict, grid: Grid, data_hashes: dict[str, str], dataset: str, class_names: list[str]) -> dict:
    """The description of a model that travels with its weights (and identifies a training run)."""
    return {
        "model": {k: v for k, v in model_cfg.items() if k != "grid"},  # the grid is stored resolved
        "grid": asdict(grid),
        "data_hashes": dict(data_hashes),
        "dataset": dataset,
        "class_names": list(class_names),
    }


def trained_on(info: dict, data: ProcessedData, splits: list[str]) -> dict:
    """``info`` with the splits a model trains on and their sequences (scenes on nuScenes): evaluate refuses
    to score it on any scan of those sequences, labelled or not (a sweep split of the val scenes included)."""
    index = data.index[data.index["split"].isin(splits)]
    return {**info, "train_splits": list(splits), "train_sequences": sorted(set(index["sequence"].astype(str)))}


def grid_params(grid: Grid) -> dict:
    """A grid as the ``grid`` params section that builds it (a model section's own ``grid:`` merges over it)."""
    bounds = {"min_bound": list(grid.min_bound), "max_bound": list(grid.max_bound)}
    if grid.kind == "cylinder":
        return {"type": "cylinder", "cylinder": {"size": list(grid.size), **bounds}}
    return {"type": "cubic", "cubic": {**bounds, "voxel_size": list(grid.cell_size)}}


def model_for_data(
    model_cfg: dict, data: ProcessedData, grid_section: dict | None = None, reads: tuple[str, ...] = ("train", "val")
) -> tuple[SparseSegmentationModel, dict]:
    """Build a params.yaml model section for a processed dataset: its classes, and its grid (the one
    the shards were binned on) unless the section brings its own ``grid:``. A model of the other grid
    kind (a cubic-grid student of cylinder-binned shards) takes that kind from ``grid_section`` (the
    params ``grid`` section). ``reads``: the splits whose shards' hashes identify the run (the record's
    ``data_hashes``). Returns ``(model, info)``."""
    classes = int(data.meta["num_classes"])
    if model_cfg.get("num_classes", classes) != classes:
        raise ParamsError(f"model num_classes {model_cfg['num_classes']} != the data's {classes} ({data.root})")
    cfg = {**model_cfg, "num_classes": classes}
    grids = {**(grid_section or {}), **grid_params(data.grid)}
    model = build_model(cfg, grids)
    info = model_info(cfg, model.grid, data.hashes(reads), data.meta["dataset"], data.meta["class_names"])
    return model, info


def model_record(state_dict: dict, info: dict, **extra: Any) -> dict:
    """A model record: ``info`` (see :func:`model_info`), a CPU copy of the weights, and ``extra`` (step, scores).

    A copy even on the CPU, where ``.cpu()`` would alias the live tensors that training keeps updating."""
    weights = cpu_copy(state_dict)
    return {"format": MODEL_FORMAT, **info, "state_dict": weights, **extra}


def cpu_copy(state_dict: dict) -> dict:
    """A CPU copy of a state_dict (a copy even on the CPU, where ``.cpu()`` would alias the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def grid_of(record: dict) -> Grid:
    g = record["grid"]
    return Grid(g["kind"], tuple(g["size"]), tuple(g["min_bound"]), tuple(g["max_bound"]))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SparseSegmentationModel, dict]:
    """Rebuild the network of a model record and load its weights; returns ``(model in eval mode, record)``."""
    record = load(path)
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        found = f"format {record.get('format')!r}" if isinstance(record, dict) else f"a {type(record).__name__}"
        from pvkd.convert import GENERATOR, SEGMENTOR

        hint = ""
        if isinstance(record, dict) and any(str(k).removeprefix("module.").startswith((GENERATOR, SEGMENTOR))
                                            for k in record):
            hint = f"; it looks like a published Cylinder3D / PVKD checkpoint: `pvkd import-teacher {path}` converts it"
        raise DataError(f"{path}: a torch file but not a pvkd model record ({found}, expected {MODEL_FORMAT}){hint}")
    try:
        model = build_model(record["model"], grid_of(record))
        model.load_state_dict(record["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:  # a record missing a key, or weights that do not fit
        raise DataError(f"{path}: a damaged pvkd model record ({type(err).__name__}: {_first_line(err)})") from None
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
