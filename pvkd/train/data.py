"""Scans of the Parquet shards as training batches: dataset, collation, and the samplers of a run.

* :class:`ScanDataset` reads one scan per item (one row group, memory-mapped, only the columns
  training needs) with any per-point extras a stage supplies (the teacher cache of the distill
  stages: same points, same order), mixes it with other scans or banked objects if asked
  (:mod:`.mix`: every point keeps its extras row) and augments it on the fly. Voxelization is
  left to the model, which bins the augmented points on its own grid.
* :func:`collate` concatenates scans with a sample index per point: no padding.
* :class:`RunBatchSampler` lays out every batch of a whole run, step by step, for one process of
  ``world_size``: a run resumed at step ``s`` asks for the batches from ``s`` on and gets exactly
  those an uninterrupted run would have used. Items are keys ``(epoch, position)``, so the
  augmentation of a scan is a function of (seed, epoch, scan), whichever worker loads it.
  It does what torch's ``DistributedSampler`` does for DDP (a disjoint share of every epoch's
  permutation per process, equal step counts) and adds the mid-epoch start that
  ``DistributedSampler`` lacks.
* :func:`split_batches` shares a split among processes *without* padding (``DistributedSampler``
  repeats scans to even out the shares, which would count them twice in a confusion matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pvkd.errors import DataError, ParamsError
from pvkd.models import PointBatch
from pvkd.objects import ObjectBank, class_ids
from pvkd.shards import ProcessedData, read_scan
from pvkd.train import mix
from pvkd.train.augment import augment
from pvkd.train.config import AugmentConfig

COLUMNS = ["x", "y", "z", "intensity", "label"]
POINT_KEYS = ("xyz", "intensity", "label", "labelled")  # a loaded scan's own arrays; its other keys are the extras
# independent random streams derived from the run's seed
PERMUTATION_STREAM, AUGMENT_STREAM, MIX_STREAM, SCAN_MIX_STREAM = 0, 1, 2, 3

# extras(row of index.parquet) -> per-point arrays aligned with the scan's rows
Extras = Callable[[pd.Series], dict[str, np.ndarray]]


@dataclass
class TrainBatch:
    """Scans concatenated: the points, their labels, and any per-point extras, in the same order."""

    points: PointBatch
    labels: torch.Tensor  # (N,) int64 training ids, 0 = ignored
    positions: torch.Tensor  # (B,) int64 position of each scan in its dataset
    labelled: torch.Tensor | None = None  # (N,) bool: False for points of unlabelled scans (None: all labelled)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    # semi-supervised batches (pvkd.train.semi.SemiCollate): rows of the mixed scans and each row's mixed scan
    mix_rows: torch.Tensor | None = None
    mix_scans: torch.Tensor | None = None

    def unlabelled_points(self) -> torch.Tensor:
        """(N,) bool: the points that come from scans of unlabelled splits (a mixed scan holds both kinds)."""
        if self.labelled is None:
            return torch.zeros_like(self.labels, dtype=torch.bool)
        return ~self.labelled.to(self.labels.device)

    def to(self, device: torch.device | str) -> TrainBatch:
        non_blocking = torch.device(device).type == "cuda"
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return TrainBatch(
            self.points.to(device), move(self.labels), self.positions, move(self.labelled),
            {k: move(v) for k, v in self.extras.items()}, move(self.mix_rows), move(self.mix_scans),
        )

    def pin_memory(self) -> TrainBatch:
        """Called by the DataLoader (``pin_memory=True``) so host-to-GPU copies can overlap compute."""
        p = self.points
        pinned = PointBatch(p.xyz.pin_memory(), p.intensity.pin_memory(), p.batch.pin_memory(), p.batch_size)
        def pin(t):
            return None if t is None else t.pin_memory()

        return TrainBatch(pinned, pin(self.labels), self.positions, pin(self.labelled),
                          {k: pin(v) for k, v in self.extras.items()}, pin(self.mix_rows), pin(self.mix_scans))


class ScanDataset(Dataset):
    """The scans of one or more splits of a processed folder; item ``(epoch, position)`` -> one scan as numpy arrays.

    Positions run over the splits in the order given. ``augment`` None: the points as stored
    (validation, caching, evaluation). Scans of ``unlabelled`` splits are used only through the
    teacher: their labels are returned as 0 (ignored) whatever the shards hold, so no ground truth
    that happens to be on disk reaches a loss. Empty scans (no point survived preprocessing) are
    left out unless ``keep_empty`` (the cache and submissions need every scan).

    Mixing (``augment.paste``, ``polarmix``, ``lasermix``) draws its partners among the scans of
    the same kind (labelled with labelled, unlabelled with unlabelled; ``lasermix.partner:
    unlabelled`` draws unlabelled partners for every scan, so that a labelled scan's bands
    alternate with an unlabelled one's, each point keeping its own ``labelled``) and pastes only into
    labelled scans (placement needs their ground labels); ``bank`` holds the objects to paste
    and names the object classes PolarMix copies. Each decision has its own random stream of
    (seed, epoch, scan), so turning one transform on leaves the others' draws unchanged.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str],
        augment: AugmentConfig | None = None,
        seed: int = 0,
        extras: Extras | None = None,
        unlabelled: Sequence[str] = (),
        keep_empty: bool = False,
        bank: ObjectBank | None = None,
    ):
        self.root = Path(root)
        self.splits = [split] if isinstance(split, str) else list(split)
        self.split = self.splits[0]
        data = ProcessedData(root)
        rows = pd.concat([data.scans(s) for s in self.splits], ignore_index=True)
        if not keep_empty:
            rows = rows[rows["num_points"] > 0].reset_index(drop=True)
        self.rows = rows
        if len(self.rows) == 0:
            raise DataError(f"{self.root}: split(s) {self.splits} have no scans with points; check data.splits and "
                            "preprocess.splits")
        self.labelled = ~self.rows["split"].isin(list(unlabelled)).to_numpy()
        self.augment = augment
        self.seed = int(seed)
        self.extras = extras
        if augment is not None and augment.mixes:
            self._prepare_mixing(augment, data.meta["class_names"], bank)

    def _prepare_mixing(self, cfg: AugmentConfig, class_names: list[str], bank: ObjectBank | None) -> None:
        if bank is None and cfg.needs_bank:
            raise ParamsError("train.augment.paste and polarmix.copies need the object bank: run `pvkd objects` "
                              "(dvc repro objects) and pass it with --objects")
        self.partners = {kind: np.flatnonzero(self.labelled == kind) for kind in (True, False)}
        if cfg.lasermix.probability > 0 and cfg.lasermix.partner == "unlabelled" and not len(self.partners[False]):
            raise ParamsError("train.augment.lasermix.partner: unlabelled needs unlabelled scans, and only a student "
                              "with distill.unlabelled.split (and a teacher term or unlabelled.weight > 0) reads "
                              "them: set it in students.<name>.train.augment, not for the teacher or the baseline")
        self.ground_ids = class_ids(cfg.paste.ground_classes, class_names, "train.augment.paste.ground_classes")
        self.object_ids = class_ids(bank.classes, class_names, "objects.classes") if bank is not None else []
        if bank is not None:  # objects of scans in this dataset, by class
            position = {scan_id: i for i, scan_id in enumerate(self.rows["scan_id"])}
            table = bank.table[bank.table["scan_id"].isin(position)]
            self.bank_positions = table["scan_id"].map(position).to_numpy()
            self.bank_rows = table["rows"].to_numpy()
            labels = table["label"].to_numpy()
            self.bank_by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
            if cfg.paste.probability > 0 and not self.bank_by_class:
                raise DataError(f"{self.root}: the object bank has no object in split(s) {self.splits}; check "
                                "objects.classes")

    def __len__(self) -> int:
        return len(self.rows)

    def count(self, split: str) -> int:
        """Scans of ``split`` in the dataset (its positions are consecutive, in the order of the splits)."""
        return int((self.rows["split"] == split).sum())

    def load(self, position: int) -> mix.Scan:
        """Scan ``position`` as stored, with its extras: ``xyz``, ``intensity``, ``label``, ``labelled``
        (per point, so that it follows each point through a mix) and the extras' keys."""
        row = self.rows.iloc[position]
        cols = read_scan(self.root / row["shard"], int(row["row_group"]), COLUMNS)
        labelled, n = bool(self.labelled[position]), len(cols["x"])
        scan = {
            "xyz": np.stack([cols["x"], cols["y"], cols["z"]], 1),
            "intensity": np.array(cols["intensity"], dtype=np.float32),  # a writable copy of the mapped column
            "label": cols["label"].astype(np.int64) if labelled else np.zeros(n, np.int64),
            "labelled": np.full(n, labelled),
        }
        if self.extras is not None:
            scan |= self.extras(row)
        return scan

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, position = key
        scan = self.load(position)
        if self.augment is not None:
            if self.augment.mixes:
                scan = self.mixed(scan, epoch, position)
            rng = np.random.default_rng([self.seed, AUGMENT_STREAM, epoch, position])
            scan["xyz"] = augment(scan["xyz"], self.augment, rng)
        sample = {k: scan[k] for k in POINT_KEYS} | {"position": position, "epoch": epoch}
        if self.extras is not None:
            sample["extras"] = {k: v for k, v in scan.items() if k not in POINT_KEYS}
        return sample

    def mixed(self, scan: mix.Scan, epoch: int, position: int) -> mix.Scan:
        """The scan after instance paste, PolarMix and LaserMix, each applied with its probability."""
        cfg, labelled = self.augment, bool(self.labelled[position])
        rng = [np.random.default_rng([self.seed, SCAN_MIX_STREAM, epoch, position, k]) for k in range(3)]
        if labelled and rng[0].random() < cfg.paste.probability:
            scan, _ = mix.paste_objects(scan, self.bank_objects(cfg.paste.count, rng[0]), self.ground_ids,
                                        cfg.paste.radius, rng[0])
        if rng[1].random() < cfg.polarmix.probability:
            partner = self.load(self.partner(labelled, position, rng[1]))
            scan = mix.polar_mix(scan, partner, cfg.polarmix.swap_deg, cfg.polarmix.copies, self.object_ids, rng[1])
        if rng[2].random() < cfg.lasermix.probability:
            kind = False if cfg.lasermix.partner == "unlabelled" else labelled
            partner = self.load(self.partner(kind, position, rng[2]))
            scan = mix.laser_mix(scan, partner, cfg.lasermix.bands, cfg.lasermix.pitch_deg, rng[2])
        return scan

    def partner(self, labelled: bool, position: int, rng: np.random.Generator) -> int:
        """A mixing partner of the kind asked for, never the scan itself (alone of its kind, it is its own)."""
        candidates = self.partners[labelled]
        others = candidates[candidates != position]
        return int(rng.choice(others if len(others) else candidates))

    def bank_objects(self, count: int, rng: np.random.Generator) -> list[mix.Scan]:
        """``count`` banked objects, each of a class drawn uniformly, with all their per-point arrays."""
        picks = [rng.choice(self.bank_by_class[c]) for c in rng.integers(len(self.bank_by_class), size=count)]
        return [mix.take(self.load(int(self.bank_positions[i])), self.bank_rows[i].astype(np.int64)) for i in picks]


