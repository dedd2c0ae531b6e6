"""The four PVKD distillation losses: pointwise and voxelwise KL, inter-point and inter-voxel affinity.

Teacher distributions always arrive as log-probabilities at temperature 1 (what the cache stores;
the online teacher gives ``log_softmax`` of its logits). The teacher side never takes a gradient:
every function here detaches it.

Output distillation (Hinton et al. 2015), per row (a point, or an occupied student voxel)::

    KL_T = T^2 * mean_rows sum_c p_t,c (log p_t,c - log p_s,c),    p = softmax(z / T)

The ``T^2`` factor keeps the gradient magnitudes comparable across temperatures: the gradient of
the unscaled KL w.r.t. the student logits, ``(p_s - p_t) / T``, shrinks as ``1 / T^2`` for large
``T`` (Hinton et al.).

Affinity distillation, inside a group ``k`` (a sampled supervoxel) of ``m_k`` points or voxels,
``S = [cos(f_i, f_j)]`` on each side::

    A_k = 1 / (m_k (m_k - 1)) * sum_{i != j} (S_s,ij - S_t,ij)^2,     A = mean_{k : m_k >= 2} A_k

The diagonal is left out: it is 1 on both sides whatever the features, so it would only dilute
the loss. Each side's matrix is ``m_k x m_k`` whatever its feature width: no adapter is needed.

Everything is computed in float32, autocast or not (a half-precision softmax or cosine matrix
loses exactly the small differences these losses measure).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch_scatter import scatter_mean

from pvkd.train.losses import IGNORE

# floor of the voxel probabilities before their log: float32's smallest normal number
# (log = -87.3), so a class no point of the voxel gives any mass stays finite
PROB_FLOOR = torch.finfo(torch.float32).tiny


def _no_autocast(device: torch.device):
    """Autocast off for ``device`` (matmuls would otherwise run in half precision)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def tempered(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities at temperature ``T`` from log-probabilities ``(M, C)`` at temperature 1.

    ``log_softmax(log p / T)``: since ``log softmax(z) = z - logsumexp(z)`` differs from ``z`` by a
    per-row constant, and softmax is invariant to per-row constants, ``softmax(z / T) ==
    softmax(log_softmax(z) / T)``. So the cache's ``T = 1`` log-probabilities serve every ``T``.
    Entries of ``-inf`` (probability 0) stay ``-inf``. Returns float32.
    """
    return F.log_softmax(logprobs.float() / temperature, dim=1)


def kl_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float,
                  teacher_tempered: bool = False, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * mean_rows KL(p_t || p_s)``, both distributions at temperature ``T``.

    With ``row_weights`` (M,) the mean is the weighted one, ``sum_m w_m KL_m / sum_m w_m`` (as a
    class-weighted cross-entropy averages; see :func:`class_row_weights`).

    ``student_logits`` (M, C) are raw logits; ``teacher_logprobs`` (M, C) are log-probabilities at
    temperature 1, tempered here with :func:`tempered` -- unless ``teacher_tempered``, which says
    they already are at temperature ``T`` (as :func:`voxel_teacher_logprobs` returns them) and are
    used as they are; the ``T^2`` factor applies either way. Teacher entries of probability 0
    contribute 0 (``0 log 0 = 0``), never NaN. The teacher is detached; the result is a float32
    scalar, 0 (attached to the student's graph) when ``M = 0``.
    """
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    with _no_autocast(student_logits.device):
        log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_pt = teacher_logprobs.detach().float()
        if not teacher_tempered:
            log_pt = tempered(log_pt, temperature)
        p_t = log_pt.exp()
        # where p_t = 0 (log_pt = -inf) the product would be 0 * -inf = NaN; its term is 0.
        # The gradient through the discarded branch is 0 * -p_t = 0: no NaN leaks backwards either.
        pointwise = torch.where(p_t > 0, p_t * (log_pt - log_ps), torch.zeros_like(p_t))
        rows = pointwise.sum(dim=1)
        if row_weights is None:
            mean = rows.mean()
        else:
            weights = row_weights.detach().float()
            mean = (rows * weights).sum() / weights.sum().clamp_min(1e-12)
        return mean * (temperature * temperature)


def class_row_weights(class_weights: torch.Tensor, labels: torch.Tensor,
                      teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Weights (M,) of KL rows: the class weight of each row's label, of the teacher's top class where unlabelled.

    ``class_weights`` (C,) are the segmentation loss's CE weights (0 for the ignored class);
    ``labels`` (M,) the rows' labels (:data:`~pvkd.train.losses.IGNORE` = unlabelled). Weighing
    the KL rows as the CE weighs its rows keeps the class balance the CE weights set: an
    unweighted KL, dominated by the frequent classes, pulls a student's rare classes back
    towards the frequent ones.
    """
    classes = torch.where(labels != IGNORE, labels, teacher_logprobs.argmax(dim=1))
    return class_weights[classes]


def voxel_teacher_logprobs(teacher_logprobs: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int,
                           temperature: float) -> torch.Tensor:
    """The teacher's distribution over each student voxel at temperature ``T``, as (V, C) log-probabilities.

    ``p_t(v) = mean_{n : point_to_voxel[n] = v} softmax(log p_t(n) / T)``: the mean of the
    teacher's tempered point distributions over the voxel's points. Working from points is what
    lets one point-level cache serve any student grid. The mean is floored at :data:`PROB_FLOOR`
    before the log. Already at temperature ``T``: pass it to :func:`kl_divergence` with
    ``teacher_tempered=True``. Every student voxel holds at least one point by construction; a
    voxel with none would get the (unnormalised) floor everywhere.
    """
    with _no_autocast(teacher_logprobs.device):
        probs = tempered(teacher_logprobs.detach(), temperature).exp()
        mean = scatter_mean(probs, point_to_voxel, dim=0, dim_size=num_voxels)
        return mean.clamp_min(PROB_FLOOR).log()


def cosine_affinity(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrices ``(K, n, n)`` of the rows of each group of ``features`` (K, n, F).

    ``S[k, i, j] = <f_ki, f_kj> / (|f_ki| |f_kj|)`` (``F.normalize``, eps 1e-12: a zero row has
    similarity 0 with everything, itself included); pairs where ``mask`` (K, n) is False on
    either side are 0. Float32.
    """
    with _no_autocast(features.device):
        unit = F.normalize(features.float(), dim=-1, eps=1e-12)
        similarity = unit @ unit.transpose(1, 2)
        pairs = mask[:, :, None] & mask[:, None, :]
        return similarity * pairs.to(similarity.dtype)


def affinity_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                  groups: torch.Tensor) -> torch.Tensor:
    """Mean over groups of the mean squared difference of the off-diagonal cosine similarities.

    ``student_features`` (N, Fs) and ``teacher_features`` (N, Ft) are rows of the same N
    elements (points or voxels; ``Fs`` and ``Ft`` may differ). ``groups`` (K, n) holds element
    rows, ``-1`` for padding. For each group, over its ordered pairs ``i != j`` of valid
    elements, ``mean (S_s,ij - S_t,ij)^2`` (the diagonal, always 1 on both sides, is excluded);
    the result is the mean over the groups with at least 2 valid elements, 0 (attached to the
    student's graph) when there is none. Fully vectorised; the teacher is detached; float32.
    """
    if groups.numel() == 0:
        return student_features.float().sum() * 0.0
    valid = groups >= 0
    rows = groups.clamp_min(0)
    with _no_autocast(student_features.device):
        s_s = cosine_affinity(student_features[rows], valid)
        s_t = cosine_affinity(teacher_features.detach()[rows], valid)
        n = groups.shape[1]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=groups.device)
        pairs = (valid[:, :, None] & valid[:, None, :] & off_diagonal).float()
        count = pairs.sum(dim=(1, 2))  # m_k (m_k - 1)
        per_group = ((s_s - s_t).square() * pairs).sum(dim=(1, 2)) / count.clamp_min(1.0)
        used = (count > 0).float()
        # no host sync: a batch without a usable group gives 0 * (attached sum) / 1
        return (per_group * used).sum() / used.sum().clamp_min(1.0)
