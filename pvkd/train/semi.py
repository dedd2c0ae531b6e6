"""Mean-teacher semi-supervised training with LaserMix (Kong et al., CVPR 2023), for the teacher or any student.

The anchor's recipe for label-scarce LiDAR segmentation (``train.semi``), written for pvkd's engine:

* **Batches.** Each step holds the ``batch_size`` labelled scans the supervised run would see, then
  ``ratio x batch_size`` unlabelled scans *added* after them (:class:`pvkd.train.data.RunBatchSampler`).
* **Mixes.** Unlabelled scan ``u_j`` is paired with labelled scan ``l_(j mod B)``. The sensor's fixed
  pitch range (``train.augment.lasermix.pitch_deg``) is cut into ``k`` equal inclination bands, ``k``
  drawn per pair from ``semi.bands``; with ``mixed_scans: 2`` the pair makes both complements (``l``'s
  even bands with ``u``'s odd ones, and ``l``'s odd with ``u``'s even), with 1 one of them, drawn per
  pair. :class:`SemiCollate` plans them (rows of the batch) in the loader, from (seed, epoch, pair),
  so a resumed run draws the same mixes.
* **Pseudo-labels.** The mean teacher (:class:`MeanTeacher`, the exponential moving average of the
  model) labels the unlabelled scans: the argmax of its point head, ignored below ``threshold``
  confidence. No label on disk of an unlabelled scan is read (the dataset gives them as 0).
* **Loss** (:class:`SemiSupervisedLoss`), one forward of the model over [labelled scans; mixed scans]::

      seg(labelled scans) + mix_weight * seg(mixed scans: ground truth on l's points, pseudo-labels on u's)
        + consistency_weight * MSE(softmax(model), softmax(mean teacher)) on u's points of the mixed scans

  ``seg`` is the supervised segmentation loss (voxel CE + Lovász, point CE); the two parts are scored
  on the same output with the other part's labels ignored. One difference from the anchor, on purpose:
  its consistency term compares the model and the teacher on the *unmixed* scans, which costs one more
  forward of the model per step; here the model's predictions on the unlabelled points *inside the
  mixes* are held to the teacher's on the plain unlabelled scan (no extra forward, and LaserMix's
  point: a point's prediction should not depend on the bands around it). Labelled points get no
  consistency term. The released configs weight the mixed loss 1 and the consistency 250 (SemanticKITTI)
  or 500 (nuScenes); params.yaml keeps the study's 2 and 200, the full-size profiles the released values.
* **Mean teacher.** After every optimizer step ``theta_T <- d theta_T + (1 - d) theta``. With
  ``ema_buffers: own`` (the anchor's) its BatchNorm statistics are not averaged: it runs in train mode
  on the unlabelled scans (batch statistics) and keeps its own running statistics from those passes.
  ``export: ema`` validates, keeps and exports the mean teacher's weights, as the anchor evaluates it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pvkd.models import PointBatch
from pvkd.train.config import SemiConfig, TrainConfig
from pvkd.train.data import TrainBatch, collate
from pvkd.train.engine import SemiTraining
from pvkd.train.losses import IGNORE
from pvkd.train.mix import pitch_band

SEMI_STREAM = 4  # the random stream of the mixes (after pvkd.train.data's streams 0-3)


class MeanTeacher:
    """The exponential moving average of a model's weights (and, with ``buffers: average``, of its buffers)."""

    def __init__(self, model: nn.Module, decay: float, buffers: str = "own"):
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.decay, self.buffers = float(decay), buffers

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``theta_T <- decay * theta_T + (1 - decay) * theta`` for every parameter (and float buffer if averaged)."""
        for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True):
            mine.mul_(self.decay).add_(theirs.detach(), alpha=1 - self.decay)
        if self.buffers == "average":
            for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
                if mine.is_floating_point():
                    mine.mul_(self.decay).add_(theirs, alpha=1 - self.decay)
                else:
                    mine.copy_(theirs)

    @torch.no_grad()
    def predict(self, points: PointBatch):
        # own buffers: BN on the batch's statistics, updating the teacher's running ones (the anchor's teacher).
        # Only BN: dropout (SPVCNN's) stays off, or the pseudo-labels and their confidences would be noisy draws
        self.model.train(self.buffers == "own")
        for module in self.model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        return self.model(points)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class SemiCollate:
    """``collate`` plus the plan of the LaserMix of each labelled x unlabelled pair (``TrainBatch.mix_rows``).

    A picklable callable for the data loader: the plan is drawn from (seed, epoch, labelled position,
    unlabelled position), whichever worker or process collates the batch."""

    def __init__(self, cfg: SemiConfig, pitch_deg: tuple[float, float], seed: int):
        self.cfg, self.pitch_deg, self.seed = cfg, tuple(pitch_deg), int(seed)

    def __call__(self, samples: list[dict]) -> TrainBatch:
        batch = collate(samples)
        kinds = [bool(s["labelled"].all()) for s in samples]
        labelled = [i for i, k in enumerate(kinds) if k]
        unlabelled = [i for i, k in enumerate(kinds) if not k]
        starts = np.cumsum([0] + [len(s["label"]) for s in samples])
        rows, scans = [], []
        for j, u in enumerate(unlabelled):
            if not labelled:
                break
            lab = labelled[j % len(labelled)]
            rng = np.random.default_rng([self.seed, SEMI_STREAM, samples[u]["epoch"], samples[lab]["position"],
                                         samples[u]["position"]])
            count = int(rng.choice(self.cfg.bands))
            band_l = pitch_band(samples[lab]["xyz"], count, self.pitch_deg) % 2
            band_u = pitch_band(samples[u]["xyz"], count, self.pitch_deg) % 2
            parities = (0, 1) if self.cfg.mixed_scans == 2 else (int(rng.integers(2)),)
            for parity in parities:  # l's bands of this parity, u's of the other
                mixed = np.concatenate([starts[lab] + np.flatnonzero(band_l == parity),
                                        starts[u] + np.flatnonzero(band_u != parity)])
                rows.append(mixed)
                scans.append(np.full(len(mixed), len(rows) - 1))
        batch.mix_rows = torch.from_numpy(np.concatenate(rows or [np.empty(0, np.int64)]).astype(np.int64))
        batch.mix_scans = torch.from_numpy(np.concatenate(scans or [np.empty(0, np.int64)]).astype(np.int64))
        return batch


class SemiSupervisedLoss(nn.Module):
    """The engine's ``loss_fn`` for semi-supervised training around a segmentation loss (see the module docstring).

    ``segmentation(output, labels) -> (loss, terms)`` is the supervised loss (it ignores label 0)."""

    def __init__(self, segmentation: nn.Module, cfg: SemiConfig, teacher: MeanTeacher):
        super().__init__()
        self.segmentation, self.cfg, self.teacher = segmentation, cfg, teacher

    def on_batch(self, model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        points, cfg = batch.points, self.cfg
        scan_labelled = torch.zeros(points.batch_size, dtype=torch.bool, device=points.batch.device)
        scan_labelled[points.batch] = batch.labelled.to(points.batch.device)
        labelled_rows = torch.nonzero(scan_labelled[points.batch]).squeeze(1)
        unlabelled_rows = torch.nonzero(~scan_labelled[points.batch]).squeeze(1)
        num_labelled = int(scan_labelled.sum())

        # 1. the mean teacher's pseudo-labels on the unlabelled scans (their scans renumbered from 0)
        teacher_input = PointBatch(points.xyz[unlabelled_rows], points.intensity[unlabelled_rows],
                                   _renumber(points.batch[unlabelled_rows]), points.batch_size - num_labelled)
        teacher_logits = self.teacher.predict(teacher_input).point_logits.float()
        teacher_probs = teacher_logits.softmax(dim=1)
        confidence, pseudo = teacher_probs.max(dim=1)
        targets = batch.labels.clone()  # ground truth on labelled points; unlabelled points start at 0
        targets[unlabelled_rows] = torch.where(confidence >= cfg.threshold, pseudo, torch.zeros_like(pseudo))

        # 2. one forward over [labelled scans; mixed scans]
        mix_rows, mix_scans = batch.mix_rows.to(points.batch.device), batch.mix_scans.to(points.batch.device)
        rows = torch.cat([labelled_rows, mix_rows])
        student_input = PointBatch(points.xyz[rows], points.intensity[rows],
                                   torch.cat([points.batch[labelled_rows], num_labelled + mix_scans]),
                                   num_labelled + (int(mix_scans.max()) + 1 if len(mix_scans) else 0))
        output = model(student_input)

        # 3. the two parts on the same output, each with the other's labels ignored
        n_sup = len(labelled_rows)
        ignore = torch.full_like(rows, IGNORE)
        supervised = torch.cat([targets[labelled_rows], ignore[n_sup:]])
        mixed = torch.cat([ignore[:n_sup], targets[mix_rows]])
        sup_loss, sup_terms = self.segmentation(output, supervised)
        mix_loss, mix_terms = self.segmentation(output, mixed)

        # 4. consistency on the unlabelled points of the mixed scans: the model in the mix vs the teacher alone
        teacher_row = torch.full((points.num_points,), -1, dtype=torch.long, device=rows.device)
        teacher_row[unlabelled_rows] = torch.arange(len(unlabelled_rows), device=rows.device)
        from_unlabelled = teacher_row[mix_rows] >= 0
        student_probs = output.point_logits.float()[n_sup:][from_unlabelled].softmax(dim=1)
        target_probs = teacher_probs[teacher_row[mix_rows][from_unlabelled]]
        consistency = (F.mse_loss(student_probs, target_probs) if len(target_probs)
                       else output.point_logits.sum() * 0.0)  # no unlabelled point: 0, still in the graph

        terms = {f"sup_{k}": v for k, v in sup_terms.items()}
        terms |= {f"mix_{k}": cfg.mix_weight * v for k, v in mix_terms.items()}
        terms["consistency"] = cfg.consistency_weight * consistency
        terms["pseudo_label_share"] = (targets[unlabelled_rows] != IGNORE).float().mean().detach() if len(
            unlabelled_rows) else consistency.detach() * 0
        total = sup_loss + cfg.mix_weight * mix_loss + terms["consistency"]
        return total, terms


def _renumber(batch_index: torch.Tensor) -> torch.Tensor:
    """Scan ids made consecutive from 0, in order (the rows of a scan stay together)."""
    return torch.unique_consecutive(batch_index, return_inverse=True)[1]


def semi_supervised(cfg: TrainConfig, model: nn.Module,
                    segmentation: nn.Module) -> tuple[SemiSupervisedLoss, SemiTraining]:
    """The loss and the engine's part of ``cfg.semi`` for ``model`` (its mean teacher starts as a copy of it)."""
    teacher = MeanTeacher(model, cfg.semi.ema_decay, cfg.semi.ema_buffers)
    collate_fn = SemiCollate(cfg.semi, cfg.augment.lasermix.pitch_deg, cfg.seed)
    return SemiSupervisedLoss(segmentation, cfg.semi, teacher), SemiTraining(teacher, collate_fn, cfg.semi.export)


def describe_semi(cfg: SemiConfig, train_set) -> str:
    """One line for the stage's start: what the semi-supervised recipe adds."""
    return (f"semi-supervised: {train_set.count(cfg.split)} unlabelled scans of {cfg.split!r} ({cfg.ratio} per "
            f"labelled scan), mean teacher (decay {cfg.ema_decay}), LaserMix x{cfg.mixed_scans} weight "
            f"{cfg.mix_weight}, consistency {cfg.consistency_weight}, pseudo-labels >= {cfg.threshold}")
