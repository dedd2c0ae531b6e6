"""Tiny processed datasets and configs for the training tests (a learnable labelling: class = height band)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from pvkd.datasets.semantickitti import SemanticKITTI
from pvkd.grid import Grid
from pvkd.preprocess import preprocess
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import model_for_data, model_record, save_atomic
from pvkd.train.config import AugmentConfig, TrainConfig, merge_sections
from pvkd.train.data import ScanDataset
from pvkd.train.distributed import DistInfo, seed_everything
from pvkd.train.engine import Trainer
from pvkd.train.losses import SegmentationLoss

from kitti_tree import write_tree

ROOT = Path(__file__).resolve().parents[1]
# survives Cylinder3D's four poolings (16x16x8 -> 1x1x2)
GRID = Grid("cylinder", (16, 16, 8), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
BANDS = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
# raw ids by height band below -2, -2..0, 0..1.5, above 1.5 m: road, car, building, vegetation
HEIGHT_EDGES = np.array([-2.0, 0.0, 1.5], np.float32)
HEIGHT_RAW_IDS = np.array([40, 10, 50, 70], np.uint32)
TEACHER = {"arch": "cylinder3d", "width": 4}
CPU = torch.device("cpu")


def make_processed(root: Path, sequences: dict[str, int], splits: dict[str, list[str]], points: int = 400) -> Path:
    """Write a SemanticKITTI tree whose labels follow the points' height and preprocess it; returns its folder."""
    raw = root / "raw"
    scans = write_tree(raw, sequences, points_per_scan=points, seed=1)
    for seq, seq_scans in scans.items():
        for i, (pts, _) in enumerate(seq_scans):
            labels = HEIGHT_RAW_IDS[np.searchsorted(HEIGHT_EDGES, pts[:, 2])]
            labels[:: 17] = 0  # some unlabelled points
            labels.tofile(raw / "sequences" / seq / "labels" / f"{i:06d}.label")
    out = root / "processed"
    preprocess(SemanticKITTI(raw, splits=splits), GRID, out, list(splits), BANDS, scans_per_shard=2)
    return out


def tiny_config(**overrides) -> TrainConfig:
    """The project's train section with a tiny, fast, single-process CPU setup, and ``overrides``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = dict(epochs=3, batch_size=2, lr=0.03, val_batch_size=2, val_every=3, checkpoint_every=2, log_every=1,
                workers=0, threads=1, device="cpu", processes=1, amp="off", warmup_fraction=0.2)
    return TrainConfig.from_dict(merge_sections(params["train"], {**tiny, **overrides}))


def augment_config(**overrides) -> AugmentConfig:
    """The project's train.augment section (every mixing transform off) with ``overrides`` merged in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return AugmentConfig.from_dict(merge_sections(params["train"]["augment"], overrides), "train.augment")


def make_trainer(processed: Path, cfg: TrainConfig, dist: DistInfo = DistInfo(), **options) -> Trainer:
    """The teacher's trainer on a tiny processed folder: a width-4 Cylinder3D, seeded as the stage seeds it
    (with ``cfg.semi`` on, semi-supervised on that split, as teacher-train builds it)."""
    from pvkd.train.semi import semi_supervised

    seed_everything(cfg.seed)
    data = ProcessedData(processed)
    model, info = model_for_data(TEACHER, data)
    loss, semi, unlabelled = SegmentationLoss.for_data(cfg.loss, data), None, []
    if cfg.semi.on:
        loss, semi = semi_supervised(cfg, model, loss)
        unlabelled = [cfg.semi.split]
    train_set = ScanDataset(processed, ["train", *unlabelled], cfg.augment, cfg.seed, unlabelled=unlabelled)
    return Trainer(
        model, loss.on_batch, train_set, ScanDataset(processed, "val"),
        cfg, info, dist=dist, device=CPU, show_progress=False, semi=semi,
        unlabelled_ratio=cfg.semi.ratio if semi else 0, **options,
    )


def save_teacher(processed: Path, path: Path) -> Path:
    """An untrained width-4 teacher record of a processed folder (seeded: the same weights every time)."""
    torch.manual_seed(0)
    model, info = model_for_data(TEACHER, ProcessedData(processed), reads=("train",))
    save_atomic(model_record(model.state_dict(), info, step=0), path)
    return path
