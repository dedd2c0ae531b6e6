"""Command `predict`: a model's predictions in a benchmark's submission format."""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console, progress_bar


def main(
    model: Path = typer.Option(..., help="Model record (models/teacher.pt, models/<student>.pt)."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder holding the split "
                              "(add test to preprocess.splits for a test submission)."),
    split: str = typer.Option("val", help="Split to label: val or test."),
    out: Path = typer.Option(Path("predictions"), help="Submission folder to write."),
    tta: bool = typer.Option(False, help="Average 4 test-time-augmentation votes (as `pvkd evaluate`)."),
    batch_size: int = typer.Option(4, min=1, help="Scans per forward."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Write a model's point-head predictions for a split in the benchmark's submission layout.

    SemanticKITTI: OUT/sequences/NN/predictions/NNNNNN.label, uint32 raw ids (learning_map_inv).
    nuScenes: OUT/lidarseg/SPLIT/<lidar sample_data token>_lidarseg.bin, uint8 ids 1..16, and
    OUT/SPLIT/submission.json (lidar only). Every file has one entry per point of the source
    scan: a point preprocess dropped (non-finite) gets the prediction of the nearest kept point
    before it in the file (after it, if none is before).
    """
    from pvkd.predict import write_submission
    from pvkd.train.distributed import resolve_device

    with progress_bar(f"predict {split}") as report:
        summary = write_submission(model, data, split, out, resolve_device(device, "--device"), tta=tta,
                                   batch_size=batch_size, progress=report)
    console.print(
        f"{out}: {summary['dataset']} {split} submission of {model}, {summary['scans']} scans, "
        f"{summary['points']:,} points ({summary['dropped']:,} dropped by preprocess, labelled from a neighbour)"
    )
