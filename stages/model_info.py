"""Command `model-info`: parameters, MACs on a real or synthetic scan, and latency of a configured backbone."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pvkd.console import console
from pvkd.errors import ParamsError
from pvkd.labels import class_names
from pvkd.params import load_params


def model_section(params: dict, name: str | None) -> dict:
    """``teacher.model`` or ``students.<name>.model`` of params.yaml."""
    if name is None:
        return {}
    if name == "teacher":
        section = params.get("teacher", {}).get("model")
    else:
        section = (params.get("students") or {}).get(name, {}).get("model")
    if section is None:
        students = sorted(params.get("students") or {})
        raise ParamsError(
            f"params has no model section for {name!r}: expected teacher.model or students.<name>.model "
            f"(students: {students or 'none'}); or pass --arch/--width"
        )
    return dict(section)


def main(
    name: str = typer.Argument(None, help="A model of params.yaml: 'teacher' or a student's name."),
    record: Path = typer.Option(None, "--model", help="A model record (models/teacher.pt, an imported teacher): "
                                "measure its network, weights loaded, instead of a params section."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads grid, teacher and students."),
    arch: str = typer.Option(None, help="Architecture (cylinder3d | minkunet | spvcnn); overrides NAME's."),
    width: int = typer.Option(None, help="Base width s; overrides NAME's (default 32 when no NAME)."),
    num_classes: int = typer.Option(None, help="Classes; default: those of data.dataset (SemanticKITTI 20)."),
    shards: Path = typer.Option(
        None, help="Processed data folder: measure on one of its scans instead of random points."
    ),
    split: str = typer.Option("val", help="Split of the scan read from --shards."),
    scan: int = typer.Option(0, help="Row of the scan in that split."),
    points: int = typer.Option(120_000, help="Points of the synthetic scan (when no --shards)."),
    device: str = typer.Option("cpu", help="Device for the MAC count and latency: cpu or cuda."),
    warmup: int = typer.Option(2, help="Untimed runs before timing."),
    runs: int = typer.Option(5, help="Timed runs; the median is reported."),
    layers: bool = typer.Option(False, help="Also print the MACs of every layer."),
    out: Path = typer.Option(None, help="Write the figures as JSON here."),
) -> None:
    """Print a backbone's parameters (with and without the point head), MACs on a scan and latency.

    MACs are counted on the actual sparse rows: a sparse conv costs index pairs x C_in x C_out
    (pairs from spconv's rulebook), Linear rows x in x out, BatchNorm rows x C. Latency is the
    median of --runs inference passes (eval, no grad) after --warmup, voxelization included.
    """
    import torch

    from pvkd.models import PointBatch, build_model, parameter_counts, voxelize
    from pvkd.models.macs import count_macs, measure_latency, synthetic_scan

    if record is not None:
        from pvkd.train.checkpoint import load_model

        model, saved = load_model(record, device)
        cfg = dict(saved["model"])
    else:
        p = load_params(params)
        if name is None and arch is None:
            raise ParamsError("give a model NAME from params.yaml (teacher or a student), --arch or --model")
        cfg = model_section(p, name)
        cfg.setdefault("width", 32)
        cfg.setdefault("num_classes", len(class_names(p["data"]["dataset"])))
        for key, value in (("arch", arch), ("width", width), ("num_classes", num_classes)):
            if value is not None:
                cfg[key] = value
        if "grid" not in p:
            raise ParamsError(f"{params}: no 'grid' section")
        model = build_model(cfg, p["grid"]).to(device)

    if shards is not None:
        from pvkd.shards import ProcessedData

        data = ProcessedData(shards)
        rows = data.scans(split)
        if scan >= len(rows):
            raise ParamsError(f"{shards}: split {split!r} has {len(rows)} scans, no row {scan}")
        s = data.read(rows.iloc[scan])
        batch = PointBatch.from_scans([(torch.from_numpy(s.xyz.copy()), torch.from_numpy(s.intensity.copy()))])
        source = f"{shards} {split}[{scan}] {rows.iloc[scan]['scan_id']}"
    else:
        batch = synthetic_scan(points)
        source = f"synthetic, {points:,} points"
    batch = batch.to(device)

    counts = parameter_counts(model)
    macs = count_macs(model, batch)
    latency = measure_latency(model, batch, warmup=warmup, runs=runs)
    voxels = voxelize(model.grid, batch).num_voxels

    g = 1e9
    console.print(
        f"[bold]{cfg['arch']}[/bold] width {cfg['width']}, {cfg['num_classes']} classes, grid {model.grid.kind} "
        f"{'x'.join(map(str, model.grid.size))}"
    )
    console.print(f"scan: {source}; {batch.num_points:,} points -> {voxels:,} voxels; device {device}")
    console.print(
        f"parameters: {counts['total'] / 1e6:.3f} M total, {counts['without_point_head'] / 1e6:.3f} M without the "
        f"point head ({counts['point_head'] / 1e6:.3f} M)"
    )
    kinds = ", ".join(f"{k} {v / g:.2f}" for k, v in sorted(macs.by_kind().items()))
    console.print(f"MACs: {macs.total / g:.2f} G ({kinds})")
    console.print(f"latency: {latency['median_ms']:.1f} ms median of {runs} (min {latency['min_ms']:.1f})")
    if layers:
        for layer in macs.layers:
            console.print(
                f"  {layer.name:<48} {layer.kind:<12} rows {layer.rows:>10,}  MACs {layer.macs / 1e6:>10.2f} M"
            )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "model": cfg,
            "grid": {"kind": model.grid.kind, "size": list(model.grid.size)},
            "scan": source,
            "points": batch.num_points,
            "voxels": voxels,
            "device": device,
            "parameters": counts,
            "macs": macs.as_dict(),
            "latency": latency,
        }
        out.write_text(json.dumps(result, indent=2))
