"""nuScenes-lidarseg reader: ``<root>/{samples/LIDAR_TOP, sweeps/LIDAR_TOP, lidarseg/<version>, <version>/*.json}``.

Points: ``samples/LIDAR_TOP/*.pcd.bin`` and ``sweeps/LIDAR_TOP/*.pcd.bin`` = float32 x 5 per
point (x, y, z, intensity 0..255, ring index); :meth:`NuScenes.load` returns x, y, z, intensity / 255.
Labels: ``lidarseg/<version>/<sample_data_token>_lidarseg.bin`` = uint8 fine-class index per point,
located through ``lidarseg.json`` and mapped to the 16 challenge classes by class *name*
(``category.json``'s ``index`` field is the fine id; see :func:`pvkd.labels.nuscenes_lut`).

Only keyframe LIDAR_TOP sample_data are scans, except in a *sweep split* (``sweep_splits``):
its scans are the non-keyframe LIDAR_TOP sweeps (20 Hz, between the 2 Hz keyframes) of its
scenes, which lidarseg does not label, so a sweep split is always unlabelled. Scenes are split
by name: the official lists (the devkit's when it is installed, else the verbatim copy in
``nuscenes_splits.json``) or an explicit ``{split: [scene names]}``. A sweep split has the
scenes that split has (``splits[split]``, or the official list of a split named train / val /
test when ``splits`` is None); any other sweep split has the official *train* scenes of the
version (``mini_train`` for v1.0-mini), since the sweeps to distil on are those of the train scenes.
The JSON tables are read with the standard library, each once, when the reader is built, so a
broken dataset fails before any work is done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pvkd.datasets.base import DataError, ScanRecord, check_label_count, read_records
from pvkd.labels import NUSCENES_CLASSES, nuscenes_lut

log = logging.getLogger(__name__)

LIDAR_KEYFRAME_PREFIX = "samples/LIDAR_TOP/"  # cameras live in samples/CAM_* and sweeps/CAM_*
LIDAR_SWEEP_PREFIX = "sweeps/LIDAR_TOP/"
POINT_FIELDS = 5  # x, y, z, intensity, ring index
SPLITS_FILE = Path(__file__).with_name("nuscenes_splits.json")
SceneFrames = dict[str, list[tuple[str, int, str]]]  # scene name -> [(token, timestamp, filename)] by time

# Project split -> official devkit scene list, per dataset version. The mini version's
# mini_train / mini_val play the part of train / val so the rest of the project needs no special case.
OFFICIAL_SPLITS: dict[str, dict[str, str]] = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
}


def official_scene_lists() -> dict[str, list[str]]:
    """Official scene names per devkit split: train, val, test, mini_train, mini_val."""
    try:
        from nuscenes.utils.splits import create_splits_scenes
    except ImportError:  # the devkit is optional; the embedded file is a verbatim copy of its lists
        return json.loads(SPLITS_FILE.read_text())
    return {split: list(names) for split, names in create_splits_scenes().items()}


class _MissingField(Exception):
    """Raised inside the JSON object hook; turned into a DataError that names the file."""


class NuScenes:
    name = "nuscenes"
    class_names = NUSCENES_CLASSES

    def __init__(
        self,
        root: str | Path,
        version: str = "v1.0-trainval",
        splits: dict[str, list[str]] | None = None,
        labelled_splits: tuple[str, ...] = ("train", "val"),
        sweep_splits: tuple[str, ...] = (),
    ):
        """``sweep_splits``: splits read as the non-keyframe LIDAR_TOP sweeps of their scenes, always
        unlabelled; their scenes are ``splits[split]`` (or the official ones of train / val / test when
        ``splits`` is None), else the official train scenes."""
        self.root = Path(root)
        self.version = version
        self.labelled_splits = tuple(labelled_splits)
        self.sweep_splits = tuple(sweep_splits)
        labelled_sweeps = [split for split in self.sweep_splits if split in self.labelled_splits]
        if labelled_sweeps:
            raise DataError(
                f"split(s) {labelled_sweeps} are in data.sweep_splits and in data.labelled_splits, but "
                "lidarseg labels only keyframes; remove them from data.labelled_splits"
            )
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: nuScenes root folder not found; point data.root at the folder that "
                f"holds samples/, lidarseg/ and {version}/"
            )
        self.table_dir = self.root / version
        if not self.table_dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
            raise DataError(
                f"{self.table_dir}: no table folder for version {version!r} (found: {found or 'none'}); "
                f"extract the {version} metadata into {self.root} or set data.nuscenes_version to a found one"
            )
        self._keyframes, self._sweeps = self._read_lidar_sample_data()
        self.splits = self._resolve_splits(splits)
        for split, scenes in self.splits.items():
            kind = "sweep" if split in self.sweep_splits else "keyframe"
            for scene in scenes:
                if not self._frames(split).get(scene):
                    raise DataError(
                        f"{self._table_path('sample_data')}: scene {scene} of split {split!r} has no "
                        f"LIDAR_TOP {kind}; the table is truncated, re-extract the metadata"
                    )
        # Label tables are needed only when some split is labelled (v1.0-test has none).
        self._label_files: dict[str, str] | None = None
        self.lut: np.ndarray | None = None
        if any(split in self.labelled_splits for split in self.splits):
            self._read_label_tables()

    # ------------------------------------------------------------------ listing

    def scans(self, split: str) -> list[ScanRecord]:
        """LIDAR_TOP keyframes (sweeps for a sweep split) of ``split``, scene by scene in split order,
        each by timestamp.

        Raises if any points (or, for a labelled split, label) file is missing, so that a
        partially downloaded dataset never yields a partial split.
        """
        if split not in self.splits:
            hint = ""
            if split == "test" and self.version != "v1.0-test":
                hint = "; the test scenes are in v1.0-test: build a reader with version='v1.0-test'"
            known = sorted(self.splits)
            raise DataError(f"split {split!r} is not defined for {self.version}; known splits: {known}{hint}")
        labelled = split in self.labelled_splits
        if labelled and self._label_files is None:
            self._read_label_tables()
        records: list[ScanRecord] = []
        missing: list[Path] = []
        for scene in self.splits[split]:
            for frame, (token, _, filename) in enumerate(self._frames(split)[scene]):
                points_path = self.root / filename
                labels_path = self.root / self._label_file(token, scene) if labelled else None
                missing += [p for p in (points_path, labels_path) if p is not None and not p.is_file()]
                records.append(
                    ScanRecord(
                        scan_id=token,
                        split=split,
                        sequence=scene,
                        frame=frame,
                        points_path=str(points_path),
                        labels_path=str(labels_path) if labels_path else None,
                        token=token,
                    )
                )
        if missing:
            folder = "sweeps" if split in self.sweep_splits else "samples"
            what = f"{folder} and lidarseg archives" if labelled else f"{folder} archives"
            raise DataError(
                f"{missing[0]}: not found, and {len(missing) - 1} more file(s) of split {split!r} are "
                f"missing; extract all nuScenes {what} for {self.version} into {self.root}"
            )
        return records

    def load(self, record: ScanRecord) -> tuple[np.ndarray, np.ndarray | None]:
        raw = read_records(record.points_path, np.float32, POINT_FIELDS, "nuScenes lidar scan")
        points = np.ascontiguousarray(raw[:, :4])
        points[:, 3] /= 255.0  # intensity 0..255 -> 0..1 like SemanticKITTI's remission
        if record.labels_path is None:
            return points, None
        if self.lut is None:
            self._read_label_tables()
        fine = read_records(record.labels_path, np.uint8, 1, "lidarseg label")[:, 0]
        check_label_count(fine, points, record.labels_path, record.points_path)
        challenge = self.lut[fine]
        unknown = challenge < 0
        if unknown.any():
            raise DataError(
                f"{record.labels_path}: fine class index(es) {np.unique(fine[unknown])[:10].tolist()} are "
                f"not in {self._table_path('category')} ({int(unknown.sum())} points); the labels and "
                "category.json come from different lidarseg releases, re-extract both"
            )
        return points, challenge.astype(np.uint8)

    # ------------------------------------------------------------------ tables

    def _frames(self, split: str) -> SceneFrames:
        return self._sweeps if split in self.sweep_splits else self._keyframes

    def _table_path(self, table: str) -> Path:
        return self.table_dir / f"{table}.json"

    def _read_table(
        self,
        table: str,
        fields: tuple[str, ...],
        fix: str,
        keep: Callable[[tuple], bool] | None = None,
    ) -> list[tuple]:
        """Rows of ``<version>/<table>.json`` as tuples of ``fields``; ``keep`` filters while parsing.

        Filtering in the object hook keeps memory small: sample_data.json of v1.0-trainval holds
        millions of records (all cameras and sweeps) of which only the lidar ones are kept.
        """
        path = self._table_path(table)
        if not path.is_file():
            raise DataError(f"{path}: table not found; {fix}")

        def pick(record: dict) -> tuple | None:
            try:
                row = tuple(record[field] for field in fields)
            except KeyError as err:
                raise _MissingField(err.args[0]) from None
            return row if keep is None or keep(row) else None

        try:
            with path.open("rb") as stream:
                rows = json.load(stream, object_hook=pick)
        except _MissingField as err:
            raise DataError(f"{path}: a record has no {err.args[0]!r} field; {fix}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err}); the file is truncated, re-extract it") from None
        if not isinstance(rows, list) or not all(row is None or isinstance(row, tuple) for row in rows):
            raise DataError(f"{path}: expected a JSON list of {table} records; {fix}")
        return [row for row in rows if row is not None]

    def _read_lidar_sample_data(self) -> tuple[SceneFrames, SceneFrames]:
        """LIDAR_TOP keyframes and sweeps per scene name, each by timestamp, in one pass over sample_data.

        Sweeps are kept only when a sweep split needs them: v1.0-trainval has ~10 per keyframe.
        """
        fix = f"re-extract the {self.version} metadata into {self.root}"
        scene_name = dict(self._read_table("scene", ("token", "name"), fix))
        self._scene_names = set(scene_name.values())
        sample_scene = dict(self._read_table("sample", ("token", "scene_token"), fix))
        rows = self._read_table(
            "sample_data",
            ("token", "sample_token", "timestamp", "filename", "is_key_frame"),
            fix,
            keep=lambda row: self._is_lidar(str(row[3]), bool(row[4])),
        )
        keyframes: SceneFrames = {}
        sweeps: SceneFrames = {}  # empty unless a sweep split exists
        for token, sample_token, timestamp, filename, is_key_frame in rows:
            # A sweep's sample_token is the sample it belongs to in time, so it names the scene too.
            scene_token = sample_scene.get(sample_token)
            if scene_token not in scene_name:
                raise DataError(
                    f"{self._table_path('sample_data')}: lidar sample_data {token} points to sample "
                    f"{sample_token} that sample.json / scene.json do not hold; the tables are from "
                    f"different releases, {fix}"
                )
            scenes = keyframes if is_key_frame else sweeps
            scenes.setdefault(scene_name[scene_token], []).append((token, int(timestamp), filename))
        for frames in (*keyframes.values(), *sweeps.values()):
            frames.sort(key=lambda frame: (frame[1], frame[0]))  # by timestamp; token breaks ties stably
        return keyframes, sweeps

    def _is_lidar(self, filename: str, is_key_frame: bool) -> bool:
        """A LIDAR_TOP keyframe, or a LIDAR_TOP sweep when some split reads sweeps; never a camera."""
        if is_key_frame:
            return filename.startswith(LIDAR_KEYFRAME_PREFIX)
        return bool(self.sweep_splits) and filename.startswith(LIDAR_SWEEP_PREFIX)

    def _resolve_splits(self, splits: dict[str, list[str]] | None) -> dict[str, list[str]]:
        scene_table = self._table_path("scene")
        if splits is None:
            resolved = {split: self._official_scenes(split, official) for split, official in self._official().items()}
        else:
            resolved = {split: list(scenes) for split, scenes in splits.items()}
            for split, scenes in resolved.items():
                absent = [scene for scene in scenes if scene not in self._scene_names]
                if absent:
                    raise DataError(
                        f"{scene_table}: scene(s) {absent[:5]} of split {split!r} are not in the "
                        f"{self.version} tables ({len(absent)} in all); fix the scene names in "
                        "data.splits or data.nuscenes_version"
                    )
        for split in self.sweep_splits:
            if split not in resolved:
                resolved[split] = self._official_train_scenes(split)
        return resolved

    def _official(self) -> dict[str, str]:
        """Project split -> official scene list of this version."""
        if self.version not in OFFICIAL_SPLITS:
            raise DataError(
                f"{self.table_dir}: version {self.version!r} has no official scene split (known: "
                f"{sorted(OFFICIAL_SPLITS)}); set data.splits to {{split: [scene names]}}"
            )
        return OFFICIAL_SPLITS[self.version]

    def _official_train_scenes(self, sweep_split: str) -> list[str]:
        """Default scenes of a sweep split: the sweeps users distil on are those of the train scenes."""
        official = self._official().get("train")
        if official is None:
            raise DataError(
                f"{self.table_dir}: sweep split {sweep_split!r} (data.sweep_splits) has no scenes in "
                f"data.splits and {self.version} has no official train scenes; name its scenes in data.splits"
            )
        return self._official_scenes(sweep_split, official)

    def _official_scenes(self, split: str, official: str) -> list[str]:
        """The scenes of the official list ``official`` that this version's tables hold, for ``split``."""
        scene_table = self._table_path("scene")
        listed = official_scene_lists()[official]
        # The official lists describe the full release; the version's tables decide what is here.
        present = [scene for scene in listed if scene in self._scene_names]
        if not present:
            raise DataError(
                f"{scene_table}: none of the {len(listed)} official {official!r} scenes is "
                f"in the tables; these are not {self.version} tables, check data.nuscenes_version"
            )
        if len(present) < len(listed):
            log.warning(
                "%s: %d of the %d official %r scenes are absent; split %r uses the %d present",
                scene_table, len(listed) - len(present), len(listed), official, split, len(present),
            )
        return present

    def _read_label_tables(self) -> None:
        """lidarseg.json (sample_data token -> label file) and category.json (fine index -> name)."""
        install = (
            f"install nuScenes-lidarseg (extract its {self.version} archive into {self.root}) "
            "or pass labelled_splits=() to read points only"
        )
        label_dir = self.root / "lidarseg" / self.version
        if not self._table_path("lidarseg").is_file():
            raise DataError(f"{self._table_path('lidarseg')}: not found, but labels are needed; {install}")
        if not label_dir.is_dir():
            raise DataError(f"{label_dir}: label folder not found, but labels are needed; {install}")
        label_files = dict(self._read_table("lidarseg", ("sample_data_token", "filename"), install))

        category_path = self._table_path("category")
        rows = self._read_table(
            "category",
            ("name", "index"),
            "the detection-only category.json has no class index; nuScenes-lidarseg ships one "
            f"that has: extract the lidarseg archive over {self.root}",
        )
        fine_index_to_name: dict[int, str] = {}
        for name, index in rows:
            if not isinstance(index, int) or not 0 <= index < 256 or index in fine_index_to_name:
                raise DataError(
                    f"{category_path}: class {name!r} has index {index!r}; every class needs a unique "
                    "integer index 0..255, re-extract the lidarseg category.json"
                )
            fine_index_to_name[index] = name
        try:
            self.lut = nuscenes_lut(fine_index_to_name)
        except ValueError as err:
            raise DataError(
                f"{category_path}: {err}; pvkd maps the 32 nuScenes-lidarseg classes "
                "(pvkd/labels.py), add the new ones there"
            ) from None
        self._label_files = label_files

    def _label_file(self, token: str, scene: str) -> str:
        filename = self._label_files.get(token)
        if filename is None:
            raise DataError(
                f"{self._table_path('lidarseg')}: no entry for lidar keyframe {token} of scene {scene}; "
                f"the lidarseg table is not the {self.version} one, re-extract the lidarseg archive"
            )
        return filename
