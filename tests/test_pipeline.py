"""`dvc repro` end to end on a tiny profile, in a throw-away git repository.

Asserts on DVC's own output: the first repro runs every stage (a width-2 teacher, two steps; two
width-2 students, the PVKD one also on an unlabelled street; instance paste, PolarMix and LaserMix
on every scan), the second does nothing, `dvc exp
run -S distill.affinity_weight=0.5` re-runs only the PVKD student (the baseline's effective config
does not change), evaluate and report and leaves the teacher cache as it was -- in a fresh clone
that pulled the teacher and its cache from a local DVC remote and had nothing to re-run -- and
`dvc exp run -S synth.seed=1` regenerates, reprocesses and retrains. Two experiments run at once
through DVC's queue (`OMP_NUM_THREADS=1 dvc queue start -j 2`) train the same students, byte for
byte, as the same experiments run one after the other in another clone (each clone pulls the
teacher and cache but not DVC's run-cache, which would otherwise restore the students untrained).
"""

import hashlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from dvc_repo import BASELINE_DISTILL, TINY_STUDENT, make_repo, sh, stages_run, stop_queue_workers, tiny_params


@pytest.fixture
def repo(tmp_path):
    # street 01 is written without labels and distilled on as the unlabelled split
    splits = {"train": ["00"], "unlabelled": ["01"], "val": ["08"]}
    students = {"pvkd": {"description": "PVKD", "model": TINY_STUDENT},
                "baseline": {"description": "no distillation", "model": TINY_STUDENT, "distill": BASELINE_DISTILL}}
    params = tiny_params(splits, ["train", "val", "unlabelled"], ["train", "unlabelled"], students)
    params["distill"]["unlabelled"]["split"] = "unlabelled"
    # every mixing transform on: the teacher and the students train on pasted and mixed scans (cache rows follow)
    for name in ("paste", "polarmix", "lasermix"):
        params["train"]["augment"][name]["probability"] = 1.0
    return make_repo(tmp_path, params)


STAGES = ("synth", "preprocess-config", "preprocess@train", "preprocess@val", "preprocess@unlabelled", "objects",
          "teacher-config", "teacher-train", "cache-logits", "student-config@pvkd", "student-config@baseline",
          "distill@pvkd", "distill@baseline", "evaluate", "report")


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_repro_then_noop_then_experiments(repo):
    first = sh("dvc", "repro", cwd=repo)
    assert stages_run(first) == set(STAGES), first
    meta = {s: json.loads((repo / f"data/processed/{s}/meta.json").read_text())["summary"]
            for s in ("train", "val", "unlabelled")}
    assert meta["train"]["scans"] == 2 and meta["val"]["scans"] == 2
    assert meta["unlabelled"]["scans"] == 2 and not meta["unlabelled"]["labelled"]
    assert not (repo / "data/raw/synthetic/sequences/01/labels").exists()
    assert torch.load(repo / "models/pvkd.pt", weights_only=True)["train_splits"] == ["train", "unlabelled"]
    assert torch.load(repo / "models/baseline.pt", weights_only=True)["train_splits"] == ["train"]
    teacher = torch.load(repo / "models/teacher.pt", weights_only=True)
    assert teacher["data_hashes"] == {s: meta[s]["shards_hash"] for s in ("train", "val")} and teacher["step"] == 2
    shown = sh("dvc", "metrics", "show", cwd=repo)
    assert "dvclive/teacher/metrics.json" in shown and "metrics/evaluate.json" in shown
    assert list(json.loads((repo / "metrics/evaluate.json").read_text())) == ["teacher", "pvkd", "baseline"]
    assert (repo / "report/report.html").is_file()
    assert pq.read_metadata(repo / "data/objects.parquet").num_rows > 0  # so paste had objects to paste

    again = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo)

    # the teacher and its cache travel through a DVC remote: a fresh clone pulls them and has nothing to re-run
    sh("dvc", "remote", "add", "-d", "store", str(repo.parent / "remote"), cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "lock", cwd=repo)
    sh("dvc", "push", cwd=repo)
    clone = repo.parent / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=repo.parent)
    sh("dvc", "pull", cwd=clone)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)
    cache = tree_digest(repo / "data/teacher_cache")
    assert tree_digest(clone / "data/teacher_cache") == cache and cache
    assert (clone / "models/teacher.pt").read_bytes() == (repo / "models/teacher.pt").read_bytes()

    exp = sh("dvc", "exp", "run", "-S", "distill.affinity_weight=0.5", cwd=clone)
    # the baseline sets affinity_weight 0 itself: its effective config, and so its model, stay
    assert stages_run(exp) == {"student-config@pvkd", "student-config@baseline", "distill@pvkd", "evaluate",
                               "report"}, exp
    assert "Stage 'distill@baseline' didn't change, skipping" in exp
    assert "Stage 'cache-logits' didn't change, skipping" in exp
    assert tree_digest(clone / "data/teacher_cache") == cache

    exp = sh("dvc", "exp", "run", "-S", "synth.seed=1", cwd=repo)
    assert {"synth", "preprocess@train", "teacher-train"} <= stages_run(exp)
    assert json.loads((repo / "data/processed/train/meta.json").read_text())["summary"]["shards_hash"] != meta[
        "train"]["shards_hash"]


