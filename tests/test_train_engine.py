"""The training loop: it learns, it checkpoints, and an interrupted or killed run resumes to the same weights."""

import multiprocessing
import os
import signal

import pytest
import torch

from pvkd.metrics import split_confusion
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load, load_model, model_for_data, model_record, save_atomic
from pvkd.train.data import ScanDataset, make_loader, split_batches
from pvkd.train.engine import TrainingInterrupted, lr_factor

from train_fixtures import TEACHER, make_processed, make_trainer, tiny_config

SPLITS = {"train": ["00"], "val": ["08"]}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    # 6 train scans, batch 2: 3 steps per epoch, 9 steps in 3 epochs
    return make_processed(tmp_path_factory.mktemp("data"), {"00": 6, "08": 3}, SPLITS)


@pytest.fixture(scope="module")
def uninterrupted(processed, tmp_path_factory):
    """The reference run, checkpointing into its own folder, logging into dvclive."""
    folder = tmp_path_factory.mktemp("reference")
    result = make_trainer(processed, tiny_config(), checkpoint_dir=folder / "ckpt", live_dir=folder / "live").fit()
    return result, folder


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(folder):
    return [(e["step"], e["metrics"].get("train/loss"), e["metrics"].get("val/miou"))
            for e in load(folder / "ckpt" / "last.pt")["history"]]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_schedule_warms_up_to_the_peak_then_decays(schedule):
    factors = [lr_factor(s, 100, 10, schedule) for s in range(100)]
    assert max(factors) == pytest.approx(1.0, abs=0.02)
    assert factors[0] <= 0.1 and factors[-1] < 0.01
    assert all(a <= b for a, b in zip(factors[:10], factors[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then falls


def test_a_run_learns_and_writes_its_records(processed, uninterrupted):
    result, folder = uninterrupted
    assert result.step == 9
    losses = [e["metrics"]["train/loss"] for e in load(folder / "ckpt" / "last.pt")["history"]
              if "train/loss" in e["metrics"]]
    assert losses[-1] < losses[0]
    last = load(folder / "ckpt" / "last.pt")
    assert last["finished"] and last["step"] == 9
    meta = ProcessedData(processed).meta
    assert last["data_hashes"]["train"] == meta["splits"]["train"]["shards_hash"]
    assert last["model"]["num_classes"] == meta["num_classes"]
    best = load(folder / "ckpt" / "best.pt")
    assert best["step"] == result.best["step"] and best["val"]["miou"] == pytest.approx(result.best["miou"])
    # dvclive: metrics.json with the best validation, one tsv per series
    summary = (folder / "live" / "metrics.json").read_text()
    assert '"best"' in summary and '"miou"' in summary
    assert (folder / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n") == 10
    assert (folder / "live" / "plots" / "metrics" / "val" / "miou.tsv").is_file()


def test_a_model_record_is_a_snapshot_of_the_weights():
    weights = {"w": torch.ones(3)}
    record = model_record(weights, {})
    weights["w"] += 1  # training goes on in place
    assert torch.equal(record["state_dict"]["w"], torch.ones(3))


def test_the_model_record_rebuilds_the_network_and_its_scores(processed, uninterrupted, tmp_path):
    result, _ = uninterrupted
    save_atomic(result.last_record, tmp_path / "model.pt")
    model, record = load_model(tmp_path / "model.pt")
    assert weights_equal(model.state_dict(), result.last_record["state_dict"])
    val = ScanDataset(processed, "val")
    confusion = split_confusion(model, make_loader(val, split_batches(len(val), 2), 0), 20, "cpu")
    assert torch.equal(confusion["point"], result.confusion["point"])
    assert record["val"]["miou"] == pytest.approx(result.scores["point"].miou)


def stop_at(step, how):
    def callback(trainer, done):
        if done == step:
            os.kill(os.getpid(), how)
    return callback


def test_sigterm_mid_epoch_saves_and_the_rerun_ends_with_the_same_weights(processed, uninterrupted, tmp_path):
    reference, reference_folder = uninterrupted
    cfg = tiny_config()
    with pytest.raises(TrainingInterrupted, match="step 4 of 9"):
        make_trainer(processed, cfg, checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live",
                     callbacks=[stop_at(4, signal.SIGTERM)]).fit()
    assert load(tmp_path / "ckpt" / "last.pt")["step"] == 4  # mid-epoch: the second epoch is steps 4..6
    resumed = make_trainer(processed, cfg, checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live").fit()
    assert weights_equal(resumed.last_record["state_dict"], reference.last_record["state_dict"])
    assert resumed.best["step"] == reference.best["step"] and resumed.best["miou"] == reference.best["miou"] > 0
    assert weights_equal(resumed.best_record["state_dict"], reference.best_record["state_dict"])
    assert history(tmp_path) == history(reference_folder)
    # dvclive's files are whole again: every logged step, once
    loss_rows = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in loss_rows[1:]] == [str(s) for s in range(1, 10)]


def killed_run(processed, checkpoint_dir):
    """Runs in a spawned process: trains and SIGKILLs itself after step 5 (its last checkpoint is step 4)."""
    torch.set_num_threads(1)
    make_trainer(processed, tiny_config(), checkpoint_dir=checkpoint_dir, callbacks=[stop_at(5, signal.SIGKILL)]).fit()


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights(processed, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    process = multiprocessing.get_context("spawn").Process(target=killed_run, args=(processed, tmp_path / "ckpt"))
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    assert load(tmp_path / "ckpt" / "last.pt")["step"] == 4  # step 5 was lost with the process
    resumed = make_trainer(processed, tiny_config(), checkpoint_dir=tmp_path / "ckpt").fit()
    assert weights_equal(resumed.last_record["state_dict"], reference.last_record["state_dict"])


def test_a_finished_or_different_run_is_not_resumed(processed, uninterrupted, tmp_path, capsys):
    _, folder = uninterrupted
    finished = load(folder / "ckpt" / "last.pt")
    unfinished = {**finished, "finished": False, "step": 4}
    save_atomic(unfinished, tmp_path / "last.pt")
    trainer = make_trainer(processed, tiny_config(lr=0.01), checkpoint_dir=tmp_path)
    trainer.prepare()
    assert trainer.step == 0  # another learning rate: another run
    save_atomic(finished, tmp_path / "last.pt")
    trainer = make_trainer(processed, tiny_config(), checkpoint_dir=tmp_path)
    trainer.prepare()
    assert trainer.step == 0
    save_atomic(unfinished, tmp_path / "last.pt")
    trainer = make_trainer(processed, tiny_config(workers=1, log_every=3), checkpoint_dir=tmp_path)
    trainer.prepare()
    assert trainer.step == 4  # runtime keys (workers, logging) do not make another run


def test_model_for_data_takes_the_classes_and_grid_of_the_shards(processed):
    data = ProcessedData(processed)
    model, info = model_for_data(TEACHER, data)
    assert model.grid == data.grid and model.num_classes == 20
    assert tuple(info["grid"]["size"]) == data.grid.size
    assert info["data_hashes"] == {s: data.meta["splits"][s]["shards_hash"] for s in ("train", "val")}
