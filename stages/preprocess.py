"""Stage `preprocess`: raw scans -> Parquet shards, scan index, per-class frequency stats."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pvkd.console import console, progress_bar
from pvkd.datasets import open_dataset
from pvkd.grid import grid_from_params
from pvkd.params import load_params
from pvkd.preprocess import preprocess


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its data, grid and preprocess sections."),
    root: Path = typer.Option(None, help="Dataset root; overrides data.root (a SemanticKITTI or nuScenes tree)."),
    out: Path = typer.Option(Path("data/processed"), help="Processed folder: each split goes to OUT/<split>, replaced "
                             "only when every shard of that split succeeded."),
    split: list[str] = typer.Option(None, help="Split to write (repeatable); default every split of "
                                    "preprocess.splits. dvc.yaml runs one stage per split (preprocess@<split>)."),
    metrics: Path = typer.Option(None, help="Summary of the written splits (scans, points, drops, shards' hash); "
                                 "default metrics/preprocess.json."),
    workers: int = typer.Option(None, help="Worker processes; overrides preprocess.workers."),
) -> None:
    """Voxelize raw scans into Parquet shards with per-class frequency stats.

    Per split: OUT/<split>/shards/NNNNN.parquet (x, y, z, intensity, label, cell_0..2,
    point_index), OUT/<split>/index.parquet (one row per scan), OUT/<split>/stats.parquet
    (point and voxel counts per distance band x class) and OUT/<split>/meta.json (grid,
    classes, the split's summary and shards' hash). Non-finite points are dropped and
    counted; points outside the grid go to border cells.
    """
    p = load_params(params)
    data, cfg = dict(p["data"]), p["preprocess"]
    if root is not None:
        data["root"] = str(root)
    dataset = open_dataset(data)
    grid = grid_from_params(p["grid"])
    with progress_bar(f"preprocess {dataset.name}") as report:
        meta = preprocess(
            dataset,
            grid,
            out,
            splits=list(split or cfg["splits"]),
            band_edges=[float(e) for e in cfg["distance_bands"]],
            scans_per_shard=int(cfg["scans_per_shard"]),
            workers=int(workers if workers is not None else cfg["workers"]),
            progress=report,
        )
    metrics = metrics or Path("metrics/preprocess.json")
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(meta["splits"], indent=2))
    for split, s in meta["splits"].items():
        console.print(
            f"{split}{'' if s['labelled'] else ' (unlabelled)'}: {s['scans']} scans ({s['empty_scans']} empty), "
            f"{s['points']:,} points, {s['dropped_nonfinite']} non-finite dropped, "
            f"{s['outside_grid']:,} outside the grid (binned to border cells)"
        )
