"""Evaluation of trained models on a split: scores by the dataset's official rules, IoU by distance, cost.

What :func:`evaluate_models` measures for each model record (the teacher, then every student):

* **scores**: one confusion matrix per head accumulated over every scan of the split, scored by
  the rules of the dataset the model was trained on (``record["dataset"]``, see
  :mod:`pvkd.metrics`). The point head (the point-wise refinement head) labels the points; the
  voxel head's mIoU (each point labelled by its voxel, as Cylinder3D does) is a secondary figure.
* **IoU by distance**: one confusion matrix of the point head per distance band, each scored by
  the same rules. A point's distance is its 3D range ``|(x, y, z)|``, as in the dataset's
  ``evaluate_semantics_by_distance.py`` and in the preprocess stats (:func:`pvkd.preprocess.band_of`:
  band ``i`` holds ``edges[i] <= d < edges[i+1]``, the last band is open). A band without a
  labelled point has no score (``None``).
* **test-time augmentation** (``evaluate.tta``): the softmax of the logits averaged over the
  votes of :func:`tta_votes`. A vote moves the points (a linear map of x, y, z) and nothing
  else: the model returns logits for the points in the order it got them, so the votes' outputs
  line up row by row and every prediction stays with its point.
* **cost** (:func:`measure_cost`), on the first ``cost_scans`` scans of the split, one scan per
  forward, the same scans for every model, always without TTA (one forward is the cost of the
  network): parameters (all of them, point head included), MACs counted on each scan's actual
  sparse rows (:func:`pvkd.models.macs.count_macs`) averaged over the scans, and latency: the
  median over the scans of each scan's median of ``latency_runs`` timed forwards after one
  warm-up (:func:`pvkd.models.macs.measure_latency`, voxelization included).

Outputs are written by :func:`write_outputs`, each file whole (temporary name, then rename).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pvkd.atomic import atomic_path
from pvkd.errors import DataError, ParamsError
from pvkd.metrics import HEADS, confusion_matrix, head_logits, predict, scores
from pvkd.models import PointBatch, SparseSegmentationModel, parameter_counts
from pvkd.preprocess import band_labels, band_of
from pvkd.shards import ProcessedData
from pvkd.train.config import describe_augment, section_fields
from pvkd.train.data import ScanDataset, TrainBatch, make_loader, split_batches
from pvkd.train.distributed import DEVICES

SPLIT = "val"
# the TTA vote that rotates: about z by this angle and scales x-y by this factor, both inside the
# training augmentation's range (rotation +-45 deg, scale 0.95-1.05), so the model has seen such scans
TTA_ROTATION_DEG = 22.5
TTA_SCALE = 1.05

Progress = Callable[[], None]  # called once per scan processed


@dataclass(frozen=True)
class EvalConfig:
    """The ``evaluate`` params section."""

    tta: bool  # average the point probabilities over tta_votes()
    batch_size: int  # scans per forward
    distance_bands: list[float]  # band edges [m]; the last band is open
    cost_scans: int  # first scans of the split that MACs and latency are measured on
    latency_runs: int  # timed forwards per scan, after one warm-up
    sample_scan: int  # position in the split of the scan whose points and predictions are saved
    device: str  # auto | cpu | cuda
    allow_trained_on: bool  # score models on val sequences they (or their teacher) trained on, marked, not refused

    @classmethod
    def from_dict(cls, section: dict) -> EvalConfig:
        section = section_fields(cls, section, "evaluate")
        cfg = cls(**{**section, "distance_bands": [float(e) for e in section["distance_bands"]],
                     "allow_trained_on": bool(section["allow_trained_on"])})
        edges = cfg.distance_bands
        if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ParamsError(f"evaluate.distance_bands must rise from 0, got {edges}")
        if cfg.batch_size < 1 or cfg.cost_scans < 1 or cfg.latency_runs < 1 or cfg.sample_scan < 0:
            raise ParamsError("evaluate: batch_size, cost_scans and latency_runs must be >= 1, sample_scan >= 0")
        if cfg.device not in DEVICES:
            raise ParamsError(f"evaluate.device must be one of {DEVICES}, got {cfg.device!r}")
        return cfg

    @property
    def bands(self) -> list[str]:
        """Band names: ``[0, 10, 20]`` -> ``['0-10', '10-20', '20+']``."""
        return band_labels(self.distance_bands)


# ---------------------------------------------------------------- predictions


def tta_votes(tta: bool) -> list[torch.Tensor]:
    """The linear maps of x, y, z that the votes apply to the points (z is never changed).

    Without TTA only the identity. With TTA four votes: identity; x negated; y negated; a
    rotation about z by ``TTA_ROTATION_DEG`` followed by an x-y scale of ``TTA_SCALE``.
    """
    identity = torch.eye(3)
    if not tta:
        return [identity]
    a = math.radians(TTA_ROTATION_DEG)
    rotation = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return [
        identity,
        torch.diag(torch.tensor([-1.0, 1.0, 1.0])),
        torch.diag(torch.tensor([1.0, -1.0, 1.0])),
        torch.diag(torch.tensor([TTA_SCALE, TTA_SCALE, 1.0])) @ rotation,
    ]


@torch.no_grad()
def vote_probabilities(
    model: SparseSegmentationModel, points: PointBatch, votes: list[torch.Tensor], heads=HEADS
) -> dict[str, torch.Tensor]:
    """Per head, the (N, C) class probabilities of every point averaged over the votes (row n = point n)."""
    total: dict[str, torch.Tensor] = {}
    for matrix in votes:
        moved = PointBatch(points.xyz @ matrix.to(points.xyz).T, points.intensity, points.batch, points.batch_size)
        output = model(moved)
        for head in heads:
            p = torch.softmax(head_logits(output, head).float(), dim=1)
            total[head] = total[head] + p if head in total else p
    return {head: p / len(votes) for head, p in total.items()}


def predict_split(
    model: SparseSegmentationModel, dataset: ScanDataset, batch_size: int, tta: bool, device: torch.device,
    heads=HEADS,
) -> Iterator[tuple[TrainBatch, dict[str, torch.Tensor]]]:
    """Every batch of ``dataset`` (in split order, on the CPU) with each head's predicted class per point
    (never 0, see :func:`pvkd.metrics.predict`), on the CPU, aligned with the batch's points."""
    model.eval()
    votes = tta_votes(tta)
    loader = make_loader(dataset, split_batches(len(dataset), batch_size), workers=0)
    for batch in loader:
        if batch.points.num_points == 0:  # empty scans only (kept for submissions): nothing to run
            yield batch, {head: torch.zeros(0, dtype=torch.long) for head in heads}
            continue
        probabilities = vote_probabilities(model, batch.points.to(device), votes, heads)
        yield batch, {head: predict(p).cpu() for head, p in probabilities.items()}


