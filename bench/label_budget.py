"""Label-efficient distillation: how the students fare when only some of the train streets are labelled.

At a budget of ``n`` streets, the first ``n`` of the params' train streets (``data.splits.train``,
8 in the default) keep their labels (split ``train``); the others form the split ``unlabelled``,
preprocessed without their labels (the files on disk are never read); val stays the params'.
Per budget: one teacher trained on the labelled streets only (``--teacher-steps`` steps, keeping
its best val checkpoint as the pipeline does), its cache over ``train`` and ``unlabelled``, then
each student at each seed for each ``--steps`` (steps of one scan; the epochs follow from the
labelled scan count, so every student of a budget runs the same number of steps):

* ``baseline``: no teacher, the labelled scans only;
* ``pseudo``: plus the unlabelled scans with the teacher's top class as their labels (self-training);
* ``hinton``: pseudo-labels plus the point KL on every point;
* ``pvkd``: pseudo-labels plus the four PVKD terms on every point;
* ``lasermix``: ``pvkd`` plus LaserMix with unlabelled partners (``train.augment.lasermix.partner:
  unlabelled``, p 0.5): half the scans mix inclination bands of a labelled and an unlabelled scan,
  labels on the labelled bands and the teacher's pseudo-labels on the others (LaserMix's
  semi-supervised recipe, on top of PVKD).

With every street labelled there is no unlabelled split: the students are the plain ones.
Students keep their final weights (``train.keep: last``) and are scored on the whole val split.
Per step count, budget and student: mean ± sample std over the seeds and, against the budget's
``baseline``, the paired same-seed differences with their mean, 95 % t-interval, p and verdict
(:mod:`pvkd.stats`). The label gap is the all-labels baseline minus the budget's baseline at the
same steps, paired the same way; where its interval excludes 0, each student's share of it is
its paired mean gain over the baseline divided by the gap's paired mean.

    python bench/label_budget.py --budgets 1 --steps 400 --seeds 0 1 2 --parallel 2
    python bench/label_budget.py --budgets 1 --steps 1600 --teacher-steps 1600 \\
        --out bench/results/label_budget_cpu_teacher_1600.json     # a teacher as long as its students
    python bench/label_budget.py --budgets 2 4 8 --steps 400 --seeds 0 1 2
    python bench/label_budget.py --resummarize --out bench/results/label_budget_cpu.json  # summary from its runs

A teacher trained for fewer steps than its students can be worse than the labelled-only
student (at 1 street: an 800-step teacher 45.05 mIoU, the 1600-step baseline 45.11), and
distilling from it then only costs: train the teacher at least as long (``--teacher-steps``).

Every run (teacher, student) has a folder keyed by the fingerprint of its effective params and of
what it reads (the data's shards; for a distilled student its teacher's fingerprint, which
carries the teacher's length), and is reused only on a match: the baseline, which never reads a
teacher, is shared by every teacher length. The result JSON is rewritten whole after every
finished run, so an interrupted study keeps what it has; a run recorded there for the same budget,
steps, student and seed with another fingerprint is refused rather than mixed in.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from common import (  # bench/common.py (the script's folder is on sys.path)
    Run,
    check_recorded,
    data_identity,
    describe,
    device_name,
    preprocess,
    pvkd,
    resummarize,
    scores_by,
    seeds_of,
    street_budget,
    student_run,
    synthesize,
    train_streets,
    write_result,
)

from pvkd.stats import paired, seed_order, share, summary_table
from pvkd.train.config import merge_sections
from pvkd.train.distributed import resolve_device

STUDENTS = ("baseline", "pseudo", "hinton", "pvkd", "lasermix")
BASELINE = "baseline"
PSEUDO = {"description": "pseudo-labels only (self-training), Cylinder3D 0.5x",
          "distill": {"point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0}}
LASERMIX = {"description": "PVKD + LaserMix of labelled with unlabelled scans, Cylinder3D 0.5x",
            "train": {"augment": {"lasermix": {"probability": 0.5, "partner": "unlabelled"}}}}
NEED_UNLABELLED = ("pseudo", "lasermix")  # students that are something else only with unlabelled scans


def budget_params(base: dict, streets: int, raw: Path) -> dict:
    """params.yaml with the first ``streets`` train streets labelled and the rest as the unlabelled split."""
    p = street_budget(base, streets, raw)
    if streets < len(train_streets(base)):
        p["distill"]["unlabelled"]["split"] = "unlabelled"
    extra = {"pseudo": {**PSEUDO, "model": base["students"]["baseline"]["model"]},
             "lasermix": merge_sections(base["students"]["pvkd"], LASERMIX)}
    p["students"] = {name: copy.deepcopy(extra.get(name) or base["students"][name]) for name in STUDENTS}
    return p


def teacher_run(params: dict, data: Path, labelled: int, steps: int, threads: int) -> Run:
    """The budget's teacher: ``steps`` steps on the labelled scans, its best val checkpoint kept. A teacher may
    train beside other runs: ``threads`` (torch's threads spin when the cores are oversubscribed)."""
    p = copy.deepcopy(params)
    p["teacher"]["train"] = {**(p["teacher"].get("train") or {}), "threads": threads,
                             "epochs": max(1, round(steps / labelled))}
    return Run("teacher-train", f"teacher-{steps}", p, data_identity(data), ("--data", str(data)))


def train_teacher(run: Run, folder: Path, data: Path) -> float:
    """Train the teacher once (reused when finished) and cache its outputs over the budget's cached splits
    beside it; its val mIoU."""
    record = run(folder)
    here = run.folder(folder)
    manifest = here / "cache" / "manifest.json"
    if not manifest.is_file() or not json.loads(manifest.read_text())["complete"]:
        pvkd("cache-logits", "--params", str(here / "params.yaml"), "--teacher", str(here / "model.pt"),
             "--data", str(data), "--out", str(here / "cache"), log=here / "cache.log")
    return record["miou"]


def summarize(result: dict) -> dict:
    """``result`` with its summary and metadata derived from its runs (per step count, budget and student)."""
    budgets = result["budgets"]
    totals = {int(k) + b["unlabelled_streets"] for k, b in budgets.items()}
    if len(totals) != 1:
        raise ValueError(f"budgets of different train street counts in one result: {sorted(totals)}")
    total = totals.pop()
    cells: dict = {}
    for streets, b in budgets.items():
        for (steps, student), scores in scores_by(b["runs"], lambda r: (r["steps"], r["student"])).items():
            cells.setdefault(str(steps), {}).setdefault(streets, {})[student] = scores
    summary: dict = {}
    for steps in seed_order(cells):
        full = cells[steps].get(str(total), {}).get(BASELINE)
        for streets in seed_order(cells[steps]):
            students = {n: cells[steps][streets][n] for n in sorted(cells[steps][streets], key=_student_order)}
            table = summary_table(students, BASELINE)
            base = students.get(BASELINE)
            if full is not None and base is not None and streets != str(total):
                gap = paired(full, base)
                table[BASELINE]["label_gap"] = {"full_labels": f"{total}/{total}", **gap.to_json()}
                for name, cell in table.items():
                    if name != BASELINE:
                        cell["label_gap_share"] = share(paired(students[name], base), gap)
            summary.setdefault(steps, {})[streets] = table
    for b in budgets.values():
        b["unlabelled_split"] = "unlabelled" if b["unlabelled_streets"] else None
    runs = [r for b in budgets.values() for r in b["runs"]]
    lengths = sorted({r["teacher_steps"] for r in runs if r.get("teacher_steps") is not None})
    distill = copy.deepcopy(result["distill"])
    distill.get("unlabelled", {}).pop("split", None)  # per budget: budgets.<n>.unlabelled_split
    return {**result, "seeds": seeds_of(runs), "train_streets": total,
            "teacher_steps": (lengths[0] if len(lengths) == 1 else lengths) if lengths else result["teacher_steps"],
            "distill": distill, "summary": summary}


def _student_order(name: str) -> tuple:
    return (STUDENTS.index(name), "") if name in STUDENTS else (len(STUDENTS), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="base params (the default data and recipe)")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="labelled streets of the params' train streets; default 1, 2, 4 and all of them")
    parser.add_argument("--steps", type=int, nargs="+", default=[400], help="student steps (one scan each)")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--parallel", type=int, default=2, help="student runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--teacher-threads", type=int, default=0, help="CPU threads of the teacher; 0 = all cores")
    parser.add_argument("--work", default="bench/work/label_budget")
    parser.add_argument("--out", default="bench/results/label_budget_cpu.json")
    parser.add_argument("--resummarize", action="store_true", help="rewrite --out's summary from its runs; no training")
    args = parser.parse_args()
    out = Path(args.out)
    if args.resummarize:
        resummarize(out, summarize)
        return
    base = yaml.safe_load(Path(args.params).read_text())
    total = len(train_streets(base))
    work = Path(args.work)
    raw = synthesize(base, args.params, work).resolve()
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    budgets = previous.get("budgets", {})
    lock = threading.Lock()

    def save() -> None:
        result = summarize({**previous, "device": device_name(resolve_device(base["train"]["device"])),
                            "teacher_steps": args.teacher_steps, "distill": base["distill"], "budgets": budgets})
        write_result(result, out)

    # plan every budget first (its data, teacher and students, by fingerprint), so that a conflict with the
    # recorded runs is refused before anything trains
    plans = []
    for streets in args.budgets or sorted({1, 2, 4, total}):
        params = budget_params(base, streets, raw)
        folder = work / f"streets-{streets}"
        data, labelled = preprocess(folder, params, raw)
        teach = teacher_run(params, data, labelled, args.teacher_steps, args.teacher_threads)
        cache, teacher_path = teach.folder(folder) / "cache", teach.folder(folder) / "model.pt"
        # with every street labelled there are no unlabelled scans: pseudo would be the baseline
        students = [n for n in args.students if not (n in NEED_UNLABELLED and streets == total)]
        planned = {}
        for steps in args.steps:
            p = copy.deepcopy(params)
            for name in students:
                p["students"][name]["train"] = {**p["students"][name].get("train", {}),
                                                "epochs": max(1, round(steps / labelled)), "val_every": 0}
            for seed in args.seeds:
                for name in students:
                    inputs = data_identity(data) | ({} if name == BASELINE else {"teacher": teach.fingerprint})
                    planned[(steps, name, seed)] = student_run(name, seed, p, threads, cache, data, teacher_path,
                                                               inputs)
        entry = budgets.setdefault(str(streets), {"runs": []})
        entry.update(labelled_scans=labelled, unlabelled_streets=total - streets)
        check_recorded(entry["runs"], lambda r: (r["steps"], r["student"], r["seed"]),
                       {k: r.fingerprint for k, r in planned.items()}, out)
        plans.append((folder, data, entry, teach, planned))

    for folder, data, entry, teach, planned in plans:
        # the baseline never reads a teacher: with only the baseline asked for, none is trained
        if args.students != [BASELINE]:
            entry["teacher_miou"] = train_teacher(teach, folder, data)
        done = {r.get("fingerprint") for r in entry["runs"]}

        def one(key, folder=folder, entry=entry, planned=planned):
            steps, name, seed = key
            record = planned[key](folder / f"steps-{steps}")
            with lock:
                entry["runs"].append({"student": name, "seed": seed, "steps": steps,
                                      "teacher_steps": None if name == BASELINE else args.teacher_steps, **record})
                save()

        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(one, [k for k, r in planned.items() if r.fingerprint not in done]))
        save()
    for steps, per_budget in json.loads(out.read_text())["summary"].items():
        for streets, table in per_budget.items():
            for name, cell in table.items():
                print(f"{steps} steps, {streets}/{total}: {describe(name, cell)}")


if __name__ == "__main__":
    main()
