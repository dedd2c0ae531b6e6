"""The processed-data contract: Parquet shards, the scan index and the frequency stats.

Layout of a processed folder (``data/processed``): one folder per split, each written whole by
its own ``preprocess@<split>`` stage, so a stage depends only on the splits it reads (adding an
unlabelled or test split never touches the train split's files or hash)::

    <split>/shards/NNNNN.parquet   one row group per scan, one row per point (SHARD_SCHEMA)
    <split>/index.parquet          one row per scan: where its row group is (INDEX_SCHEMA)
    <split>/stats.parquet          point and voxel counts per distance band x class
    <split>/meta.json              dataset, class names, grid, bands, the split's summary and shards' hash

Reading one scan touches one row group of one file, memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pvkd.errors import DataError
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


def files_hash(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order: identifies exactly which shards (or cache files) a run read."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# what every split folder of one processed folder must agree on
COMMON_META = ("dataset", "class_names", "num_classes", "grid", "distance_bands", "band_edges")


def split_folders(root: str | Path) -> dict[str, Path]:
    """The split folders of a processed folder (those holding a meta.json), by split name."""
    root = Path(root)
    if (root / "meta.json").is_file():
        raise DataError(f"{root}: a processed folder of the old one-folder layout; run `dvc repro` (or "
                        "`pvkd preprocess`) again to write one folder per split")
    # a split being written lives in <split>.staging until it is complete
    found = {p.parent.name: p.parent for p in sorted(root.glob("*/meta.json")) if "." not in p.parent.name}
    if not found:
        raise FileNotFoundError(f"{root}/<split>/meta.json: not found; run `pvkd preprocess` (dvc repro) first")
    return found


def read_meta(root: str | Path) -> dict:
    """The processed folder's meta: the keys its splits share, and ``splits``: each split's summary and hash.

    Split folders written with another grid, dataset or classes are refused, naming both files."""
    metas = {split: json.loads((folder / "meta.json").read_text()) for split, folder in split_folders(root).items()}
    first_split, first = next(iter(metas.items()))
    for split, meta in metas.items():
        differ = [k for k in COMMON_META if meta.get(k) != first.get(k)]
        if differ:
            raise DataError(f"{Path(root) / split / 'meta.json'} and {Path(root) / first_split / 'meta.json'} differ "
                            f"in {differ}: every split must be preprocessed with the same params; run `dvc repro`, "
                            "and delete a split folder no longer in preprocess.splits (DVC leaves it)")
    return {**{k: first[k] for k in COMMON_META}, "splits": {s: m["summary"] for s, m in metas.items()}}


def read_stats(root: str | Path) -> pd.DataFrame:
    """The stats tables of every split folder as one (a ``split`` column tells them apart)."""
    tables = [pq.read_table(folder / "stats.parquet").to_pandas() for folder in split_folders(root).values()]
    return pd.concat(tables, ignore_index=True)


class ProcessedData:
    """Read access to a processed folder: ``meta``, ``index`` (every split's), ``stats`` and scans by position.

    ``index["shard"]`` is relative to the processed folder (``train/shards/00000.parquet``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.index: pd.DataFrame = pd.concat(
            [_split_index(folder) for folder in split_folders(self.root).values()], ignore_index=True
        )
        self.grid = Grid(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.meta["grid"].items()})

    @property
    def stats(self) -> pd.DataFrame:
        return read_stats(self.root)

    def shards_hash(self, split: str) -> str:
        """The hash of one split's shards (sha256 of their bytes in order); unknown splits are an error."""
        if split not in self.meta["splits"]:
            raise DataError(f"{self.root}: no split {split!r} (its splits: {sorted(self.meta['splits'])}); add it to "
                            "preprocess.splits and data.splits")
        return self.meta["splits"][split]["shards_hash"]

    def hashes(self, splits) -> dict[str, str]:
        """``{split: shards hash}``: what identifies the data a model or a cache was made from."""
        return {split: self.shards_hash(split) for split in splits}

    def scans(self, split: str) -> pd.DataFrame:
        return self.index[self.index["split"] == split].reset_index(drop=True)

    def read(self, row: pd.Series, columns: list[str] | None = None):
        return read_scan(self.root / row["shard"], int(row["row_group"]), columns)


def _split_index(folder: Path) -> pd.DataFrame:
    index = pq.read_table(folder / "index.parquet").to_pandas()
    index["shard"] = folder.name + "/" + index["shard"]
    return index


def check_hashes(made_from: dict[str, str] | None, data: ProcessedData, what: str, fix: str) -> None:
    """Refuse ``what`` when a split it was made from now has other shards (or is gone) in ``data``; ``None``
    (a record written before per-split hashes) is refused too."""
    if made_from is None:
        raise DataError(f"{what}: written by an older pvkd (no per-split data hashes); {fix}")
    for split, digest in made_from.items():
        current = data.meta["splits"].get(split, {}).get("shards_hash")
        if current != digest:
            now = "is not there" if current is None else f"now has other shards ({current[:12]}, was {digest[:12]})"
            raise DataError(f"{what}: made from the {split!r} split of {data.root}, which {now}; {fix}")
