"""Build a tiny nuScenes-lidarseg tree in the real on-disk layout, for tests.

    <root>/samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin   keyframe scans, float32 x 5
    <root>/sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin    non-keyframe sweeps, float32 x 5
    <root>/lidarseg/<version>/<sample_data_token>_lidarseg.bin        uint8 fine-class index per point
    <root>/<version>/{scene,sample,sample_data,sensor,calibrated_sensor,log,category,lidarseg}.json

Every scan is recognisable from its values, so tests can hand-compute what a reader returns:
scan ``frame`` of the ``s``-th scene has ``6 + frame`` points with x = 100 * s + frame,
y = 0, 1, 2, ..., z = -1.5, intensity = 0, 51, 102, ... (mod 256; /255 gives 0, 0.2, 0.4, ...),
ring = point index mod 32, and fine labels ``LABEL_CYCLE[(frame + i) % len(LABEL_CYCLE)]``.
After each keyframe come ``sweeps_per_keyframe`` unlabelled lidar sweeps, 50 ms apart (20 Hz):
sweep ``k`` of the scene (by timestamp) holds the points a keyframe ``40 + k`` would, and a
non-keyframe camera image (sweeps/CAM_FRONT) follows each keyframe, for readers to skip.
``category.json`` numbers the 32 classes in a shuffled order (``TREE_FINE_INDEX``), and every
table lists its records in reverse time order, so only a reader that maps by class name
and orders by timestamp gets the right answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pvkd.labels import NUSCENES_NAME_TO_CHALLENGE

# The 32 fine classes in the official index order (the order of the dict in pvkd.labels).
OFFICIAL_FINE_CLASSES: tuple[str, ...] = tuple(NUSCENES_NAME_TO_CHALLENGE)
# Fine index written to this tree's category.json: a permutation of 0..31 with no fixed point
# (5 is coprime with 32, and 5i + 3 = i mod 32 has no solution), so no class keeps its official index.
TREE_FINE_INDEX: dict[str, int] = {name: (5 * i + 3) % 32 for i, name in enumerate(OFFICIAL_FINE_CLASSES)}

LABEL_CYCLE: tuple[str, ...] = (
    "vehicle.car",
    "flat.driveable_surface",
    "human.pedestrian.child",
    "vehicle.ego",
    "static.vegetation",
    "movable_object.trafficcone",
    "vehicle.bus.bendy",
    "noise",
    "flat.sidewalk",
)

DEFAULT_SCENES: dict[str, dict[str, int]] = {
    # Official scene names, so the official splits apply: 0001 and 0002 are train, 0003 val.
    "v1.0-trainval": {"scene-0001": 3, "scene-0002": 2, "scene-0003": 2},
    "v1.0-test": {"scene-0077": 2},
    "v1.0-mini": {"scene-0061": 2, "scene-0103": 1},  # mini_train, mini_val
}

_LIDAR_SENSOR = "lidar-top-sensor"
_CAMERA_SENSOR = "cam-front-sensor"


def make_token(*parts: object) -> str:
    """A 32-hex token like the real ones, deterministic in ``parts``."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


@dataclass
class TreeScan:
    token: str  # lidar sample_data token
    scene: str
    frame: int  # position among the scene's keyframes (or sweeps) by timestamp
    timestamp: int
    points: np.ndarray  # (N, 5) float32 as written
    fine_names: tuple[str, ...]  # fine class name per point; () for a sweep
    points_path: Path
    labels_path: Path | None


@dataclass
class NuScenesTree:
    root: Path
    version: str
    scans: list[TreeScan]  # keyframes, scene by scene, each by timestamp
    sweeps: list[TreeScan] = field(default_factory=list)  # non-keyframe LIDAR_TOP, likewise ordered
    sweep_tokens: list[str] = field(default_factory=list)  # tokens of ``sweeps``
    camera_tokens: list[str] = field(default_factory=list)  # CAM_FRONT sample_data, keyframes and sweeps

    def table(self, name: str) -> Path:
        return self.root / self.version / f"{name}.json"

    def scene(self, name: str) -> list[TreeScan]:
        return [scan for scan in self.scans if scan.scene == name]

    def scene_sweeps(self, name: str) -> list[TreeScan]:
        return [sweep for sweep in self.sweeps if sweep.scene == name]


