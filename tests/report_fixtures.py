"""Fake inputs of the report stage: what the evaluate, preprocess and training stages would write.

:func:`write_inputs` lays out metrics/evaluate.json, eval/ (per-class and distance CSVs, a sample
scan), data/processed (stats.parquet, meta.json) and dvclive/<model>/plots/metrics under one
folder, with round numbers a test can check by hand. ``EXP_SHOW_JSON`` is the output of
`dvc exp show --json` (DVC 3.67) captured from a throw-away repo: a commit "master", three
experiments run from it with `dvc exp run -S` (aff05: distill.affinity_weight=0.5, uniform:
distill.sampling=uniform, sv20: distill.supervoxel.size=[20,10,2]) and a failed fourth run
(distill.point_weight=-1) that left its params in the workspace and no metrics file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pvkd.labels import SEMANTICKITTI_CLASSES, SEMANTICKITTI_POINT_SHARE

BANDS = ["0-10", "10-20", "20-30", "30-40", "40-50", "50+"]
CLASSES = SEMANTICKITTI_CLASSES[1:]
# name: (role, description, arch, width, mIoU, params M, MACs G, latency ms)
MODELS = {
    "teacher": ("teacher", "Cylinder3D 1x", "cylinder3d", 16, 0.60, 4.0, 20.0, 120.0),
    "pvkd": ("student", "PVKD, Cylinder3D 0.5x", "cylinder3d", 8, 0.56, 1.0, 5.0, 40.0),
    "baseline": ("student", "no distillation, Cylinder3D 0.5x", "cylinder3d", 8, 0.50, 1.0, 5.0, 42.0),
    "hinton": ("student", "Hinton KD (point KL only), Cylinder3D 0.5x", "cylinder3d", 8, 0.53, 1.0, 5.0, 41.0),
    "minkunet": ("student", "PVKD, MinkUNet from the Cylinder3D teacher", "minkunet", 8, 0.545, 1.2, 6.0, 30.0),
}


def metrics_of(models: dict = MODELS) -> dict:
    """The evaluate stage's metrics for ``models``: per-class IoU and bands spread around each mIoU."""
    rng = np.random.default_rng(0)
    hardness = rng.uniform(-0.3, 0.3, len(CLASSES))
    out = {}
    for k, (name, (role, desc, arch, width, miou, params, macs, latency)) in enumerate(models.items()):
        iou = np.clip(miou + hardness + rng.normal(0, 0.03, len(CLASSES)), 0.0, 1.0)
        out[name] = {
            "role": role, "description": desc, "arch": arch, "width": width, "miou": miou,
            "miou_voxel_head": miou - 0.02, "accuracy": 0.9 - 0.01 * k,
            "iou": {c: round(float(v), 4) for c, v in zip(CLASSES, iou)},
            "miou_by_distance": {b: (round(miou + 0.08 - 0.05 * i, 4) if i < 5 else None) for i, b in enumerate(BANDS)},
            "params_m": params, "macs_g": macs, "latency_ms": latency, "tta": False, "val_scans": 50,
        }
    return out


def sample_scan(models: list[str], n: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """A street seen by a spinning sensor: road, sidewalks, buildings, vegetation, cars; noisier models err more."""
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(2.0 ** 2, 55.0 ** 2, n)) ** 0.8 * 2.2
    phi = rng.uniform(-np.pi, np.pi, n)
    x, y = r * np.cos(phi), r * np.sin(phi)
    ay = np.abs(y)
    label = np.select([ay < 4, ay < 6, ay < 8, (ay > 14) & (np.sin(x / 6) > 0)], [9, 11, 17, 13], default=15)
    cars = (np.abs(ay - 2.5) < 1.0) & (np.abs(((x + 3) % 15) - 7) < 2.2)
    label = np.where(cars, 1, label)
    label = np.where(rng.random(n) < 0.03, 0, label)
    frame = pd.DataFrame({"x": x.astype(np.float32), "y": y.astype(np.float32),
                          "z": rng.normal(-1.5, 0.3, n).astype(np.float32), "label": label.astype(np.uint8)})
    for k, name in enumerate(models):
        edge = np.min(np.abs(ay[:, None] - np.array([4.0, 6.0, 8.0, 14.0])), axis=1) < 0.8
        err = (0.03 + 0.03 * k) * (1 + r / 25) + 0.25 * edge  # more mistakes far away, at edges, later models
        wrong = rng.random(n) < err
        pred = np.where(wrong, rng.choice([1, 9, 11, 13, 15, 17], n), np.maximum(label, 9 * (label == 0)))
        frame[f"pred_{name}"] = pred.astype(np.uint8)
    return frame


