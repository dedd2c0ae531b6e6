"""The teacher cache: the frozen teacher's outputs on every train point, in the order of the shards.

``pvkd cache-logits`` runs the teacher once over every scan of ``cache.splits`` (the labelled
train split, and the unlabelled splits students distil on; no augmentation) and stores, per
point, what distillation needs:

* ``outputs``: the teacher's class distribution of the point (log-probabilities at temperature 1,
  from the point head), encoded by one of :data:`OUTPUT_CODECS`. Any temperature is applied when
  the cache is read (``log_softmax(logp / T)``), so changing ``distill.temperature`` never
  re-runs the teacher.
* ``point_feature`` and ``voxel_feature``: the teacher's point features and the features of the
  teacher voxel holding the point, for the affinity terms, projected to ``feature_dim`` dims and
  stored as unit vectors in int8 (the affinity terms compare cosine similarities only, so the
  length carries nothing). The projection is the uncentred PCA of the teacher's features (top
  eigenvectors of ``X^T X`` over ``feature_scans`` scans): it keeps the inner products as well as
  any ``feature_dim``-dim linear map can.

Everything is per *point*, so one cache serves students of any backbone, width or grid: a
student voxel's teacher distribution is the mean of its points' teacher probabilities, and its
teacher voxel feature the mean of its points' (see :mod:`pvkd.distill.losses`). When the
student's grid is the teacher's, that mean is the teacher's own voxel feature.

Layout (``data/teacher_cache``)::

    manifest.json                 format, teacher and shards hashes, grid, classes, codecs, scans
    projection.pt                 {"point": (F_p, d), "voxel": (F_v, d)} float32
    <split>/shards/00000.parquet  one per shard of the cached splits, same row groups (one per scan), same rows

Each column is a ``fixed_size_binary`` holding one point's encoded record, so a row group reads
back as one contiguous buffer viewed as a numpy array (no per-value decoding). Shards are written
under temporary names and renamed; the manifest is marked complete last. A run that stops half
way resumes, and a run with more ``cache.splits`` computes only the new splits: shards already
written under the same key (teacher, the split's shards, ``cache`` params) are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pvkd.atomic import atomic_path
from pvkd.errors import DataError, ParamsError
from pvkd.shards import ProcessedData, check_hashes, files_hash
from pvkd.train.config import section_fields

CACHE_FORMAT = "pvkd-teacher-cache/2"  # 2: one folder per split, per-split hashes, the teacher's train sequences
OUTPUT_CODECS = ("fp16", "int8", "topk")
# int8 and topk codecs: log-probabilities clipped to [-INT8_FLOOR, 0] in 255 steps (0.05 nats)
INT8_FLOOR = 12.75
# features: unit vectors, each component times FEATURE_SCALE, rounded to int8
FEATURE_SCALE = 127.0
# a probability no codec stores below (keeps log finite; e^-30 is far below any fp16 step)
MIN_LOGP = -30.0
# the cache params that decide its content
CONTENT_KEYS = ("splits", "outputs", "topk", "feature_dim", "feature_scans")
WRITE_OPTIONS = dict(compression="zstd")


@dataclass(frozen=True)
class CacheConfig:
    """The ``cache`` params section."""

    splits: tuple[str, ...]  # processed splits cached: train, and any unlabelled split students distil on
    outputs: str  # fp16 | int8 | topk
    topk: int  # classes kept by topk
    feature_dim: int  # dims of the projected teacher features; 0 = none stored
    feature_scans: int  # train scans the projection is fitted on
    batch_size: int  # scans per teacher forward
    device: str  # auto | cpu | cuda

    @classmethod
    def from_dict(cls, section: dict) -> CacheConfig:
        values = section_fields(cls, section, "cache")
        cfg = cls(**{**values, "splits": tuple(values["splits"] or ())})
        if "train" not in cfg.splits:
            raise ParamsError(f"cache.splits must include train (students distil on it), got {list(cfg.splits)}")
        if cfg.outputs not in OUTPUT_CODECS:
            raise ParamsError(f"cache.outputs must be one of {OUTPUT_CODECS}, got {cfg.outputs!r}")
        if cfg.topk < 1 or cfg.feature_dim < 0 or cfg.batch_size < 1 or cfg.feature_scans < 1:
            raise ParamsError("cache: topk, batch_size and feature_scans must be >= 1, feature_dim >= 0")
        return cfg

    def key(self) -> dict:
        """What decides the cache's content (batch_size and device only decide how fast it is made)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in CONTENT_KEYS}


