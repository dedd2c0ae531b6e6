"""nuScenes-lidarseg reader on a tiny on-disk tree (tests/nuscenes_tree.py); expectations by hand."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from pvkd.datasets import DataError, open_dataset
from pvkd.datasets.nuscenes import NuScenes, official_scene_lists
from pvkd.labels import NUSCENES_NAME_TO_CHALLENGE

from nuscenes_tree import OFFICIAL_FINE_CLASSES, TREE_FINE_INDEX, build_nuscenes_tree, read_table, write_table


@pytest.fixture
def tree(tmp_path):
    return build_nuscenes_tree(tmp_path / "nuscenes")


def frames(records):
    return [(record.sequence, record.frame) for record in records]


# ------------------------------------------------------------------ listing


def test_official_splits_list_lidar_keyframes_scene_by_scene(tree):
    dataset = NuScenes(tree.root)
    train, val = dataset.scans("train"), dataset.scans("val")
    assert frames(train) == [
        ("scene-0001", 0), ("scene-0001", 1), ("scene-0001", 2), ("scene-0002", 0), ("scene-0002", 1),
    ]
    assert frames(val) == [("scene-0003", 0), ("scene-0003", 1)]
    assert {record.split for record in train} == {"train"} and {record.split for record in val} == {"val"}
    # Sweeps and camera keyframes are in sample_data.json too, but are not scans.
    listed = {record.token for record in train + val}
    assert listed.isdisjoint(tree.sweep_tokens) and listed.isdisjoint(tree.camera_tokens)
    assert all("/samples/LIDAR_TOP/" in record.points_path for record in train + val)


def test_frames_follow_timestamps_not_table_order(tree):
    # The tree writes sample_data.json newest first; frame 0 must still be the earliest scan.
    train = NuScenes(tree.root).scans("train")
    expected = tree.scene("scene-0001") + tree.scene("scene-0002")
    assert [record.token for record in train] == [scan.token for scan in expected]
    times = [scan.timestamp for scan in tree.scene("scene-0001")]
    assert times == sorted(times) and times[0] < times[1] < times[2]
    first = train[0]
    assert first.scan_id == first.token == tree.scene("scene-0001")[0].token
    assert first.points_path == str(tree.scene("scene-0001")[0].points_path)
    assert first.labels_path == str(tree.root / "lidarseg" / "v1.0-trainval" / f"{first.token}_lidarseg.bin")


def test_explicit_splits_override_the_official_ones(tree):
    dataset = NuScenes(tree.root, splits={"train": ["scene-0003"], "val": ["scene-0002", "scene-0001"]})
    assert frames(dataset.scans("train")) == [("scene-0003", 0), ("scene-0003", 1)]
    assert frames(dataset.scans("val")) == [
        ("scene-0002", 0), ("scene-0002", 1), ("scene-0001", 0), ("scene-0001", 1), ("scene-0001", 2),
    ]


def test_open_dataset_builds_the_reader_from_params(tree):
    data = {"dataset": "nuscenes", "root": str(tree.root), "nuscenes_version": "v1.0-trainval",
            "splits": {"train": ["scene-0002"]}, "labelled_splits": ["train"]}
    dataset = open_dataset(data)
    assert isinstance(dataset, NuScenes) and dataset.name == "nuscenes"
    assert frames(dataset.scans("train")) == [("scene-0002", 0), ("scene-0002", 1)]


def test_mini_uses_mini_train_and_mini_val(tmp_path):
    tree = build_nuscenes_tree(tmp_path, version="v1.0-mini")
    dataset = NuScenes(tree.root, version="v1.0-mini")
    assert frames(dataset.scans("train")) == [("scene-0061", 0), ("scene-0061", 1)]
    assert frames(dataset.scans("val")) == [("scene-0103", 0)]


def test_test_version_is_unlabelled(tmp_path):
    tree = build_nuscenes_tree(tmp_path, version="v1.0-test")
    assert not (tree.root / "lidarseg").exists() and not tree.table("lidarseg").exists()
    dataset = NuScenes(tree.root, version="v1.0-test")
    records = dataset.scans("test")
    assert frames(records) == [("scene-0077", 0), ("scene-0077", 1)]
    assert all(record.labels_path is None for record in records)
    points, labels = dataset.load(records[1])
    assert labels is None and points.shape == (7, 4)


def test_trainval_reader_points_to_v1_test_for_the_test_split(tree):
    with pytest.raises(DataError, match="version='v1.0-test'"):
        NuScenes(tree.root).scans("test")


def test_embedded_official_lists_have_the_official_sizes():
    lists = official_scene_lists()
    assert {split: len(scenes) for split, scenes in lists.items()} == {
        "train": 700, "val": 150, "test": 150, "mini_train": 8, "mini_val": 2,
    }
    assert len(set(lists["train"]) | set(lists["val"]) | set(lists["test"])) == 1000
    assert lists["val"][:3] == ["scene-0003", "scene-0012", "scene-0013"]
    assert lists["mini_val"] == ["scene-0103", "scene-0916"]


# ------------------------------------------------------------------ sweep splits


@pytest.fixture
def swept(tmp_path):
    """The default tree with three lidar sweeps after each keyframe."""
    return build_nuscenes_tree(tmp_path / "nuscenes", sweeps_per_keyframe=3)


def test_sweep_split_lists_the_sweeps_of_its_scenes_in_time_order(swept):
    splits = {"train": ["scene-0001"], "val": ["scene-0003"], "unlabelled": ["scene-0002", "scene-0001"]}
    records = NuScenes(swept.root, splits=splits, sweep_splits=("unlabelled",)).scans("unlabelled")
    expected = swept.scene_sweeps("scene-0002") + swept.scene_sweeps("scene-0001")
    assert len(expected) == 2 * 3 + 3 * 3
    assert [record.token for record in records] == [sweep.token for sweep in expected]
    assert frames(records) == [("scene-0002", k) for k in range(6)] + [("scene-0001", k) for k in range(9)]
    times = [sweep.timestamp for sweep in swept.scene_sweeps("scene-0001")]
    assert times == sorted(times)  # the tree writes them newest first
    for record, sweep in zip(records, expected):
        assert record.scan_id == record.token and record.split == "unlabelled"
        assert record.points_path == str(sweep.points_path) and "/sweeps/LIDAR_TOP/" in record.points_path
        assert record.labels_path is None


def test_sweeps_load_their_points_and_no_labels(swept):
    dataset = NuScenes(swept.root, sweep_splits=("unlabelled",))
    records = dataset.scans("unlabelled")
    for record, sweep in zip(records, swept.scene_sweeps("scene-0001") + swept.scene_sweeps("scene-0002")):
        points, labels = dataset.load(record)
        assert labels is None
        np.testing.assert_allclose(points, sweep.points[:, :4] / [1, 1, 1, 255], atol=1e-6)
    points, _ = dataset.load(records[4])  # scene-0001 sweep 4: 6 + 40 + 4 points, x = 100 * 0 + 44
    assert points.shape == (50, 4)
    np.testing.assert_array_equal(points[:, 0], 44.0)


def test_sweep_split_defaults_to_the_official_train_scenes(swept):
    official = NuScenes(swept.root, sweep_splits=("unlabelled",))
    assert official.splits["unlabelled"] == ["scene-0001", "scene-0002"]
    # data.splits that do not name the sweep split: still the official train scenes.
    explicit = NuScenes(swept.root, splits={"train": ["scene-0003"]}, sweep_splits=("unlabelled",))
    assert explicit.splits["unlabelled"] == ["scene-0001", "scene-0002"]
    assert frames(explicit.scans("unlabelled"))[-1] == ("scene-0002", 5)


def test_sweep_split_named_in_splits_takes_those_scenes(swept):
    scene_0003 = [sweep.token for sweep in swept.scene_sweeps("scene-0003")]
    dataset = NuScenes(swept.root, splits={"unlabelled": ["scene-0003"]}, sweep_splits=("unlabelled",))
    assert [record.token for record in dataset.scans("unlabelled")] == scene_0003
    # With official splits, a sweep split named after one of them keeps its scenes (val: scene-0003).
    dataset = NuScenes(swept.root, labelled_splits=("train",), sweep_splits=("val",))
    assert [record.token for record in dataset.scans("val")] == scene_0003


def test_mini_sweep_split_takes_mini_train(tmp_path):
    tree = build_nuscenes_tree(tmp_path, version="v1.0-mini", sweeps_per_keyframe=2)
    dataset = NuScenes(tree.root, version="v1.0-mini", sweep_splits=("unlabelled",))
    assert frames(dataset.scans("unlabelled")) == [("scene-0061", k) for k in range(4)]


def test_test_version_sweep_split_needs_its_scenes_named(tmp_path):
    tree = build_nuscenes_tree(tmp_path, version="v1.0-test")
    with pytest.raises(DataError, match="sweep split 'unlabelled' .*no official train scenes; name its scenes"):
        NuScenes(tree.root, version="v1.0-test", sweep_splits=("unlabelled",))
    dataset = NuScenes(tree.root, version="v1.0-test", splits={"unlabelled": ["scene-0077"]},
                       sweep_splits=("unlabelled",))
    assert [record.token for record in dataset.scans("unlabelled")] == tree.sweep_tokens


def test_keyframe_splits_are_unchanged_by_a_sweep_split(swept):
    dataset = NuScenes(swept.root, sweep_splits=("unlabelled",))
    train, val = dataset.scans("train"), dataset.scans("val")
    assert [r.token for r in train + val] == [scan.token for scan in swept.scans]
    assert all(record.labels_path is not None for record in train + val)
    sweeps = [record.token for record in dataset.scans("unlabelled")]
    train_scene_sweeps = swept.scene_sweeps("scene-0001") + swept.scene_sweeps("scene-0002")
    assert sweeps == [sweep.token for sweep in train_scene_sweeps]  # not the val scene's, nor cameras
    assert set(sweeps).isdisjoint(swept.camera_tokens)


def test_sweep_split_cannot_be_labelled(tree):
    with pytest.raises(DataError, match=r"\['train'\] are in data.sweep_splits and in data.labelled_splits"):
        NuScenes(tree.root, sweep_splits=("train",))
    dataset = NuScenes(tree.root, labelled_splits=("val",), sweep_splits=("train",))
    assert [record.token for record in dataset.scans("train")] == tree.sweep_tokens[:5]


def test_missing_sweep_file_names_the_sweeps_archives(swept):
    path = swept.scene_sweeps("scene-0002")[4].points_path
    path.unlink()
    expected = re.escape(f"{path}: not found, and 0 more file(s) of split 'unlabelled'") + ".*sweeps archives"
    with pytest.raises(DataError, match=expected):
        NuScenes(swept.root, sweep_splits=("unlabelled",)).scans("unlabelled")


def test_scene_without_sweeps(tmp_path):
    tree = build_nuscenes_tree(tmp_path, sweeps_per_keyframe=0)
    expected = "sample_data.json: scene scene-0001 of split 'unlabelled' has no LIDAR_TOP sweep"
    with pytest.raises(DataError, match=expected):
        NuScenes(tree.root, sweep_splits=("unlabelled",))


def test_open_dataset_passes_sweep_splits(swept):
    data = {"dataset": "nuscenes", "root": str(swept.root), "nuscenes_version": "v1.0-trainval",
            "splits": None, "labelled_splits": ["train", "val"], "sweep_splits": ["unlabelled"]}
    dataset = open_dataset(data)
    assert [record.token for record in dataset.scans("unlabelled")] == [
        sweep.token for sweep in swept.scene_sweeps("scene-0001") + swept.scene_sweeps("scene-0002")
    ]
    assert open_dataset({**data, "sweep_splits": []}).sweep_splits == ()


# ------------------------------------------------------------------ loading


def test_points_are_xyz_and_intensity_scaled_to_unit_range(tree):
    dataset = NuScenes(tree.root)
    points, _ = dataset.load(dataset.scans("train")[0])  # scene-0001 frame 0: 6 points
    assert points.dtype == np.float32 and points.shape == (6, 4) and points.flags.c_contiguous
    np.testing.assert_array_equal(points[:, 0], 0.0)
    np.testing.assert_array_equal(points[:, 1], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(points[:, 2], -1.5)
    np.testing.assert_allclose(points[:, 3], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    points, _ = dataset.load(dataset.scans("train")[4])  # scene-0002 frame 1: x = 100 * 1 + 1
    assert points.shape == (7, 4)
    np.testing.assert_array_equal(points[:, 0], 101.0)


def test_labels_are_mapped_by_class_name(tree):
    dataset = NuScenes(tree.root)
    train = dataset.scans("train")
    # car 4, driveable_surface 11, pedestrian.child 7, ego 0, vegetation 16, trafficcone 8
    _, labels = dataset.load(train[0])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [4, 11, 7, 0, 16, 8])
    # frame 2 starts two places later in the cycle: child, ego, vegetation, cone, bus.bendy, noise,
    # sidewalk, car
    _, labels = dataset.load(train[2])
    np.testing.assert_array_equal(labels, [7, 0, 16, 8, 3, 0, 13, 4])


def test_the_tree_would_catch_a_mapping_by_official_index(tree):
    written = np.fromfile(tree.scene("scene-0001")[0].labels_path, dtype=np.uint8)
    by_official_index = [NUSCENES_NAME_TO_CHALLENGE[OFFICIAL_FINE_CLASSES[i]] for i in written]
    assert by_official_index != [4, 11, 7, 0, 16, 8]
    assert all(TREE_FINE_INDEX[name] != i for i, name in enumerate(OFFICIAL_FINE_CLASSES))


# ------------------------------------------------------------------ bad input


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere"))):
        NuScenes(tmp_path / "nowhere")


def test_missing_version_folder_names_it_and_the_found_ones(tree):
    with pytest.raises(DataError, match=r"v1\.0-mini: no table folder.*v1\.0-trainval"):
        NuScenes(tree.root, version="v1.0-mini")


@pytest.mark.parametrize("table", ["scene", "sample", "sample_data", "category"])
def test_missing_table(tree, table):
    tree.table(table).unlink()
    with pytest.raises(DataError, match=f"{table}.json: table not found"):
        NuScenes(tree.root)


def test_truncated_table(tree):
    tree.table("sample").write_text(tree.table("sample").read_text()[:-20])
    with pytest.raises(DataError, match="sample.json: not valid JSON"):
        NuScenes(tree.root)


def test_category_table_without_lidarseg_index(tree):
    records = read_table(tree.table("category"))
    for record in records:
        del record["index"]
    write_table(tree.table("category"), records)
    with pytest.raises(DataError, match="category.json: a record has no 'index' field; the detection-only"):
        NuScenes(tree.root)


def test_points_file_not_a_whole_number_of_points(tree):
    dataset = NuScenes(tree.root)
    record = dataset.scans("train")[0]
    with open(record.points_path, "ab") as stream:
        stream.write(b"\0" * 8)  # 6 points * 20 bytes + 8
    expected = re.escape(record.points_path) + ": size 128 bytes is not a multiple of the 20-byte"
    with pytest.raises(DataError, match=expected):
        dataset.load(record)


def test_label_count_differs_from_point_count(tree):
    dataset = NuScenes(tree.root)
    record = dataset.scans("train")[0]
    np.fromfile(record.labels_path, dtype=np.uint8)[:-1].tofile(record.labels_path)
    with pytest.raises(DataError, match=re.escape(record.labels_path) + ": 5 labels but .* has 6 points"):
        dataset.load(record)


def test_fine_index_missing_from_category_table(tree):
    # Drop vehicle.ego from category.json: its index now appears in the labels but not in the table.
    records = [r for r in read_table(tree.table("category")) if r["name"] != "vehicle.ego"]
    write_table(tree.table("category"), records)
    dataset = NuScenes(tree.root)
    record = dataset.scans("train")[0]
    ego = TREE_FINE_INDEX["vehicle.ego"]
    expected = rf": fine class index\(es\) \[{ego}\] are not in .*category.json \(1 points\)"
    with pytest.raises(DataError, match=re.escape(record.labels_path) + expected):
        dataset.load(record)


def test_fine_index_beyond_the_table(tree):
    dataset = NuScenes(tree.root)
    record = dataset.scans("val")[0]
    np.full(6, 40, dtype=np.uint8).tofile(record.labels_path)
    with pytest.raises(DataError, match=re.escape(record.labels_path) + r": fine class index\(es\) \[40\]"):
        dataset.load(record)


def test_unknown_class_name_in_category_table(tree):
    records = read_table(tree.table("category"))
    records[0]["name"] = "vehicle.hovercraft"
    write_table(tree.table("category"), records)
    with pytest.raises(DataError, match="category.json: .*vehicle.hovercraft"):
        NuScenes(tree.root)


def test_missing_lidarseg_folder(tree):
    shutil.rmtree(tree.root / "lidarseg")
    with pytest.raises(DataError, match=r"lidarseg/v1\.0-trainval: label folder not found.*lidarseg"):
        NuScenes(tree.root)


def test_missing_lidarseg_table(tree):
    tree.table("lidarseg").unlink()
    with pytest.raises(DataError, match=r"lidarseg.json: not found.*nuScenes-lidarseg"):
        NuScenes(tree.root)


def test_points_only_reader_needs_no_lidarseg(tree):
    shutil.rmtree(tree.root / "lidarseg")
    tree.table("lidarseg").unlink()
    dataset = NuScenes(tree.root, labelled_splits=())
    record = dataset.scans("train")[0]
    assert record.labels_path is None and dataset.load(record)[1] is None


def test_keyframe_absent_from_lidarseg_table(tree):
    missing = tree.scene("scene-0003")[1].token
    kept = [r for r in read_table(tree.table("lidarseg")) if r["sample_data_token"] != missing]
    write_table(tree.table("lidarseg"), kept)
    dataset = NuScenes(tree.root)
    assert len(dataset.scans("train")) == 5  # the other split is whole
    expected = f"lidarseg.json: no entry for lidar keyframe {missing} of scene scene-0003"
    with pytest.raises(DataError, match=expected):
        dataset.scans("val")


@pytest.mark.parametrize("which", ["points", "labels"])
def test_missing_scan_file_fails_the_whole_split(tree, which):
    scan = tree.scene("scene-0002")[1]
    path = scan.points_path if which == "points" else scan.labels_path
    path.unlink()
    with pytest.raises(DataError, match=re.escape(f"{path}: not found, and 0 more file")):
        NuScenes(tree.root).scans("train")


def test_explicit_split_scene_not_in_tables(tree):
    with pytest.raises(DataError, match=r"scene.json: scene\(s\) \['scene-9999'\] of split 'val'"):
        NuScenes(tree.root, splits={"train": ["scene-0001"], "val": ["scene-0003", "scene-9999"]})


def test_official_split_with_no_scene_in_the_tables(tmp_path):
    # Tables whose scenes are all outside the official lists: the version is wrong.
    tree = build_nuscenes_tree(tmp_path, scenes={"scene-9001": 1})
    with pytest.raises(DataError, match="scene.json: none of the 700 official 'train' scenes"):
        NuScenes(tree.root)


def test_unknown_split(tree):
    with pytest.raises(DataError, match="split 'extra' is not defined"):
        NuScenes(tree.root).scans("extra")
