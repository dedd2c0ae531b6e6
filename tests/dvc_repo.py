"""A tiny copy of the project as a throw-away git + DVC repository, for the tests that run `dvc` itself."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_STUDENT = {"arch": "cylinder3d", "width": 2}
BASELINE_DISTILL = {"point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0, "unlabelled": {"weight": 0.0}}


def sh(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def tiny_params(splits: dict, preprocess_splits: list, cache_splits: list, students: dict) -> dict:
    """The default params shrunk to seconds: 2 scans a street, a width-2 teacher for 2 steps, width-2 students."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"].update(sequences=splits, scans_per_sequence=2, workers=1)
    params["data"]["splits"] = {s: splits[s] for s in preprocess_splits}
    params["preprocess"].update(workers=1, splits=list(preprocess_splits))
    params["teacher"]["model"]["width"] = 2
    params["teacher"]["train"] = {"epochs": 1}
    params["cache"].update(feature_scans=1, batch_size=1, splits=list(cache_splits))
    params["students"] = students
    params["evaluate"].update(cost_scans=1, latency_runs=1, batch_size=1)
    params["objects"]["classes"] = ["car", "person"]
    params["train"].update(batch_size=1, val_every=0, checkpoint_every=0, workers=0, threads=1, processes=1,
                           device="cpu")
    return params


def make_repo(folder: Path, params: dict) -> Path:
    """The pipeline's files and ``params`` in a fresh git repository at ``folder`` (committed)."""
    for name in ("dvc.yaml", ".dvcignore", "pvkd", "stages", "bench/results", "data/published"):
        # the report reads the studies; teacher-config depends on data/published
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    (folder / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc/config", folder / ".dvc/config")
    write_params(folder, params)
    shutil.copy(ROOT / ".gitignore", folder / ".gitignore")  # git tracks exactly what a user's repository tracks
    sh("git", "init", "-q", cwd=folder)
    sh("git", "add", "-A", cwd=folder)
    sh("git", "commit", "-qm", "tiny", cwd=folder)
    return folder


def read_params(folder: Path) -> dict:
    return yaml.safe_load((folder / "params.yaml").read_text())


def write_params(folder: Path, params: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
