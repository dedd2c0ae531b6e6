"""Raw scans -> Parquet shards, a scan index and per-class frequency stats.

Work is split into shards of ``scans_per_shard`` consecutive scans of one split; worker
processes each write whole shards. Everything goes into a staging folder beside the output
(shard files under temporary names, renamed when complete) and the staging folder replaces
the output only when every shard succeeded: bad input raises a :class:`DataError` naming the
file and leaves no output behind.

Per scan: points with a non-finite value are dropped with their labels (counted in the
index and the summary); a scan left with no point (a 0-byte sweep) is kept as an empty
row group and counted (``empty_scans``), and training skips it; points outside the grid
range are kept and binned into the border cells (see :mod:`pvkd.grid`). Stats count, per
split x distance band x class, the points and the voxels; a voxel's class is the majority
label of its labelled points (ties to the smaller id) and its band is that of the mean 3D
range of its points. A split the reader gives no labels (an unlabelled split) has every
label 0 and says so in the summary (``labelled: false``).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pvkd.datasets import DataError, Dataset, ScanRecord
from pvkd.grid import Grid
from pvkd.shards import INDEX_SCHEMA, SHARD_SCHEMA, WRITE_OPTIONS, Scan, files_hash, scan_table


@dataclass(frozen=True)
class ScanStats:
    points: np.ndarray  # (bands, classes) int64
    voxels: np.ndarray  # (bands, classes) int64
    dropped: int
    outside_grid: int


def band_labels(edges: list[float]) -> list[str]:
    """Names of the distance bands: ``[0, 10, 20]`` -> ``['0-10', '10-20', '20+']``."""
    return [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]:g}+"]


def band_of(distance: np.ndarray, edges: list[float]) -> np.ndarray:
    """Band index of each distance: band i holds ``edges[i] <= d < edges[i+1]``; the last is open."""
    return np.searchsorted(np.asarray(edges[1:], dtype=distance.dtype), distance, side="right")


def voxel_majority(voxel: np.ndarray, label: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each voxel (ties -> smaller id), and each point's voxel slot, from one sort.

    Returns ``(labels, slot)``: ``labels[v]`` for the ``v``-th distinct voxel in increasing id
    order, ``slot[i]`` the ``v`` of point ``i``. Pass labelled points only: 0 does not vote.
    No points (an empty scan, or one of an unlabelled split): no voxels.
    """
    if len(voxel) == 0:  # reduceat below needs at least one run
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys, inverse, counts = np.unique(
        voxel.astype(np.int64) * num_classes + label, return_inverse=True, return_counts=True
    )
    vox, lab = np.divmod(keys, num_classes)
    starts = np.flatnonzero(np.r_[True, vox[1:] != vox[:-1]])  # keys are sorted: voxels are runs
    slot_of_key = np.cumsum(np.r_[False, vox[1:] != vox[:-1]])
    best = np.maximum.reduceat(counts, starts)
    # within a run labels ascend, so the first key reaching the best count is the smallest winner
    winners = np.flatnonzero(counts == best[slot_of_key])
    first_winner = winners[np.r_[True, slot_of_key[winners][1:] != slot_of_key[winners][:-1]]]
    return lab[first_winner], slot_of_key[inverse.ravel()]


