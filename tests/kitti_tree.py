"""Tiny SemanticKITTI trees in the real on-disk layout, built by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# raw ids that cover every training id, plus ignored ones (0, 1, 52, 99) and moving classes
RAW_IDS = np.array([0, 1, 10, 11, 13, 15, 16, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 52, 60, 70, 71, 72,
                    80, 81, 99, 252, 253, 254, 255, 256, 257, 258, 259], dtype=np.uint32)


def random_scan(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points spread over 0..70 m (some beyond the grid) and raw labels with instance ids."""
    rho = rng.uniform(0.5, 70.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    z = rng.uniform(-5.0, 3.0, n)
    points = np.stack([rho * np.cos(phi), rho * np.sin(phi), z, rng.uniform(0, 1, n)], 1).astype(np.float32)
    raw = rng.choice(RAW_IDS, n) | (rng.integers(0, 5, n, dtype=np.uint32) << 16)
    return points, raw.astype(np.uint32)


def write_tree(root: Path, sequences: dict[str, int], points_per_scan: int = 500, seed: int = 0,
               labels: bool = True) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Write ``sequences`` (name -> number of scans); returns the scans written, per sequence."""
    rng = np.random.default_rng(seed)
    written = {}
    for seq, count in sequences.items():
        seq_dir = root / "sequences" / seq
        (seq_dir / "velodyne").mkdir(parents=True)
        if labels:
            (seq_dir / "labels").mkdir()
        scans = []
        for i in range(count):
            points, raw = random_scan(rng, points_per_scan + i)
            points.tofile(seq_dir / "velodyne" / f"{i:06d}.bin")
            if labels:
                raw.tofile(seq_dir / "labels" / f"{i:06d}.label")
            scans.append((points, raw))
        poses = np.tile(np.eye(4)[:3].ravel(), (count, 1))
        poses[:, 3] = np.arange(count)  # x translation grows by 1 m per frame
        np.savetxt(seq_dir / "poses.txt", poses)
        written[seq] = scans
    return written
