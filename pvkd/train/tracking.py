"""What a training run shows and records (rank 0 only): dvclive metrics and plots, and a progress bar.

dvclive writes ``<dir>/metrics.json`` (the latest value of every metric, plus the ``best``
validation) and ``<dir>/plots/metrics/<name>.tsv`` (one row per logged step), which dvc.yaml
declares as the stage's metrics and plots. DVC deletes a stage's outputs before running it, so
a resumed run could not append to them: instead the history travels in the training state and
is written again, whole, when the run resumes (:meth:`RunLog.replay`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pvkd.console import console


class RunLog:
    """Metrics by step into dvclive (when ``live_dir`` is given) and into :attr:`history`."""

    def __init__(self, live_dir: str | Path | None):
        self.history: list[dict] = []  # [{"step": s, "metrics": {name: value}}]
        self.live = None
        if live_dir is not None:
            try:
                from dvclive import Live
            except ImportError:
                # dvclive comes with DVC; a bare runtime without it (the GPU machine's kit) trains and
                # exports the same, only without curves
                console.print(f"[yellow]warning:[/yellow] dvclive is not installed: no metrics or plots in {live_dir}")
                return
            # dvclive warns about every unconfigured integration (git, Studio); the stage owns dvc.yaml
            logging.getLogger("dvclive").setLevel(logging.ERROR)
            self.live = Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, "metrics": dict(metrics)})
        self._write(step, metrics)
        if self.live is not None:
            self.live.make_summary()

    def replay(self, history: list[dict]) -> None:
        """Write a resumed run's earlier history again (the files were removed with the stage's outputs)."""
        for entry in history:
            self.history.append(entry)
            self._write(entry["step"], entry["metrics"])

    def set_summary(self, key: str, value) -> None:
        """A value of metrics.json that is not a plotted series (the best validation)."""
        if self.live is not None:
            self.live.summary[key] = value
            self.live.make_summary()

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = step
        for name, value in metrics.items():
            self.live.log_metric(name, value)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


class TrainProgress:
    """A rich progress bar over the steps, with the loss, learning rate and throughput of the last window."""

    def __init__(self, total_steps: int, start_step: int, description: str, enabled: bool):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[rate]:.2f} scans/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(description, total=total_steps, completed=start_step,
                                           loss=float("nan"), lr=0.0, rate=0.0)

    def __enter__(self) -> TrainProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float | None = None, lr: float | None = None, rate: float | None = None):
        fields = {k: v for k, v in (("loss", loss), ("lr", lr), ("rate", rate)) if v is not None}
        self.progress.update(self.task, completed=step, **fields)

    def print(self, message: str) -> None:
        """A line above the bar (kept in non-interactive logs, where the bar itself is not drawn)."""
        if self.enabled:
            self.progress.console.print(message, highlight=False)
