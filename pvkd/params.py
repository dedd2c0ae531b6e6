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
