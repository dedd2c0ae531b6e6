"""params.yaml and the full-size profiles beside it stay in step."""

from pathlib import Path

import pytest
import yaml

from pvkd.distill.cache import CacheConfig
from pvkd.distill.objective import DistillConfig
from pvkd.evaluate import EvalConfig
from pvkd.grid import grid_from_params
from pvkd.synth import SynthConfig
from pvkd.train.config import merge_sections

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["params-semantickitti.yaml", "params-nuscenes.yaml", "params-synth64.yaml"]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def key_paths(tree, prefix=""):
    """Dotted paths of every key, descending into sections (leaves: values, lists, null splits)."""
    paths = set()
    for key, value in tree.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and key not in ("splits", "sequences"):
            paths |= key_paths(value, prefix + key + ".")
    return paths


@pytest.mark.parametrize("name", PROFILES)
def test_profile_has_every_key_of_params(name):
    assert key_paths(load(name)) == key_paths(load("params.yaml"))


@pytest.mark.parametrize("name", ["params.yaml", *PROFILES])
def test_profile_values_are_valid(name):
    p = load(name)
    SynthConfig.from_dict(p["synth"])
    grid_from_params(p["grid"])
    assert p["data"]["dataset"] in ("semantickitti", "nuscenes")
    CacheConfig.from_dict(p["cache"])
    EvalConfig.from_dict(p["evaluate"])
    for name, student in p["students"].items():
        DistillConfig.from_dict(merge_sections(p["distill"], student.get("distill")), where=name)


@pytest.mark.parametrize("name", ["params.yaml", "params-synth64.yaml"])
def test_synthetic_profiles_read_what_synth_writes(name):
    p = load(name)
    assert p["data"]["root"] == "data/raw/synthetic"
    assert p["data"]["splits"] == p["synth"]["sequences"]


def test_full_profiles_use_the_papers_grid():
    for name in PROFILES:
        assert load(name)["grid"]["cylinder"]["size"] == [480, 360, 32]


def test_synth64_profile_matches_the_generators_hdl64_profile():
    assert SynthConfig.from_dict(load("params-synth64.yaml")["synth"]) == SynthConfig.profile("hdl64")
