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
    from pvkd.train.checkpoint import model_for_data, trained_on
    from pvkd.train.config import TrainConfig, merge_sections
    from pvkd.train.data import ScanDataset
    from pvkd.train.engine import Trainer
    from pvkd.train.losses import SegmentationLoss
    from pvkd.train.semi import describe_semi, semi_supervised

    p = load_params(params)
    teacher = p.get("teacher") or {}
    if "model" not in teacher or "train" not in p or "source" not in teacher:
        raise ParamsError(f"{params}: needs teacher.source, a teacher.model section and a train section")
    if teacher["source"] != "train":
        import_source(teacher, data, out, live)
        return
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
        unlabelled = cfg.semi.splits  # semi-supervised: the unlabelled split too
        splits = ["train", *unlabelled]
        model, info = model_for_data(teacher["model"], processed, reads=(*splits, "val"))
        info = trained_on(info, processed, splits)  # evaluate refuses to score a model on sequences it trained on
        loss = SegmentationLoss.for_data(cfg.loss, processed)
        semi = None
        if cfg.semi.on:
            loss, semi = semi_supervised(cfg, model, loss)
        train_set = ScanDataset(data, splits, cfg.augment, cfg.seed, unlabelled=unlabelled,
                                bank=bank_for(cfg.augment, objects, processed))
        trainer = Trainer(
            model, loss.to(device).on_batch, train_set, ScanDataset(data, "val"),
            cfg, info, dist=dist, device=device, checkpoint_dir=checkpoints, live_dir=live, description="teacher",
            unlabelled_ratio=cfg.semi.ratio if cfg.semi.on else 0, semi=semi,
        )
        if dist.is_main:
            console.print(
                f"teacher: {info['model']['arch']} width {info['model']['width']}, "
                f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f} M parameters, grid "
                f"{'x'.join(map(str, model.grid.size))}; "
                f"{describe_semi(cfg.semi, train_set) if cfg.semi.on else 'labelled scans only'}; "
                f"{dist.world_size} process(es) on {device}, "
                f"{torch.get_num_threads()} threads each"
            )
        fit_and_export(trainer, cfg, out)
    finally:
        distributed.shutdown()


def import_source(teacher: dict, data: Path, out: Path, live: Path) -> None:
    """teacher.source names a published checkpoint: import it as the teacher (no training), log its check."""
    from pvkd.convert import HeadTraining
    from pvkd.stages.import_teacher import import_published
    from pvkd.train.distributed import resolve_device
    from pvkd.train.tracking import RunLog

    options = teacher["import"]
    splits = options["train_splits"]
    head = HeadTraining(steps=int(options["head_steps"]), lr=float(options["head_lr"]),
                        batch_size=int(options["head_batch_size"]))
    console.print(f"teacher: importing {teacher['source']} (teacher.source) instead of training")
    check = import_published(Path(teacher["source"]), data, out, options["point_head"], head,
                             None if splits == "auto" else list(splits), resolve_device("auto", "teacher"), 1)
    log = RunLog(live)  # the stage's metrics and plots: the import's check on one val scan
    log.log(0, check)
    log.close()


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
