"""`pvkd predict`: submission files re-scored from the files alone give the in-memory evaluation's confusion.

The test reads the written predictions and the raw tree's own files (points, labels) with minimal readers of
its own, maps raw ids to training ids, and builds the confusion matrix over the finite points; the points
preprocess dropped (non-finite) must still have a prediction: their nearest kept neighbour's in file order.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pvkd.cli import app
from pvkd.evaluate import evaluate_model
from pvkd.labels import NUSCENES_NAME_TO_CHALLENGE, SEMANTICKITTI_LEARNING_MAP, SEMANTICKITTI_LEARNING_MAP_INV
from pvkd.predict import fill_dropped
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset

from eval_fixtures import NAN_ROWS, eval_config, kitti_processed, nuscenes_processed, save_model

CPU = torch.device("cpu")


def run_predict(model, processed, out, *options):
    threads = torch.get_num_threads()
    try:
        done = CliRunner().invoke(app, ["predict", "--model", str(model), "--data", str(processed), "--split", "val",
                                        "--out", str(out), "--device", "cpu", "--batch-size", "2", *options])
    finally:
        torch.set_num_threads(threads)
    assert done.exit_code == 0, done.output
    return done


def in_memory_confusion(model_path, processed, tta: bool = False) -> np.ndarray:
    model, _ = load_model(model_path)
    cfg = eval_config(batch_size=2, tta=tta)
    return evaluate_model(model, ScanDataset(processed, "val"), cfg, CPU).confusion["point"]


def rescore(scans, num_classes: int) -> np.ndarray:
    """Confusion (rows = prediction) over the finite points of ``[(points, train labels, train preds)]``, and
    a check of the dropped points' rule: the prediction of the previous finite row (the next, if none)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for points, label, pred in scans:
        assert len(pred) == len(points) == len(label)
        finite = np.isfinite(points).all(axis=1)
        np.add.at(conf, (pred[finite], label[finite]), 1)
        kept = np.flatnonzero(finite)
        for row in np.flatnonzero(~finite):
            before = kept[kept < row]
            assert pred[row] == pred[before[-1] if len(before) else kept[0]]
    return conf


@pytest.mark.parametrize("tta", [False, True])
def test_semantickitti_submission_rescored_from_the_files(tmp_path, tta):
    raw, processed = kitti_processed(tmp_path)
    model = save_model(processed, tmp_path / "model.pt")
    run_predict(model, processed, tmp_path / "pred", "--tta" if tta else "--no-tta")

    train_of_raw = np.zeros(1 << 16, np.int64)
    for raw_id, train_id in SEMANTICKITTI_LEARNING_MAP.items():
        train_of_raw[raw_id] = train_id
    train_of_prediction = {raw_id: train_id for train_id, raw_id in SEMANTICKITTI_LEARNING_MAP_INV.items()}
    scans, dropped = [], 0
    for bin_path in sorted((raw / "sequences" / "08" / "velodyne").glob("*.bin")):
        points = np.fromfile(bin_path, np.float32).reshape(-1, 4)
        label = train_of_raw[np.fromfile(raw / "sequences" / "08" / "labels" / f"{bin_path.stem}.label",
                                         np.uint32) & 0xFFFF]
        written = np.fromfile(tmp_path / "pred" / "sequences" / "08" / "predictions" / f"{bin_path.stem}.label",
                              np.uint32)
        assert set(np.unique(written)) <= set(train_of_prediction) - {0}  # raw ids of real classes
        pred = np.array([train_of_prediction[int(r)] for r in written])
        scans.append((points, label, pred))
        dropped += int((~np.isfinite(points).all(axis=1)).sum())
    assert len(scans) == 3 and dropped == len(NAN_ROWS)
    expected = in_memory_confusion(model, processed, tta)
    assert (expected.sum(axis=1) > 0).sum() >= 2  # the model says more than one class
    assert np.array_equal(rescore(scans, 20), expected)


def test_nuscenes_submission_rescored_from_the_files(tmp_path):
    tree, processed = nuscenes_processed(tmp_path)
    model = save_model(processed, tmp_path / "model.pt")
    run_predict(model, processed, tmp_path / "pred")

    scans = []
    for scan in tree.scene("scene-0003"):
        points = np.fromfile(scan.points_path, np.float32).reshape(-1, 5)
        label = np.array([NUSCENES_NAME_TO_CHALLENGE[name] for name in scan.fine_names])
        pred = np.fromfile(tmp_path / "pred" / "lidarseg" / "val" / f"{scan.token}_lidarseg.bin", np.uint8)
        assert pred.min() >= 1 and pred.max() <= 16
        scans.append((points, label, pred.astype(np.int64)))
    assert np.array_equal(rescore(scans, 17), in_memory_confusion(model, processed))
    assert not np.isfinite(scans[0][0]).all()  # the dropped-point path ran
    assert len(list((tmp_path / "pred" / "lidarseg" / "val").iterdir())) == 3
    meta = json.loads((tmp_path / "pred" / "val" / "submission.json").read_text())
    assert meta == {"meta": {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                             "use_external": False}}


def test_dropped_points_take_the_previous_kept_points_prediction():
    pred = np.array([7, 8, 9])
    assert fill_dropped(pred, np.array([1, 2, 5], np.uint32), 7).tolist() == [7, 7, 8, 8, 8, 9, 9]
    assert fill_dropped(pred, np.array([0, 1, 2], np.uint32), 3).tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="2 predictions for 3 kept points"):
        fill_dropped(pred[:2], np.array([0, 1, 2], np.uint32), 3)
