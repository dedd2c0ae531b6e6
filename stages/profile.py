"""`pvkd profile`: switch params.yaml to a full-size profile (a tool, not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console


def main(
    profile: Path = typer.Argument(..., help="Profile file: profiles/semantickitti.yaml, profiles/nuscenes.yaml "
                                   "or profiles/synth64.yaml (or your own)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file to merge the profile into, in place."),
) -> None:
    """Merge a profile into params.yaml: the profile holds only the keys that differ from the small default.

    Sections merge key by key; lists, numbers and nulls replace. Comments and key order of
    params.yaml are kept. `git checkout params.yaml` (or `git diff params.yaml`) undoes (or shows) it.
    """
    from pvkd.params import apply_profile

    changed = apply_profile(profile, params)
    console.print(f"{params}: {len(changed)} key(s) from {profile}: {', '.join(changed) or 'none'}")
