"""Loading params.yaml: every knob of every stage lives there."""

from __future__ import annotations

from pathlib import Path

import yaml

from pvkd.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS, section: str | None = None) -> dict:
    """The whole params file, or one section of it, with errors that name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run from the project root or pass --params")
    params = yaml.safe_load(path.read_text()) or {}
    if section is None:
        return params
    if section not in params:
        raise ParamsError(f"{path}: no '{section}' section; copy it from the project's params.yaml")
    return params[section]


def apply_profile(profile: str | Path, params: str | Path = DEFAULT_PARAMS) -> list[str]:
    """Merge a profile (only the keys that differ from the default) into ``params``, keeping its comments.

    Sections merge key by key (``splits`` and ``sequences``, which hold names, are replaced whole);
    any other value (a list, a number, null) replaces the one in ``params``. Returns the dotted keys that
    changed. The full-size profiles are written this way so that a new key is written once, in params.yaml,
    and reaches every profile."""
    from ruamel.yaml import YAML

    from pvkd.atomic import atomic_path

    profile, params = Path(profile), Path(params)
    for path in (profile, params):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
    yaml_rt = YAML()  # round trip: comments, key order and quotes ('08' stays a string) survive
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 120
    target = yaml_rt.load(params.read_text())
    overlay = yaml_rt.load(profile.read_text()) or {}
    changed = merge_profile(target, overlay)
    with atomic_path(params) as tmp, open(tmp, "w") as f:
        yaml_rt.dump(target, f)
    return changed


def profile_params(profile: str | Path, params: str | Path = DEFAULT_PARAMS) -> dict:
    """``params`` with ``profile`` merged in, as a dict: what `pvkd profile` would write (benches and tests use it)."""
    merged = load_params(params)
    merge_profile(merged, yaml.safe_load(Path(profile).read_text()) or {})
    return merged


# sections whose keys are names (splits, sequences), not settings: a profile's value replaces them whole
NAMED = ("splits", "sequences")


def merge_profile(into: dict, overlay: dict, prefix: str = "") -> list[str]:
    """Merge ``overlay`` into ``into`` in place: sections key by key (but :data:`NAMED` ones whole), anything else
    replaced. Returns the dotted keys that changed."""
    changed = []
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and key not in NAMED:
            changed += merge_profile(into[key], value, f"{prefix}{key}.")
        elif key not in into or into[key] != value:
            into[key] = value
            changed.append(prefix + key)
    return changed
