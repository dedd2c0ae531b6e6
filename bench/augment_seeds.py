"""Do the mixing augmentations pay? The teacher trained with each against the affine recipe alone, over seeds.

Variants: ``affine`` (today's recipe), ``paste``, ``polarmix``, ``lasermix`` (one transform at
``--probability``) and ``all`` (the three). Each (variant, seed) runs `pvkd teacher-train` with
``train.seed`` set (weights, scan order, augmentation and mixing draws change) and the final
weights kept (``train.keep: last``: no model picked on the val split), scored on the whole val
split by the official rules. Reported per variant: val mIoU mean ± sample std, the IoU of every
class of ``objects.classes`` (the rare classes the bank holds), and the same-seed gains over
``affine`` against twice the larger standard deviation.

The data is the params' own (synth -> preprocess -> objects, built once in the work folder), so
the script runs on a fresh machine:

    python bench/augment_seeds.py --variants affine paste polarmix lasermix --seeds 0 1 2 --parallel 2

Writes bench/results/augment_seeds_<device>.json after every run (a rerun reuses finished runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from common import MIX_VARIANTS, device_name, pvkd, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.train.distributed import resolve_device


def prepare(params_path: Path, work: Path) -> tuple[Path, Path]:
    """The params' data, processed, and its object bank, built once under ``work``."""
    data, bank = work / "processed", work / "objects.parquet"
    if not bank.is_file():
        work.mkdir(parents=True, exist_ok=True)
        params = yaml.safe_load(params_path.read_text())
        params["data"]["root"] = str((work / "raw").resolve())
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = str(work / "params.yaml")
        pvkd("synth", "--params", p, "--out", str(work / "raw"), "--metrics", str(work / "synth.json"),
             log=work / "synth.log")
        pvkd("preprocess", "--params", p, "--out", str(data), "--metrics", str(work / "preprocess.json"),
             log=work / "preprocess.log")
        pvkd("objects", "--params", p, "--data", str(data), "--out", str(bank), log=work / "objects.log")
    return data, bank


def run(variant: str, seed: int, params: dict, probability: float, threads: int, data: Path, bank: Path,
        work: Path) -> dict:
    """One teacher with ``variant``'s transforms at ``probability``; returns its final validation."""
    folder = work / f"{variant}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    p = copy.deepcopy(params)
    for name in MIX_VARIANTS[variant]:
        p["train"]["augment"][name]["probability"] = probability
    p["teacher"]["train"] = {**(p["teacher"].get("train") or {}), "seed": seed, "keep": "last", "threads": threads}
    (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = folder / "model.pt"
    start = time.monotonic()
    if not out.is_file():
        pvkd("teacher-train", "--params", str(folder / "params.yaml"), "--data", str(data), "--out", str(out),
             "--live", str(folder / "live"), "--checkpoints", str(folder / "ckpt"), "--objects", str(bank),
             log=folder / "log.txt")
    record = torch.load(out, weights_only=True)
    print(f"{variant} seed {seed}: val mIoU {record['val']['miou']:.4f} ({time.monotonic() - start:.0f} s)",
          flush=True)
    return {"variant": variant, "seed": seed, "miou": record["val"]["miou"], "iou": record["val"]["iou"],
            "step": record["step"]}


def summarize(runs: list[dict], rare: list[str]) -> dict:
    """Per variant: mIoU mean ± std, rare-class IoU means, same-seed gains over ``affine`` and the verdict."""
    by_variant: dict[str, dict[int, dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r
    summary = {}
    base = by_variant.get("affine", {})
    for variant, seeds in by_variant.items():
        miou = [seeds[k]["miou"] for k in sorted(seeds)]
        s = {"per_seed": {k: seeds[k]["miou"] for k in sorted(seeds)}, "mean": statistics.mean(miou),
             "std": statistics.stdev(miou) if len(miou) > 1 else 0.0,
             "rare_iou": {c: statistics.mean(seeds[k]["iou"][c] for k in seeds) for c in rare}}
        common = sorted(set(seeds) & set(base))
        if variant != "affine" and common:
            s["paired_gain_per_seed"] = [seeds[k]["miou"] - base[k]["miou"] for k in common]
            base_values = [base[k]["miou"] for k in sorted(base)]
            s["gain_over_affine"] = s["mean"] - statistics.mean(base_values)
            noise = 2 * max(s["std"], statistics.stdev(base_values) if len(base_values) > 1 else 0.0)
            s["gain_beyond_2_std"] = len(miou) > 1 and len(base_values) > 1 and abs(s["gain_over_affine"]) > noise
        summary[variant] = s
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variants", nargs="+", default=list(MIX_VARIANTS), choices=list(MIX_VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--probability", type=float, default=0.5, help="of each transform a variant turns on")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--work", default="bench/work/augment_seeds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    work = Path(args.work)
    data, bank = prepare(Path(args.params), work)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    out = Path(args.out or f"bench/results/augment_seeds_{resolve_device(params['train']['device']).type}.json")
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = [r for r in previous.get("runs", []) if r.get("probability") == args.probability]
    done = {(r["variant"], r["seed"]) for r in runs}
    lock = threading.Lock()

    def one(job):
        r = {**run(*job, params, args.probability, threads, data, bank, work), "probability": args.probability}
        with lock:
            runs.append(r)
            write_result({"device": device_name(resolve_device(params["train"]["device"])),
                          "teacher": params["teacher"], "probability": args.probability,
                          "rare_classes": list(params["objects"]["classes"]), "runs": runs,
                          "summary": summarize(runs, list(params["objects"]["classes"]))}, out)

    jobs = [(v, s) for s in args.seeds for v in args.variants if (v, s) not in done]
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, jobs))


if __name__ == "__main__":
    main()
