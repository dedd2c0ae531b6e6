"""Semi-supervised training (pvkd.train.semi): the mean teacher, LaserMix bands of the fixed pitch range, the
plan of the mixes, where every label of the loss comes from, and a resumed run that ends where an
uninterrupted one does."""

import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from pvkd.models import SegOutput
from pvkd.train.data import RunBatchSampler, ScanDataset, make_loader
from pvkd.train.engine import TrainingInterrupted
from pvkd.train.mix import pitch_band
from pvkd.train.semi import MeanTeacher, SemiCollate, SemiSupervisedLoss

from train_fixtures import make_processed, make_trainer, tiny_config

SEMI = {"split": "unlabelled", "ratio": 1, "ema_decay": 0.5, "ema_buffers": "own", "export": "ema",
        "threshold": 0.9, "mix_weight": 2.0, "consistency_weight": 200.0, "mixed_scans": 2, "bands": [4]}


def at_pitch(degrees, distance=10.0):
    """Points at ``distance`` m along x, at the given pitch angles (degrees)."""
    pitch = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([distance * np.ones_like(pitch), np.zeros_like(pitch), distance * np.tan(pitch)], 1).astype(
        np.float32)


def test_mean_teacher_is_the_exponential_average_of_the_weights():
    student = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        student[0].weight.fill_(1.0)
    teacher = MeanTeacher(student, decay=0.9, buffers="own")
    for value, expected in ((3.0, 0.9 * 1 + 0.1 * 3), (5.0, 0.9 * 1.2 + 0.1 * 5)):  # 1.2, then 1.58
        with torch.no_grad():
            student[0].weight.fill_(value)
            student[1].running_mean.fill_(value)
        teacher.update(student)
        assert teacher.model[0].weight.item() == pytest.approx(expected)
    assert teacher.model[1].running_mean.item() == 0.0  # own buffers: never averaged from the student's
    assert not any(p.requires_grad for p in teacher.model.parameters())
    averaged = MeanTeacher(student, decay=0.5, buffers="average")  # copied at 5: the running mean too
    with torch.no_grad():
        student[1].running_mean.fill_(1.0)
        student[1].num_batches_tracked.fill_(7)
    averaged.update(student)
    assert averaged.model[1].running_mean.item() == pytest.approx(3.0)  # 0.5 * 5 + 0.5 * 1
    assert averaged.model[1].num_batches_tracked.item() == 7  # integer buffers are copied


def test_the_mean_teacher_predicts_with_batch_statistics_but_without_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2, momentum=0.5), nn.Dropout(0.9))
    teacher = MeanTeacher(model, decay=0.5, buffers="own")
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])  # batch mean (2, 20), biased std (1, 10)
    first, second = teacher.predict(x), teacher.predict(x)
    # batch statistics: each column standardised to -1, +1 (eps aside); dropout would zero ~90 % and scale by 10
    assert torch.allclose(first, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-4)
    assert torch.equal(first, second)
    # its own running mean moves: 0 -> 0.5 * (2, 20) -> 0.75 * (2, 20)
    assert torch.allclose(teacher.model[0].running_mean, torch.tensor([1.5, 15.0]))
    assert not teacher.model[1].training and teacher.model[0].training


def test_bands_divide_the_sensors_fixed_pitch_range():
    # [-25, 3] in 4 bands: edges -18, -11, -4; points beyond the range go to the end bands
    xyz = at_pitch([-40, -24, -18.1, -17.9, -11.1, -10.9, -4.1, -3.9, 2.9, 10])
    assert pitch_band(xyz, 4, (-25.0, 3.0)).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # the edges do not move with the points at hand (the old rule split the pair's own extremes)
    narrow = at_pitch([-10.9, -9.0, -4.1])
    assert pitch_band(narrow, 4, (-25.0, 3.0)).tolist() == [2, 2, 2]


def sample(xyz, labelled, position, epoch=0):
    n = len(xyz)
    return {"xyz": xyz, "intensity": np.zeros(n, np.float32), "label": np.full(n, 3 if labelled else 0, np.int64),
            "labelled": np.full(n, labelled), "position": position, "epoch": epoch}


def test_each_pair_is_mixed_by_alternating_bands():
    from pvkd.train.config import SemiConfig

    pitches = [-21.5, -14.5, -7.5, -0.5]  # one point in each of the 4 bands of [-25, 3]
    lab, unl = sample(at_pitch(pitches), True, 0), sample(at_pitch(pitches, 20.0), False, 5)
    cfg = SemiConfig(**{**SEMI, "bands": (4,)})
    batch = SemiCollate(cfg, (-25.0, 3.0), seed=0)([lab, unl])
    # rows 0-3 are l's points (bands 0-3), rows 4-7 u's: mix 0 = l's even bands + u's odd ones, mix 1 the rest
    assert batch.mix_rows.tolist() == [0, 2, 5, 7, 1, 3, 4, 6]
    assert batch.mix_scans.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    one = SemiCollate(SemiConfig(**{**SEMI, "bands": (4,), "mixed_scans": 1}), (-25.0, 3.0), seed=0)([lab, unl])
    assert one.mix_rows.tolist() in ([0, 2, 5, 7], [1, 3, 4, 6]) and set(one.mix_scans.tolist()) == {0}
    # the plan is a function of (seed, epoch, pair): drawn again, the same
    again = SemiCollate(cfg, (-25.0, 3.0), seed=0)([lab, unl])
    assert torch.equal(again.mix_rows, batch.mix_rows)


