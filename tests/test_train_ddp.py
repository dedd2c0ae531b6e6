"""DDP on the CPU: two gloo processes end with identical weights, and their summed confusion matrix is the one
a single process computes over the whole val split."""

import multiprocessing
import os
import socket

import torch

from pvkd.metrics import split_confusion
from pvkd.shards import ProcessedData
from pvkd.train import distributed
from pvkd.train.checkpoint import model_for_data
from pvkd.train.data import ScanDataset, make_loader, split_batches

from train_fixtures import TEACHER, make_processed, make_trainer, tiny_config

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, processed, out):
    """One DDP process, set up from the environment variables torchrun sets."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    # val batches of one scan: each scan's forward is then the very computation of the single process
    cfg = tiny_config(val_batch_size=1)
    info, device = distributed.setup(cfg)
    try:
        trainer = make_trainer(processed, cfg, dist=info)
        result = trainer.fit()
        torch.save({"weights": trainer.module.state_dict(), "confusion": result.confusion, "step": result.step},
                   out / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_two_gloo_processes_agree_and_their_confusion_is_the_single_process_one(tmp_path):
    # 8 train scans: 2 steps of 2 x 2 scans per epoch, 3 epochs; 3 val scans: shares of 2 and 1, no padding
    processed = make_processed(tmp_path, {"00": 8, "08": 3}, {"train": ["00"], "val": ["08"]})
    ctx, port = multiprocessing.get_context("spawn"), free_port()
    ranks = [ctx.Process(target=rank_main, args=(r, port, processed, tmp_path)) for r in range(WORLD)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join()
    assert [p.exitcode for p in ranks] == [0] * WORLD
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["step"] == r1["step"] == 6
    assert r0["weights"].keys() == r1["weights"].keys()
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])

    model, _ = model_for_data(TEACHER, ProcessedData(processed))
    model.load_state_dict(r0["weights"])
    model.eval()
    val = ScanDataset(processed, "val")
    single = split_confusion(model, make_loader(val, split_batches(len(val), 1), 0), 20, "cpu")
    for head in ("point", "voxel"):
        assert int(single[head].sum()) == sum(len(val[(0, p)]["label"]) for p in range(len(val)))
        assert torch.equal(r0["confusion"][head], single[head]) and torch.equal(r1["confusion"][head], single[head])


def test_cpu_threads_follow_the_param_then_omp_num_threads_then_the_cores(monkeypatch):
    from pvkd.train.distributed import DistInfo, cpu_threads

    from train_fixtures import tiny_config

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    for name in ("OMP_NUM_THREADS", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    two_local = DistInfo(0, 2, 0, 2)
    assert cpu_threads(tiny_config(threads=3), two_local) == 3
    assert cpu_threads(tiny_config(threads=0, workers=1), two_local) == 7  # 16 cores / 2 processes - 1 worker
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a queue worker started as OMP_NUM_THREADS=1 dvc queue start
    assert cpu_threads(tiny_config(threads=0), DistInfo()) == 1
    assert cpu_threads(tiny_config(threads=4), DistInfo()) == 4  # the param wins
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun, whose OMP_NUM_THREADS=1 is its own default
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cpu_threads(tiny_config(threads=0, workers=0), two_local) == 8
