"""The segmentation loss: cross-entropy and Lovász-softmax on the voxels, cross-entropy on the point head.

Everything stays sparse: voxel terms run over the occupied voxels only (the rows of the
model's voxel logits), each labelled with the majority label of its points.

Lovász-softmax (Berman, Rannen Triki, Blaschko, CVPR 2018). For class ``c`` and the ``n``
elements (voxels) at hand, the Jaccard loss of a set ``M`` of mispredicted elements is::

    Delta_c(M) = 1 - |G_c \\ M| / |G_c ∪ M|,        G_c = {i : y_i = c}

a submodular set function. Its Lovász extension, evaluated at the vector of errors
``m_i = |[y_i = c] - p_i(c)|`` (``p`` the softmax probabilities), is the convex surrogate::

    loss_c(m) = sum_k m_(k) * (Delta_c({(1)..(k)}) - Delta_c({(1)..(k-1)}))

with ``m_(1) >= m_(2) >= ...`` the errors sorted in decreasing order. Lovász-softmax is the
mean of ``loss_c`` over the classes present in the labels. The differences of ``Delta_c`` along
the sorted order (the extension's gradient) have a closed form from two cumulative sums,
:func:`lovasz_gradient`; ``tests/test_train_losses.py`` checks the whole against a brute-force
evaluation of the extension (the Choquet integral ``∫_0^1 Delta_c({i : m_i >= t}) dt``, and
the maximum over all orderings).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pvkd.models import SegOutput
from pvkd.shards import ProcessedData
from pvkd.train.config import LossConfig

IGNORE = 0


def lovasz_gradient(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Differences of the Jaccard loss along the sorted errors, per column.

    ``fg_sorted`` (n, C): 1 where the ``k``-th largest error of class ``c`` is on an element of
    class ``c``. With ``M_k`` the ``k`` largest errors: ``|G \\ M_k| = |G| - cumsum(fg)`` and
    ``|G ∪ M_k| = |G| + cumsum(1 - fg)``; returns ``Delta(M_k) - Delta(M_{k-1})``.
    """
    total = fg_sorted.sum(0, keepdim=True)
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Lovász-softmax of (n, C) probabilities against (n,) labels: mean over the classes present.

    Elements labelled ``ignore_index`` are left out; with no labelled element the loss is 0
    (still attached to the graph, so every parameter keeps a gradient).
    """
    keep = labels != ignore_index
    # at least float32: sorting and cumulative sums in half precision lose the small errors
    probs, labels = probs[keep].to(torch.promote_types(probs.dtype, torch.float32)), labels[keep]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    fg = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    errors = (fg - probs).abs()
    errors_sorted, order = errors.sort(dim=0, descending=True)
    per_class = (errors_sorted * lovasz_gradient(fg.gather(0, order))).sum(0)
    present = fg.sum(0) > 0
    return per_class[present].mean()


def voxel_labels(point_labels: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int, num_classes: int):
    """Majority label of each voxel's points (ties to the smaller id); 0 where no point is labelled.

    Labels 0 do not vote. One bincount over ``voxel * C + label`` (the same rule as the
    preprocess stats, :func:`pvkd.preprocess.voxel_majority`).
    """
    votes = torch.bincount(point_to_voxel * num_classes + point_labels, minlength=num_voxels * num_classes)
    votes = votes.reshape(num_voxels, num_classes)
    votes[:, IGNORE] = 0
    # argmax returns the first maximum: ties go to the smaller id; all-zero rows (unlabelled) to 0
    return votes.argmax(dim=1)


def class_counts(stats: pd.DataFrame, split: str, unit: str) -> np.ndarray:
    """(C,) float64 counts of ``unit`` (points | voxels) per class id in ``split``, from the preprocess stats."""
    return stats[stats["split"] == split].groupby("class_id")[unit].sum().sort_index().to_numpy(dtype=np.float64)


def class_weights(stats: pd.DataFrame, split: str, unit: str, power: float) -> torch.Tensor:
    """CE weights ``w_c ∝ f_c ** -power`` from the preprocess stats (``unit``: points | voxels).

    ``f_c`` is class ``c``'s share of the labelled ``unit``s of ``split``; the weights are scaled
    so a labelled element weighs 1 on average (sum_c f_c w_c = 1). The ignored class and
    classes absent from the split get 0.
    """
    counts = class_counts(stats, split, unit)
    counts[IGNORE] = 0
    share = counts / counts.sum()
    weights = np.zeros_like(share)
    present = share > 0
    weights[present] = share[present] ** -power
    weights /= (share * weights).sum()
    return torch.tensor(weights, dtype=torch.float32)


class SegmentationLoss(torch.nn.Module):
    """``voxel_ce * CE(voxels) + voxel_lovasz * Lovász(voxels) + point_ce * CE(points)``.

    Returns the total and each weighted term. Every term is always computed (a zero weight
    multiplies it) so all parameters take part in the graph, as DDP requires.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, point_weights=None, voxel_weights=None):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.register_buffer("point_weights", point_weights)
        self.register_buffer("voxel_weights", voxel_weights)

    @classmethod
    def for_data(cls, cfg: LossConfig, data: ProcessedData, split: str = "train") -> SegmentationLoss:
        """The loss for a processed dataset: its classes, and CE class weights from the stats of ``split``."""
        num_classes, power = int(data.meta["num_classes"]), cfg.class_weight_power
        if power <= 0:
            return cls(cfg, num_classes)
        stats = data.stats
        return cls(cfg, num_classes, class_weights(stats, split, "points", power),
                   class_weights(stats, split, "voxels", power))

    def forward(self, output: SegOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        voxel_logits = output.voxel_logits.float()
        targets = voxel_labels(labels, output.point_to_voxel, voxel_logits.shape[0], self.num_classes)
        terms = {
            "voxel_ce": self.cfg.voxel_ce * _cross_entropy(voxel_logits, targets, self.voxel_weights),
            "voxel_lovasz": self.cfg.voxel_lovasz * lovasz_softmax(voxel_logits.softmax(dim=1), targets),
            "point_ce": self.cfg.point_ce * _cross_entropy(output.point_logits.float(), labels, self.point_weights),
        }
        return sum(terms.values()), terms

    def on_batch(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The engine's ``loss_fn``: run ``model`` on a :class:`~pvkd.train.data.TrainBatch`, score its labels."""
        return self(model(batch.points), batch.labels)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean CE over the labelled elements (weighted mean with ``weight``, as torch's); 0 when none is
    labelled, where torch's mean would be 0/0. No host sync: the denominator stays a tensor."""
    total = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE, reduction="sum")
    labelled = (labels != IGNORE).to(logits.dtype)
    count = (labelled * weight[labels]).sum() if weight is not None else labelled.sum()
    return total / count.clamp_min(1e-12)
