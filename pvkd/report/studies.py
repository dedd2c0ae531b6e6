"""Committed seed studies (JSON under bench/results): each student's mIoU over seeds and its paired difference
from the baseline.

Three formats are read: a single-setting study (bench/distill_seeds.py, bench/augment_seeds.py:
``summary: {student: {...}}``), bench/label_budget.py's (``summary: {steps: {labelled streets:
{student: {...}}}}``, one setting per step count and label budget) and bench/semi_supervised.py's
(``summary: {teachers, students, students_vs_semi}``, three comparisons of one budget, each with its
own baseline). All become a :class:`Study` of :class:`SeedTable` (one per step count or comparison)
of :class:`SeedRow` (one per model and budget); values stay fractions of mIoU. Only each cell's
per-seed scores are read: the statistics are computed here by :mod:`pvkd.stats`, the module the
benches summarize with, so the report and the files agree by construction and an older file's
summary is never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvkd.report.inputs import number
from pvkd.stats import Paired, by_seed, numeric_key, paired, seed_order, share, spread

DISTILL_SEEDS, LABEL_BUDGET, SEMI_SUPERVISED = "distill_seeds", "label_budget", "semi_supervised"
BASELINE = "baseline"  # the no-distillation student both benchmarks measure the others against
LABEL_BUDGET_STUDENTS = ("baseline", "pseudo", "hinton", "pvkd", "lasermix")  # bench/label_budget.py's order
REFERENCE = "reference"
# bench/semi_supervised.py's comparisons: summary key, its baseline, the table's title
SEMI_TABLES = (("teachers", "supervised", "Teachers (supervised against semi-supervised)"),
               ("students", BASELINE, "0.5x students against the labelled-only one"),
               ("students_vs_semi", "semi", "Distilled 0.5x students against the one trained semi-supervised alone"))


@dataclass
class SeedRow:
    """One student (at one label budget) over the seeds of a study."""

    model: str
    per_seed: dict[str, float]  # seed -> val mIoU, in seed order
    mean: float
    std: float | None  # sample std over the seeds; None for one seed
    streets: int | None = None  # labelled streets (label_budget)
    is_baseline: bool = False
    vs_baseline: Paired | None = None  # the same-seed differences from the baseline, their interval and verdict
    gap_share: float | None = None  # label_budget: share of the label gap, where the gap's interval excludes 0

    @property
    def verdict(self) -> str | None:
        """"reference" for the baseline, else the paired verdict; None without a baseline."""
        if self.is_baseline:
            return REFERENCE
        return None if self.vs_baseline is None else self.vs_baseline.verdict


@dataclass
class SeedTable:
    """The students of one setting: a study's single one (distill_seeds) or one step count (label_budget)."""

    steps: int | None
    rows: list[SeedRow]
    label_gaps: dict[int, Paired] = field(default_factory=dict)  # labelled streets -> all-labels minus its baseline
    title: str | None = None  # what the table compares, where a study has several comparisons (semi_supervised)

    @property
    def seeds(self) -> list[str]:
        return seed_order({s for r in self.rows for s in r.per_seed})


@dataclass
class Study:
    path: Path
    kind: str  # DISTILL_SEEDS | LABEL_BUDGET | SEMI_SUPERVISED
    tables: list[SeedTable]
    teacher_miou: dict[int | None, float]  # per labelled streets (label_budget); {None: mIoU} for distill_seeds
    baseline: str | None = BASELINE  # the student the others are compared with
    total_streets: int | None = None  # label_budget: the train streets a budget is a share of
    teacher_steps: int | list[int] | None = None  # label_budget: the teachers' training steps
    device: str = ""
    notes: dict = field(default_factory=dict)  # semi_supervised: budget, teacher steps, the distilled teacher's seed

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for t in self.tables for r in t.rows))

    def row(self, model: str) -> SeedRow | None:
        """The row of ``model`` in a distill_seeds study (its only setting), else None."""
        if self.kind != DISTILL_SEEDS:
            return None
        return next((r for t in self.tables for r in t.rows if r.model == model), None)


