"""The PVKD distillation losses against hand computations on tiny tensors."""

import math

import pytest
import torch

from pvkd.distill.losses import (
    affinity_loss,
    class_row_weights,
    cosine_affinity,
    kl_divergence,
    tempered,
    voxel_teacher_logprobs,
)


def logp(*probs):
    return torch.tensor(probs, dtype=torch.float64).log().float()


def test_tempered_matches_softmax_of_scaled_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    for t in (1.0, 2.0, 0.5):
        expected = torch.log_softmax(logits / t, dim=1)
        assert torch.allclose(tempered(torch.log_softmax(logits, dim=1), t), expected, atol=1e-6)


def test_kl_on_hand_written_distributions():
    # teacher (1/4, 3/4) twice; student uniform on row 0 and equal to the teacher on row 1
    teacher = logp([0.25, 0.75], [0.25, 0.75])
    student = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(student, teacher, 1.0).item() == pytest.approx(row0 / 2, rel=1e-5)

    # T = 2: the teacher becomes (sqrt(1/4), sqrt(3/4)) normalised, the student rows (1/2, 1/2) and
    # (1, sqrt 3) normalised; times T^2 = 4
    a, b = 0.5, math.sqrt(0.75)
    p = (a / (a + b), b / (a + b))
    q1 = (1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3)))
    kl0 = sum(pi * math.log(pi / 0.5) for pi in p)
    kl1 = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q1))
    assert kl_divergence(student, teacher, 2.0).item() == pytest.approx(4 * (kl0 + kl1) / 2, rel=1e-5)


