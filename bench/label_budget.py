"""Label-efficient distillation: how the students fare when only some of the train streets are labelled.

At a budget of ``n`` streets, the first ``n`` of the default data's 8 train streets keep their
labels (split ``train``); the other ``8 - n`` form the split ``unlabelled``, preprocessed without
their labels (the files on disk are never read); val stays the default's 4 streets. Per budget:
one teacher trained on the labelled streets only (``--teacher-steps`` steps, keeping its best
val checkpoint as the pipeline does), its cache over ``train`` and ``unlabelled``, then each
student at each seed for each ``--steps`` (steps of one scan; the epochs follow from the
labelled scan count, so every student of a budget runs the same number of steps):

* ``baseline``: no teacher, the labelled scans only;
* ``pseudo``: plus the unlabelled scans with the teacher's top class as their labels (self-training);
* ``hinton``: pseudo-labels plus the point KL on every point;
* ``pvkd``: pseudo-labels plus the four PVKD terms on every point;
* ``lasermix``: ``pvkd`` plus LaserMix with unlabelled partners (``train.augment.lasermix.partner:
  unlabelled``, p 0.5): half the scans mix inclination bands of a labelled and an unlabelled scan,
  labels on the labelled bands and the teacher's pseudo-labels on the others (LaserMix's
  semi-supervised recipe, on top of PVKD).

With all 8 streets labelled there is no unlabelled split: the students are the plain ones.
Students keep their final weights (``train.keep: last``) and are scored on the whole val split.
For each distilled student: mean ± sample std over the seeds, the paired same-seed gains over
``baseline``, whether the gain exceeds twice the larger std, and, where the full-label baseline
at the same steps is in the results, the label gap (full labels minus the budget's baseline) and,
where that gap itself exceeds twice the larger std of the two baselines, the share of it that
the student closes.

    python bench/label_budget.py --budgets 1 --steps 400 --seeds 0 1 2 --parallel 2
    python bench/label_budget.py --budgets 1 --steps 1600 --teacher-steps 1600 \
        --out bench/results/label_budget_cpu_teacher_1600.json     # a teacher as long as its students
    python bench/label_budget.py --budgets 2 4 8 --steps 400 --seeds 0 1 2

A teacher trained for fewer steps than its students can be worse than the labelled-only
student (at 1 street: an 800-step teacher 45.05 mIoU, the 1600-step baseline 45.11), and
distilling from it then only costs: train the teacher at least as long (``--teacher-steps``).
Each teacher length has its folder (``teacher-<steps>/``) and its students; the baseline runs,
which never read a teacher, are shared by all.

The result JSON is rewritten after every finished run, so an interrupted study keeps what it
has; rerunning reuses every finished teacher, cache and student under ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from common import device_name, pvkd, write_result  # bench/common.py (the script's folder is on sys.path)
from distill_seeds import run

from pvkd.train.config import merge_sections
from pvkd.train.distributed import resolve_device

STUDENTS = ("baseline", "pseudo", "hinton", "pvkd", "lasermix")
PSEUDO = {"description": "pseudo-labels only (self-training), Cylinder3D 0.5x",
          "distill": {"point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0}}
LASERMIX = {"description": "PVKD + LaserMix of labelled with unlabelled scans, Cylinder3D 0.5x",
            "train": {"augment": {"lasermix": {"probability": 0.5, "partner": "unlabelled"}}}}
NEED_UNLABELLED = ("pseudo", "lasermix")  # students that are something else only with unlabelled scans


def budget_params(base: dict, streets: int, raw: Path) -> dict:
    """params.yaml with the first ``streets`` train streets labelled and the rest as the unlabelled split."""
    p = copy.deepcopy(base)
    train = list(base["data"]["splits"]["train"])
    p["data"]["root"] = str(raw)
    p["data"]["splits"] = {"train": train[:streets], "val": list(base["data"]["splits"]["val"])}
    p["preprocess"]["splits"] = ["train", "val"]
    p["cache"]["splits"] = ["train"]
    p["distill"]["unlabelled"]["split"] = None
    if streets < len(train):
        p["data"]["splits"]["unlabelled"] = train[streets:]
        p["preprocess"]["splits"].append("unlabelled")
        p["cache"]["splits"].append("unlabelled")
        p["distill"]["unlabelled"]["split"] = "unlabelled"
    extra = {"pseudo": {**PSEUDO, "model": base["students"]["baseline"]["model"]},
             "lasermix": merge_sections(base["students"]["pvkd"], LASERMIX)}
    p["students"] = {name: copy.deepcopy(extra.get(name) or base["students"][name]) for name in STUDENTS}
    return p


def prepare(folder: Path, params: dict, teacher_steps: int, need_teacher: bool = True,
            threads: int = 0) -> tuple[Path, Path, Path, int, float | None]:
    """Preprocess, teacher and cache of one budget (each reused when already there; no teacher or cache
    when only the baseline, which never reads them, is asked for). Teachers of different lengths sit
    side by side in ``teacher-<steps>/``, with the students distilled from them."""
    folder.mkdir(parents=True, exist_ok=True)
    data, teachers = folder / "processed", folder / f"teacher-{teacher_steps}"
    teacher, cache = teachers / "teacher.pt", teachers / "cache"
    if not (data / "meta.json").is_file():
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        pvkd("preprocess", "--params", str(folder / "params.yaml"), "--out", str(data),
             "--metrics", str(folder / "preprocess.json"), log=folder / "preprocess.log")
    labelled = json.loads((data / "meta.json").read_text())["splits"]["train"]["scans"]
    if not need_teacher:
        return data, teacher, cache, labelled, None
    if not teacher.is_file():
        p = copy.deepcopy(params)
        # threads: a teacher may train beside other runs (torch's threads spin when the cores are oversubscribed)
        p["teacher"]["train"] = {**(p["teacher"].get("train") or {}), "threads": threads,
                                 "epochs": max(1, round(teacher_steps / labelled))}
        teachers.mkdir(exist_ok=True)
        (teachers / "teacher_params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        print(f"{folder.name}: teacher on {labelled} labelled scans, {p['teacher']['train']['epochs']} epochs",
              flush=True)
        pvkd("teacher-train", "--params", str(teachers / "teacher_params.yaml"), "--data", str(data), "--out",
             str(teacher), "--live", str(teachers / "teacher_live"), "--checkpoints", str(teachers / "teacher_ckpt"),
             log=teachers / "teacher.log")
    if not (cache / "manifest.json").is_file() or not json.loads((cache / "manifest.json").read_text())["complete"]:
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        pvkd("cache-logits", "--params", str(folder / "params.yaml"), "--teacher", str(teacher), "--data", str(data),
             "--out", str(cache), log=teachers / "cache.log")
    teacher_miou = torch.load(teacher, weights_only=True)["val"]["miou"]
    print(f"{folder.name}: teacher val mIoU {teacher_miou:.4f}", flush=True)
    return data, teacher, cache, labelled, teacher_miou


def _std(values) -> float:
    """Sample std; 0 for a single value."""
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(budgets: dict) -> dict:
    """Per step count, budget and student: mean ± std over seeds, paired gains, the gap to full labels closed."""
    summary: dict = {}
    for streets, b in budgets.items():
        for r in b["runs"]:
            cell = summary.setdefault(str(r["steps"]), {}).setdefault(streets, {}).setdefault(r["student"], {})
            cell.setdefault("per_seed", {})[r["seed"]] = r["miou"]
    for per_budget in summary.values():
        full = per_budget.get("8", {}).get("baseline")
        for streets, students in per_budget.items():
            base = students.get("baseline")
            for name, s in students.items():
                values = [s["per_seed"][k] for k in sorted(s["per_seed"])]
                s["mean"] = statistics.mean(values)
                s["std"] = _std(values)
                if base is None or name == "baseline":
                    continue
                common = sorted(set(s["per_seed"]) & set(base["per_seed"]))
                s["paired_gain_per_seed"] = [s["per_seed"][k] - base["per_seed"][k] for k in common]
                s["gain_over_baseline"] = s["mean"] - statistics.mean(base["per_seed"].values())
                noise = 2 * max(s["std"], _std(base["per_seed"].values()))
                s["gain_beyond_2_std"] = len(values) > 1 and s["gain_over_baseline"] > noise
                if full is not None and streets != "8":
                    full_mean = statistics.mean(full["per_seed"].values())
                    base_mean = statistics.mean(base["per_seed"].values())
                    gap_noise = 2 * max(_std(full["per_seed"].values()), _std(base["per_seed"].values()))
                    s["full_label_baseline"] = full_mean
                    s["label_gap"] = full_mean - base_mean
                    s["label_gap_beyond_2_std"] = s["label_gap"] > gap_noise
                    # a share of a gap inside the noise would be a ratio of two noises: left out
                    s["gap_to_full_labels_closed"] = ((s["mean"] - base_mean) / s["label_gap"]
                                                      if s["label_gap_beyond_2_std"] else None)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="base params (the default data and recipe)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8], help="labelled streets of the 8")
    parser.add_argument("--steps", type=int, nargs="+", default=[400], help="student steps (one scan each)")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--parallel", type=int, default=2, help="student runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--teacher-threads", type=int, default=0, help="CPU threads of the teacher; 0 = all cores")
    parser.add_argument("--work", default="bench/work/label_budget")
    parser.add_argument("--out", default="bench/results/label_budget_cpu.json")
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.params).read_text())
    work = Path(args.work)
    raw = work / "raw"
    if not (raw / "synth_summary.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        pvkd("synth", "--params", args.params, "--out", str(raw), "--metrics", str(work / "synth.json"),
             log=work / "synth.log")
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    budgets = previous.get("budgets", {})
    lock = threading.Lock()

    def save() -> None:
        result = {"device": device_name(resolve_device(base["train"]["device"])), "seeds": args.seeds,
                  "teacher_steps": args.teacher_steps, "distill": base["distill"], "budgets": budgets,
                  "summary": summarize(budgets)}
        write_result(result, out)

    for streets in args.budgets:
        params = budget_params(base, streets, raw.resolve())
        folder = work / f"streets-{streets}"
        need_teacher = args.students != ["baseline"]
        data, teacher, cache, labelled, teacher_miou = prepare(folder, params, args.teacher_steps, need_teacher,
                                                               args.teacher_threads)
        entry = budgets.setdefault(str(streets), {"runs": []})
        entry.update(labelled_scans=labelled, unlabelled_streets=8 - streets)
        if teacher_miou is not None:
            entry["teacher_miou"] = teacher_miou
        done = {(r["steps"], r["student"], r["seed"]) for r in entry["runs"]}
        # with every street labelled there are no unlabelled scans: pseudo would be the baseline
        students = [n for n in args.students if not (n in NEED_UNLABELLED and streets == 8)]
        jobs = [(steps, name, seed) for steps in args.steps for seed in args.seeds for name in students
                if (steps, name, seed) not in done]

        def one(job, params=params, folder=folder, data=data, teacher=teacher, cache=cache, entry=entry,
                labelled=labelled):
            steps, name, seed = job
            p = copy.deepcopy(params)
            p["students"][name]["train"] = {**p["students"][name].get("train", {}),
                                            "epochs": max(1, round(steps / labelled)), "val_every": 0}
            # the baseline never reads the teacher: one run serves every teacher of the budget
            runs = folder if name == "baseline" else teacher.parent
            r = run(name, seed, p, runs / f"steps-{steps}", threads, str(cache), str(data), str(teacher))
            with lock:
                entry["runs"].append({**r, "steps": steps})
                save()

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(one, jobs))
        save()


if __name__ == "__main__":
    main()
