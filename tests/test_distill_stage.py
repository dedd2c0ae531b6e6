"""`pvkd distill` as DVC runs it: a student per params entry, from the cache or an online teacher, each
logging exactly the terms its weights switch on; the cached and the online teacher give the same targets."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pvkd.cli import app
from pvkd.distill.cache import CacheConfig, make_cache
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model, save_atomic, trained_on

from train_fixtures import ROOT, make_processed, save_teacher

STUDENT = {"arch": "cylinder3d", "width": 2}
TERMS = ("kl_point", "kl_voxel", "affinity_point", "affinity_voxel")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    processed = make_processed(root, {"00": 4, "08": 2}, {"train": ["00"], "val": ["08"]})
    save_teacher(processed, root / "teacher.pt")
    cache = CacheConfig(splits=("train",), outputs="fp16", topk=5, feature_dim=8, feature_scans=2, batch_size=2,
                        device="cpu")
    make_cache(root / "teacher.pt", processed, root / "cache", cache, torch.device("cpu"))
    return root, processed


def write_params(path: Path, students: dict, **distill) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, batch_size=2, val_every=0, workers=0, threads=1, device="cpu", processes=1,
                           log_every=1)
    params["distill"].update(supervoxel={"size": [4, 4, 2], "count": 2, "points": 16, "voxels": 8}, **distill)
    params["students"] = students
    path.write_text(yaml.safe_dump(params))
    return path


def distill(root: Path, processed: Path, params: Path, name: str, folder: Path, cache: Path | None = None):
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(app, [
            "distill", "--student", name, "--params", str(params), "--data", str(processed),
            "--cache", str(cache or root / "cache"), "--teacher", str(root / "teacher.pt"),
            "--out", str(folder / f"{name}.pt"), "--live", str(folder / name), "--checkpoints", str(folder / "ckpt"),
        ])
    finally:
        torch.set_num_threads(threads)


def logged_terms(live: Path) -> set[str]:
    metrics = json.loads((live / "metrics.json").read_text())["train"]
    return {t for t in TERMS if t in metrics}


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_a_pvkd_student_trains_with_all_four_terms(setup, tmp_path, mode):
    root, processed = setup
    params = write_params(tmp_path / "params.yaml", {"pvkd": {"model": STUDENT}}, mode=mode)
    done = distill(root, processed, params, "pvkd", tmp_path)
    assert done.exit_code == 0, done.output
    model, record = load_model(tmp_path / "pvkd.pt")
    assert model.width == 2 and record["step"] == 2
    assert record["data_hashes"] == ProcessedData(processed).hashes(["train", "val"])
    assert logged_terms(tmp_path / "pvkd") == set(TERMS)
    assert ("online teacher" in done.output) == (mode == "online")


def test_student_overrides_pick_the_terms_and_the_baseline_needs_no_cache(setup, tmp_path):
    root, processed = setup
    students = {
        "baseline": {"model": STUDENT, "distill": {"point_weight": 0, "voxel_weight": 0, "affinity_weight": 0}},
        "hinton": {"model": STUDENT, "distill": {"voxel_weight": 0, "affinity_weight": 0}},
        "voxels": {"model": STUDENT, "distill": {"affinity_terms": ["voxel"], "point_weight": 0}},
    }
    params = write_params(tmp_path / "params.yaml", students)
    assert distill(root, processed, params, "baseline", tmp_path, cache=tmp_path / "no-cache").exit_code == 0
    assert logged_terms(tmp_path / "baseline") == set()
    assert distill(root, processed, params, "hinton", tmp_path).exit_code == 0
    assert logged_terms(tmp_path / "hinton") == {"kl_point"}
    assert distill(root, processed, params, "voxels", tmp_path).exit_code == 0
    assert logged_terms(tmp_path / "voxels") == {"kl_voxel", "affinity_voxel"}


def test_a_cubic_grid_student_distils_from_the_cylindrical_teachers_cache(setup, tmp_path):
    root, processed = setup
    student = {"arch": "minkunet", "width": 2, "grid": {"cubic": {"voxel_size": [2.0, 2.0, 0.5]}}}
    params = write_params(tmp_path / "params.yaml", {"mink": {"model": student}})
    done = distill(root, processed, params, "mink", tmp_path)
    assert done.exit_code == 0, done.output
    assert load_model(tmp_path / "mink.pt")[1]["grid"]["kind"] == "cubic"
    assert logged_terms(tmp_path / "mink") == set(TERMS)


def test_a_student_refuses_a_cache_of_another_teacher(setup, tmp_path):
    root, processed = setup
    params = write_params(tmp_path / "params.yaml", {"pvkd": {"model": STUDENT}})
    other = tmp_path / "teacher.pt"
    record = torch.load(root / "teacher.pt", weights_only=True)
    save_atomic({**record, "step": 1}, other)
    threads = torch.get_num_threads()
    try:
        done = CliRunner().invoke(app, [
            "distill", "--student", "pvkd", "--params", str(params), "--data", str(processed),
            "--cache", str(root / "cache"), "--teacher", str(other), "--out", str(tmp_path / "s.pt"),
            "--live", str(tmp_path / "live"), "--checkpoints", str(tmp_path / "ckpt"),
        ])
    finally:
        torch.set_num_threads(threads)
    assert done.exit_code != 0
    assert "another teacher" in str(done.exception) and "dvc repro cache-logits" in str(done.exception)


def test_unknown_students_and_bad_weights_are_named(setup, tmp_path):
    root, processed = setup
    params = write_params(tmp_path / "params.yaml", {"pvkd": {"model": STUDENT}}, sampling="hardest")
    done = distill(root, processed, params, "nobody", tmp_path)
    assert "no student 'nobody'" in str(done.exception) and "pvkd" in str(done.exception)
    done = distill(root, processed, params, "pvkd", tmp_path)
    assert "sampling must be one of" in str(done.exception)


@pytest.fixture(scope="module")
def unlabelled_setup(tmp_path_factory):
    """Street 00 labelled, street 03 an unlabelled split (its label files on disk, never read), 08 val; a cache of
    both splits and one of train only."""
    root = tmp_path_factory.mktemp("unlabelled")
    processed = make_processed(root, {"00": 4, "03": 3, "08": 2},
                               {"train": ["00"], "unlabelled": ["03"], "val": ["08"]})
    save_teacher(processed, root / "teacher.pt")
    for name, splits in (("cache", ("train", "unlabelled")), ("cache-train", ("train",))):
        cfg = CacheConfig(splits=splits, outputs="topk", topk=2, feature_dim=4, feature_scans=2, batch_size=2,
                          device="cpu")
        make_cache(root / "teacher.pt", processed, root / name, cfg, torch.device("cpu"))
    return root, processed


def shards_read(monkeypatch) -> set[str]:
    """The splits whose shard files training reads scans from (``train``, ``unlabelled``, ``val``)."""
    import pvkd.train.data as data

    seen, read = set(), data.read_scan
    monkeypatch.setattr(data, "read_scan", lambda path, *a, **k: seen.add(Path(path).parent.parent.name) or read(
        path, *a, **k))
    return seen


UNLABELLED = {"split": "unlabelled", "ratio": 1, "target": "hard", "threshold": 0.0, "weight": 1.0}


def test_distilled_students_learn_from_unlabelled_scans_and_the_baseline_never_reads_them(
        unlabelled_setup, tmp_path, monkeypatch):
    root, processed = unlabelled_setup
    students = {"pvkd": {"model": STUDENT},
                "baseline": {"model": STUDENT, "distill": {"point_weight": 0, "voxel_weight": 0,
                                                           "affinity_weight": 0, "unlabelled": {"weight": 0}}}}
    params = write_params(tmp_path / "params.yaml", students, unlabelled=UNLABELLED)
    params_dict = yaml.safe_load(params.read_text())
    params_dict["train"]["epochs"] = 3  # 6 steps of 2 scan slots, each unlabelled with probability 1/2
    params.write_text(yaml.safe_dump(params_dict))
    seen = shards_read(monkeypatch)
    done = distill(root, processed, params, "baseline", tmp_path)
    assert done.exit_code == 0, done.output
    assert seen == {"train", "val"} and load_model(tmp_path / "baseline.pt")[1]["train_splits"] == ["train"]
    seen.clear()
    done = distill(root, processed, params, "pvkd", tmp_path)
    assert done.exit_code == 0, done.output
    assert seen == {"train", "unlabelled", "val"} and "plus 3 unlabelled scans" in done.output
    assert load_model(tmp_path / "pvkd.pt")[1]["train_splits"] == ["train", "unlabelled"]
    assert logged_terms(tmp_path / "pvkd") == set(TERMS)
    assert "unlabelled_seg" in json.loads((tmp_path / "pvkd" / "metrics.json").read_text())["train"]
    # a cache without the unlabelled split is refused, naming the fix
    done = distill(root, processed, params, "pvkd", tmp_path / "again", cache=root / "cache-train")
    assert done.exit_code != 0 and "cache.splits" in str(done.exception)
    # the online teacher runs on the unlabelled scans themselves: no cache needed
    params_dict["distill"]["mode"] = "online"
    params.write_text(yaml.safe_dump(params_dict))
    seen.clear()
    done = distill(root, processed, params, "pvkd", tmp_path / "online", cache=tmp_path / "no-cache")
    assert done.exit_code == 0, done.output
    assert seen == {"train", "unlabelled", "val"} and "online teacher" in done.output


def test_scoring_a_model_on_sequences_it_trained_on_is_refused_unless_allowed(unlabelled_setup):
    from pvkd.errors import DataError
    from pvkd.evaluate import leak_guard, sequences_trained_on

    _, processed = unlabelled_setup
    data = ProcessedData(processed)
    record = trained_on({}, data, ["train", "unlabelled"])
    assert record["train_sequences"] == ["00", "03"]
    assert leak_guard(record, data, "val", Path("m.pt"), allow=False) == []  # held out: fine
    assert sequences_trained_on(record, data, "unlabelled") == ["03"]
    with pytest.raises(DataError, match="trained on scans of 1 sequence.*unlabelled split \\(03;.*--allow-trained-on"):
        leak_guard(record, data, "unlabelled", Path("m.pt"), allow=False)
    assert leak_guard(record, data, "unlabelled", Path("m.pt"), allow=True) == ["03"]
    # by sequence, not by file: scans of a val sequence that are not val's files (nuScenes sweeps of the val
    # scenes) count, as a record that trained on other scans of sequence 08 shows
    assert sequences_trained_on({"train_sequences": ["00", "08"]}, data, "val") == ["08"]
    # records from before train_sequences: the sequences of their train_splits in the data
    assert sequences_trained_on({}, data, "train") == ["00"]


def test_a_student_counts_what_its_teacher_saw_as_seen(setup, tmp_path):
    # a teacher that trained on val's sequence 08 too (a PVKD release file, a sweep split of the val scenes)
    from pvkd.evaluate import sequences_trained_on

    root, processed = setup
    record = torch.load(root / "teacher.pt", weights_only=True)
    save_atomic({**record, "train_sequences": ["00", "08"]}, tmp_path / "teacher.pt")
    cache = CacheConfig(splits=("train",), outputs="topk", topk=2, feature_dim=4, feature_scans=2, batch_size=2,
                        device="cpu")
    make_cache(tmp_path / "teacher.pt", processed, tmp_path / "cache", cache, torch.device("cpu"))
    params = write_params(tmp_path / "params.yaml", {"pvkd": {"model": STUDENT}})
    done = CliRunner().invoke(app, [
        "distill", "--student", "pvkd", "--params", str(params), "--data", str(processed), "--cache",
        str(tmp_path / "cache"), "--teacher", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "pvkd.pt"),
        "--live", str(tmp_path / "live"), "--checkpoints", str(tmp_path / "ckpt")])
    assert done.exit_code == 0, done.output
    student = load_model(tmp_path / "pvkd.pt")[1]
    assert student["train_splits"] == ["train"] and student["train_sequences"] == ["00", "08"]
    assert sequences_trained_on(student, ProcessedData(processed), "val") == ["08"]