def process_scan(
    points: np.ndarray,
    labels: np.ndarray | None,
    grid: Grid,
    band_edges: list[float],
    num_classes: int,
) -> tuple[Scan, ScanStats]:
    """One scan's shard rows and stats. ``points`` (N, 4) float32; ``labels`` (N,) uint8 or None."""
    finite = np.isfinite(points).all(axis=1)
    point_index = np.flatnonzero(finite).astype(np.uint32)
    points = points[finite]
    labels = np.zeros(len(points), np.uint8) if labels is None else labels[finite]
    xyz = points[:, :3]

    coords = grid.to_grid_coords(xyz)
    cell = grid.cell_of(coords)
    lo, hi = np.asarray(grid.min_bound, np.float32), np.asarray(grid.max_bound, np.float32)
    outside = int(((coords < lo) | (coords > hi)).any(axis=1).sum())

    num_bands = len(band_edges)
    distance = np.linalg.norm(xyz, axis=1)
    band = band_of(distance, band_edges)
    point_counts = np.bincount(band * num_classes + labels, minlength=num_bands * num_classes)

    labelled = labels > 0
    voxel = grid.linear_index(cell)
    vox_labels, slot = voxel_majority(voxel[labelled], labels[labelled], num_classes)
    # mean range of each labelled voxel's points -> its band
    mean_dist = np.bincount(slot, weights=distance[labelled]) / np.bincount(slot)
    voxel_counts = np.bincount(
        band_of(mean_dist, band_edges) * num_classes + vox_labels, minlength=num_bands * num_classes
    )

    scan = Scan(
        xyz=np.ascontiguousarray(xyz),
        intensity=np.ascontiguousarray(points[:, 3]),
        label=labels,
        cell=cell.astype(np.int16),
        point_index=point_index,
    )
    stats = ScanStats(
        points=point_counts.reshape(num_bands, num_classes),
        voxels=voxel_counts.reshape(num_bands, num_classes),
        dropped=int((~finite).sum()),
        outside_grid=outside,
    )
    return scan, stats


@dataclass(frozen=True)
class ShardJob:
    split: str
    name: str  # relative path of the shard in the output folder
    records: tuple[ScanRecord, ...]


