"""Benchmark submission files from a model record: one label per point of every original scan.

Layouts (what the benchmarks' servers and scorers read):

* SemanticKITTI: ``<out>/sequences/NN/predictions/NNNNNN.label``, uint32 *raw* ids (training ids
  mapped back through ``learning_map_inv``, :func:`pvkd.datasets.semantickitti.write_predictions`),
  named after the scan's ``.bin``.
* nuScenes-lidarseg: ``<out>/lidarseg/<split>/<lidar sample_data token>_lidarseg.bin``, uint8
  challenge ids 1..16, and ``<out>/<split>/submission.json`` with the ``meta`` block (lidar only),
  written last, so its presence says the folder is complete.

Points that preprocess dropped (a non-finite coordinate) are not in the shards, but the file
must still have one entry per point of the source scan. The shards keep each kept point's source
row (``point_index``); a dropped point gets the prediction of the nearest kept point before it in
file order (the one after it when none comes before): consecutive rows of a scan are neighbouring
beams, which is the best guess for a point whose coordinates are unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pvkd.atomic import atomic_path
from pvkd.console import console
from pvkd.datasets.semantickitti import write_predictions as write_semantickitti_labels
from pvkd.errors import DataError
from pvkd.evaluate import check_model_fits, predict_split, sequences_trained_on
from pvkd.shards import ProcessedData
from pvkd.train.data import ScanDataset

NUSCENES_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def fill_dropped(pred: np.ndarray, point_index: np.ndarray, num_source_points: int) -> np.ndarray:
    """Predictions of the kept points (source rows ``point_index``, increasing) -> one per source row.

    A kept row keeps its own prediction; a dropped row takes that of the nearest kept row before it
    (after it, for rows before the first kept one).
    """
    if len(pred) != len(point_index):
        raise ValueError(f"{len(pred)} predictions for {len(point_index)} kept points")
    if len(pred) == 0:
        if num_source_points == 0:  # an empty sweep: an empty file
            return pred
        raise DataError("a scan with no finite point has no prediction to give its points")
    before = np.searchsorted(point_index, np.arange(num_source_points), side="right") - 1
    return pred[np.maximum(before, 0)]


def submission_path(out: Path, dataset: str, split: str, row) -> Path:
    """Where the benchmark expects the predictions of the scan of index row ``row``."""
    if dataset == "semantickitti":
        return out / "sequences" / row["sequence"] / "predictions" / f"{Path(row['source_path']).stem}.label"
    if not row["token"]:
        raise DataError(f"scan {row['scan_id']}: no nuScenes sample_data token in the scan index; preprocess again")
    return out / "lidarseg" / split / f"{row['token']}_lidarseg.bin"


def write_scan(path: Path, dataset: str, pred: np.ndarray) -> None:
    """One scan's file, whole: raw uint32 ids (SemanticKITTI) or uint8 challenge ids (nuScenes)."""
    with atomic_path(path) as tmp:
        if dataset == "semantickitti":
            write_semantickitti_labels(tmp, pred)
        else:
            pred.astype(np.uint8).tofile(tmp)


def write_submission(
    model_path: Path, data: Path, split: str, out: Path, device: torch.device, tta: bool = False,
    batch_size: int = 4, progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Label every scan of ``split`` with the point head of the model record and write the submission
    layout under ``out``; returns ``{"dataset", "scans", "points", "dropped"}``."""
    import json

    from pvkd.train.checkpoint import load_model

    processed = ProcessedData(data)
    model, record = load_model(model_path, device)
    check_model_fits(record, processed, model_path)
    if overlap := sequences_trained_on(record, processed, split):
        console.print(
            f"[bold red]warning:[/] {model_path} trained on scans of {len(overlap)} sequence(s) of the {split} split "
            "(as unlabelled scans, or labelled): its predictions are a semi-supervised (transductive) result; "
            "benchmark rules (SemanticKITTI, nuScenes) ask you to say so when you submit them"
        )
    dataset_name = record["dataset"]
    scans = ScanDataset(data, split, keep_empty=True)  # a file for every scan, empty ones too
    rows = scans.rows
    summary = {"dataset": dataset_name, "scans": 0, "points": 0, "dropped": 0}
    for batch, preds in predict_split(model, scans, batch_size, tta, device, heads=("point",)):
        for k, position in enumerate(batch.positions.tolist()):
            row = rows.iloc[position]
            kept = preds["point"][batch.points.batch == k].numpy()
            point_index = processed.read(row, ["point_index"])["point_index"]
            full = fill_dropped(kept, point_index, int(row["num_source_points"]))
            write_scan(submission_path(out, dataset_name, split, row), dataset_name, full)
            summary["scans"] += 1
            summary["points"] += len(full)
            summary["dropped"] += len(full) - len(kept)
            if progress:
                progress(summary["scans"], len(rows))
    if dataset_name == "nuscenes":
        with atomic_path(out / split / "submission.json") as tmp:
            tmp.write_text(json.dumps({"meta": NUSCENES_META}, indent=2) + "\n")
    return summary
