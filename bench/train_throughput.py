"""Training throughput: the engine's own step time and peak memory, against what the data loader delivers.

The published Cylinder3D pipeline was its own bottleneck (its loader prepared dense grids in
Python) and densified the 480 x 360 x 32 x 20 output (~420 MiB per sample in fp32). Here:

* **step**: ``Trainer.train_step`` exactly as training runs it (AdamW, the segmentation loss:
  CE + Lovász on occupied voxels, CE on the point head; autocast + gradient scaler on CUDA with
  ``--amp``), on batches of ``--batch-size`` real processed scans, voxelization included;
  median / mean / p90 over ``--steps`` timed steps after ``--warmup``; peak GPU memory
  (``torch.cuda.max_memory_allocated``) over the timed steps;
* **loader**: scans per second that ``make_loader`` delivers (read the row group, augment,
  collate) with each worker count of ``--workers``, timed after the first batch (worker start-up
  excluded), against the scans per second the step consumes: the goal is a ratio >= 3.

Data: ``--data DIR`` (a processed folder), or else a synthetic dataset generated and preprocessed
on the fly from the profile's ``synth`` and ``grid`` sections (``--scans`` scans of one sequence).
The model, grid and recipe come from ``--profile`` (``teacher.model``, ``grid``, ``train``).

GPU (H100, full size: Cylinder3D s = 32 on 480 x 360 x 32, 64-beam scans of ~120k points):

    python bench/train_throughput.py --profile profiles/synth64.yaml --batch-size 4 --amp bf16 --steps 300

CPU (small, the default profile):

    python bench/train_throughput.py --profile none --scans 8 --steps 6 --warmup 2 --workers 0,1

Writes bench/results/train_throughput_<device>.json (the device named inside and in the name).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.datasets import open_dataset
from pvkd.grid import grid_from_params
from pvkd.params import load_params, profile_params
from pvkd.preprocess import preprocess
from pvkd.shards import ProcessedData
from pvkd.train import distributed
from pvkd.train.checkpoint import model_for_data
from pvkd.train.config import TrainConfig, merge_sections
from pvkd.train.data import RunBatchSampler, ScanDataset, make_loader
from pvkd.train.engine import Trainer
from pvkd.train.losses import SegmentationLoss

# the published model's dense output: 480 x 360 x 32 cells x 20 classes, fp32
DENSE_LOGITS_BYTES = 480 * 360 * 32 * 20 * 4


def synthetic_processed(params: dict, scans: int, folder: Path) -> Path:
    """Generate ``scans`` scans of one train and one val sequence with the profile's synth section; preprocess."""
    from pvkd.synth import SynthConfig, generate

    synth = SynthConfig.from_dict({**params["synth"], "sequences": {"train": ["00"], "val": ["08"]},
                                   "scans_per_sequence": scans})
    generate(folder / "raw", synth)
    data = {**params["data"], "root": str(folder / "raw"), "splits": {"train": ["00"], "val": ["08"]}}
    out = folder / "processed"
    preprocess(open_dataset(data), grid_from_params(params["grid"]), out, ["train", "val"],
               [float(e) for e in params["preprocess"]["distance_bands"]], workers=params["preprocess"]["workers"])
    return out


def time_steps(trainer: Trainer, dataset: ScanDataset, batch_size: int, warmup: int, steps: int) -> dict:
    """Median / mean / p90 step time and peak memory of ``trainer.train_step`` on real batches."""
    device = trainer.device
    sampler = RunBatchSampler(len(dataset), batch_size, epochs=warmup + steps, seed=0)
    batches = iter(make_loader(dataset, sampler, workers=0))
    times, points = [], []
    for i in range(warmup + steps):
        batch = next(batches).to(device)
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            points.append(batch.points.num_points)
    result = {
        "step_s_median": statistics.median(times),
        "step_s_mean": statistics.fmean(times),
        "step_s_p90": float(np.percentile(times, 90)),
        "points_per_step_mean": statistics.fmean(points),
        "scans_per_s_consumed": batch_size / statistics.median(times),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def loader_throughput(dataset: ScanDataset, batch_size: int, workers: int, batches: int, pin: bool) -> float:
    """Scans per second a loader with ``workers`` processes delivers, after its first batch."""
    sampler = RunBatchSampler(len(dataset), batch_size, epochs=batches + 1, seed=0)
    loader = iter(make_loader(dataset, sampler, workers, pin_memory=pin))
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="profiles/synth64.yaml", help="merged over params.yaml; none = params.yaml")
    ap.add_argument("--data", type=Path, help="processed folder; default: generate --scans scans")
    ap.add_argument("--scans", type=int, default=32, help="scans per generated sequence (train and val)")
    ap.add_argument("--batch-size", type=int, help="default: the profile's train.batch_size")
    ap.add_argument("--amp", choices=["fp16", "bf16", "off"], help="default: the profile's train.amp")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", default="0,2,4,8", help="loader worker counts to measure, comma-separated")
    ap.add_argument("--loader-batches", type=int, default=20)
    ap.add_argument("--out", type=Path, help="default: bench/results/train_throughput_<device>.json")
    args = ap.parse_args()

    params = load_params() if args.profile == "none" else profile_params(args.profile)
    overrides = {"device": args.device, "processes": 1, "workers": 0}
    overrides |= {k: v for k, v in (("batch_size", args.batch_size), ("amp", args.amp)) if v is not None}
    cfg = TrainConfig.from_dict(merge_sections(merge_sections(params["train"], params["teacher"].get("train")),
                                               overrides))
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_processed(params, args.scans, Path(tmp))
        dist, device = distributed.setup(cfg)
        processed = ProcessedData(data)
        model, info = model_for_data(params["teacher"]["model"], processed)
        loss = SegmentationLoss.for_data(cfg.loss, processed).to(device)
        train_set = ScanDataset(data, "train", cfg.augment, cfg.seed)
        trainer = Trainer(model, loss.on_batch, train_set, ScanDataset(data, "val"), cfg, info,
                          dist=dist, device=device, show_progress=False).prepare()
        step = time_steps(trainer, train_set, cfg.batch_size, args.warmup, args.steps)
        worker_counts = [int(w) for w in args.workers.split(",")]
        pin = device.type == "cuda"
        loader = {w: loader_throughput(train_set, cfg.batch_size, w, args.loader_batches, pin) for w in worker_counts}
        points_per_scan = float(processed.scans("train")["num_points"].mean())

    name = device_name(device)
    result = {
        "benchmark": "train_throughput",
        "device": name,
        "torch": torch.__version__,
        "profile": str(args.profile),
        "model": info["model"],
        "grid": list(info["grid"]["size"]),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_size": cfg.batch_size,
        "amp": cfg.amp if device.type == "cuda" else "off (cpu)",
        "points_per_scan_mean": points_per_scan,
        "steps_timed": args.steps,
        "step": step,
        "loader_scans_per_s": {str(w): v for w, v in loader.items()},
        "loader_over_step_ratio": {str(w): v / step["scans_per_s_consumed"] for w, v in loader.items()},
        "published_dense_logits_mib_per_sample": DENSE_LOGITS_BYTES / 2**20,
    }
    out = args.out or Path("bench/results") / f"train_throughput_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.json"
    write_result(result, out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