def test_kl_zero_when_student_equals_teacher():
    logits = torch.tensor([[1.0, -2.0, 0.3], [0.0, 0.0, 5.0]])
    teacher = torch.log_softmax(logits, dim=1)
    for t in (1.0, 3.0):
        assert kl_divergence(logits + 7.0, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_teacher_zero_probability_is_finite():
    # p_t = (1, 0): KL = 1 * log(1 / 0.5) = log 2, no NaN in value or gradient
    teacher = torch.tensor([[0.0, -math.inf]])
    student = torch.zeros(1, 2, requires_grad=True)
    loss = kl_divergence(student, teacher, 1.0)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    loss.backward()
    # d/dz KL = (q - p) / T = (0.5 - 1, 0.5 - 0)
    assert torch.allclose(student.grad, torch.tensor([[-0.5, 0.5]]))


def test_kl_gradient_flows_to_the_student_only():
    student = torch.tensor([[0.2, -0.4, 1.0]], requires_grad=True)
    teacher = torch.log_softmax(torch.tensor([[1.0, 0.0, -1.0]]), dim=1).requires_grad_(True)
    t = 2.0
    kl_divergence(student, teacher, t).backward()
    assert teacher.grad is None
    # gradient of T^2 KL_T w.r.t. the student logits: T * (q_T - p_T)
    expected = t * (torch.softmax(student.detach() / t, 1) - torch.softmax(teacher.detach() / t, 1))
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_class_weighted_kl_is_the_weighted_mean_of_the_rows():
    # rows: KL_0 (student uniform vs teacher (1/4, 3/4)) and KL_1 = 0; weights 3 and 1
    teacher = logp([0.25, 0.75], [0.25, 0.75])
    student = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    weighted = kl_divergence(student, teacher, 1.0, row_weights=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(3 * row0 / 4, rel=1e-5)
    # equal weights give the plain mean, whatever their scale
    plain = kl_divergence(student, teacher, 1.0)
    assert kl_divergence(student, teacher, 1.0, row_weights=torch.full((2,), 7.0)).item() == pytest.approx(plain.item())


def test_class_row_weights_take_the_label_or_the_teachers_top_class():
    class_weights = torch.tensor([0.0, 0.5, 2.0, 4.0])  # class 0: ignored
    labels = torch.tensor([1, 3, 0, 0])
    teacher = logp([0.1, 0.2, 0.6, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.05, 0.8, 0.1, 0.05])
    # labelled rows weigh by their label; unlabelled ones by the teacher's argmax (3, then 1)
    assert class_row_weights(class_weights, labels, teacher).tolist() == [0.5, 4.0, 4.0, 0.5]


def test_kl_empty_rows_is_attached_zero():
    student = torch.zeros(0, 4, requires_grad=True)
    loss = kl_divergence(student, torch.zeros(0, 4), 2.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_kl_float32_under_autocast():
    student = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    teacher = torch.log_softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kl_divergence(student.bfloat16(), teacher.bfloat16(), 1.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(kl_divergence(student.bfloat16().float(), teacher.bfloat16(), 1.0).item())


def test_voxel_teacher_logprobs_equals_a_hand_loop():
    g = torch.Generator().manual_seed(3)
    teacher = torch.log_softmax(torch.randn(7, 3, generator=g), dim=1)
    point_to_voxel = torch.tensor([2, 0, 2, 1, 0, 2, 3])
    t = 2.0
    got = voxel_teacher_logprobs(teacher, point_to_voxel, 4, t)
    for v in range(4):
        rows = [n for n in range(7) if point_to_voxel[n] == v]
        mean = sum(torch.softmax(teacher[n] / t, dim=0) for n in rows) / len(rows)
        assert torch.allclose(got[v], mean.log(), atol=1e-6)
    assert torch.allclose(got.exp().sum(1), torch.ones(4), atol=1e-6)


def test_voxel_kl_with_one_point_per_voxel_is_the_point_kl():
    g = torch.Generator().manual_seed(4)
    teacher = torch.log_softmax(torch.randn(5, 3, generator=g), dim=1)
    student = torch.randn(5, 3, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])  # point n lies alone in voxel perm[n]
    voxel_student = torch.empty_like(student)
    voxel_student[perm] = student
    target = voxel_teacher_logprobs(teacher, perm, 5, 2.0)
    voxel_kl = kl_divergence(voxel_student, target, 2.0, teacher_tempered=True)
    assert voxel_kl.item() == pytest.approx(kl_divergence(student, teacher, 2.0).item(), rel=1e-5)


def test_cosine_affinity_of_orthogonal_features_is_identity():
    features = torch.eye(3).mul(torch.tensor([2.0, 0.5, 3.0])[:, None])[None]  # orthogonal, unnormalised
    s = cosine_affinity(features, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(s[0], torch.eye(3))
    masked = cosine_affinity(features, torch.tensor([[True, True, False]]))
    assert torch.allclose(masked[0], torch.diag(torch.tensor([1.0, 1.0, 0.0])))


def test_affinity_identical_features_give_zero():
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    groups = torch.tensor([[0, 2, 4, -1], [1, 3, 5, 0]])
    assert affinity_loss(features, features.clone(), groups).item() == pytest.approx(0.0, abs=1e-7)


# student 2-d, teacher 3-d: S_s off-diagonal (ab, ac, bc) = (0, 1/sqrt2, 1/sqrt2), S_t = (1, 0, 0):
# ordered pairs 2 * (1 + 1/2 + 1/2) over 6 -> 2/3
STUDENT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 2.0], [3.0, 0.0]])
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
HAND = 2.0 / 3.0


def test_affinity_hand_computed_three_elements_with_different_widths():
    assert affinity_loss(STUDENT, TEACHER, torch.tensor([[0, 1, 2]])).item() == pytest.approx(HAND, rel=1e-6)


def test_affinity_padding_and_small_groups_are_ignored():
    # padding anywhere in the row; a group with one valid element and an all-padding group do not count
    groups = torch.tensor([[-1, 0, 1, -1, 2], [3, -1, -1, -1, -1], [-1, -1, -1, -1, -1]])
    assert affinity_loss(STUDENT, TEACHER, groups).item() == pytest.approx(HAND, rel=1e-6)
    # a second usable group (elements 3, 4): S_s = (3)/(sqrt5 * 3) = 1/sqrt5, S_t = 1/sqrt2
    pair = (1 / math.sqrt(5) - 1 / math.sqrt(2)) ** 2
    groups = torch.tensor([[0, 1, 2, -1], [3, 4, -1, -1], [1, -1, -1, -1]])
    assert affinity_loss(STUDENT, TEACHER, groups).item() == pytest.approx((HAND + pair) / 2, rel=1e-6)


def test_affinity_gradient_to_student_only_and_zero_without_groups():
    student = STUDENT.clone().requires_grad_(True)
    teacher = TEACHER.clone().requires_grad_(True)
    affinity_loss(student, teacher, torch.tensor([[0, 1, 2]])).backward()
    assert teacher.grad is None and student.grad[:3].abs().sum() > 0 and student.grad[3:].abs().sum() == 0

    student.grad = None
    for groups in (torch.tensor([[4, -1, -1]]), torch.zeros(0, 3, dtype=torch.long)):
        loss = affinity_loss(student, teacher, groups)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert student.grad is None or student.grad.abs().sum() == 0


def test_affinity_float32_under_autocast():
    groups = torch.tensor([[0, 1, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = affinity_loss(STUDENT, TEACHER, groups)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(HAND, rel=1e-6)
