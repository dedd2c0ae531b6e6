"""The report's sections: each builder turns its inputs into a Section of text, tables and figures."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pvkd.errors import DataError
from pvkd.report.blocks import MISSING, Columns, Details, Section, Table, fixed, pct, signed, with_ratio
from pvkd.report.experiments import ablation_table, parse_exp_show
from pvkd.report.figures import (
    AGREEMENT,
    agreement_ids,
    class_palette,
    figure_cost,
    figure_curves,
    figure_distance,
    figure_label_budget,
    figure_per_class,
    figure_scan,
    figure_shares,
)
from pvkd.report.inputs import (
    baseline_name,
    class_names,
    class_shares,
    distance_miou,
    headline,
    model_order,
    per_class_iou,
    pictured_student,
    read_meta,
    read_tsv_series,
    teacher_name,
)
from pvkd.report.studies import LABEL_BUDGET, SEMI_SUPERVISED, SeedTable, Study, numeric_key
from pvkd.stats import RULE, Paired


def section_headline(metrics: dict[str, dict], studies: Sequence[Study] = ()) -> tuple[Section, list[dict]]:
    """The headline table; ``studies``: the seed studies whose verdicts are quoted under it."""
    rows = headline(metrics)
    teacher, baseline = teacher_name(metrics), baseline_name(metrics)
    show_gap = any(r["gap_closed"] is not None for r in rows)
    header = ["model", "description", "mIoU (%)", "Δ mIoU (pts)", *(["gap closed (1 seed)"] if show_gap else []),
              "params (M)", "MACs (G)", "latency (ms)"]
    table = Table(header=header, rows=[], numeric=[False, False] + [True] * (len(header) - 2))
    for r in rows:
        cells = [r["model"], r["description"], pct(r["miou"]), signed(r["miou_diff_pts"])]
        if show_gap:
            cells.append("baseline" if r["model"] == baseline else pct(r["gap_closed"], 0) + " %"
                         if r["gap_closed"] is not None else MISSING)
        cells += [with_ratio(fixed(r["params_m"], 2), r["params_ratio"]),
                  with_ratio(fixed(r["macs_g"], 2), r["macs_ratio"]),
                  with_ratio(fixed(r["latency_ms"], 1), r["latency_ratio"])]
        table.rows.append(cells)
    section = Section("Headline", "headline")
    section.blocks.append(table)
    explain = ("Δ mIoU: the model's mIoU minus the teacher's, in points; (n×): the model's cost divided by the "
               "teacher's. MACs and latency: one forward pass over a val scan.")
    if show_gap:
        explain += (f" Gap closed: (student − {baseline}) / (teacher − {baseline}) in mIoU, the share of the "
                    f"teacher's lead over the student trained without distillation that distillation recovered, "
                    f"in this run, where each student trained once (one seed): it carries the seed's noise.")
    elif baseline is None:
        section.notes.append("no student described as 'no distillation': the gap closed is not shown")
    elif teacher is not None:
        section.notes.append(f"the baseline {baseline} is not below the teacher in mIoU: the gap closed is not shown")
    section.blocks.append(explain)
    augmented = {name: m["augmentation"] for name, m in metrics.items() if m.get("augmentation")}
    if augmented:
        section.blocks.append("Training augmentation: " + "; ".join(f"{n}: {a}" for n, a in augmented.items())
                              + " (affine: Cylinder3D's rotation, flips, scale and translation).")
    if show_gap:
        section.blocks += seed_verdicts(rows, studies)
    if teacher is None:
        section.notes.append("no model of role teacher in the metrics: no ratios to the teacher")
    return section, rows


def section_per_class(metrics, eval_dir: Path, colors) -> Section:
    section = Section("Per-class IoU", "per-class")
    ious, section.notes = per_class_iou(metrics, eval_dir)
    if ious:
        section.blocks.append(figure_per_class(ious, colors))
    return section


def section_distance(metrics, eval_dir: Path, colors, teacher) -> Section:
    section = Section("mIoU by distance", "distance")
    bands, section.notes = distance_miou(metrics, eval_dir)
    if bands:
        section.blocks.append("mIoU of the val points in each band of 3D range from the sensor, each band scored by "
                              "the dataset's rules as the official by-distance scorer does: under SemanticKITTI's, a "
                              "class absent from a band scores 0 there, which lowers the far bands.")
        section.blocks.append(figure_distance(bands, colors, teacher))
    return section


def section_cost(rows, colors, teacher) -> Section:
    section = Section("Accuracy against cost", "cost")
    fig, section.notes = figure_cost(rows, colors, teacher)
    if fig is not None:
        section.blocks.append("Up and to the left is better: the students should keep most of the teacher's mIoU "
                              "at a fraction of its compute.")
        section.blocks.append(fig)
    return section


def section_curves(metrics, live_dir: Path, colors, teacher) -> Section:
    section = Section("Training curves", "curves")
    names = model_order(metrics)
    if live_dir.is_dir():
        names += sorted(p.name for p in live_dir.iterdir() if p.is_dir() and p.name not in names
                        and (p / "plots" / "metrics").is_dir())
    series: dict[str, dict[str, pd.DataFrame]] = {}
    for name in names:
        folder = live_dir / name / "plots" / "metrics"
        if not folder.is_dir():
            section.notes.append(f"{name}: no curves ({folder} not found)")
            continue
        runs = {}
        for key in ("train/loss", "val/miou"):
            frame = read_tsv_series(folder / f"{key}.tsv")
            if frame is None:
                section.notes.append(f"{name}: no {key} curve ({folder / key}.tsv missing or empty)")
            else:
                runs[key] = frame
        if runs:
            series[name] = runs
    if series:
        section.blocks.append("The students' training loss includes their distillation terms, so its level is not "
                              "comparable with the teacher's; validation mIoU is.")
        section.blocks.append(figure_curves(series, colors, teacher))
    return section


def section_scan(metrics, eval_dir: Path, data_dir: Path) -> Section:
    section = Section("One val scan from above", "scan")
    path = eval_dir / "sample_scan.parquet"
    if not path.is_file():
        section.notes.append(f"{path} not found: no scan pictured (run `dvc repro evaluate`)")
        return section
    scan = pd.read_parquet(path)
    missing = {"x", "y", "label"} - set(scan.columns)
    if missing:
        section.notes.append(f"{path}: no column(s) {sorted(missing)}: no scan pictured")
        return section
    preds = [c.removeprefix("pred_") for c in scan.columns if c.startswith("pred_")]
    teacher = teacher_name(metrics)
    student = pictured_student(metrics, preds)
    for name in model_order(metrics):
        if name not in preds:
            section.notes.append(f"{name}: no predictions in {path}")
    if teacher not in preds or student is None:
        section.notes.append("the picture needs the teacher's and a student's predictions: not drawn")
        return section
    names = class_names(data_dir)
    label = scan["label"].to_numpy().astype(np.int64)
    t_pred = scan[f"pred_{teacher}"].to_numpy().astype(np.int64)
    s_pred = scan[f"pred_{student}"].to_numpy().astype(np.int64)
    top = int(max(label.max(initial=0), t_pred.max(initial=0), s_pred.max(initial=0)))
    names = list(names) + [f"class {i}" for i in range(len(names), top + 1)]
    palette = class_palette(top + 1)
    xy = scan[["x", "y"]].to_numpy(dtype=np.float32)
    finite = np.isfinite(xy).all(axis=1)
    xy, label, t_pred, s_pred = xy[finite], label[finite], t_pred[finite], s_pred[finite]
    fig = figure_scan(xy, label, (f"teacher ({teacher})", t_pred), (f"student ({student})", s_pred), names, palette)
    section.blocks.append(f"One val scan ({len(label):,} points, `evaluate.sample_scan`) seen from above, 50 m "
                          f"around the sensor (the black triangle), coloured by class; the last panel colours each "
                          f"labelled point by whether the teacher and the student {student} got it right.")
    section.blocks.append(fig)
    agree = agreement_ids(label, t_pred, s_pred)
    labelled = agree > 0
    counts = np.bincount(agree[labelled], minlength=len(AGREEMENT))[1:]
    total = max(int(labelled.sum()), 1)
    table = Table(header=["labelled points", "count", "share (%)"], rows=[], numeric=[False, True, True])
    for (name, _), count in zip(AGREEMENT[1:], counts):
        table.rows.append([name, f"{int(count):,}", f"{100 * count / total:.1f}"])
    section.blocks.append(table)
    return section


def section_data(data_dir: Path) -> Section:
    from pvkd.shards import read_stats

    section = Section("The data", "data")
    try:
        stats = read_stats(data_dir)
    except (OSError, DataError) as err:
        section.notes.append(f"{err}: no class frequencies (run `dvc repro`)")
        return section
    try:
        shares = class_shares(stats)
    except DataError as err:
        section.notes.append(f"{data_dir}: {err}")
        return section
    meta = read_meta(data_dir)
    splits = meta.get("splits") if isinstance(meta.get("splits"), dict) else {}
    parts = [f"{s}{'' if v.get('labelled', True) else ' (unlabelled)'}: {v.get('scans', '?'):,} scans, "
             f"{v.get('points', 0):,} points" for s, v in splits.items() if isinstance(v, dict)]
    # an unlabelled split has only label 0: no class shares to show
    unlabelled = [s for s, v in splits.items() if isinstance(v, dict) and not v.get("labelled", True)]
    shares = shares.drop(columns=[s for s in unlabelled if s in shares.columns])
    intro = f"Dataset {meta['dataset']}" if meta.get("dataset") else "The processed data"
    section.blocks.append(intro + ("; " + "; ".join(parts) if parts else "") +
                          ". Share of each split's points per class (the grid's border cells included).")
    reference = None
    if meta.get("dataset", "semantickitti") == "semantickitti" and len(shares) == 20:
        from pvkd.labels import SEMANTICKITTI_POINT_SHARE

        reference = SEMANTICKITTI_POINT_SHARE
    header = ["class", *(f"{s} (%)" for s in shares.columns)]
    if reference:
        header.append("SemanticKITTI train (%)")
    table = Table(header=header, rows=[], numeric=[False] + [True] * (len(header) - 1))
    for i, (name, row) in enumerate(shares.iterrows()):
        cells = [str(name), *(_share(v) for v in row)]
        if reference:
            cells.append(_share(reference[i]))
        table.rows.append(cells)
    section.blocks.append(Columns([table, figure_shares(shares)]))
    return section


def _share(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:.3g}"


def section_params(params_path: Path) -> Section:
    section = Section("Params", "params")
    if not params_path.is_file():
        section.notes.append(f"{params_path} not found")
        return section
    section.blocks.append(f"The {params_path.name} this report was made with.")
    section.blocks.append(Details(params_path.name, params_path.read_text(), "yaml"))
    return section


def section_experiments(exp_show) -> Section:
    section = Section("Experiments", "experiments")
    rows = parse_exp_show(exp_show)
    if not rows:
        section.notes.append("`dvc exp show --json` listed no commit or experiment")
        return section
    section.blocks.append("From `dvc exp show`: each commit, then the experiments run from it (`dvc exp run -S "
                          "...`), with the params that differ from their commit (the changed values in bold) and "
                          "each model's mIoU. The workspace is listed when it differs from every other row.")
    section.blocks.append(ablation_table(rows, section.notes))
    section.notes += [f"{r.name}: {r.error}" for r in rows if r.error]
    return section




# ---------------------------------------------------------------- how sure: committed seed studies

SEEDS_INTRO = (
    "The numbers above come from this pipeline run, where each student trained once, at one seed. The committed "
    "studies below trained each student at several seeds (a seed sets the initial weights, the scan order and the "
    "augmentation) and scored it on the whole val split. mIoU: mean ± sample std over the seeds. Against the "
    "baseline, each row is paired seed by seed over the seeds both have: diff is the mean of the same-seed "
    "differences in points, with its 95 % t-interval, the two-sided p of a one-sample t-test and the number of "
    f"pairs. Verdict: {RULE}.")


def _per_seed(values: dict[str, float], diffs: bool = False) -> str:
    """Per-seed values in seed order, in points (differences signed)."""
    if not values:
        return MISSING
    order = sorted(values, key=numeric_key)
    return ", ".join(signed(100 * values[k], 2) if diffs else pct(values[k], 2) for k in order)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _interval(c: Paired) -> str:
    return MISSING if c.low is None else f"[{signed(100 * c.low, 2)}, {signed(100 * c.high, 2)}]"


def _p(c: Paired) -> str:
    return MISSING if c.p is None else "< 0.001" if c.p < 0.001 else f"{c.p:.3f}"


def _paired_text(c: Paired) -> str:
    """A comparison in words: mean difference, interval, p and pairs."""
    if c.low is None:
        return f"{signed(None if c.mean is None else 100 * c.mean, 2)} points, {_plural(c.n, 'pair')}"
    return f"{signed(100 * c.mean, 2)} points, 95 % interval {_interval(c)}, p {_p(c)}, {_plural(c.n, 'pair')}"


def seed_verdicts(rows: list[dict], studies: Sequence[Study]) -> list[str]:
    """One line per distilled student of the headline that a distill_seeds study also trained: its verdict there."""
    lines = []
    for r in rows:
        if r["gap_closed"] is None:
            continue
        for study in studies:
            s = study.row(r["model"])
            if s is None or s.vs_baseline is None:
                continue
            c = s.vs_baseline
            lines.append(f"Over seeds, {r['model']} minus {study.baseline} in `{study.path}` (committed study, paired "
                         f"per seed {_per_seed(dict(zip(c.seeds, c.differences)), diffs=True)}): {_paired_text(c)}: "
                         f"{c.verdict}.")
    return lines


def seed_table(study: Study, table: SeedTable) -> Table:
    """Students x (mIoU over seeds, paired difference from the baseline, its interval, p, pairs, verdict),
    captioned with the study's file."""
    budget = study.kind == LABEL_BUDGET
    show_share = any(r.gap_share is not None for r in table.rows)
    header = [*(["labelled streets"] if budget else []), "model", "mIoU (%)", "per seed (%)", "diff (pts)",
              "95 % interval (pts)", "p", "pairs", "verdict", *(["share of the label gap"] if show_share else [])]
    numeric = [*([True] if budget else []), False, True, True, True, True, True, True, False,
               *([True] if show_share else [])]
    steps = f"{table.steps} student steps, " if table.steps is not None else ""
    title = f"{table.title}, " if table.title else ""
    # a row that lacks some of the table's seeds is compared over fewer: its "pairs" cell says how many
    some = "" if all(len(r.per_seed) == len(table.seeds) for r in table.rows) else "up to "
    out = Table(header=header, rows=[], numeric=numeric,
                caption=f"{title}{steps}`{study.path}`: committed study, {some}{_plural(len(table.seeds), 'seed')}, "
                        "not this pipeline run.")
    for r in table.rows:
        c = r.vs_baseline
        cells = [*([_budget(study, r.streets)] if budget else []), r.model,
                 f"{pct(r.mean, 2)} ± {pct(r.std, 2)}" if r.std is not None else f"{pct(r.mean, 2)} (1 seed)",
                 _per_seed(r.per_seed)]
        if c is None:
            cells += [MISSING] * 4
        else:
            cells += [signed(None if c.mean is None else 100 * c.mean, 2), _interval(c), _p(c), str(c.n)]
        cells.append(r.verdict or MISSING)
        if show_share:
            cells.append(MISSING if r.gap_share is None else f"{pct(r.gap_share, 0)} %")
        out.rows.append(cells)
    return out


