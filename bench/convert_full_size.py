"""`pvkd import-teacher` at the published size: width 32, grid 480 x 360 x 32, the official file's layout.

The full-size run of ``tests/test_convert.py``'s equivalence (CI runs it at a tiny width and grid):

1. a random checkpoint of the published network (``tests/spconv1_reference.py``: pure-torch
   spconv 1.x semantics under the published module and key names) at the official config
   (init_size 32, point MLP 64-128-256 -> 256, compression 16, 20 classes), random BN statistics,
   NaN in the taps of the decoder's ``conv3`` that spconv 1.x never reads; checked to have the
   official file's 274 keys and 55,853,366 parameters, saved as spconv 1.2.1 wrote it;
2. a tiny SemanticKITTI tree preprocessed on the published grid (SemanticKITTI's bounds, as in
   ``profiles/semantickitti.yaml``), which only gives the import its classes and grid;
3. ``pvkd import-teacher`` on it (a subprocess, as a user runs it);
4. the imported record and the reference on the same LiDAR-like scan (``synthetic_scan``), both in
   float64: max absolute and relative difference of the voxel logits (relative = max |diff| /
   max |reference|); also pvkd in float32, as it runs in practice, and the negative control: the
   same weights only permuted into today's declared kernels.

CPU (one thread; minutes)::

    .venv/bin/python bench/convert_full_size.py

GPU (spconv's implicit GEMM for the float32 pass; the reference on the GPU too)::

    python bench/convert_full_size.py --device cuda

Writes bench/results/convert_full_size_<cpu|cuda>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import device_name, pvkd, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.convert import detect_config, module_names, pvkd_key
from pvkd.models import PointBatch, build_model, parameter_counts
from pvkd.models.macs import synthetic_scan
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
# the spconv 1.x reference and the tiny-tree writer live with the tests (imported where used)
sys.path.insert(0, str(ROOT / "tests"))
OFFICIAL_KEYS, OFFICIAL_PARAMETERS = 274, 55_853_366


def by_site(sites: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = sites.long().cpu()
    order = torch.argsort(((s[:, 0] * 1000 + s[:, 1]) * 1000 + s[:, 2]) * 1000 + s[:, 3])
    return s[order], values.cpu()[order]


def processed_folder(work: Path) -> Path:
    """A tiny SemanticKITTI tree (2 train scans, 1 val) preprocessed on the published 480 x 360 x 32 grid."""
    from kitti_tree import write_tree

    write_tree(work / "raw", {"00": 2, "08": 1}, points_per_scan=2000, seed=0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"]["cylinder"]["size"] = [480, 360, 32]  # the published grid (profiles/semantickitti.yaml's)
    params["data"].update(dataset="semantickitti", root=str(work / "raw"), splits={"train": ["00"], "val": ["08"]})
    params["preprocess"].update(workers=1, splits=["train", "val"])
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = work / "processed"
    pvkd("preprocess", "--params", str(path), "--out", str(out), "--metrics", str(work / "preprocess.json"),
         log=work / "preprocess.log")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--points", type=int, default=120_000, help="Points of the synthetic scan.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch and the subprocesses).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from spconv1_reference import PublishedCylinder3D, randomize

    begun = time.perf_counter()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the pvkd subprocesses too
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or ROOT / "bench" / "results" / f"convert_full_size_{device.type}.json"

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processed = processed_folder(work)
        grid = ProcessedData(processed).grid
        assert grid.size == (480, 360, 32), grid
        reference = PublishedCylinder3D(grid.size, grid.min_bound, grid.max_bound, num_classes=20, init_size=32,
                                        mlp=(64, 128, 256), out_pt_fea_dim=256, fea_compre=16)
        randomize(reference, args.seed)
        state = reference.state_dict()
        keys, parameters = len(state), sum(p.numel() for p in reference.parameters())
        assert keys == OFFICIAL_KEYS, keys
        assert parameters == OFFICIAL_PARAMETERS, parameters
        checkpoint = work / "cylinder3d_official_layout.pt"
        torch.save(state, checkpoint, _use_new_zipfile_serialization=False)  # torch < 1.6's format, as in 2020

        started = time.perf_counter()
        record_path = work / "teacher.pt"
        # no --check-scans: random weights score at chance on any scan
        pvkd("import-teacher", str(checkpoint), "--data", str(processed), "--out", str(record_path), "--device",
             args.device, "--check-scans", "0", log=work / "import.log")
        import_s = time.perf_counter() - started
        model, record = load_model(record_path, device)
        # the negative control: the same weights permuted only, in the kernels each line declares (the unread
        # NaN taps zeroed so the difference is the kernels'), what loading the file as it is computes
        naive = {pvkd_key(k, module_names()): torch.nan_to_num(v).permute(4, 0, 1, 2, 3) if v.dim() == 5 else v
                 for k, v in state.items()}
        declared = build_model({**detect_config(state, checkpoint), "kernels": "declared", "point_head": False}, grid)
        declared.load_state_dict(naive)
        declared = declared.to(device).eval()

        scan = synthetic_scan(args.points, seed=args.seed)
        points = PointBatch(scan.xyz.double(), scan.intensity.double(), scan.batch, 1).to(device)
        reference = reference.double().eval().to(device)
        with torch.no_grad():
            started = time.perf_counter()
            ref_sites, ref_logits = reference(points.xyz, points.intensity, points.batch)
            reference_s = time.perf_counter() - started
            ref_sites, ref_logits = by_site(ref_sites, ref_logits)
            scale = float(ref_logits.abs().max())
            passes = {}
            runs = [("float64", model, torch.float64), ("float32", model, torch.float32),
                    ("declared_kernels_float32", declared, torch.float32)]
            for name, m, dtype in runs:
                if device.type == "cuda" and dtype == torch.float64:
                    continue  # spconv's implicit GEMM has no float64 kernels; float32 only on the GPU
                m = m.to(dtype)
                p = PointBatch(points.xyz.to(dtype), points.intensity.to(dtype), points.batch, 1)
                started = time.perf_counter()
                output = m(p)
                seconds = time.perf_counter() - started
                sites, logits = by_site(output.voxel_coords, output.voxel_logits)
                assert torch.equal(sites, ref_sites), "pvkd and the reference voxelize the scan differently"
                diff = (logits.double() - ref_logits).abs()
                passes[name] = {
                    "max_abs_diff": float(diff.max()),
                    "max_rel_diff": float(diff.max()) / scale,
                    "same_argmax": float((logits.argmax(1) == ref_logits.argmax(1)).double().mean()),
                    "seconds": round(seconds, 2),
                }

    result = {
        "device": device_name(device),
        "what": "voxel logits of `pvkd import-teacher`'s record vs a pure-torch spconv 1.x reference of the "
                "published network, same random checkpoint, same scan",
        "grid": list(grid.size),
        "points": points.num_points,
        "voxels": int(ref_sites.shape[0]),
        "official_layout": {"keys": keys, "parameters": parameters,
                            "expected": {"keys": OFFICIAL_KEYS, "parameters": OFFICIAL_PARAMETERS}},
        "imported": {"model": record["model"], "parameters": parameter_counts(model)["total"],
                     "dropped_nonfinite": record["imported"]["dropped_nonfinite"]},
        "logit_scale": scale,
        "passes": passes,
        "seconds": {"import_command": round(import_s, 1), "reference_float64": round(reference_s, 1),
                    "total": round(time.perf_counter() - begun, 1)},
        "tolerance": {"float64_max_rel_diff": 1e-6},
    }
    for name, p in passes.items():
        print(f"{name}: max |diff| {p['max_abs_diff']:.3e}, relative {p['max_rel_diff']:.3e} (logits up to "
              f"{scale:.3g}), same arg-max {p['same_argmax']:.6f}, {p['seconds']} s")
    print(f"{result['voxels']:,} voxels; official layout {keys} keys, {parameters:,} parameters; imported model "
          f"{result['imported']['parameters']:,} parameters (the decoder conv3 as the 1x3x3 it ran)")
    write_result(result, out)
    if "float64" in passes and passes["float64"]["max_rel_diff"] > 1e-6:
        raise SystemExit("float64 difference above 1e-6: the import does not compute the published function")


if __name__ == "__main__":
    main()
