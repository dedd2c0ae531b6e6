"""Stage `cache-logits`: the frozen teacher once over every scan of cache.splits -> data/teacher_cache."""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console, progress_bar
from pvkd.params import load_params


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its cache section."),
    teacher: Path = typer.Option(Path("models/teacher.pt"), help="Teacher model record (`pvkd teacher-train`)."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (`pvkd preprocess`)."),
    out: Path = typer.Option(Path("data/teacher_cache"), help="Cache folder: manifest.json, projection.pt, "
                             "shards/<split>-NNNNN.parquet."),
) -> None:
    """Cache the teacher's outputs on every point of cache.splits, for every student to distil from.

    cache.splits: train, plus any unlabelled split students distil on. Per point, in the order
    of the shards: the teacher's class distribution (cache.outputs:
    topk, int8 or fp16 log-probabilities) and, when cache.feature_dim > 0, its point feature
    and its voxel's feature projected to feature_dim dims (int8 unit vectors) for the affinity terms. The
    manifest records the teacher's and the shards' hashes; students refuse a cache that does
    not match. Interrupted, a rerun keeps the shards already written and finishes the rest.
    """
    from pvkd.distill.cache import CacheConfig, make_cache
    from pvkd.train.distributed import resolve_device

    cfg = CacheConfig.from_dict(load_params(params, "cache"))
    device = resolve_device(cfg.device, "cache.device")
    with progress_bar(f"cache-logits on {device}") as report:
        manifest = make_cache(teacher, data, out, cfg, device, progress=report)
    points = sum(s["num_points"] for s in manifest["scans"])
    per_point = manifest["bytes_per_point"]
    size = sum(f.stat().st_size for f in (out / "shards").glob("*.parquet"))
    console.print(
        f"{out}: {len(manifest['scans'])} scans, {points:,} points; {per_point['outputs']} B/point of outputs "
        f"({cfg.outputs}) + {per_point['features']} B/point of features; {size / 2**20:.1f} MiB on disk (zstd)"
    )
