"""The report's inputs: the evaluate metrics and its CSVs, dvclive curves, the processed data's stats and meta.

Also the models' roles (teacher, no-distillation baseline) and the headline numbers derived from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pvkd.errors import DataError

PREFERRED_STUDENT = "pvkd"  # the student pictured beside the teacher, when there is one of that name
BASELINE_MARK = "no distillation"  # description of the student every distilled one is measured against


def load_metrics(path: str | Path) -> dict[str, dict]:
    """The evaluate stage's metrics: ``{model: {...}}``; a missing or malformed file names the stage to run."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the evaluate stage first (`dvc repro evaluate`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); run `dvc repro evaluate` again") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected an object of models ({{name: {{role, miou, ...}}}}); "
                        "run `dvc repro evaluate` again")
    return data


def number(value) -> float | None:
    """A finite float, or None for a missing, null or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def teacher_name(metrics: dict[str, dict]) -> str | None:
    """The model of role teacher (else the one named teacher), or None."""
    for name, m in metrics.items():
        if m.get("role") == "teacher":
            return name
    return "teacher" if "teacher" in metrics else None


def baseline_name(metrics: dict[str, dict]) -> str | None:
    """The student trained without distillation (description containing "no distillation"), or None.

    With several such students the one named ``baseline`` wins, else the first.
    """
    found = [n for n, m in metrics.items() if m.get("role") == "student"
             and BASELINE_MARK in str(m.get("description", "")).lower()]
    if not found:
        return None
    return "baseline" if "baseline" in found else found[0]


def model_order(metrics: dict[str, dict]) -> list[str]:
    """The teacher first, then the other models in the metrics file's order."""
    teacher = teacher_name(metrics)
    return ([teacher] if teacher else []) + [n for n in metrics if n != teacher]


def pictured_student(metrics: dict[str, dict], available: Sequence[str]) -> str | None:
    """The student the scan picture shows: ``pvkd`` if it has predictions, else the first student that has."""
    students = [n for n in model_order(metrics) if metrics[n].get("role") != "teacher" and n in available]
    if PREFERRED_STUDENT in students:
        return PREFERRED_STUDENT
    return students[0] if students else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def headline(metrics: dict[str, dict]) -> list[dict]:
    """One row per model (teacher first): its scores and costs, and how they compare with the teacher's.

    ``miou_diff_pts`` is (mIoU - teacher's) in points (x 100); ``*_ratio`` are model / teacher;
    ``gap_closed`` (distilled students only, when there is a no-distillation baseline below the
    teacher) is (student - baseline) / (teacher - baseline) in mIoU.
    """
    teacher, baseline = teacher_name(metrics), baseline_name(metrics)
    t = metrics.get(teacher, {}) if teacher else {}
    t_miou = number(t.get("miou"))
    b_miou = number(metrics[baseline].get("miou")) if baseline else None
    gap = t_miou - b_miou if t_miou is not None and b_miou is not None else None
    rows = []
    for name in model_order(metrics):
        m = metrics[name]
        miou = number(m.get("miou"))
        row = {
            "model": name,
            "role": m.get("role", ""),
            # evaluate --allow-trained-on: a score on sequences the model trained on is not a held-out result
            "description": str(m.get("description", "")) + (
                f" [not held out: trained on {len(m['trained_on_scored_sequences'])} scored sequence(s)]"
                if m.get("trained_on_scored_sequences") else ""),
            "miou": miou,
            "params_m": number(m.get("params_m")),
            "macs_g": number(m.get("macs_g")),
            "latency_ms": number(m.get("latency_ms")),
            "miou_diff_pts": None,
            "params_ratio": None,
            "macs_ratio": None,
            "latency_ratio": None,
            "gap_closed": None,
        }
        if name != teacher and teacher:
            if miou is not None and t_miou is not None:
                row["miou_diff_pts"] = (miou - t_miou) * 100
            for key in ("params_m", "macs_g", "latency_ms"):
                row[key.split("_")[0] + "_ratio"] = _ratio(row[key], number(t.get(key)))
            if gap is not None and gap > 0 and name != baseline and m.get("role") == "student" and miou is not None:
                row["gap_closed"] = (miou - b_miou) / gap
        rows.append(row)
    return rows


