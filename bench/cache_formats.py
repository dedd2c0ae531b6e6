"""Teacher-cache formats: bytes per point against the fidelity of what a student reads back.

For the class distributions, each codec of :mod:`pvkd.distill.cache` (fp16, int8, top-k for
several k) is scored by the mean KL(full || decoded) per point, at temperature 1 and at a
distillation temperature, over the points of some train scans. For the features of the
affinity terms, each projection dimension is scored by how far the cosine-similarity matrices
(what the affinity terms compare) of the decoded features are from those of the full features,
over random groups of points of the same scans (mean absolute difference, and the affinity loss
itself: mean squared difference).

    python bench/cache_formats.py --teacher models/teacher.pt --data data/processed --scans 8

Writes bench/results/cache_formats_<device>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import device_name, write_result  # bench/common.py (the script's folder is on sys.path)

from pvkd.distill.cache import decode_features, decode_outputs, encode_features, encode_outputs, fit_projection
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset, make_loader


def kl(full: torch.Tensor, decoded: torch.Tensor, temperature: float) -> float:
    """Mean over points of KL(p || q), both at ``temperature``."""
    p = torch.log_softmax(full / temperature, 1)
    q = torch.log_softmax(decoded / temperature, 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def affinity_error(full: torch.Tensor, approx: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Mean |S_full - S_approx| and mean (S_full - S_approx)^2 over the off-diagonal pairs of each group."""
    a = torch.nn.functional.normalize(full[groups], dim=2)
    b = torch.nn.functional.normalize(approx[groups], dim=2)
    diff = a @ a.transpose(1, 2) - b @ b.transpose(1, 2)
    off = ~torch.eye(groups.shape[1], dtype=torch.bool)
    d = diff[:, off]
    return float(d.abs().mean()), float((d**2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="models/teacher.pt")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--scans", type=int, default=8, help="train scans scored (evenly spaced)")
    parser.add_argument("--temperature", type=float, default=4.0, help="the second temperature the KL is taken at")
    parser.add_argument("--group", type=int, default=256, help="points per affinity group")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)

    model, record = load_model(args.teacher, device)
    dataset = ScanDataset(args.data, "train")
    positions = np.unique(np.linspace(0, len(dataset) - 1, args.scans).round().astype(int))
    logps, point_features, voxel_features = [], [], []
    with torch.no_grad():
        for batch in make_loader(dataset, [[(0, int(p))] for p in positions], workers=0):
            out = model(batch.points.to(device))
            logps.append(torch.log_softmax(out.point_logits.float(), 1).cpu())
            point_features.append(out.point_features.float().cpu())
            voxel_features.append(out.voxel_features.float()[out.point_to_voxel].cpu())
    logp = torch.cat(logps)
    num_classes = logp.shape[1]
    print(f"{len(positions)} scans, {len(logp):,} points, {num_classes} classes, "
          f"teacher point features {point_features[0].shape[1]}, voxel features {voxel_features[0].shape[1]}")

    outputs = []
    codecs = [("fp16", 0), ("int8", 0)] + [("topk", k) for k in (1, 2, 3, 4, 5, 6, 8)]
    for codec, k in codecs:
        records = encode_outputs(logp, codec, k)
        decoded = decode_outputs(torch.from_numpy(records), codec, num_classes, k)
        row = {"codec": codec if codec != "topk" else f"top{k}", "bytes_per_point": records.shape[1],
               "kl_t1": kl(logp, decoded, 1.0), f"kl_t{args.temperature:g}": kl(logp, decoded, args.temperature),
               "argmax_agreement": float((decoded.argmax(1) == logp.argmax(1)).float().mean())}
        outputs.append(row)
        hot = row[f"kl_t{args.temperature:g}"]
        print(f"  outputs {row['codec']:>5}: {row['bytes_per_point']:3d} B/point, KL {row['kl_t1']:.5f} nats (T=1), "
              f"{hot:.5f} (T={args.temperature:g}), arg-max kept {row['argmax_agreement']:.4f}")

    features = []
    for kind, rows in (("point", point_features), ("voxel", voxel_features)):
        full = torch.cat(rows)
        width = full.shape[1]
        groups = torch.stack([torch.randperm(len(full))[: args.group] for _ in range(64)])
        # groups inside one scan, as a supervoxel's: random points of each scan
        starts = np.cumsum([0] + [len(r) for r in rows])
        groups = torch.stack([
            torch.from_numpy(starts[s] + np.random.default_rng(g).permutation(len(rows[s]))[: args.group])
            for g, s in enumerate(np.arange(64) % len(rows))
        ])
        for dim in (4, 8, 16, 24, 32, width):
            projection = fit_projection(rows[: max(1, len(rows) // 2)], dim)  # fitted on half, scored on all
            approx = decode_features(torch.from_numpy(encode_features(full, projection)))
            mae, mse = affinity_error(full, approx, groups)
            row = {"features": kind, "dim": min(dim, width), "bytes_per_point": min(dim, width),
                   "affinity_abs_error": mae, "affinity_sq_error": mse}
            features.append(row)
            print(f"  {kind} features, {row['dim']:3d} dims int8: {row['bytes_per_point']:3d} B/point, "
                  f"cosine error {mae:.4f} (abs), {mse:.5f} (squared)")

    result = {
        "device": device_name(device),
        "teacher": {"model": record["model"], "step": record.get("step")},
        "scans": int(len(positions)), "points": int(len(logp)),
        "outputs": outputs, "features": features,
    }
    out = Path(args.out or f"bench/results/cache_formats_{device.type}.json")
    write_result(result, out)


if __name__ == "__main__":
    main()
