"""The `pvkd` program: one command per pipeline stage (see dvc.yaml), plus tools."""

from __future__ import annotations

import typer
from rich.markup import escape

from pvkd.console import console
from pvkd.errors import PvkdError
from pvkd.stages import (
    cache_logits,
    configs,
    distill,
    evaluate,
    import_teacher,
    model_info,
    objects,
    predict,
    preprocess,
    profile,
    report,
    synth,
    teacher_train,
)

app = typer.Typer(
    help="Point-to-Voxel Knowledge Distillation for LiDAR segmentation: the stages of the DVC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# each command's help is its stage function's docstring; the first line is the summary in `pvkd --help`
app.command("synth")(synth.main)
app.command("preprocess-config")(configs.preprocess_main)
app.command("preprocess")(preprocess.main)
app.command("objects")(objects.main)
app.command("model-info")(model_info.main)
app.command("teacher-config")(configs.teacher_main)
app.command("teacher-train")(teacher_train.main)
app.command("import-teacher")(import_teacher.main)
app.command("cache-logits")(cache_logits.main)
app.command("student-config")(configs.student_main)
app.command("distill")(distill.main)
app.command("evaluate")(evaluate.main)
app.command("predict")(predict.main)
app.command("report")(report.main)
app.command("profile")(profile.main)


def main() -> None:
    """Entry point: user errors (bad data, missing files, bad params) exit 1 with one clear line."""
    try:
        app()
    except (PvkdError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        raise SystemExit(1) from None
