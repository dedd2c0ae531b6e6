"""Lovász-softmax against brute-force evaluations of the Lovász extension; voxel labels, CE, class weights."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from pvkd.grid import Grid
from pvkd.models import build_model
from pvkd.models.macs import synthetic_scan
from pvkd.preprocess import voxel_majority
from pvkd.train.config import LossConfig
from pvkd.train.losses import SegmentationLoss, class_weights, lovasz_softmax, voxel_labels


def jaccard_loss(fg: set, mispredicted: set) -> float:
    """Delta_c(M) = 1 - |G \\ M| / |G ∪ M| straight from the sets."""
    union = fg | mispredicted
    return 1.0 - len(fg - mispredicted) / len(union) if union else 0.0


def lovasz_by_choquet_integral(errors: np.ndarray, fg: set) -> float:
    """The Lovász extension as the integral over t in [0, 1] of Delta({i : m_i >= t}), piecewise exactly."""
    levels = np.unique(np.concatenate([[0.0], errors]))
    total = 0.0
    for low, high in zip(levels[:-1], levels[1:]):
        total += (high - low) * jaccard_loss(fg, {i for i, m in enumerate(errors) if m >= high})
    return total


def lovasz_by_max_over_orderings(errors: np.ndarray, fg: set) -> float:
    """For a submodular set function with f(empty) = 0, its Lovász extension is the greedy (sorted) sum, which
    is the maximum over every ordering of sum_k m_pi(k) (f(first k) - f(first k-1)) (Edmonds' greedy theorem)."""
    best = -np.inf
    for order in itertools.permutations(range(len(errors))):
        value, previous, taken = 0.0, 0.0, set()
        for i in order:
            taken.add(i)
            current = jaccard_loss(fg, taken)
            value += errors[i] * (current - previous)
            previous = current
        best = max(best, value)
    return best


def brute_force_lovasz_softmax(probs: np.ndarray, labels: np.ndarray, evaluate) -> float:
    keep = labels != 0
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in range(probs.shape[1]):
        fg = {i for i, y in enumerate(labels) if y == c}
        if fg:
            errors = np.abs((labels == c).astype(float) - probs[:, c])
            losses.append(evaluate(errors, fg))
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_softmax_equals_the_brute_force_lovasz_extension(seed):
    rng = np.random.default_rng(seed)
    n, c = 6, 4
    probs = torch.softmax(torch.tensor(rng.normal(size=(n, c)) * 2), dim=1)
    labels = torch.tensor(rng.integers(0, c, n))
    labels[0] = 1  # at least one labelled element
    got = float(lovasz_softmax(probs, labels))
    for evaluate in (lovasz_by_choquet_integral, lovasz_by_max_over_orderings):
        assert got == pytest.approx(brute_force_lovasz_softmax(probs.numpy(), labels.numpy(), evaluate), abs=1e-6)


def test_lovasz_softmax_on_hard_predictions_is_one_minus_iou():
    labels = torch.tensor([1, 1, 2, 2, 2, 3, 0])
    pred = torch.tensor([1, 2, 2, 2, 3, 3, 1])
    probs = torch.nn.functional.one_hot(pred, 4).double()
    ious = []
    for c in (1, 2, 3):
        inter = ((pred == c) & (labels == c))[:-1].sum().item()
        union = (((pred == c) | (labels == c)) & (labels != 0)).sum().item()
        ious.append(inter / union)
    assert float(lovasz_softmax(probs, labels)) == pytest.approx(1 - np.mean(ious))
    assert float(lovasz_softmax(torch.nn.functional.one_hot(labels, 4).double(), labels)) == 0.0


def test_lovasz_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 2, 1, 1, 2, 0, 2, 1])
    loss = lovasz_softmax(logits.softmax(1), labels)
    (grad,) = torch.autograd.grad(loss, logits)
    eps = 1e-7
    numeric = torch.zeros_like(logits)
    for i, j in itertools.product(range(8), range(3)):
        bump = torch.zeros_like(logits)
        bump[i, j] = eps
        numeric[i, j] = (lovasz_softmax((logits + bump).softmax(1), labels)
                         - lovasz_softmax((logits - bump).softmax(1), labels)) / (2 * eps)
    assert torch.allclose(grad, numeric, atol=1e-6)


