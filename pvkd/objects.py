"""The object bank: every instance of the chosen classes in the train split, for instance paste.

An instance is a connected component of one class's points in one scan: two points are linked
when their cells of side ``link`` metres are neighbours (26-connectivity). Components work on
every dataset (nuScenes lidarseg has no per-point instance ids; SemanticKITTI's upper 16 bits
are dropped by the readers); two objects that touch become one, which paste tolerates.

The bank stores no points, only where they are: (scan, row group, the component's rows), so a
pasted object is read from the shards with the same rows of every per-point array, the teacher
cache's included (:mod:`pvkd.train.mix`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pvkd.atomic import atomic_path
from pvkd.errors import DataError, ParamsError
from pvkd.shards import ProcessedData

BANK_SPLIT = "train"  # objects are banked from the labelled train split
BANK_SCHEMA = pa.schema(
    [
        ("scan_id", pa.string()),  # the source scan, as in index.parquet
        ("label", pa.uint8()),  # training id of the object's class
        ("rows", pa.list_(pa.uint32())),  # the object's rows in its scan's row group
        ("num_points", pa.int64()),
        ("center_x", pa.float32()),  # mean of the points
        ("center_y", pa.float32()),
        ("z_min", pa.float32()),  # lowest point: pasted objects stand on the ground with it
    ]
)
_OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)], np.int64)


@dataclass(frozen=True)
class BankConfig:
    """The ``objects`` section of params.yaml."""

    classes: tuple[str, ...]  # class names whose instances are banked (paste and PolarMix use them)
    link: float  # metres: points in neighbouring cells of this side are one object
    min_points: int  # smaller components are dropped (stray points, not objects)

    @classmethod
    def from_dict(cls, section: dict) -> BankConfig:
        from pvkd.train.config import section_fields

        cfg = cls(**section_fields(cls, section, "objects"))
        cfg = BankConfig(tuple(cfg.classes), float(cfg.link), int(cfg.min_points))
        if cfg.link <= 0 or cfg.min_points < 1:
            raise ParamsError("objects: link must be > 0 and min_points >= 1")
        return cfg


def components(xyz: np.ndarray, link: float) -> np.ndarray:
    """(N,) component id (0 .. k-1, in order of first point) of each point under ``link``-metre cells."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    cells = np.floor(xyz / link).astype(np.int64)
    cells -= cells.min(axis=0) - 1  # >= 1, so every neighbour's coordinates are >= 0
    extent = cells.max(axis=0) + 2
    occupied, point_cell = np.unique(np.ravel_multi_index(cells.T, extent), return_inverse=True)
    coords = np.stack(np.unravel_index(occupied, extent), 1)
    # the occupied neighbour pairs (i, j), found by binary search in the sorted cell keys
    src, dst = [], []
    for offset in _OFFSETS:
        keys = np.ravel_multi_index((coords + offset).T, extent)
        j = np.minimum(np.searchsorted(occupied, keys), len(occupied) - 1)
        hit = occupied[j] == keys
        src.append(np.flatnonzero(hit))
        dst.append(j[hit])
    src, dst = np.concatenate(src), np.concatenate(dst)
    # label propagation: every cell takes the smallest label among its neighbours until none changes
    label = np.arange(len(occupied))
    while True:
        updated = label.copy()
        np.minimum.at(updated, src, label[dst])
        updated = updated[updated]  # pointer jumping: long chains settle in log steps
        if np.array_equal(updated, label):
            break
        label = updated
    per_point = label[point_cell.ravel()]
    _, first, ids = np.unique(per_point, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[ids.ravel()]


def class_ids(names: tuple[str, ...], class_names: list[str], where: str) -> list[int]:
    """Training ids of class ``names``; an unknown name is an error listing the dataset's classes."""
    unknown = [n for n in names if n not in class_names[1:]]
    if unknown:
        raise ParamsError(f"{where}: unknown class(es) {unknown}; the dataset's are {class_names[1:]}")
    return [class_names.index(n) for n in names]


def scan_objects(xyz: np.ndarray, label: np.ndarray, ids: list[int], cfg: BankConfig) -> list[dict]:
    """The objects of one scan: per class in ``ids``, its components of at least ``min_points`` points."""
    found = []
    for c in ids:
        rows = np.flatnonzero(label == c)
        if len(rows) < cfg.min_points:
            continue
        comp = components(xyz[rows], cfg.link)
        order = np.argsort(comp, kind="stable")
        bounds = np.flatnonzero(np.r_[True, comp[order][1:] != comp[order][:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            members = rows[order[a:b]]
            if len(members) < cfg.min_points:
                continue
            p = xyz[members]
            found.append({"label": c, "rows": members.astype(np.uint32), "num_points": len(members),
                          "center_x": float(p[:, 0].mean()), "center_y": float(p[:, 1].mean()),
                          "z_min": float(p[:, 2].min())})
    return found


@dataclass(frozen=True)
class ObjectBank:
    """The banked objects (one row each, :data:`BANK_SCHEMA`) and the class names they were banked for."""

    table: pd.DataFrame
    classes: tuple[str, ...]
    shards_hash: str  # of the processed split the rows refer to (the train split)

    def write(self, path: str | Path) -> None:
        table = pa.Table.from_pandas(self.table, schema=BANK_SCHEMA, preserve_index=False)
        meta = {"classes": json.dumps(list(self.classes)), "shards_hash": self.shards_hash}
        with atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)

    @classmethod
    def read(cls, path: str | Path) -> ObjectBank:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no object bank; run `pvkd objects` (dvc repro objects) first")
        table = pq.read_table(path)
        meta = table.schema.metadata
        return cls(table.to_pandas(), tuple(json.loads(meta[b"classes"])), meta[b"shards_hash"].decode())

    def check(self, data: ProcessedData, path: str | Path) -> None:
        """Refuse a bank built from other shards: its rows would point at other points."""
        if self.shards_hash != data.shards_hash(BANK_SPLIT):
            raise DataError(f"{path} was built from other shards than {data.root / BANK_SPLIT}; re-run `pvkd objects` "
                            "(dvc repro objects)")


def build_bank(data: ProcessedData, cfg: BankConfig, split: str = BANK_SPLIT,
               progress: Callable[[int, int], None] | None = None) -> ObjectBank:
    """Every object of ``cfg.classes`` in the labelled scans of ``split``."""
    if not data.meta["splits"].get(split, {}).get("labelled", False):
        raise DataError(f"{data.root}: split {split!r} is missing or unlabelled; objects are banked from "
                        "labelled scans")
    ids = class_ids(cfg.classes, data.meta["class_names"], "objects.classes")
    scans = data.scans(split)
    records = []
    for i, row in scans.iterrows():
        cols = data.read(row, ["x", "y", "z", "label"])
        xyz = np.stack([cols["x"], cols["y"], cols["z"]], 1)
        records += [{"scan_id": row["scan_id"], **o} for o in scan_objects(xyz, cols["label"], ids, cfg)]
        if progress is not None:
            progress(i + 1, len(scans))
    return ObjectBank(pa.Table.from_pylist(records, schema=BANK_SCHEMA).to_pandas(), cfg.classes,
                      data.shards_hash(split))


def bank_for(augment, path: str | Path, data: ProcessedData) -> ObjectBank | None:
    """The bank at ``path``, checked against ``data``, if ``augment`` (an AugmentConfig) takes objects; else None."""
    if not augment.needs_bank:
        return None
    bank = ObjectBank.read(path)
    bank.check(data, path)
    return bank
