"""Stage `evaluate`: the teacher and every student on the val split -> metrics/evaluate.json and eval/."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pvkd.console import console, progress_bar
from pvkd.params import load_params


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its evaluate and students sections."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (`pvkd preprocess`)."),
    models: Path = typer.Option(Path("models"), help="Folder of the model records: teacher.pt and <student>.pt."),
    out: Path = typer.Option(Path("metrics/evaluate.json"), help="Metrics to write: one entry per model."),
    plots: Path = typer.Option(Path("eval"), help="Folder for per_class_iou.csv, distance_miou.csv and "
                               "sample_scan.parquet."),
    allow_trained_on: bool = typer.Option(False, "--allow-trained-on", help="Score a model on val sequences or "
                                          "scenes it trained on (without labels too) instead of refusing it; its "
                                          "metrics list them (trained_on_scored_sequences) and the report marks it."),
) -> None:
    """Score the teacher and every student on the val split by the dataset's official rules.

    Per model (the teacher, then students in params order): mIoU, per-class IoU and accuracy of
    the point head, the voxel head's mIoU, mIoU per band of 3D range (evaluate.distance_bands,
    the last band open; null where a band has no labelled point), parameters, MACs per scan
    (mean) and latency per scan (median) on the first evaluate.cost_scans val scans, one scan
    per forward, without TTA. evaluate.tta averages the point probabilities of 4 votes:
    identity, x negated, y negated, rotation of 22.5 deg about z with x-y scale 1.05.

    Writes OUT (JSON: {model: {role, description, arch, width, miou, miou_voxel_head, accuracy,
    iou, miou_by_distance, params_m, macs_g, latency_ms, tta, val_scans, train_splits,
    augmentation, trained_on_scored_sequences}}),
    PLOTS/per_class_iou.csv (model, class, iou), PLOTS/distance_miou.csv (model, band, miou) and
    PLOTS/sample_scan.parquet (val scan evaluate.sample_scan: x, y, z, label, pred_<model>), each
    file whole. A model that trained on scans of a val sequence or scene (an unlabelled split
    holding them, or nuScenes sweeps of the val scenes) is refused unless --allow-trained-on:
    its score would not be a held-out result.
    """
    from pvkd.evaluate import EvalConfig, evaluate_models, model_entries, write_outputs
    from pvkd.train.distributed import resolve_device

    p = load_params(params)
    cfg = EvalConfig.from_dict(load_params(params, "evaluate"))
    entries = model_entries(models, p.get("students") or {})
    device = resolve_device(cfg.device, "evaluate.device")

    def describe(entry, m) -> None:
        console.print(f"{entry.name}: mIoU {m['miou']:.4f} (voxel head {m['miou_voxel_head']:.4f}), "
                      f"{m['params_m']:.2f} M parameters, {m['macs_g']:.2f} GMACs, {m['latency_ms']:.1f} ms")

    tta = " with TTA" if cfg.tta else ""
    with progress_bar(f"evaluate {len(entries)} models on {device}{tta}") as report:
        result = evaluate_models(entries, data, cfg, device, progress=report, describe=describe,
                                 allow_trained_on=allow_trained_on)
    paths = write_outputs(result, out, plots)
    print_table(result.metrics)
    console.print("wrote " + ", ".join(map(str, paths)))


def _ratio(value: float, reference: float) -> str:
    return f" ({value / reference:.2f}x)" if reference else ""


def print_table(metrics: dict[str, dict]) -> None:
    """Scores and costs of every model, costs also as ratios to the teacher's."""
    t = metrics["teacher"]
    table = Table(title=f"val split, {next(iter(metrics.values()))['val_scans']} scans")
    for column in ("model", "mIoU", "vs teacher", "params M", "GMACs / scan", "latency ms"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, m in metrics.items():
        table.add_row(
            name, f"{100 * m['miou']:.2f}",
            "" if name == "teacher" else f"{100 * (m['miou'] - t['miou']):+.2f}",
            f"{m['params_m']:.2f}{_ratio(m['params_m'], t['params_m'])}",
            f"{m['macs_g']:.3f}{_ratio(m['macs_g'], t['macs_g'])}",
            f"{m['latency_ms']:.1f}{_ratio(m['latency_ms'], t['latency_ms'])}",
        )
    console.print(table)
