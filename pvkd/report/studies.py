"""Committed seed studies (JSON under bench/results): each student's mIoU over seeds and its gain over the baseline.

Two formats are read: bench/distill_seeds.py's (``summary: {student: {...}}``, one setting) and
bench/label_budget.py's (``summary: {steps: {labelled streets: {student: {...}}}}``, one setting
per step count and label budget). Both become a :class:`Study` of :class:`SeedTable` (one per
step count) of :class:`SeedRow` (one per student and budget); values stay fractions of mIoU.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvkd.report.inputs import number

DISTILL_SEEDS, LABEL_BUDGET = "distill_seeds", "label_budget"
BASELINE = "baseline"  # the no-distillation student both benchmarks measure the others against
LABEL_BUDGET_STUDENTS = ("baseline", "pseudo", "hinton", "pvkd", "lasermix")  # bench/label_budget.py's order
TOTAL_STREETS = 8  # train streets of the default data, when a budget does not say how many stay unlabelled


@dataclass
class SeedRow:
    """One student (at one label budget) over the seeds of a study."""

    model: str
    per_seed: dict[str, float]  # seed -> val mIoU
    mean: float
    std: float  # sample std over the seeds
    streets: int | None = None  # labelled streets (label_budget)
    is_baseline: bool = False
    gain: float | None = None  # mean mIoU minus the baseline's
    paired_gain: dict[str, float] = field(default_factory=dict)  # seed -> same-seed mIoU minus the baseline's
    beyond_2_std: bool | None = None  # the study's own verdict: gain > 2 x the larger std
    noise: float | None = None  # 2 x the larger std of this row and its baseline; None under 2 seeds either side
    gap_closed: float | None = None  # distill_seeds: of teacher - baseline; label_budget: of full labels - baseline

    @property
    def verdict(self) -> str | None:
        """"beyond 2σ", "within noise", "worse, beyond 2σ", "too few seeds", "reference"; None without a gain."""
        if self.is_baseline:
            return "reference"
        if self.gain is None:
            return None
        if self.noise is None:
            return "too few seeds"
        if self.beyond_2_std if self.beyond_2_std is not None else self.gain > self.noise:
            return "beyond 2σ"
        return "worse, beyond 2σ" if self.gain < -self.noise else "within noise"


@dataclass
class SeedTable:
    """The students of one setting: a study's single one (distill_seeds) or one step count (label_budget)."""

    steps: int | None
    rows: list[SeedRow]

    @property
    def seeds(self) -> list[str]:
        return sorted({s for r in self.rows for s in r.per_seed}, key=numeric_key)


@dataclass
class Study:
    path: Path
    kind: str  # DISTILL_SEEDS | LABEL_BUDGET
    tables: list[SeedTable]
    teacher_miou: dict[int | None, float]  # per labelled streets (label_budget); {None: mIoU} for distill_seeds
    baseline: str | None = BASELINE  # the student the gains are measured against
    total_streets: int = TOTAL_STREETS
    teacher_steps: int | None = None  # label_budget: the teachers' training steps
    device: str = ""

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for t in self.tables for r in t.rows))

    def row(self, model: str) -> SeedRow | None:
        """The row of ``model`` in a distill_seeds study (its only setting), else None."""
        if self.kind != DISTILL_SEEDS:
            return None
        return next((r for t in self.tables for r in t.rows if r.model == model), None)


def numeric_key(text: str) -> tuple:
    """Numeric strings (seeds, steps, budgets) in numeric order ("2" before "10"), other names after."""
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def _row(model: str, cell: dict, seeds: Sequence | None) -> SeedRow | None:
    """A row from one summary cell; ``seeds`` names the entries of a per-seed list (distill_seeds)."""
    raw = cell.get("per_seed")
    if isinstance(raw, list):
        names = [str(s) for s in seeds] if seeds is not None and len(seeds) == len(raw) else \
            [str(i) for i in range(len(raw))]
        raw = dict(zip(names, raw))
    per_seed = {str(k): number(v) for k, v in (raw or {}).items() if number(v) is not None} \
        if isinstance(raw, dict) else {}
    if not per_seed:
        return None
    values = [per_seed[k] for k in sorted(per_seed, key=numeric_key)]
    mean, std = number(cell.get("mean")), number(cell.get("std"))
    return SeedRow(
        model=model, per_seed=per_seed,
        mean=mean if mean is not None else statistics.mean(values),
        std=std if std is not None else (statistics.stdev(values) if len(values) > 1 else 0.0),
        gain=number(cell.get("gain_over_baseline")),
        beyond_2_std=cell["gain_beyond_2_std"] if isinstance(cell.get("gain_beyond_2_std"), bool) else None,
        gap_closed=number(cell.get("gap_closed", cell.get("gap_to_full_labels_closed"))),
    )


