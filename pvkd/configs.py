"""Effective configs: for each DVC stage that trains or preprocesses, exactly what can change its output.

DVC re-runs a stage when one of its params or dependencies changes. Listing whole params
sections would re-run too much (``distill.temperature`` re-training the baseline, whose KD
weights are 0), and a static list of files would re-run too much or too little (the object bank
matters only when a transform takes objects; an unlabelled split only to the models that read
it). So a cheap stage writes, per consumer, a JSON of

* the params that consumer reads, with the keys no active term of it reads left out, and
* ``inputs``: the content hashes of the optional inputs it reads (the object bank, the teacher
  cache of the splits it distils on, an unlabelled split's shards),

and the expensive stage depends on that file instead of the sections and optional files. The
file changes exactly when the consumer's result can change (see ``tests/test_dag.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pvkd.errors import DataError, ParamsError
from pvkd.train.config import AugmentConfig, merge_sections

MIXES = ("paste", "polarmix", "lasermix")
# train keys that decide how a run goes, not what it computes. threads, device and processes stay (the float sums
# depend on the thread count: README "Same seed, same model"), and checkpoint_every too (under DDP every
# checkpoint averages the BatchNorm buffers of the processes)
INERT_TRAIN_KEYS = ("workers", "log_every", "val_batch_size")
PUBLISHED = Path("data/published")  # where teacher.source files live (a dependency of teacher-config)
# the distill keys each group of terms reads (the weights themselves always stay)
KL_KEYS = ("temperature", "kl_class_weights")
AFFINITY_KEYS = ("affinity_terms", "sampling", "class_power", "distance_scale_m", "distance_power", "supervoxel")


def write_json(config: dict, out: Path) -> None:
    """Sorted, indented JSON written whole: an unchanged config keeps its bytes, so DVC sees no change."""
    from pvkd.atomic import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- params
def effective_train(section: dict) -> dict:
    """A train section without :data:`INERT_TRAIN_KEYS`, each mixing transform that is off reduced to its
    probability 0, and semi-supervised training that is off to its null split."""
    out = {k: copy.deepcopy(v) for k, v in section.items() if k not in INERT_TRAIN_KEYS}
    augment = out.get("augment") or {}
    for name in MIXES:
        if name in augment and not float(augment[name].get("probability", 0)) > 0:
            # LaserMix's pitch range also places semi-supervised bands: it stays while either is on
            keep = ("pitch_deg",) if name == "lasermix" and (out.get("semi") or {}).get("split") else ()
            augment[name] = {"probability": 0.0, **{k: augment[name][k] for k in keep if k in augment[name]}}
    if "semi" in out and out["semi"].get("split") is None:
        out["semi"] = {"split": None}
    return out


def effective_distill(section: dict) -> dict:
    """A distill section without the keys that no active term reads; ``{}`` for a student with no teacher term.

    KL keys go when both KL weights are 0, the affinity keys when the affinity term is off, the
    unlabelled block when no unlabelled scan is read, and ``mode`` when no teacher is asked at all."""
    from pvkd.distill.objective import DistillConfig

    cfg = DistillConfig.from_dict(section)
    if not cfg.uses_teacher:
        return {}
    out = copy.deepcopy(section)
    if cfg.point_weight == 0 and cfg.voxel_weight == 0:
        for key in KL_KEYS:
            out.pop(key, None)
    if not cfg.uses_affinity:
        for key in AFFINITY_KEYS:
            out.pop(key, None)
        out["affinity_weight"] = 0.0
    if not cfg.uses_unlabelled:
        out.pop("unlabelled", None)
    return out


def preprocess_config(params: dict, split: str) -> dict:
    """What ``preprocess@<split>`` reads: the reader, this split's sequences and kind, the grid, the shard layout."""
    data, pre = params["data"], params["preprocess"]
    splits = data.get("splits") or {}
    return {
        "split": split,
        "dataset": data["dataset"],
        "root": data["root"],
        **({"nuscenes_version": data.get("nuscenes_version")} if data["dataset"] == "nuscenes" else {}),
        "sequences": splits.get(split, "official"),
        "labelled": split in (data.get("labelled_splits") or []),
        "sweeps": split in (data.get("sweep_splits") or []),
        "grid": params["grid"],
        "scans_per_shard": pre["scans_per_shard"],
        "distance_bands": pre["distance_bands"],
    }


# ---------------------------------------------------------------------------------------------- inputs
def bank_input(augment: AugmentConfig, objects: Path) -> dict:
    """The object bank's hash when a transform takes objects, else nothing."""
    from pvkd.distill.cache import file_sha256

    if not augment.needs_bank:
        return {}
    if not objects.is_file():
        raise DataError(f"{objects}: no object bank, and a transform takes objects; run `dvc repro objects`")
    return {"objects": file_sha256(objects)}


