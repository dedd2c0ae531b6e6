"""`pvkd teacher-train` as DVC runs it: the model record, dvclive outputs, and the torchrun relaunch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pvkd.cli import app
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model

from train_fixtures import ROOT, TEACHER, make_processed


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("data"), {"00": 4, "08": 2}, {"train": ["00"], "val": ["08"]})


def write_params(path: Path, **train) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["teacher"] = {**params["teacher"], "model": dict(TEACHER), "train": {"epochs": 1}}
    params["train"].update(batch_size=2, val_every=0, workers=0, threads=1, device="cpu", **train)
    path.write_text(yaml.safe_dump(params))
    return path


def outputs(folder: Path) -> list[str]:
    return ["--out", str(folder / "teacher.pt"), "--live", str(folder / "live"), "--checkpoints", str(folder / "ckpt")]


def test_teacher_train_writes_the_model_record_and_metrics(processed, tmp_path):
    threads = torch.get_num_threads()
    params = write_params(tmp_path / "params.yaml", processes=1)
    try:
        done = CliRunner().invoke(app, ["teacher-train", "--params", str(params), "--data", str(processed),
                                        *outputs(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert done.exit_code == 0, done.output
    model, record = load_model(tmp_path / "teacher.pt")
    meta = ProcessedData(processed).meta
    assert record["data_hashes"] == {s: meta["splits"][s]["shards_hash"] for s in ("train", "val")}
    assert record["dataset"] == "semantickitti" and record["train_splits"] == ["train"]
    assert record["train_sequences"] == sorted(set(ProcessedData(processed).scans("train")["sequence"]))
    assert record["model"] == {**TEACHER, "num_classes": 20} and tuple(record["grid"]["size"]) == (16, 16, 8)
    assert record["train"]["epochs"] == 1 and record["step"] == 2 and 0 <= record["val"]["miou"] <= 1
    assert model.width == 4
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert (tmp_path / "ckpt" / "last.pt").is_file() and (tmp_path / "ckpt" / "best.pt").is_file()


def test_processes_above_one_relaunch_under_torchrun(processed, tmp_path):
    params = write_params(tmp_path / "params.yaml", processes=2)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["pvkd", "teacher-train", "--params", str(params), "--data", str(processed),
                           *outputs(tmp_path)], env=env, capture_output=True, text=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "2 processes under torchrun" in log and "2 process(es) on cpu" in log
    _, record = load_model(tmp_path / "teacher.pt")
    assert record["step"] == 1  # 4 scans / (2 per process x 2 processes) = 1 step


def test_a_semi_supervised_teacher_trains_on_the_unlabelled_split_and_exports_its_mean_teacher(tmp_path):
    processed = make_processed(tmp_path / "data", {"00": 4, "01": 2, "08": 2},
                               {"train": ["00"], "unlabelled": ["01"], "val": ["08"]})
    semi = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["semi"]
    params = write_params(tmp_path / "params.yaml", processes=1, semi={**semi, "split": "unlabelled"})
    done = CliRunner().invoke(app, ["teacher-train", "--params", str(params), "--data", str(processed),
                                    *outputs(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "semi-supervised: 2 unlabelled scans of 'unlabelled' (1 per labelled scan)" in done.output
    _, record = load_model(tmp_path / "teacher.pt")
    data = ProcessedData(processed)
    assert record["train_splits"] == ["train", "unlabelled"] and record["train_sequences"] == ["00", "01"]
    assert record["data_hashes"] == data.hashes(["train", "unlabelled", "val"])
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert all(torch.equal(record["state_dict"][k], last["mean_teacher"][k]) for k in record["state_dict"])
    terms = yaml.safe_load((tmp_path / "live" / "metrics.json").read_text())["train"]
    assert {"sup_voxel_ce", "mix_voxel_ce", "consistency", "pseudo_label_share"} <= set(terms)