def _pair(rows: list[SeedRow], cells: dict[str, dict], baseline: str | None, aligned: bool) -> None:
    """Mark the baseline; give the others their per-seed paired gains and the 2σ noise level.

    The files list the paired gains without seeds: over the seeds in the file's order
    (distill_seeds, ``aligned``) or over the seeds both have in numeric order (label_budget).
    """
    base = next((r for r in rows if r.model == baseline), None)
    for row in rows:
        if row is base:
            row.is_baseline = True
            continue
        if base is None:
            continue
        gains = cells[row.model].get("paired_gain_per_seed")
        seeds = list(row.per_seed) if aligned else sorted(set(row.per_seed) & set(base.per_seed), key=numeric_key)
        if isinstance(gains, list):
            row.paired_gain = {s: number(g) for s, g in zip(seeds, gains) if number(g) is not None}
        if len(row.per_seed) > 1 and len(base.per_seed) > 1:
            row.noise = 2 * max(row.std, base.std)


def _distill_seeds(path: Path, data: dict) -> Study:
    summary = data["summary"]
    cells = {str(k): v for k, v in summary.items() if isinstance(v, dict)}
    rows = [r for name, cell in cells.items() if (r := _row(name, cell, data.get("seeds"))) is not None]
    # the file does not name its baseline: "baseline", else the one student the others have gains over
    without = [n for n, c in cells.items() if "gain_over_baseline" not in c]
    baseline = BASELINE if BASELINE in cells else without[0] if len(without) == 1 < len(cells) else None
    _pair(rows, cells, baseline, aligned=True)
    rows.sort(key=lambda r: not r.is_baseline)
    teacher = number(data.get("teacher_miou"))
    return Study(path, DISTILL_SEEDS, [SeedTable(None, rows)] if rows else [],
                 {None: teacher} if teacher is not None else {}, baseline, device=str(data.get("device") or ""))


def _label_budget(path: Path, data: dict) -> Study:
    budgets = data.get("budgets") if isinstance(data.get("budgets"), dict) else {}
    teacher = {int(k): number(b.get("teacher_miou")) for k, b in budgets.items()
               if str(k).isdigit() and isinstance(b, dict) and number(b.get("teacher_miou")) is not None}
    totals = {int(k) + b["unlabelled_streets"] for k, b in budgets.items() if str(k).isdigit()
              and isinstance(b, dict) and isinstance(b.get("unlabelled_streets"), int)}
    order = {name: i for i, name in enumerate(LABEL_BUDGET_STUDENTS)}
    tables = []
    for steps, per_budget in sorted(data["summary"].items(), key=lambda kv: numeric_key(str(kv[0]))):
        if not (str(steps).isdigit() and isinstance(per_budget, dict)):
            continue
        rows = []
        for streets, cells in sorted(per_budget.items(), key=lambda kv: numeric_key(str(kv[0]))):
            if not (str(streets).isdigit() and isinstance(cells, dict)):
                continue
            cells = {str(k): v for k, v in cells.items() if isinstance(v, dict)}
            found = [r for name, cell in cells.items() if (r := _row(name, cell, None)) is not None]
            for r in found:
                r.streets = int(streets)
            _pair(found, cells, BASELINE, aligned=False)
            rows += sorted(found, key=lambda r: order.get(r.model, len(order)))
        if rows:
            tables.append(SeedTable(int(steps), rows))
    return Study(path, LABEL_BUDGET, tables, teacher,
                 total_streets=totals.pop() if len(totals) == 1 else TOTAL_STREETS,
                 teacher_steps=data["teacher_steps"] if isinstance(data.get("teacher_steps"), int) else None,
                 device=str(data.get("device") or ""))


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
        return None, f"{path}: no summary; not a result of bench/distill_seeds.py or bench/label_budget.py"
    study = _label_budget(path, data) if "budgets" in data else _distill_seeds(path, data)
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
