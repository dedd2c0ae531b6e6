"""Stage `objects`: the object bank of the train split -> data/objects.parquet (for instance paste and PolarMix)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pvkd.console import console, progress_bar
from pvkd.params import load_params


def main(
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its objects section."),
    data: Path = typer.Option(Path("data/processed"), help="Processed data folder (`pvkd preprocess`)."),
    out: Path = typer.Option(Path("data/objects.parquet"), help="The bank: one row per object."),
) -> None:
    """Bank every object of objects.classes in the train split, for train.augment.paste and polarmix.

    An object is a connected component of one class's points in one scan (points in neighbouring
    cells of objects.link metres are linked; components under objects.min_points are dropped).
    The bank stores each object's scan and rows, not its points: a pasted object is read from the
    shards, with its rows of the teacher cache when a student pastes it.
    """
    from pvkd.objects import BankConfig, build_bank
    from pvkd.shards import ProcessedData

    cfg = BankConfig.from_dict(load_params(params).get("objects"))
    processed = ProcessedData(data)
    with progress_bar("objects") as report:
        bank = build_bank(processed, cfg, progress=report)
    bank.write(out)
    table = Table(title=f"{out}: {len(bank.table)} objects in the train split")
    for name in ("class", "objects", "median points"):
        table.add_column(name, justify="left" if name == "class" else "right")
    names = processed.meta["class_names"]
    for label, group in bank.table.groupby("label"):
        table.add_row(names[label], str(len(group)), f"{group['num_points'].median():.0f}")
    console.print(table)
