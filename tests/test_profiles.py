"""params.yaml and its profiles (profiles/*.yaml: only what differs, merged by `pvkd profile`): the full-size ones
and the label-efficient setting on the default synthetic data."""

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pvkd.cli import app
from pvkd.distill.cache import CacheConfig
from pvkd.distill.objective import DistillConfig
from pvkd.evaluate import EvalConfig
from pvkd.grid import grid_from_params
from pvkd.params import NAMED, profile_params
from pvkd.synth import SynthConfig
from pvkd.train.config import TrainConfig, merge_sections

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["semantickitti", "nuscenes", "synth64"]  # full size
ALL_PROFILES = [*PROFILES, "label_efficient"]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def merged(name):
    return profile_params(ROOT / "profiles" / f"{name}.yaml", ROOT / "params.yaml")


def key_paths(tree, prefix=""):
    """Dotted paths of every key, descending into sections (not into those holding names: splits, sequences)."""
    paths = set()
    for key, value in tree.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and key not in NAMED and prefix + key != "students":
            paths |= key_paths(value, prefix + key + ".")
    return paths


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_a_profile_only_sets_keys_params_yaml_has(name):
    # a typo in a profile would otherwise add a key nothing reads; teacher.train holds train keys (merged over it)
    own = {k.replace("teacher.train.", "train.", 1) for k in key_paths(load(f"profiles/{name}.yaml"))}
    assert own <= key_paths(load("params.yaml"))


@pytest.mark.parametrize("name", [None, *ALL_PROFILES])
def test_profile_values_are_valid(name):
    p = load("params.yaml") if name is None else merged(name)
    SynthConfig.from_dict(p["synth"])
    grid_from_params(p["grid"])
    assert p["data"]["dataset"] in ("semantickitti", "nuscenes")
    CacheConfig.from_dict(p["cache"])
    EvalConfig.from_dict(p["evaluate"])
    TrainConfig.from_dict(merge_sections(p["train"], p["teacher"].get("train")))
    for student, section in p["students"].items():
        DistillConfig.from_dict(merge_sections(p["distill"], section.get("distill")), where=student)
        TrainConfig.from_dict(merge_sections(p["train"], section.get("train")), where=student)


@pytest.mark.parametrize("name", [None, "synth64"])
def test_synthetic_profiles_read_what_synth_writes(name):
    p = load("params.yaml") if name is None else merged(name)
    assert p["data"]["root"] == "data/raw/synthetic"
    assert p["data"]["splits"] == p["synth"]["sequences"]


def test_label_efficient_profile_is_the_studys_setting_on_the_default_streets():
    p, default = merged("label_efficient"), load("params.yaml")
    splits = p["data"]["splits"]
    # one labelled street, the other seven train streets unlabelled, val as the default; all written by synth
    assert splits["train"] + splits["unlabelled"] == default["data"]["splits"]["train"]
    assert splits["train"] == ["00"] and splits["val"] == default["data"]["splits"]["val"]
    assert "unlabelled" not in p["data"]["labelled_splits"]  # preprocessed without its labels
    assert set(p["preprocess"]["splits"]) == {"train", "val", "unlabelled"}
    assert p["cache"]["splits"] == ["train", "unlabelled"]
    # 1600 steps of one labelled scan for every model, as bench/semi_supervised.py
    labelled_scans = p["synth"]["scans_per_sequence"] * len(splits["train"])
    teacher = TrainConfig.from_dict(merge_sections(p["train"], p["teacher"]["train"]))
    assert teacher.epochs * labelled_scans == 1600 and teacher.semi.splits == ["unlabelled"]
    assert teacher.semi.mixed_scans == 1
    for name, section in p["students"].items():
        train = TrainConfig.from_dict(merge_sections(p["train"], section.get("train")), where=name)
        distill = DistillConfig.from_dict(merge_sections(p["distill"], section.get("distill")), where=name)
        assert train.epochs * labelled_scans == 1600, name
        # the baseline reads the labelled scans only; semi trains by the recipe alone; the others distil on both
        assert train.semi.splits == (["unlabelled"] if name == "semi" else []), name
        assert distill.uses_unlabelled == (name not in ("baseline", "semi")), name


def test_full_profiles_use_the_papers_grid_and_widths():
    for name in PROFILES:
        p = merged(name)
        assert p["grid"]["cylinder"]["size"] == [480, 360, 32] and p["teacher"]["model"]["width"] == 32
        # a section merges key by key: the students keep their descriptions and distill weights, at width 16
        assert {s["model"]["width"] for s in p["students"].values()} == {16}
        assert p["students"]["baseline"]["distill"] == load("params.yaml")["students"]["baseline"]["distill"]


def test_full_profiles_carry_the_released_lasermix_weights_and_stay_off():
    # configs/lasermix/lasermix_cy3d_semi_{semantickitti,nuscenes}_10.py of the LaserMix repository
    released = {"semantickitti": {"threshold": 0.9, "mix_weight": 1.0, "consistency_weight": 250.0,
                                  "bands": [4, 5, 6, 7, 8], "pitch_deg": [-25.0, 3.0]},
                "nuscenes": {"threshold": 0.95, "mix_weight": 1.0, "consistency_weight": 500.0,
                             "bands": [3, 4, 5, 6], "pitch_deg": [-30.0, 10.0]}}
    for name, want in released.items():
        train = merged(name)["train"]
        semi = TrainConfig.from_dict(train).semi
        assert semi.split is None  # on only where a user names the unlabelled split
        assert (semi.threshold, semi.mix_weight, semi.consistency_weight, list(semi.bands)) == (
            want["threshold"], want["mix_weight"], want["consistency_weight"], want["bands"])
        assert train["augment"]["lasermix"]["pitch_deg"] == want["pitch_deg"]


def test_named_sections_are_replaced_whole():
    # the SemanticKITTI profile's synth writes one train street, not the default's val streets too
    assert merged("semantickitti")["synth"]["sequences"] == {"train": ["00"]}
    assert merged("semantickitti")["data"]["splits"] is None  # null: the official split


def test_synth64_profile_matches_the_generators_hdl64_profile():
    assert SynthConfig.from_dict(merged("synth64")["synth"]) == SynthConfig.profile("hdl64")


def test_the_profile_command_writes_the_merged_params_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    done = CliRunner().invoke(app, ["profile", str(ROOT / "profiles/synth64.yaml"), "--params", str(params)])
    assert done.exit_code == 0, done.output
    assert "grid.cylinder.size" in done.output and "synth.sensor" in done.output
    assert yaml.safe_load(params.read_text()) == merged("synth64")
    assert yaml.safe_load(params.read_text())["data"]["splits"]["val"] == ["08"]  # a string, quotes kept
    text = params.read_text()
    assert "the paper's teacher is 32 (full profiles)" in text  # params.yaml's own comments survive
    # applying it again changes nothing
    again = CliRunner().invoke(app, ["profile", str(ROOT / "profiles/synth64.yaml"), "--params", str(params)])
    assert "0 key(s)" in again.output and params.read_text() == text
