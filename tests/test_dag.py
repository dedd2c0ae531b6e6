"""The DAG re-runs exactly what a change touches: `dvc repro` after each change, on the tiny profile.

One repository, one full `dvc repro`, then four changes in turn. For each, the set of stages DVC
runs is asserted exactly (the seconds-long config stages re-run on any params change; what
matters is which expensive stages follow), then `dvc status` must be clean:

* ``objects.min_points`` with every mixing transform off: no model trains again;
* an unlabelled split added (its street was on disk from the start, as SemanticKITTI's test
  sequences are): its preprocessing and its cache only; the train split's cache shards are kept
  untouched (same bytes, same mtime), the teacher and the students stay;
* ``distill.temperature``: the KL students (pvkd, hinton), not the baseline;
* ``distill.affinity_weight``: the PVKD student only (hinton's own affinity weight is 0).
"""

import json

import pytest
from dvc_repo import BASELINE_DISTILL, TINY_STUDENT, make_repo, read_params, sh, stages_run, tiny_params, write_params

CONFIGS = {"preprocess-config", "teacher-config", "student-config@pvkd", "student-config@baseline",
           "student-config@hinton"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dag")
    # street 01 is on disk without labels; the pipeline does not read it until the third change
    splits = {"train": ["00"], "val": ["08"], "unlabelled": ["01"]}
    students = {
        "pvkd": {"description": "PVKD", "model": TINY_STUDENT},
        "baseline": {"description": "no distillation", "model": TINY_STUDENT, "distill": BASELINE_DISTILL},
        "hinton": {"description": "Hinton KD", "model": TINY_STUDENT,
                   "distill": {"voxel_weight": 0.0, "affinity_weight": 0.0}},
    }
    make_repo(folder, tiny_params(splits, ["train", "val"], ["train"], students))
    sh("dvc", "repro", cwd=folder)
    return folder


def change(repo, edit) -> set[str]:
    """Apply ``edit`` to params.yaml, `dvc repro`, and return the stages it ran; the pipeline is then clean."""
    params = read_params(repo)
    edit(params)
    write_params(repo, params)
    ran = stages_run(sh("dvc", "repro", cwd=repo))
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo)
    return ran


def test_object_bank_params_retrain_nothing_while_mixing_is_off(repo):
    ran = change(repo, lambda p: p["objects"].update(min_points=11))
    assert ran == {"objects", "teacher-config", "student-config@pvkd", "student-config@baseline",
                   "student-config@hinton"}


def test_an_added_unlabelled_split_preprocesses_and_caches_that_split_only(repo):
    cached = {f.relative_to(repo).as_posix(): (f.read_bytes(), f.stat().st_mtime_ns)
              for f in (repo / "data/teacher_cache/train").rglob("*.parquet")}
    assert cached

    def add_split(p):
        p["data"]["splits"]["unlabelled"] = ["01"]
        p["preprocess"]["splits"].append("unlabelled")
        p["cache"]["splits"].append("unlabelled")

    ran = change(repo, add_split)
    # the config stages read the processed folder (an unlabelled split's hash, if a model reads it); the report's
    # data section lists every split
    assert ran == {"preprocess-config", "preprocess@unlabelled", "cache-logits", "teacher-config",
                   "student-config@pvkd", "student-config@baseline", "student-config@hinton", "report"}
    assert {f: (repo / f).read_bytes() for f in cached} == {f: b for f, (b, _) in cached.items()}
    assert {f: (repo / f).stat().st_mtime_ns for f in cached} == {f: t for f, (_, t) in cached.items()}
    manifest = json.loads((repo / "data/teacher_cache/manifest.json").read_text())
    assert set(manifest["content_hashes"]) == {"train", "unlabelled"}


def test_temperature_retrains_the_kl_students_not_the_baseline(repo):
    ran = change(repo, lambda p: p["distill"].update(temperature=2.0))
    assert ran - CONFIGS == {"distill@pvkd", "distill@hinton", "evaluate", "report"}


def test_affinity_weight_retrains_the_pvkd_student_only(repo):
    ran = change(repo, lambda p: p["distill"].update(affinity_weight=0.5))
    assert ran - CONFIGS == {"distill@pvkd", "evaluate", "report"}


def test_a_published_teacher_is_imported_instead_of_trained(repo):
    import torch

    from spconv1_reference import PublishedCylinder3D, randomize

    # a random checkpoint in the official layout (spconv 1.x, a tiny width), where a user puts the download
    model = randomize(PublishedCylinder3D((16, 16, 8), (0, -3.1416, -4), (50, 3.1416, 2), num_classes=20,
                                          init_size=4, mlp=(8, 12, 16), out_pt_fea_dim=16, fea_compre=2))
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               repo / "data/published/cylinder3d.pt", _use_new_zipfile_serialization=False)

    def use_published(p):
        p["teacher"]["source"] = "data/published/cylinder3d.pt"
        # its tiny shapes are not the official file's, so auto would take it for a PVKD release (train + val)
        p["teacher"]["import"]["train_splits"] = ["train"]

    ran = change(repo, use_published)
    # no teacher training: the import writes models/teacher.pt; the baseline, which reads no teacher, stays
    assert ran - CONFIGS == {"teacher-train", "cache-logits", "distill@pvkd", "distill@hinton", "evaluate", "report"}
    record = torch.load(repo / "models/teacher.pt", weights_only=True)
    assert record["model"]["kernels"] == "published" and record["train_splits"] == ["train"]
    assert record["imported"]["keys"] == len(model.state_dict())
    assert json.loads((repo / "configs/teacher.json").read_text())["source"]["path"] == "data/published/cylinder3d.pt"
    check = json.loads((repo / "dvclive/teacher/metrics.json").read_text())["check"]  # its scores on one val scan
    assert check["scans"] == 1 and 0 <= check["accuracy"] <= 1
