"""Command `import-teacher`: a published Cylinder3D / PVKD checkpoint (spconv 1.x) -> a pvkd teacher record."""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console, progress_bar


def main(
    checkpoint: Path = typer.Argument(..., help="The published file: Cylinder3D's released SemanticKITTI "
                                      "checkpoint, or a PVKD release file (cyl_sem_*.pt, cyl_nusc_*.pt)."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder the teacher will label "
                              "(its classes and grid; `pvkd preprocess`)."),
    out: Path = typer.Option(Path("models/teacher.pt"), help="Model record to write."),
    point_head: str = typer.Option("voxel", help="voxel: no point head, a point takes its voxel's logits (the "
                                   "published model's own prediction); train: pvkd's point head, trained alone "
                                   "on the frozen imported network."),
    head_steps: int = typer.Option(300, min=1, help="Steps of point-head training (--point-head train)."),
    head_lr: float = typer.Option(1e-3, help="Adam learning rate of the point-head training."),
    head_batch_size: int = typer.Option(2, min=1, help="Train scans per point-head step."),
    train_splits: str = typer.Option("auto", help="Splits the weights were trained on, comma-separated (evaluate "
                                     "refuses to score a model on them). auto: train,val for a PVKD SemanticKITTI "
                                     "file (fine-tuned on train + val), train otherwise."),
    check_scans: int = typer.Option(1, min=0, help="Val scans to score the imported teacher on afterwards "
                                    "(0: no check)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Import a published Cylinder3D or PVKD checkpoint as the teacher, instead of training one.

    Reads the spconv 1.x file (weights only, no pickled code), detects its width, point MLP and
    compression from the shapes, renames every key, converts every conv weight to spconv 2's
    layout as the operator it was trained as (spconv 1.x shared index pairs by indice_key, so
    each block's convs ran the kernel of its first conv: pvkd's Cylinder3D with kernels:
    published), and refuses a key it cannot place or a NaN the converted model would read,
    naming the key. Writes a model record for DATA like the one teacher-train writes; then
    scores it on --check-scans val scans (point accuracy and mIoU), a quick check that the
    import reads the file as trained.
    """
    from pvkd.convert import HeadTraining
    from pvkd.train.distributed import resolve_device

    splits = None if train_splits == "auto" else [s.strip() for s in train_splits.split(",") if s.strip()]
    head = HeadTraining(steps=head_steps, lr=head_lr, batch_size=head_batch_size)
    import_published(checkpoint, data, out, point_head, head, splits, resolve_device(device, "--device"), check_scans)


def import_published(checkpoint: Path, data: Path, out: Path, point_head: str, head, splits: list[str] | None,
                     dev, check_scans: int) -> dict:
    """Import ``checkpoint`` as the teacher record ``out`` for the processed ``data`` and check it on
    ``check_scans`` val scans; returns the check's scores ({} without one). `import-teacher` and, with
    ``teacher.source`` set, `teacher-train` run this."""
    from pvkd.convert import import_checkpoint, published_grid_note
    from pvkd.errors import ParamsError
    from pvkd.shards import ProcessedData
    from pvkd.train.checkpoint import save_atomic

    if point_head not in ("voxel", "train"):
        raise ParamsError(f"point head must be voxel or train, got {point_head!r}")
    processed = ProcessedData(data)
    if point_head == "train":
        with progress_bar(f"point head, {head.steps} steps on {dev}") as report:
            model, record = import_checkpoint(checkpoint, processed, point_head, head, splits, dev, progress=report)
    else:
        model, record = import_checkpoint(checkpoint, processed, point_head, head, splits, dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(record, out)
    imported, cfg = record["imported"], record["model"]
    console.print(
        f"{out}: {imported['kind']} file {checkpoint.name} ({imported['keys']} keys, {imported['parameters']:,} "
        f"parameters), width {cfg['width']}, point MLP {cfg['point_mlp']} -> {cfg['point_feature_dim']}, compression "
        f"{cfg['compressed_dim']}, {cfg['num_classes']} classes, kernels as trained; point head: {point_head}; "
        f"trained on {record['train_splits']}"
    )
    dropped = imported["dropped_nonfinite"]
    if dropped:
        console.print(f"dropped the taps spconv 1.x never read, {sum(dropped.values()):,} NaN/inf values among them, "
                      f"in {len(dropped)} weight(s): {', '.join(sorted(dropped))}")
    if "head_training" in imported:
        h = imported["head_training"]
        console.print(f"point head: CE {h['first_loss']:.3f} -> {h['last_loss']:.3f} over {h['steps']} steps")
    note = published_grid_note(processed.grid)
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")
    return check_import(model, processed, check_scans, dev) if check_scans else {}


def check_import(model, data, count: int, device) -> dict:
    """Point accuracy and mIoU of the imported model on the first ``count`` val scans (the classes seen there)."""
    import torch

    from pvkd.metrics import scores, split_confusion
    from pvkd.train.data import ScanDataset, make_loader, split_batches

    if "val" not in set(data.index["split"]):
        console.print("check skipped: the data has no val split")
        return {}
    dataset = ScanDataset(data.root, "val")
    count = min(count, len(dataset))
    batches = split_batches(count, 1)
    confusion = split_confusion(model, make_loader(dataset, batches, workers=0), int(data.meta["num_classes"]),
                                device, heads=("point",))["point"].cpu()
    result = scores(confusion.numpy(), data.meta["dataset"], data.meta["class_names"])
    seen = confusion.sum(0)[1:] > 0  # classes with labelled points in these scans
    iou = torch.tensor(result.iou[1:])[seen]
    console.print(f"check on {count} val scan(s): point accuracy {result.accuracy:.3f}, mIoU over the "
                  f"{int(seen.sum())} classes present {float(iou.mean()):.3f} (a misread file scores near chance)")
    return {"check/scans": count, "check/accuracy": result.accuracy, "check/miou_present": float(iou.mean())}
