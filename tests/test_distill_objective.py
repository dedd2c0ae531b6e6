"""PVKDLoss wires the KL terms to the segmentation loss's class weights when distill.kl_class_weights is on."""

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from pvkd.distill.objective import DistillConfig, PVKDLoss, TeacherTargets
from pvkd.train.config import LossConfig
from pvkd.train.losses import SegmentationLoss

from train_fixtures import ROOT


def kl_terms(kl_class_weights: bool) -> dict[str, float]:
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    cfg = DistillConfig.from_dict({**section, "kl_class_weights": kl_class_weights, "point_weight": 1.0,
                                   "voxel_weight": 1.0, "affinity_weight": 0.0, "temperature": 1.0})
    # classes 0 (ignored), 1 (frequent, weight 0.5) and 2 (rare, weight 3)
    weights = torch.tensor([0.0, 0.5, 3.0])
    segmentation = SegmentationLoss(LossConfig(1.0, 1.0, 1.0, 0.5), 3, weights, weights)
    loss = PVKDLoss(cfg, segmentation, torch.ones(3), (4, 4, 4), teacher_targets=None)
    # three points: the student is uniform; the teacher sure of class 1 on point 0, leaning to class 2 on points 1
    # and 2. Points 0 and 1 share voxel 0, point 2 is alone in voxel 1.
    teacher = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.2, 0.2, 0.6]]).log()
    output = SimpleNamespace(point_logits=torch.zeros(3, 3), voxel_logits=torch.zeros(2, 3),
                             point_to_voxel=torch.tensor([0, 0, 1]))
    batch = SimpleNamespace(labels=torch.tensor([1, 2, 0]))  # point 2 unlabelled: weighed by the teacher's class 2
    terms = loss.distillation_terms(output, TeacherTargets(teacher, None, None), batch)
    return {k: v.item() for k, v in terms.items()}


def test_kl_rows_weigh_by_their_class_when_asked():
    def kl_from_uniform(*p):
        return sum(q * math.log(q * 3) for q in p)

    sure, lean = kl_from_uniform(0.1, 0.8, 0.1), kl_from_uniform(0.2, 0.2, 0.6)
    mixed = kl_from_uniform(0.15, 0.5, 0.35)  # voxel 0: the mean of points 0 and 1
    plain, weighted = kl_terms(False), kl_terms(True)
    assert plain["kl_point"] == pytest.approx((sure + 2 * lean) / 3, rel=1e-5)
    assert plain["kl_voxel"] == pytest.approx((mixed + lean) / 2, rel=1e-5)
    # point 0 is labelled 1 (weight 0.5), point 1 labelled 2 (3), point 2 unlabelled: the teacher's top class 2 (3)
    assert weighted["kl_point"] == pytest.approx((0.5 * sure + 3 * lean + 3 * lean) / 6.5, rel=1e-5)
    # voxel 0's majority label is 1 (the 1-2 tie goes to the smaller id): 0.5; voxel 1 is unlabelled and the
    # teacher's top class there is 2: 3
    assert weighted["kl_voxel"] == pytest.approx((0.5 * mixed + 3 * lean) / 3.5, rel=1e-5)
