"""Processes, devices and DDP: one training process per GPU, launched by ``torchrun``, on any number of nodes.

A training stage started as a plain command (``pvkd teacher-train``, as ``dvc repro`` runs it)
with ``train.processes`` > 1 (``auto``: one per visible GPU) re-executes itself under
``torchrun --standalone`` on this machine. Under ``torchrun`` (the environment variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``... are set) it joins the process group instead: NCCL on
GPUs, gloo on the CPU. Several nodes: start ``torchrun`` on each (see the README).

Every process holds the same weights (DDP averages the gradients); BatchNorm statistics, which
DDP does not average, are averaged by :func:`average_buffers` before every validation and
checkpoint. Only rank 0 writes files; the checkpoint it reads on resuming is broadcast, so nodes
need no shared file system.
"""

from __future__ import annotations

import io
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pvkd.errors import ParamsError
from pvkd.train.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICES = ("auto", "cpu", "cuda")


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(setting: str, where: str = "train.device") -> torch.device:
    """auto -> CUDA when visible, else the CPU; cuda without a visible GPU is an error naming ``where``."""
    if setting not in DEVICES:
        raise ParamsError(f"{where} must be one of {DEVICES}, got {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{where} is cuda but no CUDA device is visible; use auto or cpu")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def local_processes(cfg: TrainConfig) -> int:
    """Training processes to run on this machine: ``processes``, or with ``auto`` one per GPU (1 on the CPU)."""
    if cfg.processes != "auto":
        return int(cfg.processes)
    return max(torch.cuda.device_count(), 1) if resolve_device(cfg.device).type == "cuda" else 1


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """This command again, under ``torchrun`` with ``processes`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "pvkd", *argv]


def setup(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Join the process group when under torchrun, pick this process's device, set threads and seeds.

    Seeds are the same on every process (so every process builds the same initial weights) and
    set before the model is built.
    """
    info = DistInfo()
    if under_torchrun():
        env = os.environ
        info = DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                        int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if cfg.sync_batchnorm and device.type != "cuda":
        raise ParamsError("train.sync_batchnorm needs CUDA (torch implements SyncBatchNorm for GPUs only)")
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(cpu_threads(cfg, info))
    seed_everything(cfg.seed)
    return info, device


def cpu_threads(cfg: TrainConfig, info: DistInfo) -> int:
    """``train.threads``; 0: ``OMP_NUM_THREADS`` when set outside torchrun (so `OMP_NUM_THREADS=1 dvc queue
    start -j 2` gives each queued run one thread without changing the train section, which the teacher
    depends on), else the machine's cores shared among the local processes, less the loader workers."""
    if cfg.threads:
        return cfg.threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0 and not under_torchrun():  # torchrun sets it to 1 for every process
        return int(omp)
    return max(1, (os.cpu_count() or 1) // info.local_world_size - cfg.workers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wrap(model: nn.Module, info: DistInfo, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """``model`` as it trains: itself on one process, in DDP (optionally with SyncBatchNorm) on several.

    SyncBatchNorm fits the sparse backbones: their norms are ``BatchNorm1d`` over the (rows, C)
    feature matrix of a sparse tensor, which SyncBatchNorm takes as is, and it accepts a process
    holding no rows.
    """
    if not info.enabled:
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (nothing to do on one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (a stop request seen by one stops all at one step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes."""
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= world


# Objects travel as torch.save bytes: pickling tensors straight into torch's object collectives fails to
# unpickle some storages (the uint8 RNG state), and torch.load(weights_only=True) runs no pickled code.
def _serialize(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _deserialize(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def broadcast_from_main(obj):
    """Rank 0's ``obj`` (tensors and plain values) on every process: a checkpoint read by rank 0 only."""
    if not dist.is_initialized():
        return obj
    box = [_serialize(obj) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return _deserialize(box[0])


def gather_to_main(obj) -> list | None:
    """Every process's ``obj`` (tensors and plain values), as a list by rank on rank 0 (None elsewhere)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, _serialize(obj))
    return [_deserialize(data) for data in out] if dist.get_rank() == 0 else None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
