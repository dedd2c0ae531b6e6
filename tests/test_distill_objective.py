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


# two scans of two points: scan 0 labelled (labels 1, 2), scan 1 from an unlabelled split whose batch still
# carries ground truth (1, 1) -- as if it had leaked from disk; the teacher says class 2 there, surely on point 2
# (0.9) and hesitantly on point 3 (0.5). Points 0 and 1 share voxel 0; points 2 and 3 have voxels 1 and 2.
TEACHER = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.05, 0.05, 0.9], [0.2, 0.3, 0.5]]).log()
STUDENT_LOGITS = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])


def unlabelled_batch():
    output = SimpleNamespace(point_logits=STUDENT_LOGITS.clone(), voxel_logits=torch.zeros(3, 3),
                             point_to_voxel=torch.tensor([0, 0, 1, 2]))
    batch = SimpleNamespace(points=None, labels=torch.tensor([1, 2, 1, 1]),
                            unlabelled_points=lambda: torch.tensor([False, False, True, True]))
    return output, batch


def unlabelled_loss(target: str, threshold: float = 0.0, weight: float = 2.0, point_weight: float = 1.0):
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    cfg = DistillConfig.from_dict({**section, "point_weight": point_weight, "voxel_weight": 0.0,
                                   "affinity_weight": 0.0, "unlabelled": {
                                       "split": "unlabelled", "ratio": 1, "target": target,
                                       "threshold": threshold, "weight": weight}})
    segmentation = SegmentationLoss(LossConfig(1.0, 1.0, 1.0, 0.0), 3)
    output, batch = unlabelled_batch()
    loss = PVKDLoss(cfg, segmentation, torch.ones(3), (4, 4, 4), lambda b: TeacherTargets(TEACHER, None, None))
    total, terms = loss.on_batch(lambda points: output, batch)
    return total, terms, segmentation, output


def test_unlabelled_points_learn_the_teachers_top_class_never_a_label_on_disk():
    total, terms, segmentation, output = unlabelled_loss("hard")
    labelled, _ = segmentation(output, torch.tensor([1, 2, 0, 0]))
    teachers, _ = segmentation(output, torch.tensor([0, 0, 2, 2]))
    leaked, _ = segmentation(output, torch.tensor([0, 0, 1, 1]))
    assert terms["voxel_ce"] + terms["voxel_lovasz"] + terms["point_ce"] == pytest.approx(labelled.item(), rel=1e-6)
    assert terms["unlabelled_seg"].item() == pytest.approx(2.0 * teachers.item(), rel=1e-6)
    assert teachers.item() != pytest.approx(leaked.item(), rel=1e-3)  # the ground truth would have given another
    # the point KL covers all four points, labelled or not
    kl = (TEACHER.exp() * (TEACHER - torch.log_softmax(STUDENT_LOGITS, 1))).sum(1).mean()
    assert terms["kl_point"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert total.item() == pytest.approx(labelled.item() + 2.0 * teachers.item() + kl.item(), rel=1e-5)


def test_a_confidence_threshold_drops_the_unsure_pseudo_labels():
    _, terms, segmentation, output = unlabelled_loss("hard", threshold=0.7)
    sure_only, _ = segmentation(output, torch.tensor([0, 0, 2, 0]))  # point 3's teacher is at 0.5 < 0.7
    assert terms["unlabelled_seg"].item() == pytest.approx(2.0 * sure_only.item(), rel=1e-6)


def test_soft_targets_are_the_teachers_distribution_on_unlabelled_points_and_voxels():
    _, terms, _, output = unlabelled_loss("soft", weight=1.0)
    log_ps = torch.log_softmax(STUDENT_LOGITS, 1)
    point = (TEACHER.exp() * (TEACHER - log_ps)).sum(1)[2:].mean()
    # voxels 1 and 2 hold one unlabelled point each; the student's voxel logits are uniform
    voxel = (TEACHER.exp() * (TEACHER - math.log(1 / 3))).sum(1)[2:].mean()
    assert terms["unlabelled_seg"].item() == pytest.approx((point + voxel).item(), rel=1e-5)


def test_a_student_without_teacher_terms_or_unlabelled_weight_ignores_the_unlabelled_split():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    unlabelled = {**section["unlabelled"], "split": "unlabelled"}
    baseline = DistillConfig.from_dict({**section, "point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0,
                                        "unlabelled": {**unlabelled, "weight": 0.0}})
    pseudo = DistillConfig.from_dict({**section, "point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0,
                                      "unlabelled": unlabelled})
    assert not baseline.uses_teacher and not baseline.uses_unlabelled
    assert pseudo.uses_unlabelled and pseudo.uses_teacher and not pseudo.uses_kd