def stats_table(splits: dict[str, int]) -> pd.DataFrame:
    """stats.parquet: points per split x band x class following SemanticKITTI's shares (voxels a tenth)."""
    rows = []
    for split, total in splits.items():
        for b, band in enumerate(BANDS):
            for c, name in enumerate(SEMANTICKITTI_CLASSES):
                points = int(round(total * SEMANTICKITTI_POINT_SHARE[c] / len(BANDS)))
                rows.append((split, band, b, c, name, points, points // 10))
    frame = pd.DataFrame(rows, columns=["split", "band", "band_index", "class_id", "class_name", "points", "voxels"])
    return frame.astype({"band_index": np.int32, "class_id": np.int32, "points": np.int64, "voxels": np.int64})


def write_curves(live: Path, name: str, k: int, steps: int = 400, val: bool = True) -> None:
    """dvclive's files of one run: train/loss.tsv every 10 steps, val/miou.tsv at 200 and 400 (run ``k`` differs)."""
    folder = live / name / "plots" / "metrics"
    (folder / "train").mkdir(parents=True, exist_ok=True)
    s = np.arange(10, steps + 1, 10)
    loss = 1.2 + 0.4 * k + 5.0 * np.exp(-s / (60 + 25 * k)) + 0.1 * np.sin(s / 7)
    pd.DataFrame({"step": s, "loss": loss}).to_csv(folder / "train" / "loss.tsv", sep="\t", index=False)
    if val:
        (folder / "val").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [200, 400], "miou": [0.45 - 0.03 * k, 0.6 - 0.03 * k]}).to_csv(
            folder / "val" / "miou.tsv", sep="\t", index=False)


def write_processed(data: Path, stats: pd.DataFrame, summaries: dict[str, dict]) -> None:
    """A processed folder's split folders as the report reads them: each split's stats and meta.json."""
    for split, summary in summaries.items():
        (data / split).mkdir(parents=True)
        stats[stats["split"] == split].to_parquet(data / split / "stats.parquet", index=False)
        (data / split / "meta.json").write_text(json.dumps({
            "dataset": "semantickitti", "class_names": list(SEMANTICKITTI_CLASSES), "num_classes": 20,
            "grid": {"kind": "cylinder", "size": [480, 360, 32], "min_bound": [0, -3.14, -4],
                     "max_bound": [50, 3.14, 2]},
            "distance_bands": BANDS, "band_edges": [0, 10, 20, 30, 40, 50], "split": split, "summary": summary}))


def write_inputs(root: Path, models: dict = MODELS, curves: tuple[str, ...] = ("teacher", "pvkd", "baseline"),
                 no_val_curve: tuple[str, ...] = ("hinton",), scan_models: tuple[str, ...] | None = None) -> dict:
    """Write every input of the report under ``root``; returns the paths as the CLI options name them."""
    metrics = root / "metrics" / "evaluate.json"
    metrics.parent.mkdir(parents=True)
    m = metrics_of(models)
    metrics.write_text(json.dumps(m, indent=2))
    eval_dir = root / "eval"
    eval_dir.mkdir()
    pd.DataFrame([(n, c, v) for n, d in m.items() for c, v in d["iou"].items()],
                 columns=["model", "class", "iou"]).to_csv(eval_dir / "per_class_iou.csv", index=False)
    pd.DataFrame([(n, b, v) for n, d in m.items() for b, v in d["miou_by_distance"].items()],
                 columns=["model", "band", "miou"]).to_csv(eval_dir / "distance_miou.csv", index=False)
    scan_models = list(models)[:4] if scan_models is None else list(scan_models)
    sample_scan(scan_models).to_parquet(eval_dir / "sample_scan.parquet", index=False)
    data = root / "data" / "processed"
    splits = {"train": 4_400_000, "val": 1_100_000}
    write_processed(data, stats_table(splits), {s: {"scans": 200 if s == "train" else 50, "points": p}
                                                for s, p in splits.items()})
    live = root / "dvclive"
    for k, name in enumerate(curves):
        write_curves(live, name, k)
    for k, name in enumerate(no_val_curve, start=len(curves)):
        write_curves(live, name, k, val=False)
    params = root / "params.yaml"
    params.write_text("distill:\n  point_weight: 0.5\n  affinity_weight: 0.2\nreport:\n  title: Test report <&>\n")
    return {"metrics": metrics, "eval": eval_dir, "data": data, "live": live, "params": params,
            "out": root / "report"}


