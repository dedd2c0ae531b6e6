"""What every dataset reader gives the rest of the project.

A reader lists :class:`ScanRecord` s per split and loads one record into
``points`` (float32, N x 4: x, y, z, intensity in 0..1) and ``labels`` (uint8 training
ids, 0 = ignored; ``None`` for unlabelled splits). Everything that can be wrong with the
files on disk is raised as :class:`DataError`, whose message names the file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pvkd.errors import DataError


@dataclass(frozen=True)
class ScanRecord:
    scan_id: str  # unique in the dataset: "08/000123" (SemanticKITTI) or the sample_data token
    split: str  # train | val | test
    sequence: str  # SemanticKITTI sequence "08", or nuScenes scene name
    frame: int  # position of the scan in its sequence / scene
    points_path: str
    labels_path: str | None  # None for unlabelled splits
    token: str = ""  # nuScenes lidar sample_data token ("" for SemanticKITTI)


class Dataset(Protocol):
    name: str
    class_names: tuple[str, ...]

    def scans(self, split: str) -> list[ScanRecord]: ...

    def load(self, record: ScanRecord) -> tuple[np.ndarray, np.ndarray | None]: ...


def read_records(path: str | Path, dtype: np.dtype, fields: int, what: str) -> np.ndarray:
    """Read a flat binary file of ``fields`` values of ``dtype`` per record as an (N, fields) array.

    Raises :class:`DataError` naming the file when it is missing or its size is not a whole
    number of records (a truncated download or a file of another format).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    record = np.dtype(dtype).itemsize * fields
    size = path.stat().st_size
    if size % record:
        raise DataError(
            f"{path}: size {size} bytes is not a multiple of the {record}-byte {what} record "
            f"({fields} x {np.dtype(dtype).name}); the file is truncated or not a {what} file"
        )
    return np.fromfile(path, dtype=dtype).reshape(-1, fields)


def map_labels(raw: np.ndarray, lut: np.ndarray, path: str | Path) -> np.ndarray:
    """Raw ids -> uint8 training ids through ``lut``; ids missing from the map raise, naming them."""
    raw = raw.astype(np.int64, copy=False)
    out_of_table = raw >= len(lut)
    mapped = lut[np.where(out_of_table, 0, raw)]
    bad = out_of_table | (mapped < 0)
    if bad.any():
        ids = np.unique(raw[bad])
        raise DataError(
            f"{path}: raw label id(s) {ids[:10].tolist()} are not in the label map "
            f"({int(bad.sum())} points); fix the labels or add the ids to pvkd/labels.py"
        )
    return mapped.astype(np.uint8)


def check_label_count(labels: np.ndarray, points: np.ndarray, labels_path: str, points_path: str) -> None:
    if len(labels) != len(points):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {points_path} has {len(points)} points; "
            "the label file belongs to another scan or is truncated"
        )
