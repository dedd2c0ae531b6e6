"""Stage `teacher-train`: the teacher trained on the processed shards -> models/teacher.pt and its curves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer
from rich.table import Table

from pvkd.console import console
from pvkd.errors import ParamsError
from pvkd.params import load_params


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its teacher and train sections."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (`pvkd preprocess`)."),
    out: Path = typer.Option(Path("models/teacher.pt"), help="Model record to write: weights, model section, "
                             "grid, shards' hash, val scores."),
    live: Path = typer.Option(Path("dvclive/teacher"), help="dvclive folder: metrics.json and plots/ of the run."),
    checkpoints: Path = typer.Option(Path("checkpoints/teacher"), help="Resumable state (last.pt, best.pt); a "
                                     "rerun of an unfinished run with the same config resumes from it."),
    objects: Path = typer.Option(Path("data/objects.parquet"), help="Object bank (`pvkd objects`); read only "
                                 "when train.augment.paste or polarmix.copies is on."),
) -> None:
    """Train the teacher network (teacher.model) with the train recipe (train, teacher.train over it).

    Loss: cross-entropy + Lovász-softmax on the occupied voxels, cross-entropy on the point
    head. Validates on the val split by the dataset's official rules every train.val_every
    steps and keeps the best (or last, train.keep) weights in OUT. With train.processes > 1
    (auto: one per GPU) it re-runs itself under torchrun, one process per GPU (DDP); under
    torchrun it is one of the processes. Interrupted (Ctrl-C, SIGTERM) or killed, a rerun
    resumes from CHECKPOINTS/last.pt.
    """
    import torch

    from pvkd.objects import bank_for
    from pvkd.shards import ProcessedData
    from pvkd.train import distributed
    from pvkd.train.checkpoint import model_for_data
    from pvkd.train.config import TrainConfig, merge_sections
    from pvkd.train.data import ScanDataset
    from pvkd.train.engine import Trainer
    from pvkd.train.losses import SegmentationLoss

    p = load_params(params)
    teacher = p.get("teacher") or {}
    if "model" not in teacher or "train" not in p:
        raise ParamsError(f"{params}: needs a teacher.model section and a train section")
    cfg = TrainConfig.from_dict(merge_sections(p["train"], teacher.get("train")), where="train (teacher.train over it)")

    processes = distributed.local_processes(cfg)
    if processes > 1 and not distributed.under_torchrun():
        argv = ["teacher-train", "--params", str(params), "--data", str(data), "--out", str(out),
                "--live", str(live), "--checkpoints", str(checkpoints), "--objects", str(objects)]
        console.print(f"teacher-train: {processes} processes under torchrun")
        raise typer.Exit(subprocess.call(distributed.torchrun_command(processes, argv)))

    dist, device = distributed.setup(cfg)
    try:
        processed = ProcessedData(data)
        model, info = model_for_data(teacher["model"], processed)
        info["train_splits"] = ["train"]  # evaluate refuses to score a model on scans it trained on
        loss = SegmentationLoss.for_data(cfg.loss, processed).to(device)
        trainer = Trainer(
            model, loss.on_batch,
            ScanDataset(data, "train", cfg.augment, cfg.seed, bank=bank_for(cfg.augment, objects, processed)),
            ScanDataset(data, "val"),
            cfg, info, dist=dist, device=device, checkpoint_dir=checkpoints, live_dir=live, description="teacher",
        )
        if dist.is_main:
            console.print(
                f"teacher: {info['model']['arch']} width {info['model']['width']}, "
                f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f} M parameters, grid "
                f"{'x'.join(map(str, model.grid.size))}; {dist.world_size} process(es) on {device}, "
                f"{torch.get_num_threads()} threads each"
            )
        fit_and_export(trainer, cfg, out)
    finally:
        distributed.shutdown()


def fit_and_export(trainer, cfg, out: Path) -> None:
    """Run the trainer; rank 0 writes the kept weights (train.keep) with the recipe to OUT and prints their scores."""
    from pvkd.train.checkpoint import save_atomic

    result = trainer.fit()
    if trainer.dist.is_main:
        record = result.best_record if cfg.keep == "best" else result.last_record
        save_atomic({**record, "train": cfg.as_dict()}, out)
        print_scores(record, out)


def print_scores(record: dict, out: Path) -> None:
    val = record["val"]
    console.print(f"{out}: weights of step {record['step']}, val mIoU {val['miou']:.4f}, accuracy "
                  f"{val['accuracy']:.4f}")
    table = Table()
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in val["iou"].items():
        table.add_row(name, f"{iou:.4f}")
    console.print(table)
