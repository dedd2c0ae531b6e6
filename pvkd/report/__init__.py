"""The report: what each student kept of the teacher's accuracy and what it saved, in one page.

:func:`build_report` reads the evaluate stage's outputs (``metrics/evaluate.json``, the ``eval``
folder), the training curves dvclive wrote (``dvclive/<model>/plots/metrics``), the frequency
stats of the processed data and params.yaml, and writes two files to the output folder:

- ``report.html``: self-contained (figures embedded as base64 PNG, inline CSS, no script), to
  open in a browser or attach anywhere;
- ``report.md``: its Markdown twin, for the terminal and git diffs, with its figures as PNG files
  beside it (``fig-*.png``), referenced relatively.

Sections: the headline table (scores, costs, ratios to the teacher, the share of the
teacher-student gap each distilled student closes in this run, at one seed), optionally how
sure that is (the committed multi-seed studies listed in ``report.seed_studies``: paired
same-seed differences from the baseline, their 95 % interval, p and verdict), per-class IoU, mIoU by distance, accuracy
against cost, training curves, a bird's-eye picture of one val scan, the class frequencies of
the data, optionally the experiment table of ``dvc exp show`` (:func:`parse_exp_show`), and the
params. A model missing from some input is left out of that part with a note; only a missing
metrics file is an error. Nothing in the output depends on the time it was made.

Modules: ``blocks`` (the document model), ``inputs`` (reading the stages' outputs), ``experiments``
(``dvc exp show``), ``studies`` (committed seed studies), ``figures``, ``sections`` (one builder
per section) and ``render`` (HTML and Markdown); this one puts them together.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvkd.errors import DataError
from pvkd.report.blocks import Columns, Details, Figure, Section, Table
from pvkd.report.experiments import ExpRow, ablation_table, parse_exp_show, run_exp_show
from pvkd.report.figures import _place_labels, agreement_ids, model_colors
from pvkd.report.inputs import (
    baseline_name,
    class_shares,
    distance_miou,
    headline,
    load_metrics,
    model_order,
    per_class_iou,
    pictured_student,
    read_meta,
    teacher_name,
)
from pvkd.report.render import figures_of, render_html, render_markdown
from pvkd.report.sections import (
    section_cost,
    section_curves,
    section_data,
    section_distance,
    section_experiments,
    section_headline,
    section_params,
    section_per_class,
    section_scan,
    section_seed_studies,
)
from pvkd.report.studies import Study, load_studies

__all__ = [
    "Columns", "Details", "ExpRow", "Figure", "Report", "Section", "Study", "Table", "_place_labels",
    "ablation_table", "agreement_ids", "baseline_name", "build_report", "class_shares", "distance_miou", "headline",
    "load_metrics", "load_studies", "model_colors", "model_order", "parse_exp_show", "per_class_iou",
    "pictured_student", "render_html", "render_markdown", "run_exp_show", "section_headline", "teacher_name",
]


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[Path]
    notes: list[str]  # "section: note" for everything left out


def _intro(metrics: dict[str, dict], metrics_path: Path, data_dir: Path) -> str:
    teacher = teacher_name(metrics)
    students = [n for n in model_order(metrics) if n != teacher]
    scans = next((m.get("val_scans") for m in metrics.values() if isinstance(m.get("val_scans"), int)), None)
    dataset = read_meta(data_dir).get("dataset")
    where = f"the {scans} val scans" if scans else "the val split"
    where += f" of {dataset}" if dataset else ""
    tta = " with test-time augmentation" if any(m.get("tta") for m in metrics.values()) else ""
    who = f"The teacher ({teacher})" if teacher else "No teacher"
    plural = "s" if len(students) != 1 else ""
    return (f"{who} and {len(students)} student{plural} ({', '.join(students) or 'none'}), scored on {where}{tta}. "
            f"Made by `pvkd report` from `{metrics_path}`, the evaluate stage's plots, the dvclive curves and the "
            "processed data's stats.")


def _prepare_out(out_dir: Path) -> Path:
    """A fresh staging folder beside ``out_dir``; refuses to replace a folder that is not a report."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a folder; pass another --out")
        foreign = [p.name for p in out_dir.iterdir()
                   if not (p.is_file() and (p.name in ("report.html", "report.md") or p.suffix == ".png"))]
        if foreign:
            raise DataError(f"{out_dir}: holds files that are not a report's ({', '.join(sorted(foreign)[:3])}); "
                            "pass an empty or report folder as --out")
    staging = out_dir.with_name(out_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def build_report(
    metrics_path: str | Path,
    eval_dir: str | Path,
    data_dir: str | Path,
    live_dir: str | Path,
    out_dir: str | Path,
    params_path: str | Path = "params.yaml",
    exp_show=None,
    title: str | None = None,
    seed_studies: Sequence[str | Path] = (),
) -> Report:
    """Write ``out_dir/report.html``, ``out_dir/report.md`` and the figures; ``exp_show``: parsed ``dvc exp show``.

    ``seed_studies``: committed study results (bench/results/*.json) for the section "How sure"
    (left out when empty; a file that cannot be read gives a note). The folder is written whole:
    built beside ``out_dir`` and swapped in at the end.
    """
    metrics = load_metrics(metrics_path)
    eval_dir, data_dir, live_dir, out_dir = Path(eval_dir), Path(data_dir), Path(live_dir), Path(out_dir)
    params_path = Path(params_path)
    staging = _prepare_out(out_dir)
    try:
        order = model_order(metrics)
        teacher = teacher_name(metrics)
        studies, study_notes = load_studies(seed_studies)
        extra = [m for study in studies for m in study.models if m not in order]
        colors = model_colors([*order, *dict.fromkeys(extra)], teacher)  # the pipeline's models keep their colours
        headline_section, rows = section_headline(metrics, studies)
        sections = [headline_section]
        if seed_studies:
            sections.append(section_seed_studies(studies, study_notes, colors))
        sections += [
            section_per_class(metrics, eval_dir, colors),
            section_distance(metrics, eval_dir, colors, teacher),
            section_cost(rows, colors, teacher),
            section_curves(metrics, live_dir, colors, teacher),
            section_scan(metrics, eval_dir, data_dir),
            section_data(data_dir),
        ]
        if exp_show is not None:
            sections.append(section_experiments(exp_show))
        sections.append(section_params(params_path))
        title = title or "PVKD report"
        intro = _intro(metrics, Path(metrics_path), data_dir)
        figures = figures_of(sections)
        for fig in figures:
            (staging / f"{fig.name}.png").write_bytes(fig.png)
        (staging / "report.html").write_text(render_html(title, intro, sections), encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(title, intro, sections), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(html=out_dir / "report.html", markdown=out_dir / "report.md",
                  figures=[out_dir / f"{f.name}.png" for f in figures],
                  notes=[f"{s.title}: {n}" for s in sections for n in s.notes])
