"""A model file that is truncated, not a torch file, or not a pvkd record: one clear error line naming it, from every
command that loads a model (predict, cache-logits, evaluate, model-info), never a traceback."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from pvkd.cli import main

from train_fixtures import ROOT, make_processed, save_teacher


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("model_files"), {"00": 2, "08": 1},
                          {"train": ["00"], "val": ["08"]})


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["pvkd", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out + captured.err


def bad_files(tmp_path, processed) -> dict[str, tuple]:
    """name -> (file, what the error must say)."""
    record = save_teacher(processed, tmp_path / "good.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(record[: len(record) // 2])  # a copy interrupted half way
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("these are not weights\n")
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, foreign)  # a torch file, another program's
    published = tmp_path / "cyl.pt"
    torch.save({"cylinder_3d_spconv_seg.logits.weight": torch.zeros(3, 3, 3, 4, 20)}, published)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled module: refused, its code is never run
    return {
        "truncated": (truncated, "not a readable torch file"),
        "not torch": (not_torch, "not a readable torch file"),
        "random bytes": (random_bytes, "not a readable torch file"),
        "foreign": (foreign, "not a pvkd model record"),
        "published": (published, "pvkd import-teacher"),
        "pickled module": (module, "pickled Python objects (torch.nn.modules.linear.Linear)"),
    }


def assert_one_line_error(code: int, output: str, path, says: str) -> None:
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and says in errors[0], output
    assert "Traceback" not in output


def test_predict_names_a_bad_model_file(tmp_path, processed, monkeypatch, capsys):
    for name, (path, says) in bad_files(tmp_path, processed).items():
        code, output = run(monkeypatch, capsys, "predict", "--model", str(path), "--data", str(processed),
                           "--out", str(tmp_path / "predictions"), "--device", "cpu")
        assert_one_line_error(code, output, path, says)
        assert not (tmp_path / "predictions").exists(), name


def test_cache_logits_names_a_bad_teacher_file(tmp_path, processed, monkeypatch, capsys):
    files = bad_files(tmp_path, processed)
    for name in ("truncated", "not torch", "foreign"):
        path, says = files[name]
        code, output = run(monkeypatch, capsys, "cache-logits", "--teacher", str(path), "--data", str(processed),
                           "--out", str(tmp_path / "cache"))
        assert_one_line_error(code, output, path, says)


def test_evaluate_and_model_info_name_a_bad_model_file(tmp_path, processed, monkeypatch, capsys):
    files = bad_files(tmp_path, processed)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["students"] = {}
    params["evaluate"]["device"] = "cpu"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    models = tmp_path / "models"
    models.mkdir()
    path, says = files["truncated"]
    (models / "teacher.pt").write_bytes(path.read_bytes())
    code, output = run(monkeypatch, capsys, "evaluate", "--params", str(params_path), "--data", str(processed),
                       "--models", str(models), "--out", str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "e"))
    assert_one_line_error(code, output, models / "teacher.pt", says)

    path, says = files["not torch"]
    code, output = run(monkeypatch, capsys, "model-info", "--model", str(path))
    assert_one_line_error(code, output, path, says)
