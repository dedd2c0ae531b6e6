"""A tiny copy of the project as a throw-away git + DVC repository, for the tests that run `dvc` itself."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_STUDENT = {"arch": "cylinder3d", "width": 2}
BASELINE_DISTILL = {"point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0, "unlabelled": {"weight": 0.0}}


def sh(*args, cwd):
    """Run a command; its stdout and stderr. They go through files, not pipes: `dvc queue start` leaves daemons
    that inherit them, and reading a pipe to its end would wait for as long as one of them lives (a queue worker
    that never exits hung the test there, before its deadline could fail it)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert done.returncode == 0, f"{args} failed:\n{stdout}\n{stderr}"
    return stdout + stderr


def stop_queue_workers(repo: Path) -> None:
    """Kill the DVC queue workers of ``repo`` that are still alive (by their pid files), so none outlives a test."""
    for pid_file in (repo / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            # only a live queue worker: a finished one's pid may belong to another process by now
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (ValueError, IndexError, OSError):
            pass  # gone already, or not a pid


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
