"""Does distillation help beyond seed noise? Students of params.yaml trained over several seeds, same teacher and cache.

Each (student, seed) runs `pvkd distill` with the student's ``train.seed`` set (student weights,
scan order and augmentation change; the teacher and its cache stay), the final weights kept
(``train.keep: last``, so no student is picked on the val split), and is scored on the whole val
split by the official rules (the final validation of the run: point head, one confusion matrix).
Reported per student: mean and sample standard deviation of the val mIoU over the seeds, and for
each distilled student the gain over the no-distillation one against twice the larger of their
standard deviations, the fraction of the teacher–baseline gap it closes, and the same-seed
differences (a seed fixes initial weights, scan order and augmentation, so they are paired).

    python bench/distill_seeds.py --seeds 0 1 2 --students baseline hinton pvkd --parallel 2

Needs `dvc repro cache-logits` first. Writes bench/results/distill_seeds_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.train.distributed import resolve_device


def run(name: str, seed: int, params: dict, work: Path, threads: int, cache: str,
        data: str = "data/processed", teacher: str = "models/teacher.pt") -> dict:
    """One student at one seed; returns its record's final validation."""
    folder = work / f"{name}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    p = json.loads(json.dumps(params))
    student = p["students"][name]
    student["train"] = {**(student.get("train") or {}), "seed": seed, "keep": "last", "threads": threads}
    (folder / "params.yaml").write_text(yaml.safe_dump(p))
    out = folder / "model.pt"
    start = time.monotonic()
    if not out.is_file():  # rerunning the benchmark reuses finished runs
        done = subprocess.run(
            [sys.executable, "-m", "pvkd", "distill", "--student", name, "--params", str(folder / "params.yaml"),
             "--out", str(out), "--live", str(folder / "live"), "--checkpoints", str(folder / "ckpt"),
             "--cache", cache, "--data", data, "--teacher", teacher],
            capture_output=True, text=True,
        )
        (folder / "log.txt").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"{name} seed {seed} failed; see {folder / 'log.txt'}")
    record = torch.load(out, weights_only=True)
    print(f"{name} seed {seed}: val mIoU {record['val']['miou']:.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    return {"student": name, "seed": seed, "miou": record["val"]["miou"], "iou": record["val"]["iou"],
            "step": record["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=["baseline", "hinton", "pvkd"])
    parser.add_argument("--baseline", default="baseline", help="the no-distillation student")
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--cache", default="data/teacher_cache", help="teacher cache the students read")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--work", default="bench/work/distill_seeds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = [(name, seed) for seed in args.seeds for name in args.students]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: run(*job, params, Path(args.work), threads, args.cache), jobs))

    teacher = torch.load(args.teacher, weights_only=True)["val"]["miou"]
    summary = {}
    for name in args.students:
        values = [r["miou"] for r in runs if r["student"] == name]
        summary[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "per_seed": values}
    base = summary.get(args.baseline)
    for name, s in summary.items():
        if base is None or name == args.baseline:
            continue
        gain = s["mean"] - base["mean"]
        noise = 2 * max(s["std"], base["std"])
        # a seed fixes the initial weights, scan order and augmentation: same-seed differences are paired
        s["paired_gain_per_seed"] = [a - b for a, b in zip(s["per_seed"], base["per_seed"])]
        s["gain_over_baseline"] = gain
        s["gain_beyond_2_std"] = gain > noise
        s["gap_closed"] = gain / (teacher - base["mean"]) if teacher > base["mean"] else None
    print(f"teacher {teacher:.4f}")
    for name, s in summary.items():
        extra = ""
        if "gain_over_baseline" in s:
            closed = f"{s['gap_closed']:.0%}" if s["gap_closed"] is not None else "n/a"
            paired = ", ".join(f"{100 * d:+.2f}" for d in s["paired_gain_per_seed"])
            extra = (f"; gain {100 * s['gain_over_baseline']:+.2f} points "
                     f"({'beyond' if s['gain_beyond_2_std'] else 'within'} 2 std), gap closed {closed}, "
                     f"per seed {paired}")
        print(f"{name}: {100 * s['mean']:.2f} ± {100 * s['std']:.2f} over seeds {args.seeds}{extra}")
    result = {
        "device": device_name(resolve_device(params["train"]["device"])), "teacher_miou": teacher, "seeds": args.seeds,
        "students": {n: params["students"][n] for n in args.students}, "distill": params["distill"],
        "cache": {k: v for k, v in json.loads((Path(args.cache) / "manifest.json").read_text()).items()
                  if k in ("outputs", "topk", "feature_dim", "bytes_per_point")},
        "train_epochs": params["train"]["epochs"], "summary": summary, "runs": runs,
    }
    out = Path(args.out or "bench/results/distill_seeds_cpu.json")
    write_result(result, out)


if __name__ == "__main__":
    main()
