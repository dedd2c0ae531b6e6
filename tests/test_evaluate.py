"""`pvkd evaluate`: scores by each dataset's rules, IoU by distance band, TTA votes, the JSON contract.

IoU on hand-made confusion matrices (both datasets' rules, a prediction of 0 as a miss) is in
test_metrics.py; here the evaluation around it: the models it runs, the bands, the votes, the files.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pvkd.cli import app
from pvkd.errors import DataError, ParamsError
from pvkd.evaluate import (
    TTA_ROTATION_DEG,
    TTA_SCALE,
    ModelEvaluation,
    evaluate_model,
    model_entries,
    model_metrics,
    tta_votes,
    vote_probabilities,
)
from pvkd.labels import SEMANTICKITTI_CLASSES
from pvkd.models import PointBatch
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset

from eval_fixtures import STUDENT, IntensityModel, ListDataset, SignModel, eval_config, kitti_processed, save_model
from train_fixtures import ROOT

CPU = torch.device("cpu")
NAMES = ("ignored", "a", "b", "c")
RECORD = {"dataset": "semantickitti", "class_names": list(NAMES), "model": {"arch": "cylinder3d", "width": 4}}
COST = {"params_m": 1.0, "macs_g": 2.0, "latency_ms": 3.0}
KEYS = ["role", "description", "arch", "width", "miou", "miou_voxel_head", "accuracy", "iou", "miou_by_distance",
        "params_m", "macs_g", "latency_ms", "tta", "val_scans", "train_splits", "augmentation",
        "trained_on_scored_sequences"]


def scan(points: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[(x, y, z, predicted class, label), ...]`` -> a scan for :class:`IntensityModel` (class = intensity)."""
    a = np.array(points, np.float64)
    return a[:, :3], a[:, 3], a[:, 4]


def test_predictions_of_0_are_never_made_and_each_datasets_rules_apply():
    # (x, y, z, class the logits favour, label): the first point's logits favour 0, so it gets the best of
    # 1..C-1 (all tied: 1); the third is unlabelled; the fourth is an 'a' predicted 'b'
    dataset = ListDataset([scan([(1, 0, 0, 0, 1), (2, 0, 0, 2, 2), (3, 0, 0, 1, 0), (4, 0, 0, 2, 1)])])
    evaluation = evaluate_model(IntensityModel(4), dataset, eval_config(), CPU)
    conf = evaluation.confusion["point"]
    assert conf[0].sum() == 0 and conf[1, 1] == 1  # nothing predicted as ignored
    # SemanticKITTI: the label-0 point is ignored, absent class c scores 0 and counts in the mean
    kitti = model_metrics(evaluation, RECORD, COST, eval_config(), "teacher", "teacher")
    assert kitti["iou"] == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})
    assert kitti["miou"] == pytest.approx(1 / 3)
    # nuScenes: an absent class has no IoU (null) and is left out of the mean
    nuscenes = model_metrics(evaluation, {**RECORD, "dataset": "nuscenes"}, COST, eval_config(), "teacher", "t")
    assert nuscenes["iou"] == {"a": 0.5, "b": 0.5, "c": None}
    assert nuscenes["miou"] == pytest.approx(0.5)


def test_iou_by_distance_band_by_hand():
    # (x, y, z, predicted, label); bands of 3D range: 0-10, 10-20, 20-30, 30-40, 40-50, 50+
    points = [
        (5, 0, 0, 1, 1), (0, 5, 0, 2, 1), (-5, 0, 0, 2, 2),  # 0-10: a 1/2, b 1/2, c 0
        (15, 0, 0, 1, 1), (9, 0, 5, 3, 3),  # 10-20 (the second point: planar 9 m, 3D 10.3 m): a 1, c 1, b 0
        (25, 0, 0, 3, 0),  # 20-30: only an unlabelled point: no score
        (0, 60, 0, 1, 2),  # 50+: a FP, b FN
    ]
    dataset = ListDataset([scan(points[:4]), scan(points[4:])])
    cfg = eval_config(batch_size=1)
    evaluation = evaluate_model(IntensityModel(4), dataset, cfg, CPU)
    m = model_metrics(evaluation, RECORD, COST, cfg, "teacher", "teacher")
    assert list(m["miou_by_distance"]) == ["0-10", "10-20", "20-30", "30-40", "40-50", "50+"]
    expected = {"0-10": 1 / 3, "10-20": 2 / 3, "20-30": None, "30-40": None, "40-50": None, "50+": 0.0}
    assert m["miou_by_distance"] == pytest.approx(expected)
    assert evaluation.band_confusion.sum() == len(points) and evaluation.scans == 2
    assert np.array_equal(evaluation.band_confusion.sum(0), evaluation.confusion["point"])