def check_model_fits(record: dict, data: ProcessedData, path: Path) -> None:
    """A model scores a dataset only if it was trained on its classes (the grid is the model's own)."""
    if record["dataset"] != data.meta["dataset"] or list(record["class_names"]) != list(data.meta["class_names"]):
        raise DataError(
            f"{path}: a {record['dataset']} model with {len(record['class_names'])} classes cannot label "
            f"{data.root} ({data.meta['dataset']}, {len(data.meta['class_names'])} classes); retrain it on this data"
        )


def sequences_trained_on(record: dict, data: ProcessedData, split: str) -> list[str]:
    """The sequences (SemanticKITTI) or scenes (nuScenes) of ``split`` that the model trained on, labelled or not.

    By sequence, not by file: a nuScenes sweep split of the val scenes holds none of the val keyframes'
    files, yet its scans are the keyframes' 20 Hz neighbours. Records from before ``train_sequences``
    compare with the sequences of their ``train_splits`` in ``data``."""
    trained = record.get("train_sequences")
    if trained is None:
        splits = record.get("train_splits", ["train"])
        trained = data.index.loc[data.index["split"].isin(splits), "sequence"]
    scored = data.index.loc[data.index["split"] == split, "sequence"]
    return sorted(set(scored.astype(str)) & set(map(str, trained)))


def leak_guard(record: dict, data: ProcessedData, split: str, path: Path, allow: bool) -> list[str]:
    """Scoring a model on sequences it trained on (e.g. distilled on the val scenes' sweeps as unlabelled scans)
    would report a transductive result as a held-out one: refused unless ``allow``; returns the overlap."""
    overlap = sequences_trained_on(record, data, split)
    if overlap and not allow:
        raise DataError(
            f"{path}: trained on scans of {len(overlap)} sequence(s)/scene(s) of the {split} split "
            f"({', '.join(overlap[:5])}{', ...' if len(overlap) > 5 else ''}; train_splits "
            f"{record.get('train_splits')}, or its teacher's); its scores would not be a held-out result. Take "
            "those sequences out of the unlabelled split (data.splits), or set evaluate.allow_trained_on (or pass "
            "--allow-trained-on) to score it anyway, marked in the metrics and the report"
        )
    return overlap


