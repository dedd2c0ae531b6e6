"""The training loop shared by the teacher and the student stages.

:class:`Trainer` runs a model through ``train.epochs`` of the train split with AdamW (no weight
decay on biases and norms), a one-cycle or cosine schedule stepped per optimizer step,
gradient clipping and, on CUDA, automatic mixed precision with a gradient scaler (spconv runs
its convolutions in fp16 under either ``amp`` mode, so the scaler is on for both). What a step
minimises is the caller's: a ``loss_fn(model, batch) -> (loss, terms)`` (the teacher's
segmentation loss, a student's distillation loss).

Every ``val_every`` steps and at the end, the model is scored on the whole val split by the
dataset's official rules (:mod:`pvkd.metrics`; one confusion matrix per head, summed over
processes), the best weights by val mIoU of the point head are kept (``best.pt``), and
every ``checkpoint_every`` steps, every validation and at the end the full training state
is saved (``last.pt``).

Interruption: SIGTERM or SIGINT (Ctrl-C, or ``torchrun`` stopping its workers) lets the current
step finish, saves the state and raises :class:`TrainingInterrupted`; a second signal stops at
once. A killed run (SIGKILL, power loss) loses only the steps since its last checkpoint. Either
way, running again with the same configuration resumes from ``last.pt``: weights, optimizer,
scheduler, scaler, step (the sampler's epoch and position follow from it), RNG states and the
metric history, so the resumed run computes what the uninterrupted one would have. A ``last.pt``
of another configuration, data or process count, or of a finished run, is not resumed.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvkd.console import console
from pvkd.errors import PvkdError
from pvkd.metrics import HEADS, Scores, scores, split_confusion
from pvkd.train import distributed
from pvkd.train.checkpoint import cpu_copy, load, model_record, rng_state, save_atomic, set_rng_state
from pvkd.train.config import TrainConfig, digest
from pvkd.train.data import RunBatchSampler, ScanDataset, TrainBatch, collate, make_loader, split_batches
from pvkd.train.distributed import DistInfo
from pvkd.train.tracking import RunLog, TrainProgress

LossFn = Callable[[nn.Module, TrainBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Callback = Callable[["Trainer", int], None]  # called on every process after every optimizer step
SELECT_HEAD = "point"  # the head whose val mIoU picks the best checkpoint
NO_BEST = {"step": 0, "miou": -1.0, "scores": None}  # before the first validation
# torch's OneCycleLR defaults: start at peak / 25, end at peak / (25 * 1e4)
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1 / 25e4


@dataclass
class SemiTraining:
    """What the engine needs of semi-supervised training (:mod:`pvkd.train.semi`): the mean teacher it moves
    after every step and saves, the collate that plans the mixes, and which weights it exports."""

    teacher: Any  # pvkd.train.semi.MeanTeacher
    collate: Callable
    export: str  # ema | model


class TrainingInterrupted(PvkdError):
    """A signal stopped training after a checkpoint; running the stage again resumes."""


@dataclass
class TrainResult:
    step: int
    scores: dict[str, Scores]  # final validation, by head
    confusion: dict[str, torch.Tensor]  # final validation's confusion matrices, by head, summed over processes
    best: dict  # {"step", "miou", "scores"} of the best validation
    best_record: dict | None  # model record of the best weights (rank 0 only)
    last_record: dict | None  # model record of the final weights (rank 0 only)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    onecycle: as torch's OneCycleLR (cosine up from 1/25 during the warm-up, cosine down to
    1/25e4); cosine: linear warm-up from 0, then cosine down to 0.
    """
    if step < warmup_steps:
        if schedule == "onecycle":
            return _cosine(ONECYCLE_START, 1.0, step / warmup_steps)
        return (step + 1) / warmup_steps
    t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return _cosine(1.0, ONECYCLE_END if schedule == "onecycle" else 0.0, t)


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels; none on biases and norm scales (1-d tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


class Trainer:
    """Trains ``model`` on ``train_set`` with ``loss_fn``, validating on ``val_set``.

    ``info`` describes the model (:func:`pvkd.train.checkpoint.model_info`): it goes into every
    saved record and, with the training config and the process count, decides whether a
    ``last.pt`` found in ``checkpoint_dir`` belongs to this run. Only rank 0 writes
    (``checkpoint_dir``, ``live_dir``) and draws the progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_set: ScanDataset,
        val_set: ScanDataset,
        cfg: TrainConfig,
        info: dict,
        *,
        dist: DistInfo,
        device: torch.device,
        checkpoint_dir: str | Path | None = None,
        live_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        description: str = "train",
        show_progress: bool = True,
        unlabelled_ratio: int = 0,
        semi: SemiTraining | None = None,
    ):
        self.model, self.loss_fn, self.cfg, self.info = model, loss_fn, cfg, info
        self.train_set, self.val_set = train_set, val_set
        self.dist, self.device = dist, device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.live_dir = live_dir
        self.callbacks = list(callbacks)
        self.description = description
        self.unlabelled_ratio = unlabelled_ratio
        self.semi = semi
        if semi is not None:  # the mean teacher moves after every optimizer step
            self.callbacks.append(lambda trainer, _step: semi.teacher.update(trainer.module))
        self.show_progress = show_progress and dist.is_main
        self.num_classes = len(info["class_names"])
        self.fingerprint = digest({"train": cfg.fingerprint(), "model": info, "world_size": dist.world_size})
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp) if device.type == "cuda" else None
        self.autocast = partial(torch.autocast, "cuda", dtype=amp) if amp is not None else nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp is not None)
        self.stop_requested: str | None = None

    # ------------------------------------------------------------------ setup
    def prepare(self) -> Trainer:
        """Build the wrapped model, optimizer, schedule and sampler; resume from ``last.pt`` when it is this run's."""
        self._build()
        self._resume()
        return self

    def _build(self) -> None:
        cfg = self.cfg
        self.ddp = distributed.wrap(self.model.to(self.device), self.dist, self.device, cfg.sync_batchnorm)
        self.module = distributed.unwrap(self.ddp)  # SyncBatchNorm conversion makes a new module
        if self.semi is not None:
            self.semi.teacher.model.to(self.device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.module, cfg.weight_decay), lr=cfg.lr)
        # the train set lists its labelled scans first, then those of unlabelled splits (distillation only)
        labelled = int(self.train_set.labelled.sum())
        self.sampler = RunBatchSampler(
            labelled, cfg.batch_size, cfg.epochs, cfg.seed, self.dist.rank, self.dist.world_size,
            unlabelled_scans=len(self.train_set) - labelled, unlabelled_ratio=self.unlabelled_ratio,
        )
        total = self.sampler.total_steps
        warmup = round(cfg.warmup_fraction * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, total_steps=total, warmup_steps=warmup, schedule=cfg.schedule)
        )
        self.log = RunLog(self.live_dir if self.dist.is_main else None)
        self.step = 0
        self.best, self.best_record = NO_BEST, None

    def _resume(self) -> None:
        """Continue from ``last.pt`` when it is an unfinished run of this very configuration."""
        state = None
        if self.dist.is_main and self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").is_file():
            path = self.checkpoint_dir / "last.pt"
            found = load(path)
            if found.get("fingerprint") != self.fingerprint:
                console.print(f"{path}: another configuration, data or process count; starting afresh")
            elif found.get("finished"):
                console.print(f"{path}: that run finished; starting afresh")
            else:
                state = found
                self.best_record = self._matching_best(state["best"])
                if self.best_record is None:
                    state["best"] = NO_BEST
        state = distributed.broadcast_from_main(state)
        if state is None:
            return
        self.module.load_state_dict(state["model_state_dict"] if self.semi is not None else state["state_dict"])
        if self.semi is not None:
            self.semi.teacher.load_state_dict(state["mean_teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.dist.rank])
        self.step, self.best = state["step"], state["best"]
        self.log.replay(state["history"])
        self.log.set_summary("best", self.best)
        if self.dist.is_main:
            total = self.sampler.total_steps
            console.print(f"resuming {self.description} at step {self.step} of {total}")

    def _matching_best(self, best: dict) -> dict | None:
        """``best.pt`` if it holds the best weights ``last.pt`` knows of. (A kill between writing a new
        ``best.pt`` and the ``last.pt`` that follows leaves a newer one: the best is then chosen again
        from the resumed run's validations.)"""
        path = self.checkpoint_dir / "best.pt"
        record = load(path) if path.is_file() else None
        if record is not None and record["step"] == best["step"]:
            return record
        if best["scores"] is not None:
            console.print(f"{path}: not the best weights of {self.checkpoint_dir / 'last.pt'}; choosing the best again")
        return None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        self.prepare()
        cfg = self.cfg
        self.sampler.start_step = self.step
        pin = self.device.type == "cuda"
        val_batches = split_batches(len(self.val_set), cfg.val_batch_size, self.dist.rank, self.dist.world_size)
        self.val_loader = make_loader(self.val_set, val_batches, cfg.workers, pin)
        try:
            with self._stop_on_signals(), TrainProgress(
                self.sampler.total_steps, self.step, self.description, self.show_progress
            ) as self.bar:
                collate_fn = self.semi.collate if self.semi is not None else collate
                batches = iter(make_loader(self.train_set, self.sampler, cfg.workers, pin, collate_fn))
                final_scores, final_confusion = self._loop(batches)
        finally:
            self.val_loader = None  # its worker processes end with it
        self.log.close()
        last = None
        if self.dist.is_main:
            val = final_scores[SELECT_HEAD].as_dict()
            last = model_record(self.exported.state_dict(), self.info, step=self.step, val=val)
        return TrainResult(self.step, final_scores, final_confusion, self.best, self.best_record, last)

    def _loop(self, batches: Iterator[TrainBatch]) -> tuple[dict[str, Scores], dict[str, torch.Tensor]]:
        """Steps from ``self.step`` to the end; returns the final validation."""
        cfg, total = self.cfg, self.sampler.total_steps
        window = _Window()
        final = {}, {}
        while self.step < total:
            waited = time.monotonic()
            batch = next(batches).to(self.device)
            window.data_wait += time.monotonic() - waited
            window.add(*self.train_step(batch), scans=batch.points.batch_size * self.dist.world_size)
            self.step += 1
            for callback in self.callbacks:
                callback(self, self.step)
            self.bar.update(self.step)
            if self.step % cfg.log_every == 0 or self.step == total:
                self._log_train(window)
            stop = self.stop_requested is not None
            if self.dist.enabled:  # processes stop at one step: they compare notes at every log step
                stop = self.step % cfg.log_every == 0 and distributed.any_process(stop, self.device)
            validate = self.step == total or (cfg.val_every > 0 and self.step % cfg.val_every == 0)
            save = validate or stop or (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0)
            if save:
                distributed.average_buffers(self.module)
                if self.semi is not None:  # the mean teacher's own BN statistics differ between processes too
                    distributed.average_buffers(self.semi.teacher.model)
            if validate:
                final = self._validate()
            if save:
                self._save_state(finished=self.step == total)
                window.restart()  # validation and saving are not training throughput
            if stop and self.step < total:
                raise TrainingInterrupted(
                    f"{self.description} stopped by {self.stop_requested or 'another process'} at step "
                    f"{self.step} of {total}; state saved, run the stage again to resume"
                )
        return final

    @property
    def exported(self) -> nn.Module:
        """The weights validated, kept and exported: the model's, or the mean teacher's (``semi.export: ema``)."""
        if self.semi is not None and self.semi.export == "ema":
            return self.semi.teacher.model
        return self.module

    def train_step(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimizer step on ``batch`` (on the device); returns the loss, its terms and the gradient norm."""
        with self.autocast():
            loss, terms = self.loss_fn(self.ddp, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}, grad_norm

    def _log_train(self, window: _Window) -> None:
        metrics = window.means()
        if not math.isfinite(metrics["train/loss"]) and not self.scaler.is_enabled():
            raise PvkdError(f"{self.description}: the loss is {metrics['train/loss']} at step {self.step}; "
                            "lower train.lr or train.grad_clip")
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        self.bar.update(self.step, metrics["train/loss"], metrics["train/lr"], metrics["train/scans_per_s"])
        if self.dist.is_main:
            self.log.log(self.step, metrics)
        window.restart()

    # ------------------------------------------------------------------ validation and checkpoints
    @torch.no_grad()
    def _validate(self) -> tuple[dict[str, Scores], dict[str, torch.Tensor]]:
        """Score every head on the whole val split (each process its share, matrices summed)."""
        model = self.exported
        model.eval()
        with self.autocast():
            confusion = split_confusion(model, self.val_loader, self.num_classes, self.device, HEADS)
        self.module.train()
        rules, names = self.info["dataset"], self.info["class_names"]
        for matrix in confusion.values():
            distributed.all_reduce_sum(matrix)
        result = {head: scores(matrix.cpu().numpy(), rules, names) for head, matrix in confusion.items()}
        chosen = result[SELECT_HEAD]
        metrics = {"val/miou": chosen.miou, "val/accuracy": chosen.accuracy}
        metrics |= {f"val/miou_{head}_head": s.miou for head, s in result.items()}
        metrics |= {f"val/iou/{name}": iou for name, iou in chosen.per_class().items()}
        if chosen.miou > self.best["miou"]:
            self.best = {"step": self.step, "miou": chosen.miou, "scores": chosen.as_dict()}
            if self.dist.is_main:
                self.best_record = model_record(model.state_dict(), self.info, step=self.step,
                                                val=chosen.as_dict())
                if self.checkpoint_dir is not None:
                    save_atomic(self.best_record, self.checkpoint_dir / "best.pt")
        if self.dist.is_main:
            self.log.log(self.step, metrics)
            self.log.set_summary("best", self.best)
            heads = ", ".join(f"{head} head {s.miou:.4f}" for head, s in result.items())
            self.bar.print(f"step {self.step}: val mIoU {heads} (best {self.best['miou']:.4f} at {self.best['step']})")
        return result, {head: c.cpu() for head, c in confusion.items()}

    def _save_state(self, finished: bool) -> None:
        """Write ``last.pt`` (rank 0; every process sends its RNG state). Buffers are averaged already."""
        rng = distributed.gather_to_main(rng_state())
        if not self.dist.is_main or self.checkpoint_dir is None:
            return
        # semi-supervised: the record's weights are the exported ones; the model's and the teacher's both resume
        extra = {} if self.semi is None else {"model_state_dict": self.module.state_dict(),
                                              "mean_teacher": self.semi.teacher.state_dict()}
        state = model_record(
            self.exported.state_dict(), self.info,
            step=self.step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng,
            history=self.log.history,
            best=self.best,
            fingerprint=self.fingerprint,
            finished=finished,
            **{k: cpu_copy(v) for k, v in extra.items()},
        )
        save_atomic(state, self.checkpoint_dir / "last.pt")

    @contextmanager
    def _stop_on_signals(self):
        """SIGTERM / SIGINT ask for a stop after the current step; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, _frame):
            if self.stop_requested is not None:
                raise KeyboardInterrupt
            self.stop_requested = signal.Signals(signum).name

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class _Window:
    """Sums over the steps since the last log line; tensors stay on the device until read (one sync per log)."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.loss, self.terms, self.grad_norm, self.steps, self.scans = 0.0, {}, 0.0, 0, 0
        self.data_wait, self.started = 0.0, time.monotonic()

    def add(self, loss, terms, grad_norm, scans: int) -> None:
        self.loss = self.loss + loss
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v
        if grad_norm is not None:
            self.grad_norm = self.grad_norm + grad_norm
        self.steps += 1
        self.scans += scans

    def means(self) -> dict[str, float]:
        n, elapsed = max(self.steps, 1), max(time.monotonic() - self.started, 1e-9)
        metrics = {"train/loss": float(self.loss) / n}
        metrics |= {f"train/{k}": float(v) / n for k, v in self.terms.items()}
        metrics["train/grad_norm"] = float(self.grad_norm) / n
        metrics["train/scans_per_s"] = self.scans / elapsed
        metrics["train/data_wait_share"] = self.data_wait / elapsed
        return metrics
