import json

import pytest
import yaml
from typer.testing import CliRunner

from pvkd.cli import app, main

from kitti_tree import write_tree

runner = CliRunner()


def test_help_lists_every_stage_with_one_line():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "preprocess"):
        assert command in result.output


def test_preprocess_help_explains_options():
    result = runner.invoke(app, ["preprocess", "--help"])
    assert result.exit_code == 0
    for option in ("--params", "--root", "--out", "--workers", "index.parquet", "border cells"):
        assert option in result.output


def tiny_params(tmp_path, root):
    params = yaml.safe_load(open("params.yaml"))
    params["data"].update(root=str(root), splits={"train": ["00"], "val": ["08"]})
    params["preprocess"]["workers"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_preprocess_command_writes_outputs_and_metrics(tmp_path):
    write_tree(tmp_path / "raw", {"00": 2, "08": 1})
    out, metrics = tmp_path / "processed", tmp_path / "m.json"
    result = runner.invoke(
        app, ["preprocess", "--params", str(tiny_params(tmp_path, tmp_path / "raw")), "--out", str(out),
              "--metrics", str(metrics)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(metrics.read_text())
    assert {k: (v["scans"], v["points"], v["dropped_nonfinite"]) for k, v in summary.items()} == {
        "train": (2, 500 + 501, 0),
        "val": (1, 500, 0),
    }
    # kitti_tree spreads points to 70 m and z in [-5, 3]: beyond the 50 m / [-4, 2] m grid
    assert 0 < summary["train"]["outside_grid"] < 1001
    assert {p.name for p in out.iterdir()} == {"train", "val"}  # one folder per split
    assert {p.name for p in (out / "train").iterdir()} == {"shards", "index.parquet", "stats.parquet", "meta.json"}


def test_user_error_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    params = tiny_params(tmp_path, tmp_path / "missing")
    monkeypatch.setattr("sys.argv", ["pvkd", "preprocess", "--params", str(params), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "missing: no 'sequences' folder" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