class FixedTeacher(nn.Module):
    """Point logits from the height: class 5 confidently above z = 0, a tie between 5 and 6 below."""

    def forward(self, points):
        n = points.num_points
        logits = torch.zeros(n, 20)
        confident = points.xyz[:, 2] > 0
        logits[confident, 5] = 10.0
        logits[~confident, 5] = logits[~confident, 6] = 1.0
        return SegOutput(logits, logits, logits, logits, torch.zeros(0, 4), torch.zeros(n, dtype=torch.long))


class Recorder(nn.Module):
    """A segmentation loss that keeps the labels it is asked to score."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, output, labels):
        self.calls.append(labels.clone())
        return output.point_logits.sum() * 0.0, {}


@pytest.fixture(scope="module")
def with_unlabelled(tmp_path_factory):
    # street 01's labels are on disk; as the unlabelled split, none of them may reach a loss
    return make_processed(tmp_path_factory.mktemp("semi"), {"00": 4, "01": 4, "08": 2},
                          {"train": ["00"], "unlabelled": ["01"], "val": ["08"]})


def test_no_label_on_disk_of_an_unlabelled_scan_reaches_a_loss(with_unlabelled):
    from pvkd.train.config import SemiConfig

    cfg = SemiConfig(**{**SEMI, "bands": (2, 3)})
    dataset = ScanDataset(with_unlabelled, ["train", "unlabelled"], unlabelled=["unlabelled"])
    sampler = RunBatchSampler(4, 1, 1, seed=0, unlabelled_scans=4, unlabelled_ratio=1)
    teacher = MeanTeacher(FixedTeacher(), decay=0.5)
    recorder = Recorder()
    loss = SemiSupervisedLoss(recorder, cfg, teacher)
    student = FixedTeacher()
    for batch in make_loader(dataset, sampler, workers=0, collate_fn=SemiCollate(cfg, (-25.0, 3.0), seed=0)):
        recorder.calls.clear()
        def model(p):
            logits = student(p).point_logits.requires_grad_()
            return SegOutput(logits, logits, logits, logits, torch.zeros(0, 4),
                             torch.zeros(p.num_points, dtype=torch.long))

        total, terms = loss.on_batch(model, batch)
        supervised, mixed = recorder.calls
        labelled = batch.labelled
        n_sup = int(labelled.sum())
        # the supervised part: the labelled scan's own labels, nothing on the mixed scans
        assert torch.equal(supervised[:n_sup], batch.labels[labelled]) and (supervised[n_sup:] == 0).all()
        # the mixed part: ground truth on l's rows, the teacher's confident class (5) or nothing on u's rows
        from_l = labelled[batch.mix_rows]
        assert (mixed[:n_sup] == 0).all()
        assert torch.equal(mixed[n_sup:][from_l], batch.labels[batch.mix_rows[from_l]])
        z = batch.points.xyz[batch.mix_rows[~from_l], 2]
        assert torch.equal(mixed[n_sup:][~from_l], torch.where(z > 0, 5, 0))
        # what the unlabelled scan holds on disk never shows up: the dataset gave it as 0
        assert (batch.labels[~labelled] == 0).all()
        # a perfect copy of the teacher: consistency 0
        assert terms["consistency"].item() == pytest.approx(0.0, abs=1e-12)


def test_a_semi_supervised_run_resumes_to_the_same_model_and_mean_teacher(with_unlabelled, tmp_path):
    cfg = tiny_config(epochs=2, batch_size=1, val_every=0, checkpoint_every=2, semi=SEMI)
    reference = make_trainer(with_unlabelled, cfg, checkpoint_dir=tmp_path / "a").fit()

    def stop_at_3(trainer, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="step 3 of 8"):
        make_trainer(with_unlabelled, cfg, checkpoint_dir=tmp_path / "b", callbacks=[stop_at_3]).fit()
    resumed = make_trainer(with_unlabelled, cfg, checkpoint_dir=tmp_path / "b").fit()
    a, b = reference.last_record["state_dict"], resumed.last_record["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # export ema: the record holds the mean teacher's weights, not the model's
    last = torch.load(tmp_path / "b/last.pt", weights_only=True)
    assert all(torch.equal(last["state_dict"][k], b[k]) for k in b)
    assert any(not torch.equal(last["model_state_dict"][k], b[k]) for k in b)
    assert all(torch.equal(last["mean_teacher"][k], b[k]) for k in b)