def _scores(cell: dict, seeds: Sequence | None) -> dict[str, float]:
    """A cell's per-seed scores; ``seeds`` names the entries of a per-seed list (older distill_seeds files)."""
    raw = cell.get("per_seed")
    if isinstance(raw, list):
        if seeds is None or len(seeds) != len(raw):
            return {}  # a list without its seeds cannot be paired
        raw = dict(zip(seeds, raw))
    if not isinstance(raw, dict):
        return {}
    return by_seed({k: v for k, v in raw.items() if number(v) is not None})


def _rows(cells: dict[str, dict], baseline: str | None, seeds: Sequence | None = None) -> list[SeedRow]:
    """One row per cell with scores; the baseline marked, the others paired with it."""
    scores = {name: s for name, cell in cells.items() if (s := _scores(cell, seeds))}
    base = scores.get(baseline) if baseline is not None else None
    rows = []
    for name, s in scores.items():
        run = spread(s)
        row = SeedRow(name, s, run.mean, run.std, is_baseline=name == baseline)
        if base is not None and not row.is_baseline:
            row.vs_baseline = paired(s, base)
        rows.append(row)
    return rows


def _baseline(data: dict, cells: dict[str, dict]) -> str | None:
    """The file's baseline: its own ``baseline`` key, else the one its cells are compared with, else "baseline"."""
    if "baseline" in data:
        return data["baseline"] if data["baseline"] in cells else None
    named = {c["vs_baseline"].get("baseline") for c in cells.values() if isinstance(c.get("vs_baseline"), dict)}
    if len(named) == 1 and (name := named.pop()) in cells:
        return name
    return BASELINE if BASELINE in cells else None


def _distill_seeds(path: Path, data: dict) -> Study:
    cells = {str(k): v for k, v in data["summary"].items() if isinstance(v, dict)}
    baseline = _baseline(data, cells)
    rows = _rows(cells, baseline, data.get("seeds"))
    rows.sort(key=lambda r: not r.is_baseline)
    teacher = number(data.get("teacher_miou"))
    return Study(path, DISTILL_SEEDS, [SeedTable(None, rows)] if rows else [],
                 {None: teacher} if teacher is not None else {}, baseline, device=str(data.get("device") or ""))


def _total_streets(data: dict, budgets: dict) -> int | None:
    """The train streets a budget is a share of: the file's ``train_streets``, else labelled plus unlabelled."""
    if isinstance(data.get("train_streets"), int):
        return data["train_streets"]
    totals = {int(k) + b["unlabelled_streets"] for k, b in budgets.items() if str(k).isdigit()
              and isinstance(b, dict) and isinstance(b.get("unlabelled_streets"), int)}
    return totals.pop() if len(totals) == 1 else None


def _label_gap(table: SeedTable, streets: int, full: dict[str, float], base: SeedRow, rows: list[SeedRow]) -> None:
    """The label gap at ``streets`` labelled (all labels minus ``base``, paired) into ``table``, and each of
    ``rows``' share of it."""
    gap = table.label_gaps[streets] = paired(full, base.per_seed)
    for r in rows:
        if r.vs_baseline is not None:
            r.gap_share = share(r.vs_baseline, gap)


