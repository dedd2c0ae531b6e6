"""Train-split against val-split mIoU of model records: is there a generalization gap for distillation to close?

Much of what KD gives a student is regularization: the teacher's soft targets generalize better
than the one-hot labels the student would otherwise over-fit. A model that scores the same on the
points it was trained on as on unseen ones is not over-fitting, so that part of KD has nothing to
fix. Scored as evaluate scores (point head, un-augmented, one confusion matrix per split, the
dataset's rules).

    python bench/generalization_gap.py models/teacher.pt models/baseline.pt models/pvkd.pt

Writes bench/results/generalization_gap_cpu.json (``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from common import write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.evaluate import EvalConfig, evaluate_model
from pvkd.metrics import scores
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset
from pvkd.train.distributed import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model records (pvkd teacher-train / distill)")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--params", default="params.yaml", help="its evaluate section (batch size, device)")
    parser.add_argument("--out", default="bench/results/generalization_gap_cpu.json")
    args = parser.parse_args()
    cfg = EvalConfig.from_dict(yaml.safe_load(Path(args.params).read_text())["evaluate"])
    device = resolve_device(cfg.device, "evaluate.device")
    data = ProcessedData(args.data)
    rules, names = data.meta["dataset"], data.meta["class_names"]
    result = {}
    for path in args.models:
        model, _ = load_model(path, device)
        split_scores = {}
        for split in ("train", "val"):
            evaluation = evaluate_model(model, ScanDataset(args.data, split), cfg, device)
            split_scores[split] = scores(evaluation.confusion["point"], rules, names)
        train, val = split_scores["train"], split_scores["val"]
        result[str(path)] = {"train_miou": train.miou, "val_miou": val.miou, "gap": train.miou - val.miou,
                             "train_iou": train.per_class(), "val_iou": val.per_class()}
        print(f"{path}: train mIoU {100 * train.miou:.2f}, val {100 * val.miou:.2f}, "
              f"gap {100 * (train.miou - val.miou):+.2f}", flush=True)
    write_result(result, Path(args.out))


if __name__ == "__main__":
    main()