def _budget(study: Study, streets: int | None) -> str:
    return f"{streets}/{study.total_streets}" if study.total_streets else str(streets)


def label_gaps(study: Study, table: SeedTable) -> str | None:
    """The label gaps of one step count in words: all-labels baseline minus each budget's, paired."""
    if not table.label_gaps:
        return None
    full = _budget(study, study.total_streets)
    gaps = "; ".join(f"{_budget(study, streets)}: {_paired_text(gap)}: {gap.verdict}"
                     for streets, gap in sorted(table.label_gaps.items()))
    return f"Label gap at {table.steps} steps ({full} baseline minus the budget's, paired): {gaps}."


GAP_SHARE = ("Share of the label gap: the student's paired mean difference from the baseline divided by the label "
             "gap's (all labels minus the budget's baseline, same steps, paired), shown only where the label gap's "
             "own interval excludes 0 and the student has an interval (2 pairs or more).")


def _semi_intro(study: Study, where: str) -> str:
    n = study.notes
    mixed = n.get("mixed_scans")
    mixed = f", {_plural(mixed, 'mixed scan')} per labelled x unlabelled pair" if isinstance(mixed, int) else ""
    steps = next((t.steps for t in study.tables if t.steps is not None), None)
    seed = n.get("distilled_from_seed")
    teacher = "the semi-supervised teacher" + (f" of seed {seed}" if seed is not None else "")
    return (f"{where}: a teacher that learns from the unlabelled scans too. {n.get('budget') or 'Some'} of the "
            "train streets are labelled, the others unlabelled. Teachers (Cylinder3D) train "
            f"{n.get('teacher_steps') or 'the same'} steps of one labelled scan: supervised on the labelled scans "
            "only, semi adding the unlabelled ones by the mean-teacher + LaserMix recipe "
            f"(train.semi{mixed}); each keeps its final weights (semi: the mean teacher's). The 0.5x students "
            f"train {steps or 'the same'} steps: baseline on the labelled scans only, semi by the same "
            f"semi-supervised recipe with no big teacher, hinton and pvkd distilled from {teacher} with one "
            "unlabelled scan added to each step, full with every street labelled. The last table asks whether the "
            f"big teacher's knowledge survives compression: distilled against semi alone. {GAP_SHARE}")


