"""SemanticKITTI reader: ``<root>/sequences/NN/{velodyne/*.bin, labels/*.label, poses.txt, calib.txt}``.

``.bin`` = float32 x 4 per point (x, y, z, remission in 0..1); ``.label`` = uint32 per point,
semantic id in the low 16 bits (mapped to training ids by ``lut[label & 0xFFFF]``),
instance id in the high 16 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pvkd.datasets.base import DataError, ScanRecord, check_label_count, map_labels, read_records
from pvkd.labels import SEMANTICKITTI_CLASSES, SEMANTICKITTI_SPLITS, semantickitti_inverse_lut, semantickitti_lut


class SemanticKITTI:
    name = "semantickitti"
    class_names = SEMANTICKITTI_CLASSES

    def __init__(
        self,
        root: str | Path,
        splits: dict[str, list[str]] | None = None,
        labelled_splits: tuple[str, ...] = ("train", "val"),
    ):
        self.root = Path(root)
        if not (self.root / "sequences").is_dir():
            raise DataError(
                f"{self.root}: no 'sequences' folder; point data.root at the SemanticKITTI "
                "dataset folder that holds sequences/NN/velodyne"
            )
        self.splits = {k: [f"{int(s):02d}" for s in v] for k, v in (splits or SEMANTICKITTI_SPLITS).items()}
        self.labelled_splits = labelled_splits
        self.lut = semantickitti_lut()

    def scans(self, split: str) -> list[ScanRecord]:
        if split not in self.splits:
            raise DataError(f"split {split!r} is not defined; known splits: {sorted(self.splits)}")
        labelled = split in self.labelled_splits
        records = []
        for seq in self.splits[split]:
            seq_dir = self.root / "sequences" / seq
            velodyne = seq_dir / "velodyne"
            if not velodyne.is_dir():
                raise DataError(f"{velodyne}: sequence {seq} of split {split!r} has no velodyne folder")
            labels_dir = seq_dir / "labels"
            if labelled and not labels_dir.is_dir():
                raise DataError(
                    f"{labels_dir}: missing, but split {split!r} is labelled; add the labels or "
                    "move the sequence to an unlabelled split"
                )
            for frame, bin_path in enumerate(sorted(velodyne.glob("*.bin"))):
                label_path = labels_dir / f"{bin_path.stem}.label" if labelled else None
                records.append(
                    ScanRecord(
                        scan_id=f"{seq}/{bin_path.stem}",
                        split=split,
                        sequence=seq,
                        frame=frame,
                        points_path=str(bin_path),
                        labels_path=str(label_path) if label_path else None,
                    )
                )
        return records

    def load(self, record: ScanRecord) -> tuple[np.ndarray, np.ndarray | None]:
        points = read_records(record.points_path, np.float32, 4, "velodyne scan")
        if record.labels_path is None:
            return points, None
        raw = read_records(record.labels_path, np.uint32, 1, "label")[:, 0]
        check_label_count(raw, points, record.labels_path, record.points_path)
        return points, map_labels(raw & 0xFFFF, self.lut, record.labels_path)


def read_poses(path: str | Path) -> np.ndarray:
    """``poses.txt``: one 3x4 row-major matrix per line -> (N, 4, 4) float64."""
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 12:
        raise DataError(f"{path}: expected 12 numbers per line (a 3x4 pose), got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


def write_predictions(path: str | Path, train_ids: np.ndarray) -> None:
    """Write a submission ``.label`` file: uint32 raw ids through learning_map_inv."""
    np.asarray(semantickitti_inverse_lut()[train_ids], dtype=np.uint32).tofile(path)
