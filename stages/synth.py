"""Stage `synth`: the embedded default dataset, synthetic LiDAR in the SemanticKITTI layout."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pvkd.console import console, progress_bar
from pvkd.errors import ParamsError
from pvkd.params import load_params


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its synth section."),
    out: Path = typer.Option(Path("data/raw/synthetic"), help="Dataset root to write (replaced whole at the end)."),
    metrics: Path = typer.Option(Path("metrics/synth.json"), help="Realism figures of the generated data."),
) -> None:
    """Generate the embedded synthetic LiDAR dataset (SemanticKITTI layout).

    Ray-casts procedural street scenes with a spinning multi-beam sensor and writes
    OUT/sequences/NN/{velodyne/*.bin, labels/*.label, poses.txt, calib.txt} exactly
    as SemanticKITTI lays them out, deterministically from synth.seed, and prints how the
    data compares with SemanticKITTI (class shares, points per scan, range fall-off).
    """
    from pvkd.synth import SynthConfig, generate, realism_checks, realism_report

    try:
        cfg = SynthConfig.from_dict(load_params(params, "synth"))
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{params}: synth section: {err}") from None
    with progress_bar("synth scans") as report:
        summary = generate(out, cfg, progress=report)
    console.print(realism_report(summary))
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps({**summary, "checks": realism_checks(summary)}, indent=2, default=float))