def test_tta_votes_move_the_points_and_keep_predictions_with_them():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-30, 30, (50, 3))
    label = rng.integers(0, 4, 50)
    dataset = ListDataset([(xyz[:20], label[:20], label[:20]), (xyz[20:], label[20:], label[20:])])
    plain_model, tta_model = IntensityModel(4), IntensityModel(4)
    plain = evaluate_model(plain_model, dataset, eval_config(tta=False, batch_size=1), CPU)
    voted = evaluate_model(tta_model, dataset, eval_config(tta=True, batch_size=1), CPU)
    # class = intensity, which no vote changes: every point keeps its prediction through the votes
    assert np.array_equal(plain.confusion["point"], voted.confusion["point"])
    assert np.trace(plain.confusion["point"][1:, 1:]) == (label > 0).sum()
    # the four votes as documented, in order, z untouched
    a = math.radians(TTA_ROTATION_DEG)
    x, y, z = (torch.tensor(xyz[:20], dtype=torch.float32)[:, i] for i in range(3))
    rotated = (TTA_SCALE * (math.cos(a) * x - math.sin(a) * y), TTA_SCALE * (math.sin(a) * x + math.cos(a) * y))
    expected = [(x, y), (-x, y), (x, -y), rotated]
    assert len(tta_model.seen) == 8 and len(plain_model.seen) == 2
    for seen, (ex, ey) in zip(tta_model.seen[:4], expected):
        assert torch.allclose(seen, torch.stack([ex, ey, z], 1), atol=1e-4)


def test_vote_probabilities_are_averaged_point_by_point():
    # SignModel says 1 where x > 0: only the x-flip vote disagrees, for every point, whatever its order
    xyz = torch.tensor([[1.0, 0.1, 0.0], [-2.0, 0.3, 1.0], [3.0, -0.2, 0.0]])
    points = PointBatch.from_scans([(xyz, torch.zeros(3))])
    p = vote_probabilities(SignModel(), points, tta_votes(True), heads=("point",))["point"]
    assert torch.allclose(p, torch.tensor([[0, 0.75, 0.25], [0, 0.25, 0.75], [0, 0.75, 0.25]]), atol=1e-6)