def scan_points(scene_index: int, frame: int) -> np.ndarray:
    n = 6 + frame
    index = np.arange(n)
    points = np.empty((n, 5), dtype=np.float32)
    points[:, 0] = 100 * scene_index + frame
    points[:, 1] = index
    points[:, 2] = -1.5
    points[:, 3] = (51 * index) % 256
    points[:, 4] = index % 32
    return points


def build_nuscenes_tree(
    root: str | Path,
    version: str = "v1.0-trainval",
    scenes: dict[str, int] | None = None,
    labelled: bool | None = None,
    sweeps_per_keyframe: int = 1,
) -> NuScenesTree:
    """Write a tree under ``root``: ``scenes`` maps scene name -> number of keyframes.

    ``sweeps_per_keyframe`` (0..9: they must fit in the 500 ms to the next keyframe) lidar
    sweeps follow each keyframe.

    ``labelled`` (default: every version but v1.0-test) writes lidarseg.json, the label files
    and a lidarseg category.json; otherwise category.json is the detection-only one (no index).
    """
    root = Path(root)
    assert 0 <= sweeps_per_keyframe <= 9, "sweeps are 50 ms apart and keyframes 500 ms"
    scenes = DEFAULT_SCENES[version] if scenes is None else scenes
    labelled = version != "v1.0-test" if labelled is None else labelled
    table_dir = root / version
    for folder in (table_dir, root / "samples/LIDAR_TOP", root / "sweeps/LIDAR_TOP"):
        folder.mkdir(parents=True, exist_ok=True)
    if labelled:
        (root / "lidarseg" / version).mkdir(parents=True, exist_ok=True)

    tables: dict[str, list[dict]] = {
        name: [] for name in ("scene", "sample", "sample_data", "log", "lidarseg", "calibrated_sensor")
    }
    tables["sensor"] = [
        {"token": _LIDAR_SENSOR, "channel": "LIDAR_TOP", "modality": "lidar"},
        {"token": _CAMERA_SENSOR, "channel": "CAM_FRONT", "modality": "camera"},
    ]
    tree = NuScenesTree(root=root, version=version, scans=[])

    for scene_index, (scene, n_keyframes) in enumerate(scenes.items()):
        log_name = f"n015-2018-07-{scene_index + 10:02d}-11-22-45+0800"
        log_token, scene_token = make_token("log", scene), make_token("scene", scene)
        lidar_calib, camera_calib = make_token("calib-lidar", scene), make_token("calib-cam", scene)
        tables["log"].append({"token": log_token, "logfile": log_name, "vehicle": "n015", "location": "sg"})
        tables["calibrated_sensor"] += [
            {"token": lidar_calib, "sensor_token": _LIDAR_SENSOR, "translation": [0.9, 0.0, 1.8],
             "rotation": [0.7, 0.0, 0.0, 0.7], "camera_intrinsic": []},
            {"token": camera_calib, "sensor_token": _CAMERA_SENSOR, "translation": [1.7, 0.0, 1.5],
             "rotation": [0.5, -0.5, 0.5, -0.5],
             "camera_intrinsic": [[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]]},
        ]
        sample_tokens = [make_token("sample", scene, frame) for frame in range(n_keyframes)]
        tables["scene"].append({
            "token": scene_token, "log_token": log_token, "nbr_samples": n_keyframes,
            "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
            "name": scene, "description": "tiny test scene",
        })
        base_time = 1_531_000_000_000_000 + scene_index * 100_000_000
        for frame, sample_token in enumerate(sample_tokens):
            timestamp = base_time + frame * 500_000  # keyframes at 2 Hz
            tables["sample"].append({
                "token": sample_token, "timestamp": timestamp, "scene_token": scene_token,
                "prev": sample_tokens[frame - 1] if frame else "",
                "next": sample_tokens[frame + 1] if frame + 1 < n_keyframes else "",
            })
            # Lidar keyframe: the scan the reader must return.
            token = make_token("lidar", scene, frame)
            filename = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{timestamp}.pcd.bin"
            points = scan_points(scene_index, frame)
            points.tofile(root / filename)
            tables["sample_data"].append(
                _sample_data(token, sample_token, lidar_calib, timestamp, filename, True)
            )
            fine_names = tuple(LABEL_CYCLE[(frame + i) % len(LABEL_CYCLE)] for i in range(len(points)))
            labels_path = None
            if labelled:
                label_name = f"lidarseg/{version}/{token}_lidarseg.bin"
                labels_path = root / label_name
                np.array([TREE_FINE_INDEX[name] for name in fine_names], dtype=np.uint8).tofile(labels_path)
                lidarseg_token = make_token("lidarseg", token)
                tables["lidarseg"].append(
                    {"token": lidarseg_token, "sample_data_token": token, "filename": label_name}
                )
            tree.scans.append(
                TreeScan(token, scene, frame, timestamp, points, fine_names, root / filename, labels_path)
            )
            # Lidar sweeps up to the next keyframe (only sweep splits read them), then two camera
            # images, a keyframe and a sweep, that are never scans.
            for j in range(sweeps_per_keyframe):
                sweep_frame, sweep_time = frame * sweeps_per_keyframe + j, timestamp + 50_000 * (j + 1)
                sweep_token = make_token("sweep", scene, sweep_frame)
                sweep_name = f"sweeps/LIDAR_TOP/{log_name}__LIDAR_TOP__{sweep_time}.pcd.bin"
                sweep_points = scan_points(scene_index, 40 + sweep_frame)
                sweep_points.tofile(root / sweep_name)
                tables["sample_data"].append(
                    _sample_data(sweep_token, sample_token, lidar_calib, sweep_time, sweep_name, False)
                )
                tree.sweeps.append(
                    TreeScan(sweep_token, scene, sweep_frame, sweep_time, sweep_points, (), root / sweep_name, None)
                )
                tree.sweep_tokens.append(sweep_token)
            for kind, folder, delay in (("camera", "samples", 12_000), ("camera-sweep", "sweeps", 262_000)):
                camera_token, camera_time = make_token(kind, scene, frame), timestamp + delay
                camera_name = f"{folder}/CAM_FRONT/{log_name}__CAM_FRONT__{camera_time}.jpg"
                tables["sample_data"].append(
                    _sample_data(camera_token, sample_token, camera_calib, camera_time, camera_name, kind == "camera")
                )
                tree.camera_tokens.append(camera_token)

    if labelled:
        tables["category"] = [
            {"token": make_token("category", name), "name": name, "description": "", "index": index}
            for name, index in sorted(TREE_FINE_INDEX.items(), key=lambda item: item[1])
        ]
    else:
        tables["category"] = [
            {"token": make_token("category", name), "name": name, "description": ""}
            for name in OFFICIAL_FINE_CLASSES
        ]
        del tables["lidarseg"]
    for name, records in tables.items():
        # Reverse time order, so a reader trusting table order lists scans backwards.
        write_table(tree.table(name), records[::-1])
    return tree


def _sample_data(token: str, sample_token: str, calib_token: str, timestamp: int, filename: str,
                 is_key_frame: bool) -> dict:
    return {
        "token": token, "sample_token": sample_token, "ego_pose_token": make_token("ego", token),
        "calibrated_sensor_token": calib_token, "timestamp": timestamp,
        "fileformat": "pcd" if filename.endswith(".pcd.bin") else "jpg", "is_key_frame": is_key_frame,
        "height": 0, "width": 0, "filename": filename, "prev": "", "next": "",
    }


def read_table(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def write_table(path: Path, records: list[dict]) -> None:
    Path(path).write_text(json.dumps(records, indent=1))
