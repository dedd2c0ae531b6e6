"""Does distillation help beyond seed noise? Students of params.yaml trained over several seeds, same teacher and cache.

Each (student, seed) runs `pvkd distill` with the student's ``train.seed`` set (student weights,
scan order and augmentation change; the teacher and its cache stay), the final weights kept
(``train.keep: last``, so no student is picked on the val split), and is scored on the whole val
split by the official rules (the final validation of the run: point head, one confusion matrix).
Reported per student: mean and sample standard deviation of the val mIoU over the seeds, and for
each other student its same-seed differences from the no-distillation one (``--baseline``; a seed
fixes initial weights, scan order and augmentation, so they are paired) with their mean, 95 %
t-interval, p and verdict (:mod:`pvkd.stats`: a gain or loss only where the interval excludes 0).

    python bench/distill_seeds.py --seeds 0 1 2 --students baseline hinton pvkd --parallel 2
    python bench/distill_seeds.py --resummarize --out bench/results/distill_seeds_cpu.json  # summary from its runs

Needs `dvc repro cache-logits` first. Writes bench/results/distill_seeds_<device>.json. Each run's
folder under ``--work`` is keyed by the fingerprint of its effective params and of the cache and
data it reads: a finished run is reused only when they match.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from common import (  # bench/common.py (the script's folder is on sys.path)
    cache_identity,
    data_identity,
    describe,
    device_name,
    resummarize,
    scores_by,
    seeds_of,
    student_run,
    write_result,
)

from pvkd.stats import summary_table
from pvkd.train.distributed import resolve_device

BASELINE = "baseline"


def summarize(result: dict) -> dict:
    """``result`` with its seeds and summary derived from its runs (per student: spread, paired comparison)."""
    runs = result["runs"]
    scores = scores_by(runs, lambda r: r["student"])
    baseline = result.get("baseline", BASELINE)
    baseline = baseline if baseline in scores else None
    return {**result, "seeds": seeds_of(runs), "baseline": baseline, "summary": summary_table(scores, baseline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=["baseline", "hinton", "pvkd"])
    parser.add_argument("--baseline", default=BASELINE, help="the no-distillation student")
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--cache", default="data/teacher_cache", help="teacher cache the students read")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--work", default="bench/work/distill_seeds")
    parser.add_argument("--out", default=None)
    parser.add_argument("--resummarize", action="store_true", help="rewrite --out's summary from its runs; no training")
    args = parser.parse_args()
    out = Path(args.out or "bench/results/distill_seeds_cpu.json")
    if args.resummarize:
        resummarize(out, summarize)
        return
    params = yaml.safe_load(Path(args.params).read_text())
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    inputs = {**cache_identity(args.cache), **data_identity(args.data)}

    def one(job: tuple[str, int]) -> dict:
        name, seed = job
        run = student_run(name, seed, params, threads, args.cache, args.data, args.teacher, inputs)
        return {"student": name, "seed": seed, **run(Path(args.work))}

    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(one, [(name, seed) for seed in args.seeds for name in args.students]))
    result = summarize({
        "device": device_name(resolve_device(params["train"]["device"])),
        "teacher_miou": torch.load(args.teacher, weights_only=True)["val"]["miou"],
        "students": {n: params["students"][n] for n in args.students}, "distill": params["distill"],
        "cache": {k: v for k, v in json.loads((Path(args.cache) / "manifest.json").read_text()).items()
                  if k in ("outputs", "topk", "feature_dim", "bytes_per_point")},
        "train_epochs": params["train"]["epochs"], "baseline": args.baseline, "runs": runs,
    })
    print(f"teacher {100 * result['teacher_miou']:.2f}")
    for name, cell in result["summary"].items():
        print(describe(name, cell))
    write_result(result, out)


if __name__ == "__main__":
    main()
