"""One module per DVC stage of dvc.yaml (installed as ``pvkd.stages``).

Each module is the thin glue between the pipeline and the library: its Typer command reads
its sections of params.yaml, calls into ``pvkd``, and writes the stage's outputs and metrics.
"""