# ---------------------------------------------------------------------------------------------- codecs
def output_width(codec: str, num_classes: int, topk: int) -> int:
    """Bytes per point of the encoded class distribution."""
    return {"fp16": 2 * num_classes, "int8": num_classes, "topk": 2 * min(topk, num_classes) + 1}[codec]


def feature_width(feature_dim: int) -> int:
    """Bytes per point of the two stored features (point, voxel)."""
    return 2 * feature_dim


def encode_outputs(logp: torch.Tensor, codec: str, topk: int) -> np.ndarray:
    """(N, C) log-probabilities -> (N, bytes) uint8 records.

    fp16: the C log-probabilities. int8: each log-probability clipped to [-12.75, 0] and rounded
    to 255 steps of 0.05 nats. topk: the ids (uint8) of the k likeliest classes, their
    log-probabilities as int8 stores them, and the log of the mean probability of the other
    classes (same code), which decoding gives to each of them. The rest is stored, not derived
    from the kept mass: ``1 - sum(kept)`` of rounded values is off by more than a small tail.
    """
    logp = logp.float().clamp_min(MIN_LOGP).cpu()
    n, c = logp.shape
    if codec == "fp16":
        return logp.half().numpy().view(np.uint8).reshape(n, 2 * c)
    if codec == "int8":
        return _quantize(logp)
    k = min(topk, c)
    values, ids = logp.topk(k, dim=1)
    others = logp.scatter(1, ids, float("-inf"))
    mean_rest = torch.logsumexp(others, dim=1, keepdim=True) - np.log(max(c - k, 1))
    return np.concatenate([ids.to(torch.uint8).numpy(), _quantize(values), _quantize(mean_rest)], 1)


def _quantize(logp: torch.Tensor) -> np.ndarray:
    return torch.round(logp.clamp_min(-INT8_FLOOR) / -INT8_FLOOR * 255).to(torch.uint8).numpy()


def _dequantize(records: torch.Tensor) -> torch.Tensor:
    return records.float() * (-INT8_FLOOR / 255)


def decode_outputs(records: torch.Tensor, codec: str, num_classes: int, topk: int) -> torch.Tensor:
    """(N, bytes) uint8 records (any device) -> (N, C) float32 log-probabilities that sum to one."""
    n = records.shape[0]
    if codec == "fp16":
        logp = records.contiguous().view(torch.float16).reshape(n, num_classes).float()
    elif codec == "int8":
        logp = _dequantize(records)
    else:
        k = min(topk, num_classes)
        ids = records[:, :k].long()
        values = _dequantize(records[:, k : 2 * k])
        logp = _dequantize(records[:, 2 * k :]).expand(n, num_classes).clone()
        logp.scatter_(1, ids, values)
    return torch.log_softmax(logp, dim=1)  # renormalise what rounding and clipping left


def encode_features(features: torch.Tensor, projection: torch.Tensor) -> np.ndarray:
    """(N, F) features -> (N, d) uint8 records: the projection's direction, int8 components."""
    projected = torch.nn.functional.normalize(features.float() @ projection.to(features.device), dim=1)
    return torch.round(projected * FEATURE_SCALE).to(torch.int8).cpu().numpy().view(np.uint8)


def decode_features(records: torch.Tensor) -> torch.Tensor:
    """(N, d) uint8 records -> (N, d) float32 vectors of length about 1."""
    return records.contiguous().view(torch.int8).float() / FEATURE_SCALE


def fit_projection(features: list[torch.Tensor], dim: int) -> torch.Tensor:
    """(F, d) uncentred PCA basis of the rows of ``features``: the top-d eigenvectors of sum X^T X.

    Identity-like (the first ``dim`` axes kept whole) when ``dim`` >= F.
    """
    width = features[0].shape[1]
    if dim >= width:
        return torch.eye(width)
    gram = sum(f.double().T @ f.double() for f in features)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    basis = eigenvectors[:, -dim:].flip(1)
    # a fixed sign per axis: the projection (and the cache) is a function of the features only
    basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)
    return basis.float()


# ---------------------------------------------------------------------------------------------- files
def file_sha256(path: str | Path) -> str:
    return files_hash([Path(path)])