def collate(samples: list[dict]) -> TrainBatch:
    """Concatenate scans (no padding); point ``n`` of the batch belongs to scan ``points.batch[n]``."""
    points = PointBatch.from_scans([(torch.from_numpy(s["xyz"]), torch.from_numpy(s["intensity"])) for s in samples])
    extras = {}
    if samples and "extras" in samples[0]:
        extras = {k: torch.cat([torch.as_tensor(s["extras"][k]) for s in samples]) for k in samples[0]["extras"]}
    return TrainBatch(
        points=points,
        labels=torch.cat([torch.from_numpy(s["label"]) for s in samples]),
        positions=torch.tensor([s["position"] for s in samples], dtype=torch.long),
        labelled=torch.cat([torch.from_numpy(s["labelled"]) if "labelled" in s
                            else torch.ones(len(s["label"]), dtype=torch.bool) for s in samples]),
        extras=extras,
    )


class RunBatchSampler(Sampler[list[tuple[int, int]]]):
    """Every batch of a run for process ``rank`` of ``world_size``, from ``start_step`` on.

    Each epoch draws a permutation of the split from (seed, epoch); its step ``k`` takes the
    ``k``-th block of ``batch_size x world_size`` scans and process ``r`` the ``r``-th
    ``batch_size`` of them. Scans left over after the last whole block sit that epoch out (the
    next permutation differs), so every process runs the same number of steps.

    With ``unlabelled_scans`` (positions ``num_scans ..``, after the labelled ones) and
    ``unlabelled_ratio`` r > 0, every batch takes ``r x batch_size`` unlabelled scans *after* its
    labelled ones, from a stream of permutations of the unlabelled scans drawn from (seed, epoch).
    They are added, never swapped in: the labelled scans of every step (and the step count) are
    exactly those of the run without unlabelled scans, so a student with unlabelled scans is
    compared with the labelled-only one on the same labelled data.
    """

    def __init__(
        self, num_scans: int, batch_size: int, epochs: int, seed: int,
        rank: int = 0, world_size: int = 1, start_step: int = 0,
        unlabelled_scans: int = 0, unlabelled_ratio: int = 0,
    ):
        self.num_scans, self.batch_size, self.seed = num_scans, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_scans // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{num_scans} training scans cannot fill one step of {batch_size} scans x {world_size} processes"
            )
        if unlabelled_ratio > 0 and unlabelled_scans == 0:
            raise DataError("unlabelled scans per step need an unlabelled split with scans; check its split")
        self.unlabelled_scans, self.unlabelled_ratio = unlabelled_scans, int(unlabelled_ratio)
        self.total_steps = epochs * self.steps_per_epoch
        self.start_step = start_step
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

    def permutation(self, epoch: int) -> np.ndarray:
        """The labelled positions of epoch ``epoch``'s scan slots, in order."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, PERMUTATION_STREAM, epoch]).permutation(self.num_scans)
            self._unlabelled = self._unlabelled_stream(epoch) if self.unlabelled_ratio else None
            self._epoch = epoch
        return self._order

    def _unlabelled_stream(self, epoch: int) -> np.ndarray:
        """The epoch's unlabelled slots: permutations of the unlabelled scans, one after the other."""
        slots = self.steps_per_epoch * self.batch_size * self.world_size * self.unlabelled_ratio
        rng = np.random.default_rng([self.seed, MIX_STREAM, epoch])
        stream = [rng.permutation(self.unlabelled_scans) for _ in range(-(-slots // self.unlabelled_scans))]
        return self.num_scans + np.concatenate(stream)[:slots]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The keys of process ``rank``'s scans at global step ``step``: its labelled ones, then its unlabelled ones."""
        epoch, k = divmod(step, self.steps_per_epoch)
        first = (k * self.world_size + self.rank) * self.batch_size
        keys = [(epoch, int(p)) for p in self.permutation(epoch)[first : first + self.batch_size]]
        if self.unlabelled_ratio:
            n = self.batch_size * self.unlabelled_ratio
            keys += [(epoch, int(p)) for p in self._unlabelled[first * self.unlabelled_ratio :][:n]]
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)


def split_batches(num_scans: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[tuple[int, int]]]:
    """Process ``rank``'s share of a split (positions ``rank, rank + world_size, ...``), in batches; no padding."""
    mine = list(range(rank, num_scans, world_size))
    return [[(0, p) for p in mine[i : i + batch_size]] for i in range(0, len(mine), batch_size)]


def _worker_init(_: int) -> None:
    # loader processes only read and concatenate: one thread each leaves the cores to training
    torch.set_num_threads(1)


def make_loader(dataset: ScanDataset, batch_sampler, workers: int, pin_memory: bool = False,
                collate_fn: Callable[[list[dict]], TrainBatch] = collate) -> DataLoader:
    """A DataLoader over ``batch_sampler``'s batches of keys. Workers are spawned, not forked (a fork
    can inherit pyarrow's thread-pool locks mid-use), and kept between passes (validation)."""
    options = {}
    if workers > 0:
        options = dict(
            multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init
        )
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
        **options
    )
