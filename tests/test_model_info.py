"""`pvkd model-info`: a configured model's parameters, MACs and latency, on random points or a processed scan."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from pvkd.cli import app

from kitti_tree import write_tree

runner = CliRunner()



def tiny_params(tmp_path, root=None):
    params = yaml.safe_load(open("params.yaml"))
    params["grid"]["cylinder"]["size"] = [16, 16, 8]
    params["grid"]["cubic"]["voxel_size"] = [4.0, 4.0, 1.0]
    params["teacher"] = {"model": {"arch": "cylinder3d", "width": 4, "num_classes": 20}}
    params["students"] = {"half": {"model": {"arch": "cylinder3d", "width": 2, "num_classes": 20}}}
    if root is not None:
        params["data"].update(root=str(root), splits={"train": ["00"], "val": ["08"]})
        params["preprocess"]["workers"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_model_info_on_synthetic_points_writes_json(tmp_path):
    params, out = tiny_params(tmp_path), tmp_path / "info.json"
    args = ["model-info", "teacher", "--params", str(params), "--points", "500", "--runs", "1", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(out.read_text())
    assert info["model"] == {"arch": "cylinder3d", "width": 4, "num_classes": 20}
    assert info["parameters"]["total"] > info["parameters"]["without_point_head"] > 0
    assert info["macs"]["total"] == sum(info["macs"][k] for k in ("sparse_conv", "linear", "batchnorm"))
    assert info["points"] == 500 and 0 < info["voxels"] <= 500 and info["latency"]["median_ms"] > 0


def test_model_info_ad_hoc_arch_and_unknown_name(tmp_path):
    params = tiny_params(tmp_path)
    common = ["--params", str(params), "--points", "300", "--runs", "1", "--warmup", "0"]
    result = runner.invoke(app, ["model-info", "--arch", "minkunet", "--width", "2", *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["model-info", "nobody", *common])
    assert result.exit_code != 0 and "nobody" in str(result.exception)


def test_model_info_reads_a_processed_scan(tmp_path):
    write_tree(tmp_path / "raw", {"00": 1, "08": 1})
    params, processed = tiny_params(tmp_path, tmp_path / "raw"), tmp_path / "processed"
    result = runner.invoke(
        app, ["preprocess", "--params", str(params), "--out", str(processed), "--metrics", str(tmp_path / "m.json")]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "info.json"
    result = runner.invoke(
        app,
        [
            "model-info",
            "half",
            "--params",
            str(params),
            "--shards",
            str(processed),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(out.read_text())
    assert info["points"] == 500 and "08" in info["scan"]
