"""Segmentation scores by the official rules of SemanticKITTI and nuScenes-lidarseg.

One confusion matrix is accumulated over every scan of a split (never an average of per-scan
IoUs), **rows = prediction, columns = ground truth**, then scored by the dataset's rules:

* ``semantickitti`` (the dataset's ``evaluate_semantics.py``): the ground-truth column of
  class 0 is zeroed, so points labelled 0 are ignored whatever was predicted, while a
  prediction of 0 on a labelled point stays a miss (a false negative) of its class;
  ``IoU_c = TP / (TP + FP + FN + 1e-15)``, so a class absent from both prediction and ground
  truth scores 0; mIoU = mean over classes 1..C-1; accuracy = correct / points predicted as
  classes 1..C-1 (the official ``getacc``).
* ``nuscenes`` (nuscenes-devkit's lidarseg evaluation): row *and* column of class 0 zeroed;
  ``IoU_c = TP / (TP + FP + FN)``, NaN where that is 0/0; mIoU = ``nanmean`` over 1..C-1.

IoU is symmetric in FP and FN, so the devkit's transposed layout gives the same numbers.
Models must never predict 0: :func:`predict` takes the arg-max over classes 1..C-1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

RULES = ("semantickitti", "nuscenes")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, ``[pred, target]``; labels outside 0..C-1 are an error, not dropped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predictions outside 0..{num_classes - 1}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    counts = torch.bincount(pred * num_classes + target, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Arg-max over classes 1..C-1: class 0 (ignored) is never predicted."""
    return logits[:, 1:].argmax(dim=1) + 1


def _apply_rules(confusion, rules: str) -> np.ndarray:
    if rules not in RULES:
        raise ValueError(f"rules must be one of {RULES}, got {rules!r}")
    conf = np.array(confusion, dtype=np.float64)  # a copy: the caller's matrix is left as it is
    conf[:, 0] = 0
    if rules == "nuscenes":
        conf[0, :] = 0
    return conf


def iou_per_class(confusion, rules: str) -> np.ndarray:
    """(C,) IoU of every class by ``rules``; entry 0 (the ignored class) is NaN."""
    conf = _apply_rules(confusion, rules)
    tp = np.diag(conf)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    if rules == "semantickitti":
        iou = tp / (tp + fp + fn + 1e-15)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (tp + fp + fn)
    iou[0] = np.nan
    return iou


@dataclass(frozen=True)
class Scores:
    """mIoU, per-class IoU and accuracy of one confusion matrix under one dataset's rules."""

    miou: float
    iou: tuple[float, ...]  # per class, index 0 (ignored) is NaN
    accuracy: float
    class_names: tuple[str, ...]

    def per_class(self) -> dict[str, float]:
        """Class name -> IoU for classes 1..C-1."""
        return dict(zip(self.class_names[1:], self.iou[1:]))

    def as_dict(self) -> dict:
        return {"miou": self.miou, "accuracy": self.accuracy, "iou": self.per_class()}


def scores(confusion, rules: str, class_names: Iterable[str]) -> Scores:
    """Score a confusion matrix (rows = prediction, columns = ground truth) by ``rules``."""
    iou = iou_per_class(confusion, rules)
    if rules == "nuscenes":  # NaN (no class seen at all) rather than numpy's empty-slice warning
        miou = float(np.nanmean(iou[1:])) if not np.isnan(iou[1:]).all() else float("nan")
    else:
        miou = float(iou[1:].mean())
    conf = _apply_rules(confusion, rules)
    accuracy = float(np.trace(conf[1:, 1:]) / (conf[1:].sum() + 1e-15))
    return Scores(miou=miou, iou=tuple(float(v) for v in iou), accuracy=accuracy, class_names=tuple(class_names))



HEADS = ("point", "voxel")


def head_logits(output, head: str) -> torch.Tensor:
    """Per-point logits of one head of a :class:`~pvkd.models.SegOutput`: the point head's own, or the
    logits of each point's voxel (how Cylinder3D labels points)."""
    if head == "point":
        return output.point_logits
    if head == "voxel":
        return output.voxel_logits[output.point_to_voxel]
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


@torch.no_grad()
def split_confusion(model, batches: Iterable, num_classes: int, device, heads=HEADS) -> dict[str, torch.Tensor]:
    """One confusion matrix per head over every batch (``.points``, ``.labels``) of a split, on ``device``.

    The model is run as it is (call ``model.eval()`` first); several processes each pass their
    share of the split and sum the matrices (:func:`pvkd.train.distributed.all_reduce_sum`).
    """
    total = {head: torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) for head in heads}
    for batch in batches:
        batch = batch.to(device)
        output = model(batch.points)
        for head in heads:
            total[head] += confusion_matrix(predict(head_logits(output, head)), batch.labels, num_classes)
    return total
