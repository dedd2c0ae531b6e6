"""The processed-data contract: Parquet shards, the scan index and the frequency stats.

Layout of a processed folder (``data/processed``)::

    shards/<split>-NNNNN.parquet   one row group per scan, one row per point (SHARD_SCHEMA)
    index.parquet                  one row per scan: where its row group is (INDEX_SCHEMA)
    stats.parquet                  point and voxel counts per split x distance band x class
    meta.json                      dataset, class names, grid, bands, splits, shards' hash

Reading one scan touches one row group of one file, memory-mapped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pvkd.grid import Grid

SHARD_SCHEMA = pa.schema(
    [
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("z", pa.float32()),
        ("intensity", pa.float32()),
        ("label", pa.uint8()),  # training id, 0 = ignored (and for unlabelled splits)
        ("cell_0", pa.int16()),  # cell in the configured grid: rho/x index
        ("cell_1", pa.int16()),  # phi/y index
        ("cell_2", pa.int16()),  # z index
        ("point_index", pa.uint32()),  # row of the point in the source scan (non-finite rows dropped)
    ]
)
INDEX_SCHEMA = pa.schema(
    [
        ("scan_id", pa.string()),
        ("split", pa.string()),
        ("sequence", pa.string()),
        ("frame", pa.int32()),
        ("token", pa.string()),
        ("shard", pa.string()),  # path relative to the processed folder
        ("row_group", pa.int32()),
        ("num_points", pa.int64()),  # rows in the shard
        ("num_source_points", pa.int64()),  # points in the source scan
        ("num_dropped", pa.int64()),  # non-finite points dropped
        ("num_outside_grid", pa.int64()),  # points clipped into border cells
        ("source_path", pa.string()),
    ]
)
# zstd without dictionaries (float coordinates never fit one; trying costs 3x the write time),
# floats byte-stream-split so zstd sees their exponents together: ~15 bytes per point
WRITE_OPTIONS = dict(
    compression="zstd",
    use_dictionary=False,
    column_encoding={name: "BYTE_STREAM_SPLIT" for name in ("x", "y", "z", "intensity")},
)


@dataclass
class Scan:
    """One scan as stored in a shard."""

    xyz: np.ndarray  # (N, 3) float32
    intensity: np.ndarray  # (N,) float32
    label: np.ndarray  # (N,) uint8
    cell: np.ndarray  # (N, 3) int16
    point_index: np.ndarray  # (N,) uint32


def scan_table(scan: Scan) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(scan.xyz[:, 0]),
            pa.array(scan.xyz[:, 1]),
            pa.array(scan.xyz[:, 2]),
            pa.array(scan.intensity),
            pa.array(scan.label),
            pa.array(scan.cell[:, 0]),
            pa.array(scan.cell[:, 1]),
            pa.array(scan.cell[:, 2]),
            pa.array(scan.point_index),
        ],
        schema=SHARD_SCHEMA,
    )


@lru_cache(maxsize=64)
def _open(path: str) -> pq.ParquetFile:
    return pq.ParquetFile(path, memory_map=True)


def read_scan(path: str | Path, row_group: int, columns: list[str] | None = None) -> Scan | dict[str, np.ndarray]:
    """Read one scan (one row group). With ``columns``, a dict of just those numpy columns."""
    table = _open(str(path)).read_row_group(row_group, columns=columns)
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    if columns is not None:
        return cols
    return Scan(
        xyz=np.stack([cols["x"], cols["y"], cols["z"]], 1),
        intensity=cols["intensity"],
        label=cols["label"],
        cell=np.stack([cols["cell_0"], cols["cell_1"], cols["cell_2"]], 1),
        point_index=cols["point_index"],
    )


class ProcessedData:
    """Read access to a processed folder: ``meta``, ``index``, ``stats`` and scans by position."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found; run `pvkd preprocess` (dvc repro preprocess) first")
        self.meta = json.loads(meta_path.read_text())
        self.index: pd.DataFrame = pq.read_table(self.root / "index.parquet").to_pandas()
        self.grid = Grid(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.meta["grid"].items()})

    @property
    def stats(self) -> pd.DataFrame:
        return pq.read_table(self.root / "stats.parquet").to_pandas()

    def scans(self, split: str) -> pd.DataFrame:
        return self.index[self.index["split"] == split].reset_index(drop=True)

    def read(self, row: pd.Series, columns: list[str] | None = None):
        return read_scan(self.root / row["shard"], int(row["row_group"]), columns)