def exp_file(repo: Path, name: str, path: str) -> str:
    """A file as the named experiment committed it."""
    refs = sh("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo).split()
    ref = next(r for r in refs if r.endswith(f"/{name}"))
    return sh("git", "show", f"{ref}:{path}", cwd=repo)


def trained_student(repo: Path, name: str) -> tuple[str, dict]:
    """The PVKD student's model hash in the experiment's dvc.lock and its final training losses and grad norm."""
    lock = yaml.safe_load(exp_file(repo, name, "dvc.lock"))
    outs = lock["stages"]["distill@pvkd"]["outs"]
    model = next(o["md5"] for o in outs if o["path"] == "models/pvkd.pt")
    train = json.loads(exp_file(repo, name, "dvclive/pvkd/metrics.json"))["train"]
    return model, {k: v for k, v in train.items() if k not in ("scans_per_s", "data_wait_share")}  # not timings


def test_queued_students_in_parallel_match_sequential_runs(repo, monkeypatch, request):
    # threads from the environment, as the README starts queue workers: train.threads 0 reads OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["threads"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", cwd=repo)
    sh("dvc", "remote", "add", "-d", "store", str(repo.parent / "remote"), cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "lock", cwd=repo)
    sh("dvc", "push", cwd=repo)
    # two clones that pull the teacher and cache but not DVC's run-cache: neither can restore the other's students
    clones = {}
    for kind in ("sequential", "queued"):
        clones[kind] = repo.parent / kind
        sh("git", "clone", "-q", str(repo), str(clones[kind]), cwd=repo.parent)
        sh("dvc", "pull", cwd=clones[kind])
    settings = {"t2": "distill.temperature=2", "v1": "distill.voxel_weight=1.0"}
    for name, setting in settings.items():
        sh("dvc", "exp", "run", "--temp", "-n", name, "-S", setting, cwd=clones["sequential"])
    queued = clones["queued"]
    for name, setting in settings.items():
        sh("dvc", "exp", "run", "--queue", "-n", name, "-S", setting, cwd=queued)
    request.addfinalizer(lambda: stop_queue_workers(queued))  # a worker that does not exit must not outlive the test
    assert "Started '2' new experiments task queue workers" in sh("dvc", "queue", "start", "-j", "2", cwd=queued)
    deadline = time.monotonic() + 900  # a stuck worker fails the test instead of hanging CI
    while True:
        status = sh("dvc", "queue", "status", cwd=queued)
        if "Queued" not in status and "Running" not in status:
            break
        if time.monotonic() > deadline:
            sh("dvc", "queue", "kill", *settings, cwd=queued)
            pytest.fail(f"the queue did not finish:\n{status}\n{sh('dvc', 'queue', 'logs', 't2', cwd=queued)}")
        time.sleep(5)
    assert status.count("Success") == 2, status
    log = sh("dvc", "queue", "logs", "t2", cwd=queued)
    assert "Running stage 'distill@pvkd'" in log  # trained in the queue, not restored
    assert "1 threads each" in log  # the workers' environment reached the run
    for name in settings:
        assert trained_student(queued, name) == trained_student(clones["sequential"], name)
    # the two settings train different students: equal hashes above are not an accident of a no-op
    assert trained_student(queued, "t2")[0] != trained_student(queued, "v1")[0]
