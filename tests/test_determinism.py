"""Same seed, same model: two `pvkd teacher-train` runs with the same params and thread count on one machine
write the same weights, byte for byte (so a difference between two commits' teachers is the code's, not noise)."""

import subprocess
import sys

import pytest
import torch
import yaml

from train_fixtures import ROOT, TEACHER, make_processed


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("data"), {"00": 4, "08": 2}, {"train": ["00"], "val": ["08"]})


def train(processed, folder, threads: int) -> dict:
    """A fresh process (nothing shared with the test's), the tiny teacher for 4 steps (one epoch); its state_dict."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"] = {**params["teacher"], "model": dict(TEACHER), "train": {"epochs": 1}}
    params["train"].update(batch_size=1, val_every=0, checkpoint_every=0, workers=0, threads=threads, device="cpu",
                           processes=1)
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "pvkd", "teacher-train", "--params", str(folder / "params.yaml"),
                           "--data", str(processed), "--out", str(folder / "teacher.pt"), "--live",
                           str(folder / "live"), "--checkpoints", str(folder / "ckpt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    record = torch.load(folder / "teacher.pt", weights_only=True)
    assert record["step"] == 4  # it trained: 4 scans, one per step
    return record["state_dict"]


@pytest.mark.parametrize("threads", [1, 2])
def test_two_runs_with_the_same_seed_and_threads_give_the_same_weights(processed, tmp_path, threads):
    first, second = train(processed, tmp_path / "a", threads), train(processed, tmp_path / "b", threads)
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