def _label_budget(path: Path, data: dict) -> Study:
    budgets = data.get("budgets") if isinstance(data.get("budgets"), dict) else {}
    teacher = {int(k): number(b.get("teacher_miou")) for k, b in budgets.items()
               if str(k).isdigit() and isinstance(b, dict) and number(b.get("teacher_miou")) is not None}
    total = _total_streets(data, budgets)
    order = {name: i for i, name in enumerate(LABEL_BUDGET_STUDENTS)}
    tables = []
    for steps, per_budget in sorted(data["summary"].items(), key=lambda kv: numeric_key(str(kv[0]))):
        if not (str(steps).isdigit() and isinstance(per_budget, dict)):
            continue
        table = SeedTable(int(steps), [])
        full = _scores(per_budget.get(str(total), {}).get(BASELINE, {}), None) if total is not None else {}
        for streets, cells in sorted(per_budget.items(), key=lambda kv: numeric_key(str(kv[0]))):
            if not (str(streets).isdigit() and isinstance(cells, dict)):
                continue
            cells = {str(k): v for k, v in cells.items() if isinstance(v, dict)}
            found = sorted(_rows(cells, BASELINE), key=lambda r: order.get(r.model, len(order)))
            base = next((r for r in found if r.is_baseline), None)
            for r in found:
                r.streets = int(streets)
            if full and base is not None and int(streets) != total:
                _label_gap(table, int(streets), full, base, found)
            table.rows += found
        if table.rows:
            tables.append(table)
    steps = data.get("teacher_steps")
    return Study(path, LABEL_BUDGET, tables, teacher, total_streets=total,
                 teacher_steps=steps if isinstance(steps, int | list) else None, device=str(data.get("device") or ""))


def _semi_supervised(path: Path, data: dict) -> Study:
    """Three tables of one budget: teachers against the supervised one, students against the labelled-only one
    (with the label gap, all labels minus labelled-only, and each student's share of it), and the distilled
    students against the semi-supervised one."""
    labelled, total = _fraction(data.get("budget"))
    steps = data.get("steps") if isinstance(data.get("steps"), int) else None
    tables = []
    for key, baseline, title in SEMI_TABLES:
        cells = data["summary"].get(key)
        rows = _rows({str(k): v for k, v in cells.items() if isinstance(v, dict)}, baseline) \
            if isinstance(cells, dict) else []
        if not rows:
            continue
        rows.sort(key=lambda r: not r.is_baseline)
        table = SeedTable(None if key == "teachers" else steps, rows, title=title)
        full = next((r for r in rows if r.model == "full"), None)
        base = next((r for r in rows if r.is_baseline), None)
        if key == "students" and full is not None and base is not None and labelled is not None:
            _label_gap(table, labelled, full.per_seed, base, [r for r in rows if r is not full])
        tables.append(table)
    semi = next((r["effective"]["train"]["semi"] for r in data.get("runs", []) if isinstance(r, dict)
                 and r.get("cell") == "semi-teacher" and isinstance(r.get("effective"), dict)), None)
    notes = {"budget": data.get("budget"), "teacher_steps": data.get("teacher_steps"),
             "distilled_from_seed": data.get("semi_teacher_seed_distilled"),
             "mixed_scans": semi.get("mixed_scans") if isinstance(semi, dict) else None}
    return Study(path, SEMI_SUPERVISED, tables, {}, total_streets=total, device=str(data.get("device") or ""),
                 notes=notes)


def _fraction(text) -> tuple[int | None, int | None]:
    """"1/8" -> (1, 8); anything else -> (None, None)."""
    parts = str(text).split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None, None


def load_study(path: str | Path) -> tuple[Study | None, str | None]:
    """The study in ``path``, or None and a note saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None, f"{path}: not found (listed in report.seed_studies)"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path}: not readable JSON ({err})"
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict):
        return None, (f"{path}: no summary; not a result of bench/distill_seeds.py, bench/label_budget.py or "
                      "bench/semi_supervised.py")
    if "budgets" in data:
        study = _label_budget(path, data)
    elif isinstance(summary.get("teachers"), dict):
        study = _semi_supervised(path, data)
    else:
        study = _distill_seeds(path, data)
    if not study.tables:
        return None, f"{path}: no student with a score over seeds yet"
    return study, None


def load_studies(paths: Sequence[str | Path]) -> tuple[list[Study], list[str]]:
    """The readable studies among ``paths`` (in their order), and a note for each one that is not."""
    studies, notes = [], []
    for path in paths:
        study, note = load_study(path)
        if study is not None:
            studies.append(study)
        if note:
            notes.append(note)
    return studies, notes