# ---------------------------------------------------------------- one model


@dataclass
class ModelEvaluation:
    """What one model's pass over the split accumulated."""

    confusion: dict[str, np.ndarray]  # head -> (C, C) int64, rows = prediction
    band_confusion: np.ndarray  # (bands, C, C) int64 of the point head
    sample_pred: np.ndarray | None  # (N,) uint8 point-head prediction of the sample scan
    scans: int


def point_range(xyz: torch.Tensor) -> np.ndarray:
    """The distance that sorts points into bands: 3D range, as the official by-distance scorer uses."""
    return torch.linalg.vector_norm(xyz.double(), dim=1).numpy()


def evaluate_model(
    model: SparseSegmentationModel, dataset: ScanDataset, cfg: EvalConfig, device: torch.device,
    sample_scan: int | None = None, progress: Progress | None = None,
) -> ModelEvaluation:
    """Confusion matrices of every head, and of the point head per distance band, over the whole split."""
    num_classes = model.num_classes
    bands = len(cfg.distance_bands)
    confusion = {head: torch.zeros(num_classes, num_classes, dtype=torch.int64) for head in HEADS}
    band_confusion = torch.zeros(bands, num_classes, num_classes, dtype=torch.int64)
    sample_pred, scans = None, 0
    for batch, preds in predict_split(model, dataset, cfg.batch_size, cfg.tta, device):
        for head in HEADS:
            confusion[head] += confusion_matrix(preds[head], batch.labels, num_classes)
        band = torch.from_numpy(band_of(point_range(batch.points.xyz), cfg.distance_bands))
        for b in range(bands):
            inside = band == b
            band_confusion[b] += confusion_matrix(preds["point"][inside], batch.labels[inside], num_classes)
        for k, position in enumerate(batch.positions.tolist()):
            if position == sample_scan:
                sample_pred = preds["point"][batch.points.batch == k].numpy().astype(np.uint8)
            scans += 1
            if progress:
                progress()
    return ModelEvaluation({h: c.numpy() for h, c in confusion.items()}, band_confusion.numpy(), sample_pred, scans)


