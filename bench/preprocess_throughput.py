"""Preprocess throughput: pvkd's per-scan path against Cylinder3D-style sample preparation.

Both sides run in this one process (scans/s per core), on the same SemanticKITTI-layout
scans at the full 480 x 360 x 32 cylindrical grid, in the same run, so the ratio is what
counts. The baseline is a straightforward per-scan numpy port of what Cylinder3D's data
pipeline does for every sample (written for this benchmark):

- label mapping element by element (``np.vectorize(learning_map.__getitem__)``),
- polar transform, clip, floor to cell indices,
- the dense voxel-position grid (3 x 480 x 360 x 32, converted back to cartesian),
- the per-voxel majority vote of ``nb_process_label`` (lexsort, then a loop over points;
  the published code JIT-compiles that loop with numba, which is not a dependency here),
- the 9-dim point features.

A second baseline variant replaces only the majority-vote loop with a vectorized
``np.unique`` count, so the ratio is also shown against a baseline without its slowest part.

pvkd's side is the real thing: read the scan, map labels by lookup array, bin into cells,
compute the per-band/per-class point and voxel stats and write the Parquet row group.

    python bench/preprocess_throughput.py [--scans 6] [--out bench/results/preprocess_throughput_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.datasets.semantickitti import SemanticKITTI
from pvkd.grid import Grid
from pvkd.labels import SEMANTICKITTI_LEARNING_MAP
from pvkd.preprocess import process_scan
from pvkd.shards import SHARD_SCHEMA, WRITE_OPTIONS, scan_table

FULL_GRID = Grid("cylinder", (480, 360, 32), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
BANDS = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def cylinder3d_prepare(bin_path: str, label_path: str, vectorized_vote: bool = False) -> tuple:
    """One sample as Cylinder3D's dataset + voxelizer prepare it (numpy port, see module doc)."""
    raw = np.fromfile(bin_path, dtype=np.float32).reshape(-1, 4)
    labels = np.fromfile(label_path, dtype=np.uint32) & 0xFFFF
    labels = np.vectorize(SEMANTICKITTI_LEARNING_MAP.__getitem__)(labels).astype(np.uint8)[:, None]
    xyz, sig = raw[:, :3], raw[:, 3:4]

    rho = np.sqrt(xyz[:, 0] ** 2 + xyz[:, 1] ** 2)
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    xyz_pol = np.stack([rho, phi, xyz[:, 2]], axis=1)
    grid_size = np.asarray(FULL_GRID.size)
    min_bound, max_bound = np.asarray(FULL_GRID.min_bound), np.asarray(FULL_GRID.max_bound)
    intervals = (max_bound - min_bound) / (grid_size - 1)
    grid_ind = np.floor((np.clip(xyz_pol, min_bound, max_bound) - min_bound) / intervals).astype(int)

    dim_array = np.ones(len(grid_size) + 1, int)
    dim_array[0] = -1
    voxel_position = np.indices(grid_size) * intervals.reshape(dim_array) + min_bound.reshape(dim_array)
    rho_v, phi_v, z_v = voxel_position
    voxel_position = np.stack([rho_v * np.cos(phi_v), rho_v * np.sin(phi_v), z_v])

    processed_label = np.zeros(grid_size, dtype=np.uint8)
    pairs = np.concatenate([grid_ind, labels], axis=1)
    pairs = pairs[np.lexsort((grid_ind[:, 0], grid_ind[:, 1], grid_ind[:, 2]))]
    if vectorized_vote:
        voxel = np.ravel_multi_index(pairs[:, :3].T, grid_size)
        keys, counts = np.unique(voxel * 256 + pairs[:, 3], return_counts=True)
        vox, lab = np.divmod(keys, 256)
        order = np.lexsort((-counts, vox))
        first = np.r_[True, vox[order][1:] != vox[order][:-1]]
        processed_label.reshape(-1)[vox[order][first]] = lab[order][first]
    else:
        processed_label = _majority_vote_loop(processed_label, pairs)

    voxel_centers = (grid_ind.astype(np.float32) + 0.5) * intervals + min_bound
    features = np.concatenate([xyz_pol - voxel_centers, xyz_pol, xyz[:, :2], sig], axis=1)
    return voxel_position, processed_label, grid_ind, labels, features


def _majority_vote_loop(processed_label: np.ndarray, sorted_pairs: np.ndarray) -> np.ndarray:
    """Cylinder3D's nb_process_label body, as plain Python (its @nb.jit is not available here)."""
    counter = np.zeros(256, dtype=np.uint16)
    counter[sorted_pairs[0, 3]] = 1
    cur = sorted_pairs[0, :3]
    for i in range(1, sorted_pairs.shape[0]):
        ind = sorted_pairs[i, :3]
        if not np.all(np.equal(ind, cur)):
            processed_label[cur[0], cur[1], cur[2]] = np.argmax(counter)
            counter = np.zeros(256, dtype=np.uint16)
            cur = ind
        counter[sorted_pairs[i, 3]] += 1
    processed_label[cur[0], cur[1], cur[2]] = np.argmax(counter)
    return processed_label


def pvkd_prepare(dataset: SemanticKITTI, record, writer: pq.ParquetWriter) -> None:
    points, labels = dataset.load(record)
    scan, _ = process_scan(points, labels, FULL_GRID, BANDS, len(dataset.class_names))
    writer.write_table(scan_table(scan), row_group_size=len(scan.label))


def make_scans(root: Path, count: int, seed: int) -> None:
    """SemanticKITTI-scale scans (~120k points) from the project's 64-beam synthetic profile."""
    from pvkd.synth import SynthConfig, generate

    cfg = SynthConfig.profile("hdl64", seed=seed, sequences={"train": ["00"]}, scans_per_sequence=count, workers=2)
    generate(root, cfg)


def timed_interleaved(fns: dict, records) -> dict[str, list[float]]:
    """Seconds per scan for each function, the functions taking turns on every scan (fair under load)."""
    times = {name: [] for name in fns}
    for rec in records:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(rec)
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/preprocess_throughput_cpu.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kitti"
        make_scans(root, args.scans, args.seed)
        dataset = SemanticKITTI(root, splits={"train": ["00"]})
        records = dataset.scans("train")
        points = [dataset.load(r)[0].shape[0] for r in records]
        with pq.ParquetWriter(Path(tmp) / "bench.parquet", SHARD_SCHEMA, **WRITE_OPTIONS) as writer:
            pvkd_prepare(dataset, records[0], writer)  # warm-up (imports, allocator)
            times = timed_interleaved(
                {
                    "pvkd": lambda r: pvkd_prepare(dataset, r, writer),
                    "cylinder3d_python_vote": lambda r: cylinder3d_prepare(r.points_path, r.labels_path),
                    "cylinder3d_vectorized_vote": lambda r: cylinder3d_prepare(
                        r.points_path, r.labels_path, vectorized_vote=True
                    ),
                },
                records,
            )

    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "benchmark": "preprocess_throughput",
        "device": f"CPU: {platform.processor() or platform.machine()}, 1 process (per core)",
        "grid": list(FULL_GRID.size),
        "scans": len(records),
        "mean_points_per_scan": float(np.mean(points)),
        "seconds_per_scan_median": med,
        "scans_per_second_per_core": {k: 1.0 / v for k, v in med.items()},
        "speedup_vs_cylinder3d_loop_vote": med["cylinder3d_python_vote"] / med["pvkd"],
        "speedup_vs_cylinder3d_vectorized_vote": med["cylinder3d_vectorized_vote"] / med["pvkd"],
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
