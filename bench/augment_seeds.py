"""Do the mixing augmentations pay? The teacher trained with each against the affine recipe alone, over seeds.

Variants: ``affine`` (today's recipe), ``paste``, ``polarmix``, ``lasermix`` (one transform at
``--probability``) and ``all`` (the three). Each (variant, seed) runs `pvkd teacher-train` with
``train.seed`` set (weights, scan order, augmentation and mixing draws change) and the final
weights kept (``train.keep: last``: no model picked on the val split), scored on the whole val
split by the official rules. Reported per variant: val mIoU mean ± sample std, the mean IoU of
every class of ``objects.classes`` (the rare classes the bank holds), and the same-seed
differences from ``affine`` with their mean, 95 % t-interval, p and verdict (:mod:`pvkd.stats`).

The data is the params' own (synth -> preprocess -> objects, built once in the work folder), so
the script runs on a fresh machine:

    python bench/augment_seeds.py --variants affine paste polarmix lasermix --seeds 0 1 2 --parallel 2
    python bench/augment_seeds.py --resummarize --out bench/results/augment_seeds_cpu.json  # summary from its runs

Writes bench/results/augment_seeds_<device>.json after every run. Each run's folder under
``--work`` is keyed by the fingerprint of its effective params (``--probability`` included) and
data: a rerun reuses a finished run only on a match, and refuses to add runs made with other
params to a result that holds the same variant and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from common import (  # bench/common.py (the script's folder is on sys.path)
    MIX_VARIANTS,
    canonical,
    check_recorded,
    data_identity,
    describe,
    device_name,
    keyed_folder,
    pvkd,
    resummarize,
    scores_by,
    seeds_of,
    teacher_run,
    write_result,
)

from pvkd.stats import summary_table
from pvkd.train.distributed import resolve_device

BASELINE = "affine"
DATA_SECTIONS = ("synth", "data", "grid", "preprocess", "objects")  # what synth, preprocess and objects read


def prepare(params: dict, work: Path) -> tuple[Path, Path]:
    """The params' data, processed, and its object bank, built once under ``work`` in a folder keyed by the
    sections that make them."""
    folder, _ = keyed_folder(work, "data", {"params": {k: canonical(params)[k] for k in DATA_SECTIONS}})
    data, bank = folder / "processed", folder / "objects.parquet"
    if not bank.is_file():
        p = json.loads(json.dumps(params))
        p["data"]["root"] = str((folder / "raw").resolve())
        (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        path = str(folder / "params.yaml")
        pvkd("synth", "--params", path, "--out", str(folder / "raw"), "--metrics", str(folder / "synth.json"),
             log=folder / "synth.log")
        pvkd("preprocess", "--params", path, "--out", str(data), "--metrics", str(folder / "preprocess.json"),
             log=folder / "preprocess.log")
        pvkd("objects", "--params", path, "--data", str(data), "--out", str(bank), log=folder / "objects.log")
    return data, bank


def with_variant(params: dict, variant: str, probability: float) -> dict:
    """``params`` with ``variant``'s transforms on at ``probability``."""
    p = json.loads(json.dumps(params))
    for name in MIX_VARIANTS[variant]:
        p["train"]["augment"][name]["probability"] = probability
    return p


def summarize(result: dict) -> dict:
    """``result`` with its summary derived from its runs: per variant the mIoU spread, the rare-class IoU means
    and the paired comparison with ``affine``."""
    runs, rare = result["runs"], result["rare_classes"]
    table = summary_table(scores_by(runs, lambda r: r["variant"]), BASELINE)
    for variant, cell in table.items():
        ious = [r["iou"] for r in runs if r["variant"] == variant]
        cell["rare_iou"] = {c: statistics.mean(iou[c] for iou in ious) for c in rare}
    # from the runs themselves: one probability, or each one the runs were made with
    probability = sorted({r["probability"] for r in runs})
    return {**result, "probability": probability[0] if len(probability) == 1 else probability,
            "seeds": seeds_of(runs), "baseline": BASELINE, "summary": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variants", nargs="+", default=list(MIX_VARIANTS), choices=list(MIX_VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--probability", type=float, default=0.5, help="of each transform a variant turns on")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--work", default="bench/work/augment_seeds")
    parser.add_argument("--out", default=None)
    parser.add_argument("--resummarize", action="store_true", help="rewrite --out's summary from its runs; no training")
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    out = Path(args.out or f"bench/results/augment_seeds_{resolve_device(params['train']['device']).type}.json")
    if args.resummarize:
        resummarize(out, summarize)
        return
    work = Path(args.work)
    data, bank = prepare(params, work)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    inputs = data_identity(data)
    planned = {(v, s): teacher_run(v, s, with_variant(params, v, args.probability), threads, data, bank, inputs)
               for s in args.seeds for v in args.variants}
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    if any(r["probability"] != args.probability for r in runs):  # one result, one probability: never pooled
        raise SystemExit(f"{out} holds runs at another --probability; write to another --out")
    check_recorded(runs, lambda r: (r["variant"], r["seed"]), {k: r.fingerprint for k, r in planned.items()}, out)
    done = {r.get("fingerprint") for r in runs}
    lock = threading.Lock()

    def one(key: tuple[str, int]) -> None:
        variant, seed = key
        r = {"variant": variant, "seed": seed, "probability": args.probability, **planned[key](work / "runs")}
        with lock:
            runs.append(r)
            result = summarize({"device": device_name(resolve_device(params["train"]["device"])),
                                "teacher": params["teacher"], "probability": args.probability,
                                "rare_classes": list(params["objects"]["classes"]), "runs": runs})
            write_result(result, out)
            print(describe(variant, result["summary"][variant]), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, [k for k, r in planned.items() if r.fingerprint not in done]))


if __name__ == "__main__":
    main()