def _write_json_atomic(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _shard_table(columns: dict[str, np.ndarray]) -> pa.Table:
    arrays = {}
    for name, records in columns.items():
        records = np.ascontiguousarray(records, dtype=np.uint8)
        width = records.shape[1]
        arrays[name] = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(records), [None, pa.py_buffer(records.tobytes())]
        )
    return pa.table(arrays)


def read_records(path: Path, row_group: int) -> dict[str, np.ndarray]:
    """One scan's encoded records (one row group of a cache shard): column -> (N, width) uint8."""
    table = pq.ParquetFile(path, memory_map=True).read_row_group(row_group)
    return {name: _column_bytes(table, name) for name in table.column_names}


def _column_bytes(table: pa.Table, name: str) -> np.ndarray:
    """A fixed_size_binary column as an (N, width) uint8 array (one copy of the contiguous buffer)."""
    column = table.column(name).combine_chunks()
    width = column.type.byte_width
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * width,
                         offset=column.offset * width)
    return data.reshape(len(column), width)


# ---------------------------------------------------------------------------------------------- reading
class TeacherCache:
    """Read access to a complete cache, checked against the processed data it must describe."""

    def __init__(self, root: str | Path, data: ProcessedData, teacher_sha256: str | None = None):
        self.root = Path(root)
        path = self.root / "manifest.json"
        rerun = "run `dvc repro cache-logits` (pvkd cache-logits)"
        if not path.is_file():
            raise DataError(f"{path}: no teacher cache here; {rerun}")
        self.manifest = m = json.loads(path.read_text())
        if m.get("format") != CACHE_FORMAT:
            raise DataError(f"{path}: format {m.get('format')!r}, expected {CACHE_FORMAT}; {rerun}")
        if not m.get("complete"):
            raise DataError(f"{path}: the cache is incomplete (an interrupted run); {rerun} to finish it")
        check_hashes(m.get("data_hashes"), data, str(path), rerun)
        if teacher_sha256 is not None and m["teacher_sha256"] != teacher_sha256:
            raise DataError(f"{path}: made by another teacher checkpoint ({m['teacher_sha256'][:12]}, the teacher is "
                            f"{teacher_sha256[:12]}); {rerun}")
        if m["num_classes"] != int(data.meta["num_classes"]):
            raise DataError(f"{path}: {m['num_classes']} classes, the data has {data.meta['num_classes']}; {rerun}")
        self.num_classes, self.codec, self.topk = m["num_classes"], m["outputs"], m["topk"]
        self.feature_dim = m["feature_dim"]
        self.splits = tuple(m.get("splits", ["train"]))
        self.points = {(r["shard"], r["row_group"]): r["num_points"] for r in m["scans"]}

    def read(self, shard: str, row_group: int) -> dict[str, np.ndarray]:
        """The encoded records of one scan (uint8 arrays, one row per point of the shard's row group)."""
        return read_records(self.root / shard, row_group)

    def extras(self) -> Callable[[pd.Series], dict[str, np.ndarray]]:
        """The ``extras`` of :class:`pvkd.train.data.ScanDataset`: a scan's records, checked for its point count."""
        return _CacheExtras(self.root, self.points)

    def decode(self, extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch records -> ``logp`` (N, C) and, when stored, ``point_feature`` / ``voxel_feature`` (N, d)."""
        out = {"logp": decode_outputs(extras["teacher_outputs"], self.codec, self.num_classes, self.topk)}
        if self.feature_dim:
            out["point_feature"] = decode_features(extras["teacher_point_feature"])
            out["voxel_feature"] = decode_features(extras["teacher_voxel_feature"])
        return out


class _CacheExtras:
    """Picklable per-scan reader for data-loader workers."""

    def __init__(self, root: Path, points: dict):
        self.root, self.points = root, points

    def __call__(self, row: pd.Series) -> dict[str, np.ndarray]:
        key = (row["shard"], int(row["row_group"]))
        if self.points.get(key) != int(row["num_points"]):
            raise DataError(f"{self.root}: no cached teacher outputs for {key[0]} scan {key[1]} "
                            "with its point count; run `dvc repro cache-logits`")
        return {f"teacher_{name}": records.copy() for name, records in read_records(self.root / key[0], key[1]).items()}


# ---------------------------------------------------------------------------------------------- writing
def build_manifest(cfg: CacheConfig, teacher_record: dict, teacher_sha256: str, data: ProcessedData) -> dict:
    return {
        "format": CACHE_FORMAT,
        "teacher_sha256": teacher_sha256,
        "teacher_model": teacher_record["model"],
        "teacher_step": teacher_record.get("step"),
        # what the teacher saw: a student distilled from it is not held out on these sequences either
        "teacher_train_sequences": list(teacher_record.get("train_sequences", [])),
        "data_hashes": data.hashes(cfg.splits),
        "grid": teacher_record["grid"],
        "num_classes": int(data.meta["num_classes"]),
        "class_names": list(data.meta["class_names"]),
        **cfg.key(),
        "bytes_per_point": {
            "outputs": output_width(cfg.outputs, int(data.meta["num_classes"]), cfg.topk),
            "features": feature_width(cfg.feature_dim),
        },
        "complete": False,
        "scans": [],
    }


def reusable_splits(previous: dict, current: dict) -> set[str]:
    """The splits whose finished shards in an earlier cache (finished or not) hold what ``current`` would write.

    The same teacher and codecs, and the split's shards unchanged; the list of cached splits may differ, so
    adding an unlabelled split to cache.splits computes that split only."""
    keys = ("format", "teacher_sha256", *(k for k in CONTENT_KEYS if k != "splits"))
    if any(previous.get(k) != current.get(k) for k in keys):
        return set()
    old, new = previous.get("data_hashes", {}), current["data_hashes"]
    return {split for split, digest in new.items() if old.get(split) == digest}


def write_shard(path: Path, columns: list[dict[str, np.ndarray]]) -> None:
    """One cache shard, one row group per scan, written whole under a temporary name."""
    with atomic_path(path) as tmp:
        writer = None
        for scan in columns:
            table = _shard_table(scan)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, **WRITE_OPTIONS)
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
        if writer is not None:
            writer.close()


@torch.no_grad()
def teacher_targets(model, batch, autocast) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher on a batch: point log-probabilities (N, C), point features and its voxel's features per point."""
    with autocast():
        out = model(batch.points)
    logp = torch.log_softmax(out.point_logits.float(), dim=1)
    return logp, out.point_features.float(), out.voxel_features.float()[out.point_to_voxel]


def make_cache(
    teacher_path: str | Path,
    data_root: str | Path,
    out: str | Path,
    cfg: CacheConfig,
    device: torch.device,
    progress: Callable[[int, int], None] = lambda done, total: None,
    after_shard: Callable[[str], None] = lambda shard: None,
) -> dict:
    """Write (or finish) the cache of ``teacher_path`` over the ``cache.splits`` of ``data_root``; returns the manifest.

    ``progress(done, total)`` counts scans; ``after_shard(name)`` is called once a shard is on disk
    (the tests interrupt a run there).
    """
    from pvkd.train.checkpoint import load_model
    from pvkd.train.data import ScanDataset, make_loader

    out, data = Path(out), ProcessedData(data_root)
    present = set(data.index["split"])
    missing = [split for split in cfg.splits if split not in present]
    if missing:
        raise DataError(f"cache.splits {missing}: not in {data.root} (its splits: {sorted(present)}); "
                        "add them to preprocess.splits and data.splits, or remove them from cache.splits")
    model, record = load_model(teacher_path, device)
    check_hashes(record.get("data_hashes"), data, str(teacher_path), "run `dvc repro teacher-train` first")
    manifest = build_manifest(cfg, record, file_sha256(teacher_path), data)
    # every scan, empty ones too: the cache's row groups are the shards' row groups
    dataset = ScanDataset(data.root, cfg.splits, keep_empty=True)
    rows = dataset.rows
    manifest["scans"] = [{"shard": r.shard, "row_group": int(r.row_group), "num_points": int(r.num_points)}
                         for r in rows.itertuples()]
    kept_splits = _reusable(out, manifest)
    done = set(kept_splits["shards"])
    out.mkdir(parents=True, exist_ok=True)
    manifest["done_shards"] = sorted(done)
    _write_json_atomic(manifest, out / "manifest.json")

    use_amp = device.type == "cuda"
    autocast = partial(torch.autocast, "cuda", dtype=torch.bfloat16) if use_amp else nullcontext
    projection = _projection(out, model, dataset, cfg, device, autocast, resume="train" in kept_splits["splits"])

    shards = rows.groupby("shard", sort=True).groups  # shard -> positions in the cached splits
    total, finished = len(rows), int(sum(len(shards[s]) for s in done))
    progress(finished, total)
    for shard, positions in shards.items():
        if shard in done:
            continue
        positions = sorted(positions, key=lambda p: int(rows.iloc[p]["row_group"]))
        scans: list[dict[str, np.ndarray]] = []
        step = cfg.batch_size
        batches = [[(0, p) for p in positions[i : i + step]] for i in range(0, len(positions), step)]
        for batch in make_loader(dataset, batches, workers=0):
            sizes = torch.bincount(batch.points.batch, minlength=batch.points.batch_size).tolist()
            if batch.points.num_points == 0:  # empty scans only: nothing to run the teacher on
                scans.extend(_empty_records(cfg, int(data.meta["num_classes"])) for _ in sizes)
            else:
                logp, point_features, voxel_features = teacher_targets(model, batch.to(device), autocast)
                for lp, pf, vf in zip(logp.split(sizes), point_features.split(sizes), voxel_features.split(sizes)):
                    columns = {"outputs": encode_outputs(lp, cfg.outputs, cfg.topk)}
                    if projection is not None:
                        columns["point_feature"] = encode_features(pf, projection["point"])
                        columns["voxel_feature"] = encode_features(vf, projection["voxel"])
                    scans.append(columns)
            finished += len(sizes)
            progress(finished, total)
        write_shard(out / shard, scans)
        done.add(shard)
        manifest["done_shards"] = sorted(done)
        _write_json_atomic(manifest, out / "manifest.json")
        after_shard(shard)
    # what a student reading one split depends on: its cache shards and the projection (student-config reads it)
    extra = [out / "projection.pt"] if projection is not None else []
    manifest["content_hashes"] = {
        split: files_hash(extra + [out / s for s in sorted(shards) if s.startswith(split + "/")])
        for split in cfg.splits
    }
    manifest["complete"] = True
    _write_json_atomic(manifest, out / "manifest.json")
    return manifest


def _empty_records(cfg: CacheConfig, num_classes: int) -> dict[str, np.ndarray]:
    """The records of a scan without points: every column, no row."""
    columns = {"outputs": np.zeros((0, output_width(cfg.outputs, num_classes, cfg.topk)), np.uint8)}
    if cfg.feature_dim:
        columns["point_feature"] = columns["voxel_feature"] = np.zeros((0, cfg.feature_dim), np.uint8)
    return columns


def _reusable(out: Path, manifest: dict) -> dict[str, set[str]]:
    """``splits``: those an earlier run (interrupted, or with other cache.splits) left reusable, and ``shards``:
    their finished shards. Every other file in ``out`` is removed."""
    path = out / "manifest.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    splits = reusable_splits(previous, manifest) if previous else set()
    shards = {s for s in previous.get("done_shards", []) if s.split("/")[0] in splits and (out / s).is_file()}
    if out.exists():
        for file in (f for f in out.rglob("*") if f.is_file()):
            relative = file.relative_to(out).as_posix()
            if relative not in shards and not (relative == "projection.pt" and "train" in splits):
                file.unlink()
    return {"splits": splits, "shards": shards}


def _projection(out: Path, model, dataset, cfg: CacheConfig, device, autocast, resume: bool) -> dict | None:
    """The feature projections, fitted on ``feature_scans`` evenly spaced train scans (or read back on resume)."""
    from pvkd.train.checkpoint import save_atomic
    from pvkd.train.data import make_loader

    if cfg.feature_dim == 0:
        return None
    path = out / "projection.pt"
    if resume and path.is_file():
        return torch.load(path, weights_only=True)
    # fitted on the train split only, so that caching another split leaves the train records as they are
    candidates = np.flatnonzero((dataset.rows["num_points"].to_numpy() > 0) & (dataset.rows["split"] == "train"))
    count = min(cfg.feature_scans, len(candidates))
    positions = candidates[np.unique(np.linspace(0, len(candidates) - 1, count).round().astype(int))]
    rng = np.random.default_rng(0)
    point_rows, voxel_rows = [], []
    for batch in make_loader(dataset, [[(0, int(p))] for p in positions], workers=0):
        _, point_features, voxel_features = teacher_targets(model, batch.to(device), autocast)
        keep = torch.from_numpy(rng.permutation(len(point_features))[:20_000]).to(device)
        point_rows.append(point_features[keep].cpu())
        voxel_rows.append(voxel_features[keep].cpu())
    projection = {"point": fit_projection(point_rows, cfg.feature_dim),
                  "voxel": fit_projection(voxel_rows, cfg.feature_dim)}
    save_atomic(projection, path)
    return projection
