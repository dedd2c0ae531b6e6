"""Stages `preprocess-config`, `teacher-config` and `student-config@<student>`: effective configs (seconds each).

Each writes what one expensive stage can be changed by (see :mod:`pvkd.configs`); that stage depends on
the file, so DVC re-runs it exactly when its result can change.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pvkd.console import console
from pvkd.params import load_params


def preprocess_main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads data, grid and preprocess."),
    out: Path = typer.Option(Path("configs/preprocess"), help="Folder of <split>.json, one per preprocess.splits."),
) -> None:
    """Write each split's preprocessing config: the reader, the split's sequences and kind, grid, shard layout.

    preprocess@<split> depends on OUT/<split>.json, so adding a split (an unlabelled one, or test
    sequences for a submission) preprocesses that split only.
    """
    from pvkd.configs import preprocess_config, write_json

    p = load_params(params)
    for split in p["preprocess"]["splits"]:
        write_json(preprocess_config(p, split), out / f"{split}.json")
    console.print(f"{out}: the preprocessing config of split(s) {', '.join(p['preprocess']['splits'])}")


def teacher_main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads teacher and train."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data (the shards' hash of the unlabelled split "
                              "of semi-supervised training, train.semi.split)."),
    objects: Path = typer.Option(Path("data/objects.parquet"), help="Object bank; hashed only when a transform "
                                 "of the teacher takes objects."),
    out: Path = typer.Option(Path("configs/teacher.json"), help="JSON file to write."),
) -> None:
    """Write the teacher's effective config: its model, its train recipe (mixing transforms that are off
    reduced to probability 0), the hash of the object bank when one of its transforms reads it, and the
    shards' hash of the unlabelled split when it trains semi-supervised (train.semi).

    teacher-train depends on this file and on the train and val shards, not on the object bank
    directly: with every mixing transform off, a change of the objects section trains nothing.
    """
    from pvkd.configs import teacher_config, write_json

    write_json(teacher_config(load_params(params), data, objects), out)
    console.print(f"{out}: the teacher's effective config")


def student_main(
    student: str = typer.Option(..., help="Name of the student under students: in params.yaml."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads students.<name>, distill, train, grid."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data (the shards' hash of an unlabelled "
                              "split the student reads)."),
    cache: Path = typer.Option(Path("data/teacher_cache"), help="Teacher cache (the hash of each split the "
                               "student distils on)."),
    teacher: Path = typer.Option(Path("models/teacher.pt"), help="Teacher record (hashed in online mode)."),
    objects: Path = typer.Option(Path("data/objects.parquet"), help="Object bank (hashed when a transform of the "
                                 "student takes objects)."),
    out: Path = typer.Option(None, help="JSON file to write; default configs/<student>.json."),
) -> None:
    """Write one student's effective config: its own keys merged over distill and train, without the keys no
    active term reads (a student with no teacher term keeps no distill key), and the hashes of what it reads.

    DVC's foreach gives every student stage the whole sections, so `dvc exp run -S
    distill.temperature=2` would re-train the baseline, whose KD weights are 0. Each distill stage
    depends on this file instead: the file is rewritten for every student, but only the students
    whose effective config or inputs changed are trained again (a new teacher cache re-trains the
    distilled students, not the baseline).
    """
    from pvkd.configs import student_config, write_json

    out = out or Path("configs") / f"{student}.json"
    write_json(student_config(load_params(params), student, data, cache, teacher, objects), out)
    console.print(f"{out}: the effective config of student {student}")
