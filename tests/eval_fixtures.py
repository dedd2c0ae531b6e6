"""Tiny processed datasets (SemanticKITTI and nuScenes, each with a non-finite point in a val scan), tiny
model records, and fake models whose predictions a test can write down by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from pvkd.datasets.nuscenes import NuScenes
from pvkd.datasets.semantickitti import SemanticKITTI
from pvkd.evaluate import EvalConfig
from pvkd.preprocess import preprocess
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import model_for_data, model_record, save_atomic

from kitti_tree import write_tree
from nuscenes_tree import build_nuscenes_tree
from train_fixtures import BANDS, GRID, ROOT, TEACHER

STUDENT = {"arch": "cylinder3d", "width": 2}
# source rows made non-finite in the first val scan: the first row (no kept point before it) and one inside
NAN_ROWS = (0, 5)


def eval_config(**overrides) -> EvalConfig:
    """The project's evaluate section, on the CPU, with ``overrides``."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    return EvalConfig.from_dict({**section, "device": "cpu", **overrides})


def _poison(path: Path, fields: int) -> None:
    """Make rows NAN_ROWS of a float32 point file non-finite (x = NaN, y = inf)."""
    points = np.fromfile(path, dtype=np.float32).reshape(-1, fields)
    points[NAN_ROWS[0], 0] = np.nan
    points[NAN_ROWS[1], 1] = np.inf
    points.tofile(path)


def kitti_processed(root: Path) -> tuple[Path, Path]:
    """A SemanticKITTI tree (random points and raw labels; sequence 00 train, 08 val) and its processed
    folder; the first val scan has non-finite points. Returns ``(raw root, processed folder)``."""
    raw = root / "raw"
    write_tree(raw, {"00": 2, "08": 3}, points_per_scan=300, seed=3)
    _poison(raw / "sequences" / "08" / "velodyne" / "000000.bin", 4)
    out = root / "processed"
    splits = {"train": ["00"], "val": ["08"]}
    preprocess(SemanticKITTI(raw, splits=splits), GRID, out, list(splits), BANDS, scans_per_shard=2)
    return raw, out


def nuscenes_processed(root: Path):
    """A nuScenes tree (scene-0001 train, scene-0003 val) and its processed folder; the first val scan has
    non-finite points. Returns ``(tree, processed folder)``."""
    tree = build_nuscenes_tree(root / "raw", scenes={"scene-0001": 2, "scene-0003": 3})
    _poison(tree.scene("scene-0003")[0].points_path, 5)
    out = root / "processed"
    preprocess(NuScenes(tree.root), GRID, out, ["train", "val"], BANDS, scans_per_shard=2)
    return tree, out


def save_model(processed: Path, path: Path, model_cfg: dict = TEACHER, seed: int = 0) -> Path:
    """An untrained model record of a processed folder. Its point head's last layer is scaled up so that
    the predictions vary from point to point (an untrained network tends to say one class everywhere)."""
    torch.manual_seed(seed)
    model, info = model_for_data(model_cfg, ProcessedData(processed))
    with torch.no_grad():
        last = [m for m in model.point_head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(50.0)
    save_atomic(model_record(model.state_dict(), info, step=0), path)
    return path


class Output:
    def __init__(self, point_logits: torch.Tensor, voxel_logits: torch.Tensor, point_to_voxel: torch.Tensor):
        self.point_logits, self.voxel_logits, self.point_to_voxel = point_logits, voxel_logits, point_to_voxel


class IntensityModel(torch.nn.Module):
    """Predicts class ``round(intensity)`` for every point (the votes never touch intensity), and logs the
    coordinates of every forward. Voxel head: one voxel per point with the same logits."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []

    def forward(self, points):
        self.seen.append(points.xyz.clone())
        logits = 10.0 * torch.nn.functional.one_hot(points.intensity.round().long(), self.num_classes).float()
        return Output(logits, logits, torch.arange(points.num_points))


class SignModel(torch.nn.Module):
    """Class 1 where x > 0, else class 2 (near one-hot logits)."""

    num_classes = 3

    def forward(self, points):
        wanted = torch.where(points.xyz[:, 0] > 0, 1, 2)
        logits = 100.0 * torch.nn.functional.one_hot(wanted, 3).float()
        return Output(logits, logits, torch.arange(points.num_points))


class ListDataset(torch.utils.data.Dataset):
    """Scans given as arrays, served as :class:`pvkd.train.data.ScanDataset` serves them."""

    def __init__(self, scans: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self.scans = scans  # (xyz (N, 3), intensity (N,), label (N,))

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, key):
        xyz, intensity, label = self.scans[key[1]]
        return {"xyz": np.asarray(xyz, np.float32), "intensity": np.asarray(intensity, np.float32),
                "label": np.asarray(label, np.int64), "position": key[1]}
