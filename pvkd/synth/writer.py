"""Write a synthetic dataset in the exact SemanticKITTI layout, and measure it while writing.

``root/sequences/NN/velodyne/XXXXXX.bin``  float32 x, y, z, remission (sensor frame)
``root/sequences/NN/labels/XXXXXX.label``  uint32: raw semantic id | instance id << 16 (only for the
                                           streets of ``labelled_splits``)
``root/sequences/NN/poses.txt``            3x4 row-major per scan, KITTI convention (below)
``root/sequences/NN/calib.txt``            P0..P3 and Tr (velodyne -> left camera)
``root/sequences/NN/times.txt``            seconds since the first scan (10 Hz)
``root/synth_summary.json``                the figures of :mod:`pvkd.synth.realism` (no timing,
                                           so the whole folder is byte-identical for one config)

KITTI's poses are those of the left camera in the frame of the first scan's left camera; a
velodyne point ``p`` of scan ``i`` is ``Tr^-1 @ pose_i @ Tr @ p`` in the first scan's velodyne
frame. ``Tr`` here is KITTI's pure axis change (camera x right, y down, z forward), so the
translation of ``pose_i`` moves along +z as the car drives along the street.

Everything is written into a sibling temporary folder that replaces ``root`` only once it is
complete, so an interrupted run never leaves a half dataset that looks finished. Each
sequence draws from its own random streams (seed, sequence, purpose), so the output is
byte-identical for the same config whatever ``workers`` is.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pvkd.labels import semantickitti_lut
from pvkd.synth.config import SynthConfig
from pvkd.synth.realism import SequenceStats, summarize
from pvkd.synth.scan import simulate_scan
from pvkd.synth.scene import build_world
from pvkd.synth.sensor import sensor_by_name

SUMMARY_FILE = "synth_summary.json"
_WORLD_STREAM, _SCAN_STREAM = 0, 1
# Velodyne (x forward, y left, z up) -> KITTI camera (x right, y down, z forward).
VELO_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
_FOCAL, _CX, _CY, _BASELINE = 718.856, 607.1928, 185.2157, 0.54  # KITTI odometry sequence 00's cameras


def generate(
    root: str | Path,
    cfg: SynthConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate the dataset of ``cfg`` into ``root`` (replacing an earlier synthetic one) and
    return its summary (see :func:`pvkd.synth.realism.summarize`). ``progress(done, total)``
    is called after every scan (after every sequence when ``cfg.workers > 1``).
    """
    root = Path(root)
    _check_replaceable(root)
    partial = root.parent / f".{root.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "sequences").mkdir(parents=True)

    started = time.perf_counter()
    try:
        stats = _write_sequences(partial, cfg, progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    config = {k: v for k, v in cfg.to_dict().items() if k != "workers"}  # workers does not change the data
    summary = summarize(stats, config, seconds=time.perf_counter() - started)
    on_disk = {k: v for k, v in summary.items() if k != "seconds"}
    (partial / SUMMARY_FILE).write_text(json.dumps(on_disk, indent=2) + "\n")
    _swap_in(partial, root)
    return summary


def _write_sequences(
    root: Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None
) -> list[SequenceStats]:
    jobs = [(split, seq) for split, seqs in cfg.sequences.items() for seq in seqs]
    total = len(jobs) * cfg.scans_per_sequence
    stats: list[SequenceStats] = []
    if cfg.workers == 1:
        for split, seq in jobs:
            done_before = len(stats) * cfg.scans_per_sequence

            def on_scan(frame: int, offset=done_before) -> None:
                if progress:
                    progress(offset + frame + 1, total)

            stats.append(write_sequence(root, cfg, split, seq, on_scan))
        return stats
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs))) as pool:
        futures = [pool.submit(write_sequence, root, cfg, split, seq) for split, seq in jobs]
        for future in futures:
            stats.append(future.result())
            if progress:
                progress(len(stats) * cfg.scans_per_sequence, total)
    return stats


def write_sequence(
    root: Path, cfg: SynthConfig, split: str, seq: str, on_scan: Callable[[int], None] | None = None
) -> SequenceStats:
    """Simulate one sequence's drive through its own world and write it under ``root/sequences/seq``."""
    sensor = sensor_by_name(cfg.sensor)
    world_rng = np.random.default_rng([cfg.seed, int(seq), _WORLD_STREAM])
    world = build_world(
        world_rng, cfg.scans_per_sequence, cfg.frame_step_m, sensor.max_range_m, cfg.density()
    )
    seq_dir = root / "sequences" / seq
    (seq_dir / "velodyne").mkdir(parents=True)
    labelled = split in cfg.labelled_splits
    if labelled:
        (seq_dir / "labels").mkdir()
    lut = semantickitti_lut()
    stats = SequenceStats(split=split, sequence=seq)
    poses = []
    for frame in range(cfg.scans_per_sequence):
        rng = np.random.default_rng([cfg.seed, int(seq), _SCAN_STREAM, frame])
        points, labels, origin, heading = simulate_scan(world, sensor, frame, rng)
        points.tofile(seq_dir / "velodyne" / f"{frame:06d}.bin")
        if labelled:
            labels.tofile(seq_dir / "labels" / f"{frame:06d}.label")
        stats.add_scan(points, lut[labels & 0xFFFF], labels >> 16)
        poses.append(_velodyne_pose(origin, heading))
        if on_scan:
            on_scan(frame)
    _write_poses(seq_dir / "poses.txt", poses)
    _write_calib(seq_dir / "calib.txt")
    np.savetxt(seq_dir / "times.txt", np.arange(cfg.scans_per_sequence) * 0.1, fmt="%.6e")
    return stats


def _velodyne_pose(origin: np.ndarray, heading: float) -> np.ndarray:
    pose = np.eye(4)
    c, s = np.cos(heading), np.sin(heading)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = origin
    return pose


def _write_poses(path: Path, velodyne_poses: list[np.ndarray]) -> None:
    """KITTI poses: camera 0 of each scan in camera 0 of the first scan (the first is identity)."""
    first_inv = np.linalg.inv(velodyne_poses[0])
    cam_to_velo = np.linalg.inv(VELO_TO_CAM)
    rows = [(VELO_TO_CAM @ first_inv @ pose @ cam_to_velo)[:3].reshape(-1) for pose in velodyne_poses]
    np.savetxt(path, np.asarray(rows), fmt="%.9e")


def _write_calib(path: Path) -> None:
    lines = []
    for cam, baseline in enumerate((0.0, -_BASELINE, 0.06, -_BASELINE + 0.06)):
        p = np.array([[_FOCAL, 0, _CX, baseline * _FOCAL], [0, _FOCAL, _CY, 0], [0, 0, 1, 0]])
        lines.append(f"P{cam}: " + " ".join(f"{v:.12e}" for v in p.reshape(-1)))
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in VELO_TO_CAM[:3].reshape(-1)))
    path.write_text("\n".join(lines) + "\n")


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder the generator did not write (a real dataset, say)."""
    if root.exists() and any(root.iterdir()) and not (root / SUMMARY_FILE).is_file():
        raise FileExistsError(
            f"{root} exists and is not a synthetic dataset (no {SUMMARY_FILE}); "
            "remove it or choose another output folder"
        )


def _swap_in(partial: Path, root: Path) -> None:
    old = root.parent / f".{root.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    partial.rename(root)
    shutil.rmtree(old, ignore_errors=True)