def cache_input(cache: Path, splits: list[str]) -> dict:
    """The teacher cache's content hash of each split a student distils on (the projection included)."""
    path = cache / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: no teacher cache; run `dvc repro cache-logits`")
    manifest = json.loads(path.read_text())
    hashes = manifest.get("content_hashes") or {}
    missing = [s for s in splits if s not in hashes]
    if missing or not manifest.get("complete"):
        raise DataError(f"{path}: no complete teacher outputs for split(s) {missing or splits}; add them to "
                        "cache.splits and run `dvc repro cache-logits`")
    return {"cache": {s: hashes[s] for s in splits}}


def split_input(data: Path, splits: list[str]) -> dict:
    """The shards' hash of extra (unlabelled) splits a model reads beside train and val."""
    from pvkd.shards import read_meta

    if not splits:
        return {}
    meta = read_meta(data)["splits"]
    missing = [s for s in splits if s not in meta]
    if missing:
        raise DataError(f"{data}: no split(s) {missing}; add them to preprocess.splits and data.splits")
    return {"splits": {s: meta[s]["shards_hash"] for s in splits}}


# ---------------------------------------------------------------------------------------------- models
def teacher_config(params: dict, data: Path, objects: Path) -> dict:
    """What ``teacher-train`` computes with: its model, the train recipe (teacher.train over train), and inputs
    (the bank when it mixes objects in, the unlabelled split when it trains semi-supervised); for an imported
    teacher (``teacher.source``), the published file's hash and the import options only."""
    from pvkd.distill.cache import file_sha256
    from pvkd.train.config import TrainConfig

    teacher = params.get("teacher") or {}
    if "model" not in teacher or "train" not in params or "source" not in teacher:
        raise ParamsError("params: needs teacher.source, a teacher.model section and a train section")
    if teacher["source"] != "train":
        source = Path(teacher["source"])
        if PUBLISHED not in source.parents:  # DVC sees a change of the file only there (a dep of teacher-config)
            raise ParamsError(f"teacher.source {source}: put the published checkpoint under {PUBLISHED}/ and name it "
                              f"there (e.g. {PUBLISHED}/{source.name}), or set teacher.source: train")
        if not source.is_file():
            raise DataError(f"{source}: not found; download the published checkpoint there (README: \"Start from a "
                            "published teacher\")")
        return {"source": {"path": str(source), "sha256": file_sha256(source)}, "import": teacher["import"]}
    train = merge_sections(params["train"], teacher.get("train"))
    cfg = TrainConfig.from_dict(train, where="train (teacher.train over it)")
    inputs = {**bank_input(cfg.augment, objects), **split_input(data, cfg.semi.splits)}
    return {"model": teacher["model"], "train": effective_train(train), "inputs": inputs}


def student_sections(params: dict, name: str, where: Any = "params.yaml") -> dict:
    """Everything ``pvkd distill --student name`` computes with: its model, its own ``distill:`` / ``train:``
    merged over the sections, and the grid section (a student of the other grid kind takes its grid there)."""
    students = params.get("students") or {}
    if name not in students:
        raise ParamsError(f"{where}: no student {name!r} under students (students: {sorted(students) or 'none'})")
    if name == "teacher":
        raise ParamsError(f"{where}: a student may not be named 'teacher' (models/teacher.pt is the teacher's)")
    student = students[name]
    unknown = sorted(set(student) - {"description", "model", "distill", "train"})
    if "model" not in student or unknown:
        raise ParamsError(f"{where}: students.{name} needs a model section (and may have description, distill, "
                          f"train){'; unknown key(s) ' + str(unknown) if unknown else ''}")
    for section in ("distill", "train"):
        if section not in params:
            raise ParamsError(f"{where}: needs a {section} section")
    return {"student": name, "model": dict(student["model"]),
            "distill": merge_sections(params["distill"], student.get("distill")),
            "train": merge_sections(params["train"], student.get("train")), "grid": params.get("grid")}


def student_unlabelled(dcfg, cfg) -> list[str]:
    """The unlabelled split a student reads: the one it distils on (``distill.unlabelled``), else its own
    semi-supervised one (``train.semi``), else none."""
    return [dcfg.unlabelled.split] if dcfg.uses_unlabelled else cfg.semi.splits


def student_config(params: dict, name: str, data: Path, cache: Path, teacher: Path, objects: Path) -> dict:
    """The student's effective config: its sections without inert keys, and the inputs it reads."""
    from pvkd.distill.cache import file_sha256
    from pvkd.distill.objective import DistillConfig
    from pvkd.train.config import TrainConfig

    sections = student_sections(params, name)
    dcfg = DistillConfig.from_dict(sections["distill"], where=f"distill (students.{name}.distill over it)")
    cfg = TrainConfig.from_dict(sections["train"], where=f"train (students.{name}.train over it)")
    unlabelled = [dcfg.unlabelled.split] if dcfg.uses_unlabelled else []
    inputs = {**bank_input(cfg.augment, objects), **split_input(data, student_unlabelled(dcfg, cfg))}
    if dcfg.uses_teacher and dcfg.mode == "cached":
        inputs.update(cache_input(cache, ["train", *unlabelled]))
    elif dcfg.uses_teacher:
        inputs["teacher"] = file_sha256(teacher)
    return {**sections, "distill": effective_distill(sections["distill"]), "train": effective_train(sections["train"]),
            "inputs": inputs}
