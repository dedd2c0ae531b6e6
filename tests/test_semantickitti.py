import numpy as np
import pytest

from pvkd.datasets import DataError
from pvkd.datasets.semantickitti import SemanticKITTI, read_poses, write_predictions
from pvkd.labels import SEMANTICKITTI_LEARNING_MAP, semantickitti_inverse_lut, semantickitti_lut

from kitti_tree import write_tree

SPLITS = {"train": ["00", "01"], "val": ["08"]}


@pytest.fixture
def tree(tmp_path):
    scans = write_tree(tmp_path, {"00": 2, "01": 1, "08": 2})
    return tmp_path, scans


def test_lut_matches_learning_map_for_every_raw_id():
    lut = semantickitti_lut()
    for raw, train in SEMANTICKITTI_LEARNING_MAP.items():
        assert lut[raw] == train
    assert lut[2] == -1 and lut[300] == -1  # ids absent from the map are flagged, not zero


def test_inverse_map_round_trips_training_ids():
    inv = semantickitti_inverse_lut()
    assert (semantickitti_lut()[inv[1:]] == np.arange(1, 20)).all()


def test_reads_splits_points_and_mapped_labels(tree):
    root, scans = tree
    ds = SemanticKITTI(root, splits=SPLITS)
    train = ds.scans("train")
    assert [r.scan_id for r in train] == ["00/000000", "00/000001", "01/000000"]
    points, labels = ds.load(train[1])
    raw_points, raw = scans["00"][1]
    np.testing.assert_array_equal(points, raw_points)
    expected = np.array([SEMANTICKITTI_LEARNING_MAP[int(r) & 0xFFFF] for r in raw])  # independent per-element map
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8


def test_unlabelled_split_has_no_labels(tmp_path):
    write_tree(tmp_path, {"11": 1}, labels=False)
    ds = SemanticKITTI(tmp_path, splits={"test": ["11"]})
    (rec,) = ds.scans("test")
    points, labels = ds.load(rec)
    assert labels is None and rec.labels_path is None and len(points) == 500


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: no 'sequences' folder"):
        SemanticKITTI(tmp_path / "nowhere")


def test_missing_labels_folder_of_labelled_split(tmp_path):
    write_tree(tmp_path, {"08": 1}, labels=False)
    with pytest.raises(DataError, match=r"08/labels: missing, but split 'val' is labelled"):
        SemanticKITTI(tmp_path, splits=SPLITS | {"train": []}).scans("val")


def test_truncated_bin(tree):
    root, _ = tree
    path = root / "sequences/00/velodyne/000000.bin"
    path.write_bytes(path.read_bytes()[:-3])
    ds = SemanticKITTI(root, splits=SPLITS)
    with pytest.raises(DataError, match=r"000000.bin: size 7997 bytes is not a multiple of the 16-byte"):
        ds.load(ds.scans("train")[0])


def test_label_count_mismatch(tree):
    root, _ = tree
    path = root / "sequences/00/labels/000000.label"
    path.write_bytes(path.read_bytes()[:-8])
    ds = SemanticKITTI(root, splits=SPLITS)
    with pytest.raises(DataError, match=r"000000.label: 498 labels but .*000000.bin has 500 points"):
        ds.load(ds.scans("train")[0])


def test_unknown_raw_label(tree):
    root, _ = tree
    path = root / "sequences/00/labels/000000.label"
    raw = np.fromfile(path, dtype=np.uint32)
    raw[[3, 7]] = [2 | (5 << 16), 300]
    raw.tofile(path)
    ds = SemanticKITTI(root, splits=SPLITS)
    message = r"000000.label: raw label id\(s\) \[2, 300\] are not in the label map \(2 points\)"
    with pytest.raises(DataError, match=message):
        ds.load(ds.scans("train")[0])


def test_poses(tree):
    root, _ = tree
    poses = read_poses(root / "sequences/00/poses.txt")
    assert poses.shape == (2, 4, 4) and poses[1, 0, 3] == 1.0 and poses[1, 3, 3] == 1.0


def test_submission_labels_are_raw_ids(tmp_path):
    write_predictions(tmp_path / "p.label", np.array([1, 9, 19, 7], np.uint8))
    assert np.fromfile(tmp_path / "p.label", np.uint32).tolist() == [10, 40, 81, 31]