def read_tsv_series(path: Path) -> pd.DataFrame | None:
    """A dvclive series (step, value) or None when the file is missing, empty or has no step column."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, sep="\t")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if "step" not in frame.columns or len(frame) == 0:
        return None
    value = path.stem if path.stem in frame.columns else next(
        (c for c in frame.columns if c not in ("step", "timestamp")), None)
    if value is None:
        return None
    out = pd.DataFrame({"step": pd.to_numeric(frame["step"], errors="coerce"),
                        "value": pd.to_numeric(frame[value], errors="coerce")}).dropna()
    return out if len(out) else None


def _read_csv(path: Path, columns: set[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    return frame if columns <= set(frame.columns) else None


def _per_model(metrics: dict[str, dict], eval_dir: Path, key: str, csv_name: str, column: str, what: str):
    """``{model: {label: value}}`` from each model's ``key`` in the metrics, else from the long table
    ``eval_dir/csv_name`` (columns model, ``column``, value); and notes on the models found in neither."""
    table, value = None, "iou" if column == "class" else "miou"
    out, notes = {}, []
    for name in model_order(metrics):
        values = metrics[name].get(key)
        if not isinstance(values, dict) or not values:
            if table is None:
                table = _read_csv(eval_dir / csv_name, {"model", column, value})
                table = table if table is not None else pd.DataFrame(columns=["model", column, value])
            rows = table[table["model"] == name]
            values = dict(zip(rows[column].astype(str), rows[value])) if len(rows) else None
        if not values:
            notes.append(f"{name}: no {what} in the metrics or {eval_dir / csv_name}")
            continue
        out[name] = {str(label): number(v) for label, v in values.items()}
    return out, notes


def per_class_iou(metrics: dict[str, dict], eval_dir: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """``{model: {class: IoU}}`` from the metrics (``iou``), else from eval/per_class_iou.csv; and notes."""
    return _per_model(metrics, eval_dir, "iou", "per_class_iou.csv", "class", "per-class IoU")


def distance_miou(metrics: dict[str, dict], eval_dir: Path) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """``{model: {band: mIoU or None}}`` from the metrics (``miou_by_distance``), else eval/distance_miou.csv."""
    return _per_model(metrics, eval_dir, "miou_by_distance", "distance_miou.csv", "band", "mIoU by distance")


def class_shares(stats: pd.DataFrame) -> pd.DataFrame:
    """Share of the points of each split per class: rows class (id order), columns splits (stats' order)."""
    need = {"split", "class_id", "class_name", "points"}
    if not need <= set(stats.columns):
        raise DataError(f"stats table lacks columns {sorted(need - set(stats.columns))}")
    counts = stats.groupby(["class_id", "class_name", "split"], sort=False)["points"].sum().unstack("split")
    counts = counts.sort_index(level="class_id")[list(dict.fromkeys(stats["split"]))].fillna(0)
    totals = counts.sum(axis=0).replace(0, np.nan)
    shares = (counts / totals).fillna(0.0)
    shares.index = shares.index.get_level_values("class_name")
    return shares


def read_meta(data_dir: Path) -> dict:
    """The processed data's meta (its split folders' meta.json), or {} when missing or unreadable."""
    from pvkd import shards

    try:
        return shards.read_meta(data_dir)
    except (OSError, json.JSONDecodeError, KeyError, DataError):
        return {}


def class_names(data_dir: Path) -> list[str]:
    """The class names of the processed data (meta.json), else SemanticKITTI's."""
    from pvkd.labels import SEMANTICKITTI_CLASSES

    names = read_meta(data_dir).get("class_names")
    return list(names) if isinstance(names, list) and names else list(SEMANTICKITTI_CLASSES)


