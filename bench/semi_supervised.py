"""A teacher that knows more than the labels: semi-supervised teacher training, then distillation (issue 21).

At 1 of the params' 8 train streets labelled (``--budget``; the other streets are the split
``unlabelled``, preprocessed without their labels), every model trains ``--steps`` steps of one
labelled scan (teachers ``--teacher-steps``) and keeps its final weights, scored on the whole val split:

* teachers (``teacher.model``, ``--teacher-seeds``):
  * ``supervised``: the labelled scans only;
  * ``semi``: the same steps with ``train.semi`` on the unlabelled split (mean teacher + LaserMix, the
    anchor's recipe; its exported weights are the mean teacher's);
* 0.5x students (``students.baseline.model``, ``--seeds``):
  * ``baseline``: the labelled scans only;
  * ``semi``: the student trained by the same semi-supervised recipe itself, no big teacher (the fair
    baseline for compression);
  * ``hinton`` and ``pvkd``: distilled from the cache of the ``semi`` teacher of seed ``--teacher-seed``
    over the labelled and unlabelled scans (``distill.unlabelled``: one unlabelled scan added to each
    step, the teacher's top class as its target);
  * ``full``: the baseline with every street labelled (the label gap's other end).

Statistics (:mod:`pvkd.stats`): paired same-seed differences, their mean, 95 % t-interval, p and
verdict, for the semi teacher against the supervised one, every student against ``baseline``, the
distilled students against ``semi`` (does a big teacher's knowledge survive compression?), and the
label gap (``full`` against ``baseline``) with each student's share of it where the gap's interval
excludes 0.

    python bench/semi_supervised.py --parallel 2                         # the whole study (hours on 2 cores)
    python bench/semi_supervised.py --only semi-teacher --teacher-seeds 1 # one cell
    python bench/semi_supervised.py --resummarize                        # the summary from the runs; no training

Every run has a folder keyed by the fingerprint of its effective params and inputs (the data's
shards; a distilled student's teacher), reused only on a match; the result JSON is rewritten whole
after every finished run and records each run's effective params and ``minutes``, the wall time of
the invocation that finished it (a run resumed from its checkpoint counts its last part only).

The semi-supervised step mixes one scan per labelled x unlabelled pair (``--mixed-scans 1``), not
the anchor's two complements: at two, a semi-supervised teacher step costs 3.4 supervised ones on
the CPU, and three of them with their supervised pairs and the students do not fit a session on 2
cores (``--mixed-scans 2`` runs the anchor's recipe).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

from pvkd.configs import effective_distill, effective_train, student_sections
from pvkd.params import load_params
from pvkd.stats import paired, share, summary_table
from pvkd.train.config import merge_sections
from pvkd.train.distributed import resolve_device

TEACHERS = ("supervised", "semi")
STUDENTS = ("baseline", "semi", "hinton", "pvkd", "full")
CELLS = tuple(f"{t}-teacher" for t in TEACHERS) + STUDENTS
DISTILLED = ("hinton", "pvkd")
NO_KD = {"point_weight": 0.0, "voxel_weight": 0.0, "affinity_weight": 0.0, "unlabelled": {"weight": 0.0}}


def semi_recipe(base: dict, mixed_scans: int) -> dict:
    """params.yaml's train.semi (the anchor's values) on the split ``unlabelled``."""
    return {**base["train"]["semi"], "split": "unlabelled", "mixed_scans": mixed_scans}


def study_params(base: dict, streets: int, raw: Path, semi: dict) -> dict:
    """The budget's params with the study's students: baseline, semi (its own mean teacher), hinton and pvkd
    (distilled on the unlabelled scans too)."""
    p = street_budget(base, streets, raw)
    width = base["students"]["baseline"]["model"]
    p["distill"]["unlabelled"].update(split="unlabelled", ratio=1, target="hard", threshold=0.0, weight=1.0)
    p["students"] = {
        "baseline": {"description": "labelled scans only, Cylinder3D 0.5x", "model": width, "distill": NO_KD},
        "semi": {"description": "mean teacher + LaserMix on the unlabelled scans, no big teacher, Cylinder3D 0.5x",
                 "model": width, "distill": NO_KD, "train": {"semi": semi}},
        "hinton": {"description": "Hinton KD from the semi-supervised teacher, Cylinder3D 0.5x", "model": width,
                   "distill": {"voxel_weight": 0.0, "affinity_weight": 0.0}},
        "pvkd": {"description": "PVKD from the semi-supervised teacher, Cylinder3D 0.5x", "model": width},
    }
    return p


def teacher_params(params: dict, kind: str, semi: dict, steps: int, labelled: int, seed: int) -> dict:
    """The teacher of ``kind`` at ``seed``: ``steps`` steps of one labelled scan, final weights, one validation."""
    p = copy.deepcopy(params)
    train = {"epochs": max(1, round(steps / labelled)), "seed": seed, "keep": "last", "val_every": 0}
    if kind == "semi":
        train["semi"] = semi
    p["teacher"]["train"] = {**(p["teacher"].get("train") or {}), **train}
    return p


def with_steps(params: dict, steps: int, labelled: int) -> dict:
    """Every student of ``params`` trains ``steps`` steps of one labelled scan, with one validation at the end."""
    p = copy.deepcopy(params)
    for student in p["students"].values():
        student["train"] = {**(student.get("train") or {}), "epochs": max(1, round(steps / labelled)), "val_every": 0}
    return p


def effective(params: dict, student: str | None) -> dict:
    """What a run computes with, as its config stage writes it (model, train and distill without inert keys):
    its fingerprint, so that params keys other stages read do not make it another run."""
    if student is None:
        return {"model": params["teacher"]["model"],
                "train": effective_train(merge_sections(params["train"], params["teacher"]["train"]))}
    sections = student_sections(params, student)
    return {"model": sections["model"], "train": effective_train(sections["train"]),
            "distill": effective_distill(sections["distill"]), "grid": sections["grid"]}


def keyed(run: Run, student: str | None) -> Run:
    """``run`` fingerprinted by its effective config."""
    return dataclasses.replace(run, effective=effective(run.params, student))


def summarize(result: dict) -> dict:
    """``result`` with its summary derived from its runs."""
    runs = result["runs"]
    teachers = scores_by([r for r in runs if r["role"] == "teacher"], lambda r: r["name"])
    students = scores_by([r for r in runs if r["role"] == "student"], lambda r: r["name"])
    summary = {"teachers": summary_table({n: teachers[n] for n in TEACHERS if n in teachers}, "supervised")}
    ordered = {n: students[n] for n in STUDENTS if n in students}
    summary["students"] = summary_table(ordered, "baseline")
    if "semi" in ordered:  # does a big teacher's knowledge survive compression: distilled against semi alone
        summary["students_vs_semi"] = summary_table({n: ordered[n] for n in ("semi", *DISTILLED) if n in ordered},
                                                    "semi")
    if "full" in ordered and "baseline" in ordered:
        gap = paired(ordered["full"], ordered["baseline"])
        summary["label_gap"] = gap.to_json()
        summary["label_gap_share"] = {n: share(paired(ordered[n], ordered["baseline"]), gap)
                                      for n in ("semi", *DISTILLED) if n in ordered}
    return {**result, "seeds": seeds_of([r for r in runs if r["role"] == "student"]),
            "teacher_seeds": seeds_of([r for r in runs if r["role"] == "teacher"]), "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="base params (the default data and recipe)")
    parser.add_argument("--budget", type=int, default=1, help="labelled streets of the params' train streets")
    parser.add_argument("--steps", type=int, default=1600, help="student steps (one labelled scan each)")
    parser.add_argument("--teacher-steps", type=int, default=1600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-seed", type=int, default=1,
                        help="the seed of the semi teacher the students distil from (the committed students: 1)")
    parser.add_argument("--only", nargs="+", choices=CELLS, default=list(CELLS), help="cells to run")
    parser.add_argument("--mixed-scans", type=int, choices=(1, 2), default=1,
                        help="mixed scans per labelled x unlabelled pair of the semi-supervised step (the anchor: 2; "
                             "1 makes the step about a third cheaper, so that the study fits 2 CPU cores)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each on the CPU)")
    parser.add_argument("--work", default="bench/work/semi_supervised")
    parser.add_argument("--out", default="bench/results/semi_supervised_cpu.json")
    parser.add_argument("--resummarize", action="store_true", help="rewrite --out's summary from its runs; no training")
    args = parser.parse_args()
    out = Path(args.out)
    if args.resummarize:
        resummarize(out, summarize)
        return
    base = load_params(args.params)
    work = Path(args.work)
    raw = synthesize(base, args.params, work).resolve()
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    total = len(train_streets(base))
    semi = semi_recipe(base, args.mixed_scans)
    params = study_params(base, args.budget, raw, semi)
    data, labelled = preprocess(work / f"streets-{args.budget}", params, raw)
    full_params = street_budget(base, total, raw)
    full_data, full_labelled = preprocess(work / f"streets-{total}", full_params, raw)

    jobs: dict[tuple, tuple[str, Run, Path, tuple]] = {}  # (cell, seed) -> (role, run, folder, dependencies)
    teacher_runs = {}
    for seed in args.teacher_seeds:  # seed by seed: each finished pair of teachers is a paired difference
        for kind in TEACHERS:
            p = teacher_params(params, kind, semi, args.teacher_steps, labelled, seed)
            run = keyed(Run("teacher-train", f"teacher-{kind}-seed{seed}", p, data_identity(data),
                            ("--data", str(data))), None)
            teacher_runs[(kind, seed)] = run
            jobs[(f"{kind}-teacher", seed)] = ("teacher", run, work / "teachers", ())
    source = teacher_runs.get(("semi", args.teacher_seed)) or keyed(Run(
        "teacher-train", f"teacher-semi-seed{args.teacher_seed}",
        teacher_params(params, "semi", semi, args.teacher_steps, labelled, args.teacher_seed), data_identity(data),
        ("--data", str(data))), None)
    teacher_folder = source.folder(work / "teachers")
    students = with_steps(params, args.steps, labelled)
    full = with_steps({**full_params, "students": {"full": {**params["students"]["baseline"],
                                                              "description": "every street labelled, no KD"}}},
                      args.steps, full_labelled)
    for seed in args.seeds:
        for name in STUDENTS:
            if name == "full":
                run = keyed(student_run("full", seed, full, threads, full_data / "none", full_data, Path("none"),
                                        data_identity(full_data)), "full")
                jobs[(name, seed)] = ("student", run, work / "students-full", ())
                continue
            inputs = data_identity(data) | ({"teacher": source.fingerprint} if name in DISTILLED else {})
            run = keyed(student_run(name, seed, students, threads, teacher_folder / "cache", data,
                                    teacher_folder / "model.pt", inputs), name)
            deps = (("semi-teacher", args.teacher_seed),) if name in DISTILLED else ()
            jobs[(name, seed)] = ("student", run, work / "students", deps)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = previous.get("runs", [])
    planned = {key: job[1].fingerprint for key, job in jobs.items() if key[0] in args.only}
    check_recorded(runs, lambda r: (r["cell"], r["seed"]), planned, out)
    done = {r["fingerprint"] for r in runs}
    todo = [key for key in jobs if key[0] in args.only and jobs[key][1].fingerprint not in done]
    # a distilled student needs its teacher's model and cache on disk: when they are not (a fresh machine; the
    # work folder is not committed), the teacher trains again first (same seed and threads: the same bytes)
    teacher_key = ("semi-teacher", args.teacher_seed)
    finished = {(r["cell"], r["seed"]) for r in runs}
    if any(jobs[k][3] for k in todo) and not (teacher_folder / "cache" / "manifest.json").is_file():
        jobs.setdefault(teacher_key, ("teacher", source, work / "teachers", ()))
        todo[:] = [teacher_key] + [k for k in todo if k != teacher_key]
        finished.discard(teacher_key)
    lock = threading.Lock()
    device = device_name(resolve_device(base["train"]["device"]))

    def save() -> None:
        write_result(summarize({**previous, "device": device, "budget": f"{args.budget}/{total}",
                                "steps": args.steps, "teacher_steps": args.teacher_steps,
                                "semi_teacher_seed_distilled": args.teacher_seed, "runs": runs}), out)

    def next_job():
        with lock:
            for key in todo:
                if all(dep in finished for dep in jobs[key][3]):
                    todo.remove(key)
                    return key
            return None if not todo else "wait"

    def worker() -> None:
        while (key := next_job()) is not None:
            if key == "wait":
                time.sleep(10)
                continue
            role, run, folder, _ = jobs[key]
            started = time.monotonic()
            record = run(folder)
            if role == "teacher" and key[0] == "semi-teacher":  # its cache, for the distilled students
                here = run.folder(folder)
                manifest = here / "cache" / "manifest.json"
                if not manifest.is_file() or not json.loads(manifest.read_text())["complete"]:
                    pvkd("cache-logits", "--params", str(here / "params.yaml"), "--teacher", str(here / "model.pt"),
                         "--data", str(data), "--out", str(here / "cache"), log=here / "cache.log")
            entry = {"cell": key[0], "seed": key[1], "role": role,
                     "name": key[0].removesuffix("-teacher"), **record,
                     "minutes": round((time.monotonic() - started) / 60, 1),
                     "effective": run.effective}
            with lock:
                runs[:] = [r for r in runs if (r["cell"], r["seed"]) != key] + [entry]
                finished.add(key)
                save()
                print(describe(key[0], {"mean": record["miou"], "std": None, "n": 1}), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        for future in [pool.submit(worker) for _ in range(args.parallel)]:
            future.result()
    if runs:
        save()


if __name__ == "__main__":
    main()