def measure_cost(
    model: SparseSegmentationModel, dataset: ScanDataset, cfg: EvalConfig, device: torch.device,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Parameters [M], MACs per scan [G] (mean) and latency per scan [ms] (median of the per-scan medians)
    on the first ``cfg.cost_scans`` scans of ``dataset``, one scan per forward, without TTA."""
    from pvkd.models.macs import count_macs, measure_latency

    macs, latency = [], []
    for position in range(min(cfg.cost_scans, len(dataset))):
        scan = dataset[(0, position)]
        points = PointBatch.from_scans([(torch.from_numpy(scan["xyz"]), torch.from_numpy(scan["intensity"]))])
        points = points.to(device)
        macs.append(count_macs(model, points).total)
        latency.append(measure_latency(model, points, warmup=1, runs=cfg.latency_runs)["median_ms"])
        if progress:
            progress()
    return {
        "params_m": parameter_counts(model)["total"] / 1e6,
        "macs_g": float(np.mean(macs)) / 1e9,
        "latency_ms": float(np.median(latency)),
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN: a score that does not exist is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def model_metrics(
    evaluation: ModelEvaluation, record: dict, cost: dict, cfg: EvalConfig, role: str, description: str
) -> dict:
    """One model's entry of metrics/evaluate.json (the keys the report reads; see the stage's help)."""
    rules, names = record["dataset"], record["class_names"]
    point = scores(evaluation.confusion["point"], rules, names)
    voxel = scores(evaluation.confusion["voxel"], rules, names)
    by_distance = {}
    for band, matrix in zip(cfg.bands, evaluation.band_confusion):
        labelled = matrix[:, 1:].sum() > 0  # a band without a labelled point has no score
        by_distance[band] = _finite(scores(matrix, rules, names).miou) if labelled else None
    return {
        "role": role,
        "description": description,
        "arch": record["model"]["arch"],
        "width": int(record["model"]["width"]),
        "miou": _finite(point.miou),
        "miou_voxel_head": _finite(voxel.miou),
        "accuracy": _finite(point.accuracy),
        "iou": {name: _finite(v) for name, v in point.per_class().items()},
        "miou_by_distance": by_distance,
        "params_m": cost["params_m"],
        "macs_g": cost["macs_g"],
        "latency_ms": cost["latency_ms"],
        "tta": bool(cfg.tta),
        "val_scans": evaluation.scans,
        "train_splits": list(record.get("train_splits", ["train"])),  # an unlabelled split: semi-supervised
        "augmentation": describe_augment((record.get("train") or {}).get("augment")),
    }


# ---------------------------------------------------------------- every model


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str  # teacher | student
    description: str
    path: Path


def model_entries(models: Path, students: dict) -> list[ModelEntry]:
    """The teacher, then the students in params order; a missing record names the stage that writes it."""
    if "teacher" in students:
        raise ParamsError("students: 'teacher' is the teacher's name; rename that student")
    entries = [ModelEntry("teacher", "teacher", "teacher", models / "teacher.pt")]
    entries += [ModelEntry(name, "student", str((s or {}).get("description", "")), models / f"{name}.pt")
                for name, s in students.items()]
    for entry in entries:
        if not entry.path.is_file():
            stage = "teacher-train" if entry.role == "teacher" else f"distill@{entry.name}"
            raise DataError(f"{entry.path}: not found; run `dvc repro {stage}` first")
    return entries


@dataclass
class Evaluation:
    metrics: dict[str, dict]  # metrics/evaluate.json
    sample_scan: pd.DataFrame  # eval/sample_scan.parquet


def evaluate_models(
    entries: list[ModelEntry], data: Path, cfg: EvalConfig, device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    describe: Callable[[ModelEntry, dict], None] | None = None,
    allow_trained_on: bool = False,
) -> Evaluation:
    """Evaluate every model on the val split of ``data``; ``progress(done, total)`` counts scans passed
    (val scans and cost scans of every model), ``describe(entry, metrics)`` is told each model's result.
    ``allow_trained_on``: score models that trained on val sequences too (see :func:`leak_guard`)."""
    from pvkd.train.checkpoint import load_model

    processed = ProcessedData(data)
    dataset = ScanDataset(data, SPLIT)
    if cfg.sample_scan >= len(dataset):
        raise ParamsError(f"evaluate.sample_scan is {cfg.sample_scan} but the {SPLIT} split has {len(dataset)} scans")
    scan = dataset[(0, cfg.sample_scan)]
    sample = pd.DataFrame({"x": scan["xyz"][:, 0], "y": scan["xyz"][:, 1], "z": scan["xyz"][:, 2],
                           "label": scan["label"].astype(np.uint8)})
    per_model = len(dataset) + min(cfg.cost_scans, len(dataset))
    done, total = 0, per_model * len(entries)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    metrics = {}
    for entry in entries:
        model, record = load_model(entry.path, device)
        check_model_fits(record, processed, entry.path)
        overlap = leak_guard(record, processed, SPLIT, entry.path, allow_trained_on or cfg.allow_trained_on)
        evaluation = evaluate_model(model, dataset, cfg, device, sample_scan=cfg.sample_scan, progress=tick)
        cost = measure_cost(model, dataset, cfg, device, progress=tick)
        metrics[entry.name] = model_metrics(evaluation, record, cost, cfg, entry.role, entry.description)
        metrics[entry.name]["trained_on_scored_sequences"] = overlap  # not empty: not a held-out score
        sample[f"pred_{entry.name}"] = evaluation.sample_pred
        if describe:
            describe(entry, metrics[entry.name])
        del model
    return Evaluation(metrics, sample)


# ---------------------------------------------------------------- outputs


def long_tables(metrics: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The DVC plots: per-class IoU (model, class, iou) and mIoU by distance (model, band, miou)."""
    per_class = pd.DataFrame([(name, c, v) for name, m in metrics.items() for c, v in m["iou"].items()],
                             columns=["model", "class", "iou"])
    distance = pd.DataFrame([(name, b, v) for name, m in metrics.items() for b, v in m["miou_by_distance"].items()],
                            columns=["model", "band", "miou"])
    return per_class, distance


def write_outputs(result: Evaluation, out: Path, plots: Path) -> list[Path]:
    """metrics JSON, plots/per_class_iou.csv, plots/distance_miou.csv, plots/sample_scan.parquet; returns them."""
    per_class, distance = long_tables(result.metrics)
    paths = [Path(out), plots / "per_class_iou.csv", plots / "distance_miou.csv", plots / "sample_scan.parquet"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    with atomic_path(paths[1]) as tmp:
        per_class.to_csv(tmp, index=False)
    with atomic_path(paths[2]) as tmp:
        distance.to_csv(tmp, index=False)
    with atomic_path(paths[3]) as tmp:
        result.sample_scan.to_parquet(tmp, index=False)
    return paths
