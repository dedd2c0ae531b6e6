"""Where a model's pseudo-labels go: its confident predictions scored against labels it never trained on.

Diagnoses bench/semi_supervised.py (issue 21). For each model record, on scans of a processed split that
has labels (e.g. the streets the study reads as unlabelled, processed *with* their labels in its
all-labels folder): per true class, the share of points the model is confident on (top probability of
the point head >= ``--threshold`` over all classes, as ``train.semi`` makes pseudo-labels), the share
confidently wrong, and where its confident labels go; per predicted class, the precision of the
confident labels; and for ``--focus`` classes the same by range band, with the arg-max prediction (as
evaluate scores) beside it. The mean teacher made its pseudo-labels with BatchNorm on batch statistics
(``ema_buffers: own``); ``--bn train`` scores it that way, on unaugmented scans.

    python bench/pseudo_label_quality.py \\
        --model supervised=bench/work/semi_supervised/teachers/teacher-supervised-seed1-<fp>/model.pt \\
        --model semi=bench/work/semi_supervised/teachers/teacher-semi-seed1-<fp>/model.pt \\
        --data bench/work/semi_supervised/streets-8/data-<fp>/processed --split train \\
        --sequences 01 02 03 04 05 06 07 --out bench/results/pseudo_label_quality_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.metrics import predict
from pvkd.models import PointBatch
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset

RANGE_BANDS = (0.0, 10.0, 15.0, 20.0)  # metres; the last band is open


def counts(model: torch.nn.Module, data: Path, split: str, sequences: list[str] | None, threshold: float,
           classes: int) -> dict[str, np.ndarray]:
    """Labelled point counts over the scans, per range band: ``confident[band, true, pseudo]`` (confident points
    only) and ``argmax[band, true, predicted]`` (every point); totals are their sums."""
    ds = ScanDataset(data, split)
    rows = ds.rows
    positions = np.flatnonzero(rows["sequence"].isin(sequences).to_numpy()) if sequences else np.arange(len(rows))
    if len(positions) == 0:
        raise SystemExit(f"{data}/{split}: no scan of sequences {sequences}")
    shape = (len(RANGE_BANDS), classes, classes)
    out = {"confident": np.zeros(shape, np.int64), "argmax": np.zeros(shape, np.int64)}
    with torch.no_grad():
        for position in positions:
            scan = ds[(0, int(position))]
            batch = PointBatch.from_scans([(torch.from_numpy(scan["xyz"]), torch.from_numpy(scan["intensity"]))])
            prob = torch.softmax(model(batch).point_logits.float(), 1)
            confidence, pseudo = (t.numpy() for t in prob.max(1))  # over all classes, as train.semi's pseudo-labels
            label = scan["label"].astype(np.int64)
            keep = label > 0
            sure = keep & (confidence >= threshold)
            band = np.searchsorted(RANGE_BANDS, np.linalg.norm(scan["xyz"], axis=1), side="right") - 1
            np.add.at(out["confident"], (band[sure], label[sure], pseudo[sure]), 1)
            np.add.at(out["argmax"], (band[keep], label[keep], predict(prob).numpy()[keep]), 1)
    return out


def top(row: np.ndarray, names: list[str], k: int = 4) -> dict[str, float]:
    """The ``k`` largest entries of a count row as percentages of its sum."""
    total = row.sum()
    if total == 0:
        return {}
    order = np.argsort(-row)[:k]
    return {names[i]: round(100 * row[i] / total, 1) for i in order if row[i] > 0}


def summarize(by_range: dict[str, np.ndarray], names: list[str], focus: list[str]) -> dict:
    """Per class: confident share, confidently wrong share, where confident labels of its points go, and the
    precision of confident labels of that class; per focus class the same by range band."""
    c = {"confident": by_range["confident"].sum(0), "argmax": by_range["argmax"].sum(0),
         "all": by_range["argmax"].sum((0, 2))}
    per_class = {}
    for i, name in enumerate(names):
        if i == 0 or c["all"][i] == 0:
            continue
        confident = c["confident"][i].sum()
        predicted = c["confident"][:, i].sum()
        per_class[name] = {
            "points": int(c["all"][i]),
            "confident_pct": round(100 * confident / c["all"][i], 1),
            "confidently_wrong_pct": round(100 * (confident - c["confident"][i, i]) / c["all"][i], 1),
            "confident_labels_go_to_pct": top(c["confident"][i], names),
            "argmax_goes_to_pct": top(c["argmax"][i], names),
            "confident_label_precision_pct": round(100 * c["confident"][i, i] / predicted, 1) if predicted else None,
            "confident_label_is_truly_pct": top(c["confident"][:, i], names),
        }
    bands_of = {}
    for name in focus:
        i = names.index(name)
        bands = {}
        for b, low in enumerate(RANGE_BANDS):
            high = RANGE_BANDS[b + 1] if b + 1 < len(RANGE_BANDS) else None
            label = f"{low:g}-{high:g} m" if high is not None else f">= {low:g} m"
            argmax, confident = by_range["argmax"][b, i], by_range["confident"][b, i]
            bands[label] = {"points": int(argmax.sum()), "argmax_goes_to_pct": top(argmax, names),
                            "confident_labels_go_to_pct": top(confident, names),
                            "confident_pct": round(100 * confident.sum() / max(1, argmax.sum()), 1)}
        bands_of[name] = bands
    total = c["all"][1:].sum()
    shares = {"confident_pct": round(100 * c["confident"].sum() / total, 1),
              "true_class_pct": {n: round(100 * c["all"][i] / total, 1) for i, n in enumerate(names) if i},
              "confident_label_pct": {n: round(100 * c["confident"][:, i].sum() / max(1, c["confident"].sum()), 1)
                                      for i, n in enumerate(names) if i}}
    return {"overall": shares, "per_class": per_class, "by_range": bands_of}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a model record (repeat)")
    parser.add_argument("--data", required=True, help="processed data folder whose --split has labels")
    parser.add_argument("--split", default="train")
    parser.add_argument("--sequences", nargs="+", help="only these sequences of the split (default: all)")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence of a pseudo-label (train.semi)")
    parser.add_argument("--bn", choices=("eval", "train"), default="eval",
                        help="BatchNorm on running (eval) or batch (train) statistics")
    parser.add_argument("--focus", nargs="+", default=["building"], help="classes broken down by range")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"device": device_name(torch.device("cpu")), "data": args.data, "split": args.split,
              "sequences": args.sequences, "threshold": args.threshold, "bn": args.bn,
              "range_bands_m": list(RANGE_BANDS), "models": {}}
    for spec in args.model:
        name, _, path = spec.partition("=")
        started = time.monotonic()
        model, record = load_model(path, "cpu")
        names = list(record["class_names"])
        model = copy.deepcopy(model).train() if args.bn == "train" else model.eval()
        c = counts(model, Path(args.data), args.split, args.sequences, args.threshold, len(names))
        result["models"][name] = {"path": path, **summarize(c, names, args.focus),
                                  "minutes": round((time.monotonic() - started) / 60, 1)}
        print(f"{name}: {result['models'][name]['overall']['confident_pct']} % confident", flush=True)
    write_result(result, Path(args.out))


if __name__ == "__main__":
    main()
