"""The benches' shared layer (bench/common.py): run fingerprints, keyed folders, atomic results, and the
label-budget summary with metadata taken from the runs themselves. No training: only what decides reuse."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402  (bench/common.py, as the bench scripts import it)
import label_budget  # noqa: E402

PARAMS = {"data": {"root": "/here", "splits": {"train": ["00", "01"]}},
          "train": {"threads": 1, "augment": {"lasermix": {"probability": 0.5}}},
          "teacher": {"train": {"epochs": 4, "threads": 2}}}


def test_fingerprint_ignores_threads_and_the_data_location_only():
    moved = json.loads(json.dumps(PARAMS))
    moved["data"]["root"] = "/elsewhere"
    moved["train"]["threads"] = 8
    moved["teacher"]["train"]["threads"] = 1
    assert common.fingerprint(common.canonical(moved)) == common.fingerprint(common.canonical(PARAMS))
    reordered = {k: PARAMS[k] for k in reversed(PARAMS)}
    assert common.fingerprint(common.canonical(reordered)) == common.fingerprint(common.canonical(PARAMS))
    longer = json.loads(json.dumps(PARAMS))
    longer["teacher"]["train"]["epochs"] = 16  # a teacher trained longer is another run
    assert common.fingerprint(common.canonical(longer)) != common.fingerprint(common.canonical(PARAMS))
    assert PARAMS["train"]["threads"] == 1 and PARAMS["data"]["root"] == "/here"  # the input is left as it was


def test_a_run_is_keyed_by_its_effective_params(tmp_path):
    def run(p, threads=1):
        return common.teacher_run("lasermix", 0, p, threads, tmp_path, tmp_path, {"shards_hash": "a"})

    other = json.loads(json.dumps(PARAMS))
    other["train"]["augment"]["lasermix"]["probability"] = 1.0  # --probability
    assert run(PARAMS).fingerprint != run(other).fingerprint
    assert run(PARAMS).fingerprint == run(PARAMS, threads=2).fingerprint
    assert run(PARAMS).params["teacher"]["train"] == {"epochs": 4, "threads": 1, "seed": 0, "keep": "last"}
    data = common.teacher_run("lasermix", 0, PARAMS, 1, tmp_path, tmp_path, {"shards_hash": "b"})
    assert data.fingerprint != run(PARAMS).fingerprint  # other data, other run
    assert run(PARAMS).folder(tmp_path).name == f"lasermix-seed0-{run(PARAMS).fingerprint}"


def test_keyed_folder_reuses_a_match_and_refuses_another_spec(tmp_path):
    folder, key = common.keyed_folder(tmp_path, "baseline-seed0", {"a": 1})
    assert folder.name == f"baseline-seed0-{key}"
    assert json.loads((folder / "spec.json").read_text()) == {"fingerprint": key, "spec": {"a": 1}}
    assert common.keyed_folder(tmp_path, "baseline-seed0", {"a": 1}) == (folder, key)
    (folder / "spec.json").write_text(json.dumps({"fingerprint": key, "spec": {"a": 2}}))  # an edited folder
    with pytest.raises(RuntimeError, match="other params"):
        common.keyed_folder(tmp_path, "baseline-seed0", {"a": 1})


def test_write_result_is_atomic(tmp_path):
    out = tmp_path / "results" / "study.json"
    common.write_result({"runs": [1]}, out)
    assert json.loads(out.read_text()) == {"runs": [1]}
    with pytest.raises(TypeError):
        common.write_result({"runs": [object()]}, out)  # fails halfway through: the old file stays whole
    assert json.loads(out.read_text()) == {"runs": [1]} and [p.name for p in out.parent.iterdir()] == ["study.json"]


def test_recorded_runs_of_other_params_are_refused(tmp_path):
    runs = [{"variant": "paste", "seed": 0, "fingerprint": "abc"}, {"variant": "paste", "seed": 1}]

    def cell(r):
        return r["variant"], r["seed"]

    common.check_recorded(runs, cell, {("paste", 0): "abc", ("paste", 2): "def"}, tmp_path / "x.json")
    with pytest.raises(SystemExit, match="other params"):
        common.check_recorded(runs, cell, {("paste", 0): "xyz"}, tmp_path / "x.json")
    with pytest.raises(SystemExit, match="fingerprint None"):  # recorded before fingerprints: cannot tell
        common.check_recorded(runs, cell, {("paste", 1): "abc"}, tmp_path / "x.json")


def _runs(student, steps, scores, teacher_steps=None):
    return [{"student": student, "seed": s, "steps": steps, "miou": m, "teacher_steps": teacher_steps}
            for s, m in scores.items()]


def test_label_budget_summary_and_metadata_from_the_runs():
    result = {
        "seeds": [2], "teacher_steps": 800, "distill": {"unlabelled": {"split": None, "share": 0.5}},
        "budgets": {
            "1": {"unlabelled_streets": 3, "runs": _runs("baseline", 100, {0: 0.30, 1: 0.32, 2: 0.34})
                  + _runs("pvkd", 100, {0: 0.36, 1: 0.39, 2: 0.39}, 1600) + _runs("hinton", 100, {2: 0.40}, 1600)},
            "4": {"unlabelled_streets": 0, "runs": _runs("baseline", 100, {0: 0.49, 1: 0.52, 2: 0.55})},
        },
    }
    out = label_budget.summarize(result)
    assert out["seeds"] == [0, 1, 2] and out["train_streets"] == 4 and out["teacher_steps"] == 1600
    assert out["budgets"]["1"]["unlabelled_split"] == "unlabelled" and out["budgets"]["4"]["unlabelled_split"] is None
    assert "split" not in out["distill"]["unlabelled"]
    cells = out["summary"]["100"]["1"]
    assert list(cells) == ["baseline", "hinton", "pvkd"]  # bench order
    # label gap 19, 20, 21 points: its interval excludes 0; pvkd 6, 7, 5 points: share 6 / 20
    assert cells["baseline"]["label_gap"]["verdict"] == "gain"
    assert cells["pvkd"]["vs_baseline"]["verdict"] == "gain"
    assert cells["pvkd"]["label_gap_share"] == pytest.approx(0.3)
    # one pair: no interval, so no share either
    assert cells["hinton"]["vs_baseline"]["verdict"] == "too few seeds" and cells["hinton"]["label_gap_share"] is None
    result["budgets"]["1"]["runs"] += _runs("pvkd", 100, {0: 0.37})  # two runs of one cell
    with pytest.raises(ValueError, match="at seed 0"):
        label_budget.summarize(result)