def write_shard(
    job: ShardJob, dataset: Dataset, grid: Grid, band_edges: list[float], staging: Path
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Process the scans of one shard and write it; returns index rows and summed stats."""
    num_classes = len(dataset.class_names)
    final = staging / job.name
    tmp = final.with_name(final.name + ".tmp")
    rows, points, voxels = [], 0, 0
    with pq.ParquetWriter(tmp, SHARD_SCHEMA, **WRITE_OPTIONS) as writer:
        for rg, rec in enumerate(job.records):
            raw_points, raw_labels = dataset.load(rec)
            scan, stats = process_scan(raw_points, raw_labels, grid, band_edges, num_classes)
            writer.write_table(scan_table(scan), row_group_size=max(len(scan.label), 1))
            points, voxels = points + stats.points, voxels + stats.voxels
            rows.append(
                dict(
                    scan_id=rec.scan_id, split=rec.split, sequence=rec.sequence, frame=rec.frame,
                    token=rec.token, shard=job.name, row_group=rg, num_points=len(scan.label),
                    num_source_points=len(raw_points), num_dropped=stats.dropped,
                    num_outside_grid=stats.outside_grid, source_path=rec.points_path,
                )
            )
    tmp.rename(final)
    return rows, points, voxels


def _run_job(args):
    return write_shard(*args)


def plan_shards(dataset: Dataset, split: str, scans_per_shard: int) -> list[ShardJob]:
    records = dataset.scans(split)
    return [
        ShardJob(split, f"shards/{n:05d}.parquet", tuple(records[start : start + scans_per_shard]))
        for n, start in enumerate(range(0, len(records), scans_per_shard))
    ]


def preprocess(
    dataset: Dataset,
    grid: Grid,
    out: Path,
    splits: list[str],
    band_edges: list[float],
    scans_per_shard: int = 32,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write one folder ``out/<split>`` per split (each replaced only on its own success); returns their meta.

    The meta has the keys every split shares and ``splits``: each split's summary with its shards' hash
    (what :func:`pvkd.shards.read_meta` gives for these splits)."""
    out = Path(out)
    plans = {split: plan_shards(dataset, split, scans_per_shard) for split in splits}
    total_scans = sum(len(j.records) for jobs in plans.values() for j in jobs)
    if total_scans == 0:
        raise DataError(f"no scans found for splits {splits} under the dataset root; check data.root and data.splits")
    done = 0

    def counted(split_done: int, _total: int) -> None:
        if progress:
            progress(done + split_done, total_scans)

    metas = {}
    for split, jobs in plans.items():
        metas[split] = _write_split(dataset, grid, out / split, split, jobs, band_edges, workers, counted)
        done += sum(len(j.records) for j in jobs)
    first = next(iter(metas.values()))
    return {**{k: v for k, v in first.items() if k not in ("split", "summary")},
            "splits": {split: meta["summary"] for split, meta in metas.items()}}


def _write_split(dataset: Dataset, grid: Grid, out: Path, split: str, jobs: list[ShardJob], band_edges: list[float],
                 workers: int, progress: Callable[[int, int], None]) -> dict:
    """One split folder, written into a staging folder that replaces ``out`` only when every shard succeeded."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "shards").mkdir(parents=True)
    num_classes = len(dataset.class_names)
    total_scans = sum(len(j.records) for j in jobs)
    try:
        results = _run_jobs(jobs, dataset, grid, band_edges, staging, workers, progress, total_scans)
        index_rows = [row for rows, _, _ in results for row in rows]
        pq.write_table(pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA), staging / "index.parquet")
        points = sum((p for _, p, _ in results), np.zeros((len(band_edges), num_classes), np.int64))
        voxels = sum((v for _, _, v in results), np.zeros((len(band_edges), num_classes), np.int64))
        stats = _stats_table({split: (points, voxels)}, band_edges, dataset.class_names)
        pq.write_table(pa.Table.from_pandas(stats, preserve_index=False), staging / "stats.parquet")
        index = pd.DataFrame(index_rows, columns=INDEX_SCHEMA.names)
        meta = {
            "dataset": dataset.name,
            "class_names": list(dataset.class_names),
            "num_classes": num_classes,
            "grid": asdict(grid),
            "distance_bands": band_labels(band_edges),
            "band_edges": list(band_edges),
            "split": split,
            "summary": {
                # an unlabelled split (every label 0) is used only through the teacher
                "labelled": any(r.labels_path for job in jobs for r in job.records),
                "scans": len(index),
                "empty_scans": int((index.num_points == 0).sum()),
                "points": int(index.num_points.sum()),
                "dropped_nonfinite": int(index.num_dropped.sum()),
                "outside_grid": int(index.num_outside_grid.sum()),
                "shards_hash": files_hash([staging / j.name for j in jobs]),
            },
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return meta


def _run_jobs(jobs, dataset, grid, band_edges, staging, workers, progress, total_scans):
    done = 0
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(write_shard(job, dataset, grid, band_edges, staging))
            done += len(job.records)
            if progress:
                progress(done, total_scans)
        return results
    # spawn: a forked child could inherit locks held by the progress bar's thread
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, (job, dataset, grid, band_edges, staging)): i for i, job in enumerate(jobs)}
        results = [None] * len(jobs)
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in finished:
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
                results[futures[fut]] = fut.result()
                done += len(jobs[futures[fut]].records)
                if progress:
                    progress(done, total_scans)
        return results


def _stats_table(counts: dict, band_edges: list[float], class_names) -> pd.DataFrame:
    """Long table: one row per split x band x class with its point and voxel counts."""
    bands = band_labels(band_edges)
    shape = (len(bands), len(class_names))
    band_idx, class_idx = (a.ravel() for a in np.indices(shape))
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "split": split,
                    "band": np.asarray(bands)[band_idx],
                    "band_index": band_idx.astype(np.int32),
                    "class_id": class_idx.astype(np.int32),
                    "class_name": np.asarray(class_names)[class_idx],
                    "points": np.broadcast_to(points, shape).ravel(),
                    "voxels": np.broadcast_to(voxels, shape).ravel(),
                }
            )
            for split, (points, voxels) in counts.items()
        ],
        ignore_index=True,
    )
