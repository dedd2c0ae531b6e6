"""Backbone latency and MACs: Cylinder3D teacher (s = 32) vs 0.5x student (s = 16); MinkUNet, SPVCNN at full/half width.

Every model runs in this one process, on the same scans, in the same run, so the ratios are
what count. The paper's headline for the 0.5x Cylinder3D student: about 75 % fewer MACs and
2x faster; the goals here are MACs ratio <= 0.26 and latency ratio <= 0.5.

* Cylinder3D at the paper's full config: cylinder grid 480 x 360 x 32 over rho [0, 50] m,
  phi [-pi, pi], z [-4, 2] m, 20 classes; MinkUNet / SPVCNN on a cubic grid of --cubic-voxel
  (0.05 m, the SemanticKITTI setting of SPVNAS) over x, y [-50, 50] m, z [-4, 2] m.
* Scans: --shards DIR reads the first --scans scans of a processed split; otherwise synthetic
  LiDAR-like scans of --points points (``pvkd.models.macs.synthetic_scan``).
* Latency: inference (eval, no grad), voxelization included, median over --runs timed passes per
  scan after --warmup untimed ones, CUDA synchronised around each pass; optionally also under
  autocast (--amp fp16|bf16). MACs: counted on the sparse rows (``pvkd.models.macs``).
* --check: forward + backward of every model in fp32 and under fp16 / bf16 autocast (the GPU
  acceptance check); --profile: a torch.profiler table of the teacher and student phases
  (voxelize, point MLP, sparse U-Net, point head / fusion) and top kernels, to find fixed costs.

GPU (the H100 of the device tool, spconv from the shared kit):

    python bench/model_latency.py --device cuda --check --profile

CPU (slow, keep it small):

    python bench/model_latency.py --device cpu --points 3000 --runs 2 --warmup 1

Writes bench/results/model_latency_<device>.json (the device named inside and in the name).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.grid import Grid
from pvkd.models import PointBatch, build_model, parameter_counts, voxelize
from pvkd.models.macs import count_macs, synthetic_scan

FULL_CYLINDER = Grid("cylinder", (480, 360, 32), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
NUM_CLASSES = 20
# (arch, full width, half width)
FAMILIES = [("cylinder3d", 32, 16), ("minkunet", 32, 16), ("spvcnn", 32, 16)]
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cubic_grid_params(voxel: float) -> dict:
    return {"cubic": {"min_bound": [-50.0, -50.0, -4.0], "max_bound": [50.0, 50.0, 2.0], "voxel_size": [voxel] * 3}}


def load_scans(args) -> tuple[list[PointBatch], str]:
    if args.shards is None:
        scans = [synthetic_scan(args.points, batch_size=1, seed=seed) for seed in range(args.scans)]
        return scans, f"synthetic LiDAR-like, {args.points} points each"
    from pvkd.shards import ProcessedData

    data = ProcessedData(args.shards)
    rows = data.scans(args.split)
    scans = []
    for i in range(min(args.scans, len(rows))):
        s = data.read(rows.iloc[i])
        scans.append(PointBatch.from_scans([(torch.from_numpy(s.xyz.copy()), torch.from_numpy(s.intensity.copy()))]))
    return scans, f"{args.shards} split {args.split}, first {len(scans)} scans"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(model, scans, device, warmup, runs, amp: torch.dtype | None) -> dict:
    """Median over every timed pass of every scan (eval, no grad), and peak memory on CUDA."""
    model.eval()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for scan in scans:
            for i in range(warmup + runs):
                sync(device)
                start = time.perf_counter()
                model(scan)
                sync(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    out = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "passes": len(times)}
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def check_forward_backward(model, scan, device) -> dict:
    """Forward + backward in fp32 and under fp16 / bf16 autocast; a failure is recorded, not raised."""
    result = {}
    model.train()
    for label, amp in (("fp32", None), *AMP_DTYPES.items()):
        if amp is not None and device.type != "cuda":
            # spconv's CPU kernels are fp32 only (no half mm into its buffers, no bf16 dtype at all)
            result[label] = {"ok": None, "skipped": "spconv has no reduced-precision CPU kernels"}
            continue
        model.zero_grad(set_to_none=True)
        try:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model(scan)
                labels = torch.randint(1, NUM_CLASSES, (out.point_logits.shape[0],), device=device)
                voxel_labels = torch.zeros(out.voxel_logits.shape[0], dtype=torch.long, device=device)
                voxel_labels.scatter_(0, out.point_to_voxel, labels)
                loss = F.cross_entropy(out.point_logits.float(), labels) + F.cross_entropy(
                    out.voxel_logits.float(), voxel_labels
                )
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            finite = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
            result[label] = {
                "ok": finite,
                "loss": loss.item(),
                "logits_dtype": str(out.voxel_logits.dtype),
                "params_without_grad": sum(g is None for g in grads),
            }
        except Exception as err:  # noqa: BLE001 - every failure is a finding to record
            result[label] = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}"[:2000],
                "trace": traceback.format_exc()[-2000:],
            }
    model.zero_grad(set_to_none=True)
    return result


def profile_phases(model, scan, device, top: int = 25) -> dict:
    """Device (or CPU) time per labelled phase and the top kernels/ops, one inference after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        model(scan)
        sync(device)
        with profile(activities=activities) as prof:
            model(scan)
            sync(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = prof.key_averages()

    def ms(e, attr):
        return getattr(e, attr, 0.0) / 1e3

    phases = {
        e.key: {"cpu_ms": ms(e, "cpu_time_total"), "device_ms": ms(e, "device_time_total"), "count": e.count}
        for e in events
        if e.key in ("voxelize", "point_mlp", "sparse_unet", "point_head", "point_voxel_fusion")
    }
    self_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ranked = sorted(events, key=lambda e: getattr(e, self_key, 0.0), reverse=True)[:top]
    return {
        "phases": phases,
        "top_ops": [{"name": e.key[:120], "self_ms": ms(e, self_key), "count": e.count} for e in ranked],
        "sort_key": key,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=None, help="points per synthetic scan (120000 cuda, 3000 cpu)")
    parser.add_argument("--scans", type=int, default=3, help="scans, the same for every model")
    parser.add_argument("--shards", type=Path, default=None, help="processed data folder to read scans from")
    parser.add_argument("--split", default="val")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="also time under this autocast")
    parser.add_argument("--cubic-voxel", type=float, default=0.05, help="voxel size [m] of MinkUNet / SPVCNN")
    parser.add_argument("--archs", nargs="+", default=[f[0] for f in FAMILIES])
    parser.add_argument("--check", action="store_true", help="forward+backward in fp32, fp16 and bf16 autocast")
    parser.add_argument("--profile", action="store_true", help="profile the phases of each model")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.points is None:
        args.points = 120_000 if device.type == "cuda" else 3_000
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    scans, source = load_scans(args)
    scans = [s.to(device) for s in scans]
    name = device_name(device)
    print(f"device: {name}; scans: {source}")

    results, checks, profiles = [], {}, {}
    for arch, full, half in FAMILIES:
        if arch not in args.archs:
            continue
        for width in (full, half):
            cfg = {"arch": arch, "width": width, "num_classes": NUM_CLASSES}
            grid = FULL_CYLINDER if arch == "cylinder3d" else cubic_grid_params(args.cubic_voxel)
            torch.manual_seed(0)
            model = build_model(cfg, grid).to(device)
            macs = [count_macs(model, scan) for scan in scans]
            voxels = [voxelize(model.grid, scan).num_voxels for scan in scans]
            row = {
                "arch": arch,
                "width": width,
                "grid": list(model.grid.size),
                "parameters": parameter_counts(model),
                "voxels_mean": float(np.mean(voxels)),
                "macs_mean": {
                    k: float(np.mean([m.as_dict().get(k, 0) for m in macs]))
                    for k in ("total", "sparse_conv", "linear", "batchnorm")
                },
                "latency_fp32": time_inference(model, scans, device, args.warmup, args.runs, None),
            }
            if args.amp:
                row[f"latency_{args.amp}"] = time_inference(
                    model, scans, device, args.warmup, args.runs, AMP_DTYPES[args.amp]
                )
            results.append(row)
            lat = row["latency_fp32"]["median_ms"]
            print(
                f"{arch:<11} s={width:<3} params {row['parameters']['total'] / 1e6:7.2f} M  "
                f"MACs {row['macs_mean']['total'] / 1e9:8.2f} G  latency {lat:8.2f} ms  "
                f"voxels {row['voxels_mean']:,.0f}"
            )
            if args.check:
                checks[f"{arch}-{width}"] = check_forward_backward(model, scans[0], device)
                print(f"  check: { {k: v['ok'] for k, v in checks[f'{arch}-{width}'].items()} }")
            if args.profile:
                profiles[f"{arch}-{width}"] = profile_phases(model, scans[0], device)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    ratios = {}
    for arch, full, half in FAMILIES:
        rows = {r["width"]: r for r in results if r["arch"] == arch}
        if full in rows and half in rows:
            big, small = rows[full], rows[half]
            ratios[arch] = {
                "macs": small["macs_mean"]["total"] / big["macs_mean"]["total"],
                "sparse_conv_macs": small["macs_mean"]["sparse_conv"] / big["macs_mean"]["sparse_conv"],
                "latency_fp32": small["latency_fp32"]["median_ms"] / big["latency_fp32"]["median_ms"],
                "parameters": small["parameters"]["total"] / big["parameters"]["total"],
            }
            if args.amp:
                key = f"latency_{args.amp}"
                ratios[arch][key] = small[key]["median_ms"] / big[key]["median_ms"]
            r = ratios[arch]
            print(
                f"{arch}: half/full MACs {r['macs']:.3f} (goal <= 0.26), latency {r['latency_fp32']:.3f} (goal <= 0.5)"
            )

    report = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "spconv": __import__("spconv").__version__,
        "scans": source,
        "num_scans": len(scans),
        "points_mean": float(np.mean([s.num_points for s in scans])),
        "warmup": args.warmup,
        "runs_per_scan": args.runs,
        "cubic_voxel_m": args.cubic_voxel,
        "results": results,
        "ratios_half_over_full": ratios,
        "goals": {"macs_ratio_max": 0.26, "latency_ratio_max": 0.5},
    }
    if checks:
        report["forward_backward_checks"] = checks
    if profiles:
        report["profiles"] = profiles
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    out = args.out or Path(__file__).parent / "results" / f"model_latency_{slug}.json"
    write_result(report, out)


if __name__ == "__main__":
    main()