def test_a_missing_model_names_the_stage_that_writes_it(tmp_path):
    (tmp_path / "teacher.pt").touch()
    (tmp_path / "pvkd.pt").touch()
    with pytest.raises(DataError, match=r"baseline\.pt: not found; run `dvc repro distill@baseline`"):
        model_entries(tmp_path, {"pvkd": {"description": "x"}, "baseline": {}})
    with pytest.raises(DataError, match=r"dvc repro teacher-train"):
        model_entries(tmp_path / "nothing", {})
    with pytest.raises(ParamsError, match="'teacher' is the teacher's name"):
        model_entries(tmp_path, {"teacher": {}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    _, processed = kitti_processed(root)
    models = root / "models"
    save_model(processed, models / "teacher.pt")
    save_model(processed, models / "tiny.pt", STUDENT, seed=1)
    return root, processed, models


def write_params(path, **evaluate):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["students"] = {"tiny": {"description": "a width-2 student", "model": STUDENT}}
    params["evaluate"].update(device="cpu", batch_size=2, cost_scans=2, latency_runs=1, **evaluate)
    path.write_text(yaml.safe_dump(params))
    return path


def run_evaluate(params, processed, models, folder):
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(app, ["evaluate", "--params", str(params), "--data", str(processed), "--models",
                                        str(models), "--out", str(folder / "evaluate.json"), "--plots",
                                        str(folder / "eval")])
    finally:
        torch.set_num_threads(threads)


def _no_nan(constant):
    raise ValueError(f"{constant} is not JSON")


def test_evaluate_stage_writes_the_contract(setup, tmp_path):
    root, processed, models = setup
    done = run_evaluate(write_params(tmp_path / "params.yaml", sample_scan=1), processed, models, tmp_path)
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "evaluate.json").read_text(), parse_constant=_no_nan)
    assert list(metrics) == ["teacher", "tiny"]
    teacher, tiny = metrics["teacher"], metrics["tiny"]
    assert all(list(m) == KEYS for m in metrics.values())
    assert (teacher["role"], teacher["description"], teacher["arch"], teacher["width"]) == (
        "teacher", "teacher", "cylinder3d", 4)
    assert (tiny["role"], tiny["description"], tiny["width"]) == ("student", "a width-2 student", 2)
    assert list(teacher["iou"]) == list(SEMANTICKITTI_CLASSES[1:])
    assert list(teacher["miou_by_distance"]) == ["0-10", "10-20", "20-30", "30-40", "40-50", "50+"]
    assert teacher["val_scans"] == 3 and teacher["tta"] is False
    assert teacher["augmentation"] == "unknown"  # the fixtures' records carry no train section
    for m in metrics.values():
        assert 0 <= m["miou"] <= 1 and 0 <= m["miou_voxel_head"] <= 1 and 0 <= m["accuracy"] <= 1
        assert m["params_m"] > 0 and m["macs_g"] > 0 and m["latency_ms"] > 0
    assert tiny["params_m"] < teacher["params_m"] and tiny["macs_g"] < teacher["macs_g"]

    # the same scores as an in-memory evaluation of the record
    model, record = load_model(models / "teacher.pt")
    evaluation = evaluate_model(model, ScanDataset(processed, "val"), eval_config(), CPU, sample_scan=1)
    assert teacher["miou"] == pytest.approx(model_metrics(evaluation, record, COST, eval_config(), "", "")["miou"])

    per_class = pd.read_csv(tmp_path / "eval" / "per_class_iou.csv")
    assert list(per_class.columns) == ["model", "class", "iou"] and len(per_class) == 2 * 19
    assert per_class[per_class.model == "tiny"].set_index("class")["iou"].to_dict() == pytest.approx(tiny["iou"])
    distance = pd.read_csv(tmp_path / "eval" / "distance_miou.csv")
    assert list(distance.columns) == ["model", "band", "miou"] and len(distance) == 2 * 6

    sample = pd.read_parquet(tmp_path / "eval" / "sample_scan.parquet")
    assert list(sample.columns) == ["x", "y", "z", "label", "pred_teacher", "pred_tiny"]
    assert [str(t) for t in sample.dtypes] == ["float32"] * 3 + ["uint8"] * 3
    assert len(sample) == 301  # val scan 1 of the tree (preprocess dropped nothing there)
    assert np.array_equal(sample["pred_teacher"].to_numpy(), evaluation.sample_pred)
    assert sample["pred_teacher"].min() >= 1
    assert not list((tmp_path / "eval").glob(".*tmp*"))  # only whole files


def test_evaluate_stage_names_a_missing_student(setup, tmp_path):
    root, processed, models = setup
    params = write_params(tmp_path / "params.yaml")
    params.write_text(params.read_text().replace("tiny:", "absent:"))
    done = run_evaluate(params, processed, models, tmp_path)
    assert done.exit_code != 0
    assert "absent.pt: not found; run `dvc repro distill@absent`" in str(done.exception)
    assert not (tmp_path / "evaluate.json").exists()


def test_model_metrics_writes_null_not_nan():
    conf = np.zeros((4, 4), np.int64)
    evaluation = ModelEvaluation({"point": conf, "voxel": conf}, np.zeros((6, 4, 4), np.int64), None, 0)
    m = model_metrics(evaluation, {**RECORD, "dataset": "nuscenes"}, COST, eval_config(), "student", "d")
    assert m["miou"] is None and set(m["iou"].values()) == {None}
    json.dumps(m, allow_nan=False)