def test_voxel_labels_match_the_preprocess_majority_vote():
    rng = np.random.default_rng(3)
    n, voxels, classes = 2000, 300, 6
    voxel = rng.integers(0, voxels, n)
    labels = rng.integers(0, classes, n)
    labels[voxel < 20] = 0  # voxels with no labelled point
    got = voxel_labels(torch.tensor(labels), torch.tensor(voxel), voxels, classes).numpy()
    labelled = labels > 0
    majority, slot = voxel_majority(voxel[labelled], labels[labelled], classes)
    expected = np.zeros(voxels, np.int64)
    expected[np.unique(voxel[labelled])] = majority  # voxel_majority lists voxels in increasing id order
    assert np.array_equal(got, expected)
    assert (got[:20] == 0).all()


def test_class_weights_follow_the_frequency_power():
    stats = pd.DataFrame({
        "split": ["train"] * 4 + ["val"] * 4,
        "class_id": [0, 1, 2, 3] * 2,
        "points": [50, 80, 20, 0, 1, 1, 1, 1],
        "voxels": [1, 1, 1, 1, 1, 1, 1, 1],
    })
    w = class_weights(stats, "train", "points", 0.5).numpy()
    share = np.array([0.8, 0.2])
    raw = share**-0.5
    assert w[0] == 0 and w[3] == 0  # ignored, absent
    assert w[1:3] == pytest.approx(raw / (share * raw).sum())
    assert (share * w[1:3]).sum() == pytest.approx(1.0)
    assert np.allclose(class_weights(stats, "train", "points", 0.0).numpy()[1:3], 1.0)


def tiny_cylinder():
    torch.manual_seed(0)
    grid = Grid("cylinder", (16, 16, 8), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
    return build_model({"arch": "cylinder3d", "width": 2, "num_classes": 5}, grid)


def test_segmentation_loss_terms_and_gradients_reach_every_parameter():
    model, points = tiny_cylinder(), synthetic_scan(300, batch_size=2, seed=0)
    labels = torch.randint(0, 5, (points.num_points,))
    cfg = LossConfig(voxel_ce=1.0, voxel_lovasz=0.5, point_ce=0.0, class_weight_power=0.0)
    out = model(points)
    total, terms = SegmentationLoss(cfg, 5)(out, labels)
    targets = voxel_labels(labels, out.point_to_voxel, out.voxel_logits.shape[0], 5)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(out.voxel_logits, targets, ignore_index=0)
        lovasz = lovasz_softmax(out.voxel_logits.softmax(1), targets)
    assert float(terms["voxel_ce"].detach()) == pytest.approx(float(ce), rel=1e-5)
    assert float(terms["voxel_lovasz"].detach()) == pytest.approx(0.5 * float(lovasz), rel=1e-5)
    assert float(terms["point_ce"].detach()) == 0.0
    total.backward()
    # a zero-weighted term still puts its parameters in the graph (DDP needs every one)
    assert all(p.grad is not None for p in model.parameters())


def test_cross_entropy_of_an_unlabelled_batch_is_zero_not_nan():
    model, points = tiny_cylinder(), synthetic_scan(100, batch_size=1, seed=0)
    weights = torch.ones(5)
    cfg = LossConfig(voxel_ce=1.0, voxel_lovasz=1.0, point_ce=1.0, class_weight_power=0.5)
    unlabelled = torch.zeros(points.num_points, dtype=torch.long)
    total, _ = SegmentationLoss(cfg, 5, weights, weights)(model(points), unlabelled)
    assert float(total.detach()) == 0.0