EXP_SHOW_JSON = r"""
[
 {
  "rev": "workspace",
  "name": null,
  "data": {
   "rev": "workspace",
   "timestamp": null,
   "params": {
    "params.yaml": {
     "data": {
      "distill": {
       "point_weight": -1,
       "affinity_weight": 0.2,
       "sampling": "difficulty",
       "supervoxel": {"size": [40, 20, 4], "count": 4}
      },
      "report": {"title": "x"}
     }
    }
   },
   "metrics": {
    "metrics/evaluate.json": {
     "error": {
      "type": "FileNotFoundError",
      "msg": "[Errno 2] No such file or directory: 'metrics/evaluate.json'"
     }
    }
   }
  },
  "error": null,
  "experiments": null
 },
 {
  "rev": "2adb46b9e10afbb77968fa7960a478ea26f3d629",
  "name": "master",
  "data": {
   "rev": "2adb46b9e10afbb77968fa7960a478ea26f3d629",
   "timestamp": "2026-11-23T11:51:41",
   "params": {
    "params.yaml": {
     "data": {
      "distill": {
       "point_weight": 0.5,
       "affinity_weight": 0.2,
       "sampling": "difficulty",
       "supervoxel": {"size": [40, 20, 4], "count": 4}
      },
      "report": {"title": "x"}
     }
    }
   },
   "metrics": {
    "metrics/evaluate.json": {
     "data": {
      "teacher": {"role": "teacher", "description": "Cylinder3D 1x", "miou": 0.6},
      "pvkd": {"role": "student", "description": "PVKD", "miou": 0.531},
      "baseline": {"role": "student", "description": "no distillation", "miou": 0.5}
     }
    }
   }
  },
  "error": null,
  "experiments": [
   {
    "revs": [
     {
      "rev": "995f4f78ab52e878aebf56850af0d9bb6ffd38ce",
      "name": "sv20",
      "data": {
       "rev": "995f4f78ab52e878aebf56850af0d9bb6ffd38ce",
       "timestamp": "2026-11-23T11:51:44",
       "params": {
        "params.yaml": {
         "data": {
          "distill": {
           "point_weight": 0.5,
           "affinity_weight": 0.2,
           "sampling": "difficulty",
           "supervoxel": {"size": [20, 10, 2], "count": 4}
          },
          "report": {"title": "x"}
         }
        }
       },
       "metrics": {
        "metrics/evaluate.json": {
         "data": {
          "teacher": {"role": "teacher", "description": "Cylinder3D 1x", "miou": 0.6},
          "pvkd": {"role": "student", "description": "PVKD", "miou": 0.531},
          "baseline": {"role": "student", "description": "no distillation", "miou": 0.5}
         }
        }
       }
      },
      "error": null,
      "experiments": null
     }
    ],
    "executor": null,
    "name": "sv20"
   },
   {
    "revs": [
     {
      "rev": "220f3e0a18b9b2da43c07b4f3f78baf7486abc28",
      "name": "uniform",
      "data": {
       "rev": "220f3e0a18b9b2da43c07b4f3f78baf7486abc28",
       "timestamp": "2026-11-23T11:51:43",
       "params": {
        "params.yaml": {
         "data": {
          "distill": {
           "point_weight": 0.5,
           "affinity_weight": 0.2,
           "sampling": "uniform",
           "supervoxel": {"size": [40, 20, 4], "count": 4}
          },
          "report": {"title": "x"}
         }
        }
       },
       "metrics": {
        "metrics/evaluate.json": {
         "data": {
          "teacher": {"role": "teacher", "description": "Cylinder3D 1x", "miou": 0.6},
          "pvkd": {"role": "student", "description": "PVKD", "miou": 0.521},
          "baseline": {"role": "student", "description": "no distillation", "miou": 0.5}
         }
        }
       }
      },
      "error": null,
      "experiments": null
     }
    ],
    "executor": null,
    "name": "uniform"
   },
   {
    "revs": [
     {
      "rev": "264ab28c839eb94812b30e11b95b3f4e4b5c326c",
      "name": "aff05",
      "data": {
       "rev": "264ab28c839eb94812b30e11b95b3f4e4b5c326c",
       "timestamp": "2026-11-23T11:51:42",
       "params": {
        "params.yaml": {
         "data": {
          "distill": {
           "point_weight": 0.5,
           "affinity_weight": 0.5,
           "sampling": "difficulty",
           "supervoxel": {"size": [40, 20, 4], "count": 4}
          },
          "report": {"title": "x"}
         }
        }
       },
       "metrics": {
        "metrics/evaluate.json": {
         "data": {
          "teacher": {"role": "teacher", "description": "Cylinder3D 1x", "miou": 0.6},
          "pvkd": {"role": "student", "description": "PVKD", "miou": 0.561},
          "baseline": {"role": "student", "description": "no distillation", "miou": 0.5}
         }
        }
       }
      },
      "error": null,
      "experiments": null
     }
    ],
    "executor": null,
    "name": "aff05"
   }
  ]
 }
]"""
