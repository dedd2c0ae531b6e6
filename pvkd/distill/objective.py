"""What a student minimises: its segmentation loss plus the four PVKD terms.

::

    L = L_seg                                         CE + Lovász on voxels, CE on the point head
      + alpha_p * KL_point                            point_weight: KL(teacher || student) per point
      + alpha_v * KL_voxel                            voxel_weight: the same per occupied student voxel
      + beta * (A_point + A_voxel)                    affinity_weight, inside K sampled supervoxels

The teacher side comes from the cache (``distill.mode: cached``; :mod:`pvkd.distill.cache`) or
from the frozen teacher run on the very same augmented batch (``online``, under no_grad; the
reference the cache is measured against). Either way it is per point, so the student may have
any backbone, width or grid: a student voxel's teacher distribution and teacher voxel feature
are the means over the voxel's points.

Supervoxels are blocks of ``distill.supervoxel.size`` cells of the student's grid; per scan,
``count`` of them are drawn without replacement with probability proportional to their
difficulty (:mod:`pvkd.distill.supervoxels`); the affinity terms compare cosine-similarity
matrices of up to ``points`` points and ``voxels`` voxels of each drawn block. Draws use torch's
default generator of the batch's device (CPU or CUDA), whose states the training checkpoints
carry, so a resumed run draws as the uninterrupted one would.

A term whose weight is 0 is not computed (the no-distillation baseline never touches the teacher).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch_scatter import scatter_mean

from pvkd.distill import losses, supervoxels
from pvkd.distill.cache import TeacherCache, teacher_targets
from pvkd.errors import ParamsError
from pvkd.models import SegOutput
from pvkd.shards import ProcessedData
from pvkd.train.config import section_fields
from pvkd.train.losses import IGNORE, SegmentationLoss, class_counts, voxel_labels

MODES = ("cached", "online")
SAMPLING = ("difficulty", "class", "distance", "uniform")
AFFINITY_TERMS = ("point", "voxel")
TARGETS = ("hard", "soft")


@dataclass(frozen=True)
class SupervoxelConfig:
    size: tuple[int, int, int]  # cells of the student grid per block
    count: int  # K blocks drawn per scan
    points: int  # N_p points kept per drawn block
    voxels: int  # N_v voxels kept per drawn block


@dataclass(frozen=True)
class UnlabelledConfig:
    """How a student learns from the scans of an unlabelled split (the teacher is all it has there)."""

    split: str | None  # processed split of unlabelled scans (in cache.splits); null = labelled scans only
    ratio: int  # unlabelled scans added to each step per labelled scan (the labelled ones stay the baseline's)
    target: str  # what the segmentation loss uses on unlabelled points: hard | soft
    threshold: float  # hard: points whose teacher confidence is below this are ignored
    weight: float  # weight of that segmentation loss on unlabelled points; 0 = only the PVKD terms see them


@dataclass(frozen=True)
class DistillConfig:
    """The ``distill`` params section (a student's own ``distill:`` merged over it)."""

    mode: str
    temperature: float
    kl_class_weights: bool
    point_weight: float
    voxel_weight: float
    affinity_weight: float
    affinity_terms: tuple[str, ...]
    sampling: str
    class_power: float
    distance_scale_m: float
    distance_power: float
    supervoxel: SupervoxelConfig
    unlabelled: UnlabelledConfig

    @classmethod
    def from_dict(cls, section: dict, where: str = "distill") -> DistillConfig:
        section = section_fields(cls, section, where)
        sv = section_fields(SupervoxelConfig, section["supervoxel"], f"{where}.supervoxel")
        sv["size"] = tuple(int(v) for v in sv["size"])
        un = section_fields(UnlabelledConfig, section["unlabelled"], f"{where}.unlabelled")
        un = {**un, "ratio": int(un["ratio"]), "threshold": float(un["threshold"]), "weight": float(un["weight"])}
        values = {**section, "supervoxel": SupervoxelConfig(**sv), "unlabelled": UnlabelledConfig(**un),
                  "kl_class_weights": bool(section["kl_class_weights"]),
                  "affinity_terms": tuple(section["affinity_terms"] or ())}
        for key in ("temperature", "point_weight", "voxel_weight", "affinity_weight", "class_power",
                    "distance_scale_m", "distance_power"):
            values[key] = float(values[key])
        cfg = cls(**values)
        problems = []
        if cfg.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {cfg.mode!r}")
        if cfg.sampling not in SAMPLING:
            problems.append(f"sampling must be one of {SAMPLING}, got {cfg.sampling!r}")
        if not set(cfg.affinity_terms) <= set(AFFINITY_TERMS):
            problems.append(f"affinity_terms must be among {list(AFFINITY_TERMS)}, got {list(cfg.affinity_terms)}")
        if cfg.temperature <= 0 or cfg.distance_scale_m <= 0:
            problems.append("temperature and distance_scale_m must be > 0")
        if min(cfg.point_weight, cfg.voxel_weight, cfg.affinity_weight) < 0:
            problems.append("the weights must be >= 0")
        if len(cfg.supervoxel.size) != 3 or min(cfg.supervoxel.size) < 1:
            problems.append("supervoxel.size must be three positive cell counts")
        if min(cfg.supervoxel.count, cfg.supervoxel.points, cfg.supervoxel.voxels) < 1:
            problems.append("supervoxel.count, points and voxels must be >= 1")
        un = cfg.unlabelled
        if un.target not in TARGETS:
            problems.append(f"unlabelled.target must be one of {TARGETS}, got {un.target!r}")
        if un.ratio < 0 or not 0 <= un.threshold <= 1 or un.weight < 0:
            problems.append("unlabelled: ratio must be >= 0, threshold in [0, 1], weight >= 0")
        if problems:
            raise ParamsError(f"{where}: " + "; ".join(problems))
        return cfg

    @property
    def uses_affinity(self) -> bool:
        return self.affinity_weight > 0 and bool(self.affinity_terms)

    @property
    def uses_kd(self) -> bool:
        """Whether any PVKD term is on."""
        return self.point_weight > 0 or self.voxel_weight > 0 or self.uses_affinity

    @property
    def uses_unlabelled(self) -> bool:
        """Whether the student trains on unlabelled scans: there is a split, a ratio, and something learns from it."""
        un = self.unlabelled
        return un.split is not None and un.ratio > 0 and (self.uses_kd or un.weight > 0)

    @property
    def uses_teacher(self) -> bool:
        return self.uses_kd or self.uses_unlabelled


@dataclass
class TeacherTargets:
    """The teacher's side of a batch, per student point (same order)."""

    logp: torch.Tensor  # (N, C) log-probabilities at temperature 1
    point_feature: torch.Tensor | None  # (N, d)
    voxel_feature: torch.Tensor | None  # (N, d): the feature of the teacher voxel holding the point


def cached_targets(cache: TeacherCache):
    """``batch -> TeacherTargets`` decoded from the cache records the batch carries (``batch.extras``)."""

    def targets(batch) -> TeacherTargets:
        decoded = cache.decode(batch.extras)
        return TeacherTargets(decoded["logp"], decoded.get("point_feature"), decoded.get("voxel_feature"))

    return targets


def online_targets(teacher: nn.Module):
    """``batch -> TeacherTargets`` from the frozen ``teacher`` run on the batch itself (the reference mode)."""
    for p in teacher.parameters():
        p.requires_grad_(False)

    def targets(batch) -> TeacherTargets:
        # the training step's autocast is already on: no second one here
        return TeacherTargets(*teacher_targets(teacher, batch, nullcontext))

    return targets


def train_rarity(data: ProcessedData, power: float) -> torch.Tensor:
    """The class term of the sampling, from the train split's voxel counts (:func:`supervoxels.class_rarity`)."""
    return supervoxels.class_rarity(class_counts(data.stats, "train", "voxels"), power)


class PVKDLoss(nn.Module):
    """The student's loss. ``teacher_targets(batch) -> TeacherTargets`` supplies the teacher's side.

    ``rarity`` (C,): the class term of the difficulty-aware sampling, from the train split's voxel
    frequencies (:func:`pvkd.distill.supervoxels.class_rarity`); ``grid_size``: the student's grid,
    on which the supervoxels are cut.
    """

    def __init__(self, cfg: DistillConfig, segmentation: SegmentationLoss, rarity: torch.Tensor,
                 grid_size: tuple[int, int, int], teacher_targets):
        super().__init__()
        self.cfg, self.segmentation, self.teacher_targets = cfg, segmentation, teacher_targets
        self.grid_size = tuple(int(s) for s in grid_size)
        self.register_buffer("rarity", rarity.float())

    def on_batch(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training engine's ``loss_fn``."""
        output = model(batch.points)
        unlabelled = batch.unlabelled_points()
        # the dataset already gives unlabelled scans label 0; masking again keeps any label off those points
        labels = batch.labels.masked_fill(unlabelled, IGNORE)
        loss, terms = self.segmentation(output, labels)
        if not self.cfg.uses_teacher:
            return loss, terms
        teacher = self.teacher_targets(batch)
        extra = {}
        if self.cfg.uses_unlabelled:
            top_logp, top = teacher.logp.max(dim=1)
            extra = self.unlabelled_terms(output, teacher, top_logp, top, unlabelled)
            # the teacher's top class stands in for the missing labels (supervoxel rarity, KL class weights)
            labels = torch.where(unlabelled, top, labels)
        extra |= self.distillation_terms(output, teacher, batch, labels)
        return loss + sum(extra.values()), {**terms, **extra}

    def unlabelled_terms(self, output: SegOutput, teacher: TeacherTargets, top_logp: torch.Tensor,
                         top: torch.Tensor, unlabelled: torch.Tensor) -> dict[str, torch.Tensor]:
        """The segmentation loss on the points of unlabelled scans (whole, or the bands a LaserMix took from
        them), against the teacher (``distill.unlabelled``).

        hard: the teacher's top class as the label where its probability reaches ``threshold``
        (ignored below), through the whole segmentation loss (class-weighted CE and Lovász on the
        voxels, CE on the points) as a labelled scan's labels are. soft: the teacher's
        distribution itself, as KL(teacher || student) on the points and on the voxels of unlabelled
        scans at T = 1, each row weighed by the CE class weight of the teacher's top class (a
        class-weighted soft cross-entropy). 0, attached, on a batch without unlabelled points.
        ``top_logp``, ``top`` (N,): the teacher's top class and its log-probability per point.
        """
        un, seg = self.cfg.unlabelled, self.segmentation
        if un.target == "hard":
            confident = unlabelled & (top_logp >= math.log(max(un.threshold, 1e-12)))
            total, _ = seg(output, torch.where(confident, top, torch.full_like(top, IGNORE)))
            return {"unlabelled_seg": un.weight * total}
        num_voxels = output.voxel_logits.shape[0]
        voxel_unlabelled = torch.zeros(num_voxels, dtype=torch.bool, device=unlabelled.device)
        # any unlabelled point marks its voxel (at a LaserMix band edge a voxel may also hold labelled points)
        voxel_unlabelled[output.point_to_voxel[unlabelled]] = True
        voxel_target = losses.voxel_teacher_logprobs(teacher.logp, output.point_to_voxel, num_voxels, 1.0)
        point_rows = _class_weight(seg.point_weights, top) * unlabelled
        voxel_rows = _class_weight(seg.voxel_weights, voxel_target.argmax(dim=1)) * voxel_unlabelled
        point = losses.kl_divergence(output.point_logits, teacher.logp, 1.0, row_weights=point_rows)
        voxel = losses.kl_divergence(output.voxel_logits, voxel_target, 1.0, teacher_tempered=True,
                                     row_weights=voxel_rows)
        return {"unlabelled_seg": un.weight * (point + voxel)}

    def distillation_terms(self, output: SegOutput, teacher: TeacherTargets, batch,
                           labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted PVKD terms that have a non-zero weight, over every point of the batch.

        ``labels`` (N,): the points' labels, where a scan has none the teacher's top class
        (default ``batch.labels``); they weigh KL rows (``kl_class_weights``) and the supervoxels'
        class rarity."""
        cfg, terms = self.cfg, {}
        point_labels = batch.labels if labels is None else labels
        temperature = cfg.temperature
        point_class_weights, voxel_class_weights = self.segmentation.point_weights, self.segmentation.voxel_weights
        weighted = cfg.kl_class_weights and point_class_weights is not None
        num_voxels = output.voxel_logits.shape[0]
        # majority label per student voxel: weighs voxel KL rows and the supervoxels' class rarity
        labels = None
        if (weighted and cfg.voxel_weight > 0) or cfg.uses_affinity:
            labels = voxel_labels(point_labels, output.point_to_voxel, num_voxels, self.segmentation.num_classes)
        if cfg.point_weight > 0:
            rows = losses.class_row_weights(point_class_weights, point_labels, teacher.logp) if weighted else None
            terms["kl_point"] = cfg.point_weight * losses.kl_divergence(
                output.point_logits, teacher.logp, temperature, row_weights=rows
            )
        if cfg.voxel_weight > 0:
            target = losses.voxel_teacher_logprobs(teacher.logp, output.point_to_voxel, num_voxels, temperature)
            rows = losses.class_row_weights(voxel_class_weights, labels, target) if weighted else None
            terms["kl_voxel"] = cfg.voxel_weight * losses.kl_divergence(
                output.voxel_logits, target, temperature, teacher_tempered=True, row_weights=rows
            )
        if cfg.uses_affinity:
            if teacher.point_feature is None:
                raise ParamsError("distill.affinity_weight > 0 needs teacher features: set cache.feature_dim > 0 "
                                  "and re-run cache-logits, or use distill.mode online")
            point_groups, voxel_groups = self.sample_groups(output, batch, labels)
            if "point" in cfg.affinity_terms:
                terms["affinity_point"] = cfg.affinity_weight * losses.affinity_loss(
                    output.point_features, teacher.point_feature, point_groups
                )
            if "voxel" in cfg.affinity_terms:
                teacher_voxels = scatter_mean(teacher.voxel_feature, output.point_to_voxel, dim=0,
                                              dim_size=output.voxel_features.shape[0])
                terms["affinity_voxel"] = cfg.affinity_weight * losses.affinity_loss(
                    output.voxel_features, teacher_voxels, voxel_groups
                )
        return terms

    def sample_groups(self, output: SegOutput, batch, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw K supervoxels per scan by ``distill.sampling``; the points and voxels kept in each.

        ``labels`` (V,): the majority label of each student voxel."""
        cfg, sv = self.cfg, self.cfg.supervoxel
        coords = output.voxel_coords
        block_of_voxel = supervoxels.block_index(coords, self.grid_size, sv.size)
        per_scan = supervoxels.blocks_per_scan(self.grid_size, sv.size)
        batch_size = batch.points.batch_size
        planar_range = batch.points.xyz[:, :2].norm(dim=1)
        voxel_range = scatter_mean(planar_range, output.point_to_voxel, dim=0, dim_size=coords.shape[0])
        weights = supervoxels.block_weights(
            block_of_voxel, batch_size * per_scan, labels, voxel_range, self.rarity, cfg.sampling,
            cfg.distance_scale_m, cfg.distance_power,
        )
        chosen = supervoxels.sample_blocks(weights.reshape(batch_size, per_scan), sv.count, None)
        point_groups = supervoxels.group_members(block_of_voxel[output.point_to_voxel], chosen, sv.points, None)
        voxel_groups = supervoxels.group_members(block_of_voxel, chosen, sv.voxels, None)
        return point_groups, voxel_groups


def _class_weight(weights: torch.Tensor | None, classes: torch.Tensor) -> torch.Tensor:
    """The CE class weight of each class id (1 where the loss is unweighted)."""
    return weights[classes] if weights is not None else torch.ones(classes.shape, device=classes.device)
