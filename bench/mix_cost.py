"""Cost of the mixing augmentations: loading and training-step time per step against today's affine-only step.

Variants: ``affine`` (Cylinder3D's recipe alone, today's step), ``paste``, ``polarmix``,
``lasermix`` (each at probability 1 with the params' other values) and ``all`` (the three at
once). They take turns on the same scan keys, so machine noise hits all alike. A step is the
PVKD student's forward + loss (teacher from the cache, the default distill weights) + backward +
AdamW; loading is the dataset's work for the step (reads, the partner's and the pasted objects'
cache rows, mixing, collation). Mixed scans hold more points (pasted objects, PolarMix's copies),
so the step itself costs more too: points per step are reported.

    python bench/mix_cost.py --steps 10                        # the default profile (after dvc repro cache-logits)

Writes bench/results/mix_cost_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from common import MIX_VARIANTS, device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.distill.cache import TeacherCache, file_sha256
from pvkd.distill.objective import DistillConfig, PVKDLoss, cached_targets, train_rarity
from pvkd.objects import BankConfig, build_bank
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import model_for_data
from pvkd.train.config import AugmentConfig, TrainConfig, merge_sections
from pvkd.train.data import ScanDataset, collate
from pvkd.train.losses import SegmentationLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--student", default="pvkd", help="a student of params.yaml (its model section)")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--cache", default="data/teacher_cache")
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cpu")
    params = yaml.safe_load(Path(args.params).read_text())
    cfg = TrainConfig.from_dict(params["train"])
    dcfg = DistillConfig.from_dict(params["distill"])
    data = ProcessedData(args.data)
    cache = TeacherCache(args.cache, data, file_sha256(args.teacher))
    bank = build_bank(data, BankConfig.from_dict(params["objects"]))
    datasets = {}
    for name, on in MIX_VARIANTS.items():
        section = merge_sections(params["train"]["augment"], {t: {"probability": 1.0} for t in on})
        augment = AugmentConfig.from_dict(section, "train.augment")
        datasets[name] = ScanDataset(args.data, "train", augment, cfg.seed, extras=cache.extras(), bank=bank)
    segmentation = SegmentationLoss.for_data(cfg.loss, data).to(device)
    torch.manual_seed(0)
    model, _ = model_for_data(params["students"][args.student]["model"], data, params.get("grid"))
    model.train()
    loss = PVKDLoss(dcfg, segmentation, train_rarity(data, dcfg.class_power), model.grid.size, cached_targets(cache))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    load_ms = {n: [] for n in MIX_VARIANTS}
    step_ms = {n: [] for n in MIX_VARIANTS}
    points = {n: [] for n in MIX_VARIANTS}
    n_scans = len(datasets["affine"])
    for step in range(args.steps + 2):
        keys = [(step, (step * 7 + i) % n_scans) for i in range(cfg.batch_size)]
        for name, dataset in datasets.items():
            start = time.perf_counter()
            batch = collate([dataset[k] for k in keys])
            loaded = time.perf_counter()
            value, _ = loss.on_batch(model, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            done = time.perf_counter()
            if step >= 2:
                load_ms[name].append((loaded - start) * 1e3)
                step_ms[name].append((done - loaded) * 1e3)
                points[name].append(batch.points.num_points)
        if step >= 2:
            print(f"step {step - 1}: " + ", ".join(f"{n} {load_ms[n][-1]:.0f}+{step_ms[n][-1]:.0f} ms"
                                                   for n in MIX_VARIANTS), flush=True)

    median = {n: {"load_ms": statistics.median(load_ms[n]), "step_ms": statistics.median(step_ms[n]),
                  "points_per_step": statistics.mean(points[n])} for n in MIX_VARIANTS}
    base = median["affine"]
    for m in median.values():
        m["load_over_affine"] = m["load_ms"] / base["load_ms"]
        m["total_over_affine"] = (m["load_ms"] + m["step_ms"]) / (base["load_ms"] + base["step_ms"])
        m["points_over_affine"] = m["points_per_step"] / base["points_per_step"]
    result = {"device": device_name(device), "threads": torch.get_num_threads(), "data": args.data, "steps": args.steps,
              "batch_size": cfg.batch_size, "student": params["students"][args.student]["model"],
              "bank_objects": len(bank.table), "variants": median}
    for n, m in median.items():
        print(f"{n:9s} load {m['load_ms']:6.1f} ms ({m['load_over_affine']:.2f}x), step {m['step_ms']:6.0f} ms, "
              f"load + step {m['total_over_affine']:.2f}x affine, points {m['points_over_affine']:.2f}x")
    write_result(result, Path(args.out or f"bench/results/mix_cost_{device.type}.json"))


if __name__ == "__main__":
    main()
