"""Official-rule scores on hand-made confusion matrices, and the split confusion of a model."""

import math

import numpy as np
import pytest
import torch

from pvkd.metrics import confusion_matrix, iou_per_class, predict, scores, split_confusion

NAMES = ("ignored", "a", "b", "c")


def test_confusion_matrix_counts_rows_as_predictions():
    pred = torch.tensor([1, 1, 2, 3, 0, 2])
    gt = torch.tensor([1, 2, 2, 0, 3, 2])
    expected = np.zeros((4, 4), np.int64)
    for p, g in zip(pred.tolist(), gt.tolist()):
        expected[p, g] += 1
    assert np.array_equal(confusion_matrix(pred, gt, 4).numpy(), expected)
    with pytest.raises(ValueError, match="labels outside"):
        confusion_matrix(pred, torch.tensor([1, 2, 2, 0, 3, 4]), 4)


def test_semantickitti_rules_by_hand():
    # rows = prediction, columns = ground truth
    conf = np.array(
        [
            [0, 1, 0, 0],  # one labelled 'a' point predicted 0: a miss of 'a'
            [5, 3, 1, 0],  # five 0-labelled points predicted 'a': ignored
            [2, 1, 4, 0],
            [0, 0, 0, 0],  # 'c' neither present nor predicted
        ]
    )
    iou = iou_per_class(conf, "semantickitti")
    # a: TP 3, FP 1 (row, GT column 0 zeroed), FN 1 (predicted 0) + 1 (predicted b) = 2
    assert iou[1] == pytest.approx(3 / (3 + 1 + 2))
    # b: TP 4, FP 1 (row, GT 0 ignored), FN 1
    assert iou[2] == pytest.approx(4 / (4 + 1 + 1))
    assert iou[3] == 0.0  # absent class scores 0 in SemanticKITTI's mean
    assert math.isnan(iou[0])
    s = scores(conf, "semantickitti", NAMES)
    assert s.miou == pytest.approx((0.5 + 4 / 6 + 0.0) / 3)
    # official getacc: correct / points predicted as classes 1..C-1 (GT 0 column zeroed)
    assert s.accuracy == pytest.approx((3 + 4) / (4 + 5))
    assert s.per_class() == {"a": iou[1], "b": iou[2], "c": 0.0}


def test_nuscenes_rules_zero_row_and_column_and_take_nanmean():
    conf = np.array(
        [
            [7, 1, 0, 0],  # row 0 zeroed: the 'a' point predicted 0 is not counted
            [5, 3, 1, 0],
            [2, 1, 4, 0],
            [0, 0, 0, 0],
        ]
    )
    iou = iou_per_class(conf, "nuscenes")
    assert iou[1] == pytest.approx(3 / (3 + 1 + 1))
    assert iou[2] == pytest.approx(4 / (4 + 1 + 1))
    assert math.isnan(iou[3])  # 0 / 0: absent, left out of the mean
    assert scores(conf, "nuscenes", NAMES).miou == pytest.approx((0.6 + 4 / 6) / 2)


def test_scoring_leaves_the_callers_matrix_alone():
    conf = np.ones((4, 4), np.int64)
    scores(conf, "nuscenes", NAMES)
    assert (conf == 1).all()


def test_predict_never_returns_the_ignored_class():
    logits = torch.tensor([[9.0, 1.0, 2.0], [5.0, 3.0, -1.0]])
    assert predict(logits).tolist() == [2, 1]


class Output:
    def __init__(self, point_logits, voxel_logits, point_to_voxel):
        self.point_logits, self.voxel_logits, self.point_to_voxel = point_logits, voxel_logits, point_to_voxel


class FixedModel(torch.nn.Module):
    """Point logits favour (label + shift) mod C; voxel logits say class 1 everywhere."""

    def forward(self, points):
        n = points.xyz.shape[0]
        wanted = (points.labels + 1) % 4
        point_logits = torch.nn.functional.one_hot(wanted, 4).float()
        return Output(point_logits, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.zeros(n, dtype=torch.long))


class Batch:
    def __init__(self, labels):
        self.labels = labels
        self.points = type("P", (), {"xyz": torch.zeros(len(labels), 3), "labels": labels})()

    def to(self, device):
        return self


def test_split_confusion_sums_batches_per_head():
    batches = [Batch(torch.tensor([1, 2, 3, 0])), Batch(torch.tensor([2, 2]))]
    conf = split_confusion(FixedModel(), batches, 4, "cpu")
    labels = torch.tensor([1, 2, 3, 0, 2, 2])
    shifted = (labels + 1) % 4
    expected_point = confusion_matrix(torch.where(shifted == 0, 1, shifted), labels, 4)  # argmax skips class 0
    assert torch.equal(conf["point"], expected_point)
    assert torch.equal(conf["voxel"], confusion_matrix(torch.ones(6, dtype=torch.long), labels, 4))
