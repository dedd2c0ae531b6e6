"""The committed dvc.lock describes today's pipeline: every stage of dvc.yaml is in it, and the params it recorded
are params.yaml's (a clone then sees only missing outputs, not changed params). Refresh it with a full
`dvc repro` of the default when this fails."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def value_at(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_every_stage_of_dvc_yaml_is_locked():
    listed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert listed and set(listed) == set(locked), f"not locked: {set(listed) - set(locked)}; " \
        f"gone from dvc.yaml: {set(locked) - set(listed)}"


def test_the_locked_params_are_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    drift = []
    for stage, entry in yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"].items():
        for key, locked in (entry.get("params") or {}).get("params.yaml", {}).items():
            if value_at(params, key) != locked:
                drift.append(f"{stage}: {key}")
    assert not drift, f"dvc.lock holds other values than params.yaml for {drift}: run `dvc repro` and commit it"
