"""How right is the cached teacher on the points it teaches? Per class, on the train split, from the cache alone.

Distillation pulls a student towards the teacher's distribution on the *training* points, where
the student's own labels are exact. Where the teacher is wrong there, KD trades a correct label
for the teacher's mistake, so this is the first thing to look at when KD does not help. Per
class (by the train label): the share of points whose cached arg-max (class 0 never predicted,
as scored) is the label, the mean teacher probability of the label, and where the wrong points
go; plus the train mIoU of the cached arg-max by the dataset's rules.

    python bench/teacher_cache_quality.py                         # after `dvc repro cache-logits`
    python bench/teacher_cache_quality.py --cache other_cache --out bench/results/x.json

Writes ``--out`` (default bench/results/teacher_cache_quality_default.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.distill.cache import TeacherCache
from pvkd.metrics import confusion_matrix, predict, scores
from pvkd.shards import ProcessedData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--cache", default="data/teacher_cache")
    parser.add_argument("--out", default="bench/results/teacher_cache_quality_default.json")
    args = parser.parse_args()
    data = ProcessedData(args.data)
    cache = TeacherCache(args.cache, data)
    names = list(data.meta["class_names"])
    num_classes = len(names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    label_prob_sum = torch.zeros(num_classes, dtype=torch.float64)
    for _, row in data.scans("train").iterrows():
        labels = torch.from_numpy(data.read(row, ["label"])["label"].astype(np.int64))
        stored = cache.read(row["shard"], int(row["row_group"]))
        records = {f"teacher_{k}": torch.from_numpy(v) for k, v in stored.items()}
        logp = cache.decode(records)["logp"]
        confusion += confusion_matrix(predict(logp), labels, num_classes)
        label_prob_sum += torch.bincount(labels, weights=logp.gather(1, labels[:, None]).squeeze(1).exp().double(),
                                         minlength=num_classes)
    train = scores(confusion, data.meta["dataset"], names)  # the dataset names its scoring rules
    per_class = {}
    for c in range(1, num_classes):
        total = int(confusion[:, c].sum())
        if total == 0:
            continue
        wrong = confusion[:, c].clone()
        wrong[c] = 0
        top = [(names[int(k)], round(int(wrong[k]) / total, 4))
               for k in wrong.argsort(descending=True)[:2] if wrong[k]]
        per_class[names[c]] = {"points": total, "right": int(confusion[c, c]) / total,
                               "mean_label_prob": float(label_prob_sum[c]) / total, "wrong_to": dict(top)}
    print(f"teacher on the train split, from the cache: mIoU {100 * train.miou:.2f}, "
          f"accuracy {100 * train.accuracy:.2f}")
    print(f"{'class':15s} {'points':>9s} {'right':>6s} {'p(label)':>8s}  wrong to")
    for name, c in per_class.items():
        print(f"{name:15s} {c['points']:9d} {100 * c['right']:6.1f} {c['mean_label_prob']:8.3f}  "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in c["wrong_to"].items()))
    write_result({"cache": cache.manifest["teacher_sha256"], "outputs": cache.codec, "train_miou": train.miou,
                  "train_iou": train.per_class(), "train_accuracy": train.accuracy, "per_class": per_class},
                 Path(args.out))


if __name__ == "__main__":
    main()
