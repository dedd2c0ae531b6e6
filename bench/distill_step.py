"""Training-step time of a student: plain (no distillation), PVKD from the teacher cache, PVKD with an online teacher.

The three variants take turns on the same batches (same augmentation), so machine noise hits all
of them alike; each step is forward + loss + backward + AdamW, the batch already on the device
(the cache's records included: reading them is the data loader's work, measured apart as
``load_ms``). Reported: median step time per variant and the ratios cached / plain and
online / cached. Goals (issue 5, H100 at full size): cached <= 1.25x plain, online >= 1.6x cached.

    python bench/distill_step.py --steps 12                      # the default profile, CPU
    python bench/distill_step.py --device cuda --steps 50        # on a GPU, after `dvc repro cache-logits`

Writes bench/results/distill_step_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.distill.cache import TeacherCache, file_sha256
from pvkd.distill.objective import DistillConfig, PVKDLoss, cached_targets, online_targets, train_rarity
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model, model_for_data
from pvkd.train.config import TrainConfig
from pvkd.train.data import ScanDataset, collate
from pvkd.train.losses import SegmentationLoss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--student", default="pvkd", help="a student of params.yaml (its model section)")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--cache", default="data/teacher_cache")
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="scans per step; default train.batch_size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"], help="autocast on CUDA")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    params = yaml.safe_load(Path(args.params).read_text())
    cfg = TrainConfig.from_dict(params["train"])
    dcfg = DistillConfig.from_dict({**params["distill"], "point_weight": 0.5, "voxel_weight": 0.5,
                                    "affinity_weight": 0.2, "affinity_terms": ["point", "voxel"]})
    batch_size = args.batch_size or cfg.batch_size
    torch.manual_seed(0)

    data = ProcessedData(args.data)
    cache = TeacherCache(args.cache, data, file_sha256(args.teacher))
    teacher, _ = load_model(args.teacher, device)
    dataset = ScanDataset(args.data, "train", cfg.augment, cfg.seed, extras=cache.extras())
    segmentation = SegmentationLoss.for_data(cfg.loss, data).to(device)
    rarity = train_rarity(data, dcfg.class_power)
    cached, online = cached_targets(cache), online_targets(teacher)

    student_cfg = params["students"][args.student]["model"]
    variants = {}
    for name, targets, weights in (("plain", None, False), ("cached", cached, True), ("online", online, True)):
        torch.manual_seed(0)
        model, _ = model_for_data(student_cfg, data, params.get("grid"))
        model.to(device).train()
        d = dcfg if weights else DistillConfig.from_dict({**params["distill"], "point_weight": 0, "voxel_weight": 0,
                                                          "affinity_weight": 0})
        loss = PVKDLoss(d, segmentation, rarity, model.grid.size, targets).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        variants[name] = (model, loss, optimizer)

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
    times = {name: [] for name in variants}
    load_ms = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        keys = [(step, (step * batch_size + i) % len(dataset)) for i in range(batch_size)]
        batch = collate([dataset[k] for k in keys])
        load_ms.append((time.perf_counter() - start) * 1e3)
        batch = batch.to(device)
        for name, (model, loss, optimizer) in variants.items():
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                value, _ = loss.on_batch(model, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            sync(device)
            if step >= 2:
                times[name].append((time.perf_counter() - start) * 1e3)
        if step >= 2:
            print(f"step {step - 1}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()))

    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "student": student_cfg, "teacher": str(args.teacher), "grid": list(data.grid.size),
        "batch_size": batch_size, "steps": args.steps, "amp": args.amp if amp is not None else "off",
        "points_per_step": int(batch.points.num_points),
        "median_ms": median, "load_ms": statistics.median(load_ms[2:]),
        "cached_over_plain": median["cached"] / median["plain"],
        "online_over_cached": median["online"] / median["cached"],
    }
    print(f"median step: plain {median['plain']:.0f} ms, cached {median['cached']:.0f} ms, online "
          f"{median['online']:.0f} ms; cached/plain {result['cached_over_plain']:.2f} (goal <= 1.25), "
          f"online/cached {result['online_over_cached']:.2f} (goal >= 1.6); loading {result['load_ms']:.0f} ms/step")
    out = Path(args.out or f"bench/results/distill_step_{device.type}.json")
    write_result(result, out)


if __name__ == "__main__":
    main()
