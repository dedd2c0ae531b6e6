"""Stage `report`: metrics, curves, predictions and data stats -> report/report.html and report/report.md."""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its report section and shows it whole."),
    metrics: Path = typer.Option(Path("metrics/evaluate.json"), help="Metrics of the evaluate stage "
                                 "(`dvc repro evaluate`)."),
    eval_dir: Path = typer.Option(Path("eval"), "--eval", help="Plots folder of the evaluate stage: "
                                  "sample_scan.parquet, per_class_iou.csv, distance_miou.csv."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (stats.parquet, meta.json)."),
    live: Path = typer.Option(Path("dvclive"), help="dvclive folder: <model>/plots/metrics/{train/loss,val/miou}.tsv."),
    out: Path = typer.Option(Path("report"), help="Report folder to write (replaced whole)."),
    experiments: bool = typer.Option(False, "--experiments", help="Add the table of `dvc exp show --json` "
                                     "(run in the current folder): each experiment's changed params and mIoU."),
    studies: list[Path] = typer.Option(None, "--studies", help="Committed seed study results (bench/results/*.json "
                                       "of distill_seeds.py or label_budget.py) for the section \"How sure\"; "
                                       "repeat for several; default: the params' report.seed_studies."),
) -> None:
    """Write the report: OUT/report.html (self-contained) and OUT/report.md (with its PNG figures beside it).

    Sections: the headline table (teacher and students: mIoU, params, MACs, latency, their
    ratios to the teacher, and the share of the teacher's lead over the no-distillation student
    that each distilled student recovers), per-class IoU, mIoU by distance, accuracy against
    cost, training curves, a bird's-eye view of one val scan (ground truth, teacher, the PVKD
    student, who is right where), the class frequencies of the data, the experiment table
    (--experiments) and params.yaml. With seed studies (--studies, or report.seed_studies in the
    params), a section "How sure" after the headline: each student's mIoU over seeds and whether
    its gain over the baseline leaves the seed noise. A model missing from some input is left
    out of that part with a note, as is a study file that is missing; a missing metrics file is
    an error.
    """
    from pvkd.params import load_params
    from pvkd.report import build_report, run_exp_show

    settings = load_params(params).get("report") or {}
    listed = settings.get("seed_studies", []) or []
    exp_show = run_exp_show(Path.cwd()) if experiments else None
    report = build_report(metrics, eval_dir, data, live, out, params_path=params, exp_show=exp_show,
                          title=settings.get("title"),
                          seed_studies=studies or ([listed] if isinstance(listed, str) else listed))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    console.print(f"{report.html}, {report.markdown}: {len(report.figures)} figures", highlight=False)