def _study_intro(study: Study) -> str:
    where = f"`{study.path}`" + (f", run on {study.device}" if study.device else "")
    if study.kind == SEMI_SUPERVISED:
        return _semi_intro(study, where)
    if study.kind != LABEL_BUDGET:
        teacher = study.teacher_miou.get(None)
        return (f"{where}: students distilled from one teacher" + (f" ({pct(teacher, 2)} % val mIoU)" if teacher
                is not None else "") + (f", compared with {study.baseline}." if study.baseline else
                                        "; no baseline in the study, so no comparisons."))
    teachers = ", ".join(f"{_budget(study, s)}: {pct(m, 2)} %" for s, m in sorted(study.teacher_miou.items()))
    lengths = study.teacher_steps
    lengths = ", ".join(map(str, lengths)) if isinstance(lengths, list) else lengths
    return (f"{where}: label budgets. With n of the {study.total_streets or 'train'} train streets labelled, the rest "
            "are unlabelled: baseline trains on the labelled scans only, pseudo adds the unlabelled ones with the "
            "teacher's pseudo-labels, hinton and pvkd add their distillation terms, lasermix adds to pvkd LaserMix "
            "of labelled with unlabelled scans. Each budget has its own teacher, "
            "trained on its labelled streets" + (f" for {lengths} steps" if lengths else "")
            + (f" (val mIoU, one run each: {teachers})" if teachers else "") + f". {GAP_SHARE}")


def _figure_name(study: Study, taken: set[str]) -> str:
    base = "fig-seeds-" + (re.sub(r"[^a-z0-9]+", "-", study.path.stem.lower()).strip("-") or "study")
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def section_seed_studies(studies: Sequence[Study], notes: list[str], colors: dict[str, str]) -> Section:
    """Each study's tables (one per step count) and, for label budgets, mIoU against the labelled share."""
    section = Section("How sure: paired differences over seeds", "seeds", notes=list(notes))
    if studies:
        section.blocks.append(SEEDS_INTRO)
    taken: set[str] = set()
    for study in studies:
        section.blocks.append(_study_intro(study))
        for table in study.tables:
            section.blocks.append(seed_table(study, table))
            if (gaps := label_gaps(study, table)) is not None:
                section.blocks.append(gaps)
        if study.kind == LABEL_BUDGET and study.total_streets:
            panels = {}
            for table in study.tables:
                for r in table.rows:
                    panels.setdefault(table.steps, {}).setdefault(r.model, []).append((r.streets, r.mean, r.std or 0.0))
            section.blocks.append(figure_label_budget(panels, study.teacher_miou, study.total_streets, colors,
                                                      _figure_name(study, taken)))
    return section
