"""The training recipe: the ``train`` section of params.yaml as typed, validated dataclasses.

params.yaml is the one place the values live: every key must be there (a missing or unknown key
is an error naming it), so there are no defaults here to drift out of step with the file.
A model section may override any of them (``teacher.train``, merged over ``train``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from pvkd.errors import ParamsError

SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("fp16", "bf16", "off")
KEEP = ("best", "last")
LASERMIX_PARTNERS = ("same", "unlabelled")
EMA_BUFFERS = ("own", "average")
EXPORTS = ("ema", "model")
# keys that change how a run is executed but not what it computes: a run may resume across them
RUNTIME_KEYS = ("workers", "threads", "log_every", "val_batch_size", "processes", "device")


@dataclass(frozen=True)
class PasteConfig:
    """Instance paste from the object bank (see :mod:`pvkd.train.mix`)."""

    probability: float  # share of (labelled) scans that get objects pasted
    count: int  # objects drawn per such scan (a class uniformly, then one of its objects)
    ground_classes: tuple[str, ...]  # classes an object may stand on
    radius: float  # metres: ground points this close to the object's new centre set its height


@dataclass(frozen=True)
class PolarMixConfig:
    """PolarMix with a partner scan of the same kind (see :mod:`pvkd.train.mix`)."""

    probability: float
    swap_deg: float  # azimuth sector taken from the partner (PolarMix: 180)
    copies: int  # turned copies of the partner's objects (objects.classes) added; 0 = none


@dataclass(frozen=True)
class LaserMixConfig:
    """LaserMix with a partner scan (see :mod:`pvkd.train.mix`)."""

    probability: float
    bands: tuple[int, ...]  # inclination bands, one count drawn per mix (LaserMix: 2 to 6)
    partner: str  # same (a scan of the same kind) | unlabelled (an unlabelled scan: LaserMix's semi-supervised mix)
    pitch_deg: tuple[float, float]  # the sensor's fixed pitch range the bands divide (also train.semi's mixes)


@dataclass(frozen=True)
class SemiConfig:
    """Mean-teacher semi-supervised training with LaserMix (see :mod:`pvkd.train.semi`); off without a split."""

    split: str | None  # processed split of unlabelled scans; None = off
    ratio: int  # unlabelled scans added to each step per labelled scan (the labelled ones stay the baseline's)
    ema_decay: float  # the mean teacher: an exponential moving average of the model's weights, every step
    ema_buffers: str  # own (its BN statistics from its own train-mode passes, as the anchor) | average
    export: str  # the weights validated, kept and exported: ema | model
    threshold: float  # pseudo-labels of the mean teacher below this confidence are ignored
    mix_weight: float  # weight of the segmentation loss on the mixed scans
    consistency_weight: float  # weight of the MSE between the model's and the teacher's softmax on unlabelled points
    mixed_scans: int  # mixed scans per labelled x unlabelled pair: 2 (both complements) | 1 (one, cheaper)
    bands: tuple[int, ...]  # inclination band counts, one drawn per pair (the pitch range: augment.lasermix)

    @property
    def on(self) -> bool:
        return self.split is not None

    @property
    def splits(self) -> list[str]:
        """The unlabelled split it reads, or none."""
        return [self.split] if self.on else []

    def problems(self) -> list[str]:
        found = []
        if self.ratio < 1:
            found.append("semi.ratio must be >= 1")
        if not 0 <= self.ema_decay < 1:
            found.append("semi.ema_decay must be in [0, 1)")
        if self.ema_buffers not in EMA_BUFFERS:
            found.append(f"semi.ema_buffers must be one of {EMA_BUFFERS}")
        if self.export not in EXPORTS:
            found.append(f"semi.export must be one of {EXPORTS}")
        if not 0 <= self.threshold <= 1 or min(self.mix_weight, self.consistency_weight) < 0:
            found.append("semi: threshold must be in [0, 1] and the weights >= 0")
        if self.mixed_scans not in (1, 2):
            found.append("semi.mixed_scans must be 1 or 2")
        if not self.bands or min(self.bands) < 2:
            found.append("semi.bands must list band counts >= 2")
        return found


@dataclass(frozen=True)
class AugmentConfig:
    """Cylinder3D's training augmentation (see :mod:`pvkd.train.augment`) and the mixing ones."""

    rotation_deg: float  # uniform rotation about z within +-rotation_deg
    flip_x: bool  # negate x with probability 1/2
    flip_y: bool  # negate y with probability 1/2
    scale: tuple[float, float]  # one uniform factor for x and y
    translate_std: float  # N(0, std) metres added to x, y and z (one offset per scan)
    paste: PasteConfig
    polarmix: PolarMixConfig
    lasermix: LaserMixConfig

    @classmethod
    def from_dict(cls, section: dict[str, Any], where: str) -> AugmentConfig:
        values = section_fields(cls, section, where)
        values["scale"] = tuple(float(s) for s in values["scale"])
        paste = section_fields(PasteConfig, values["paste"], f"{where}.paste")
        values["paste"] = PasteConfig(**{**paste, "ground_classes": tuple(paste["ground_classes"])})
        values["polarmix"] = PolarMixConfig(**section_fields(PolarMixConfig, values["polarmix"], f"{where}.polarmix"))
        laser = section_fields(LaserMixConfig, values["lasermix"], f"{where}.lasermix")
        values["lasermix"] = LaserMixConfig(**{**laser, "bands": tuple(int(b) for b in laser["bands"]),
                                               "pitch_deg": tuple(float(v) for v in laser["pitch_deg"])})
        return cls(**values)

    @property
    def mixes(self) -> bool:
        """Whether any mixing augmentation is on."""
        return any(m.probability > 0 for m in (self.paste, self.polarmix, self.lasermix))

    @property
    def needs_bank(self) -> bool:
        """Whether a transform that is on takes objects (the bank's, or its classes for PolarMix's copies)."""
        return self.paste.probability > 0 or (self.polarmix.probability > 0 and self.polarmix.copies > 0)

    def problems(self) -> list[str]:
        found = []
        lo, hi = self.scale
        if not 0 < lo <= hi:
            found.append("augment.scale must be [low, high] with 0 < low <= high")
        for name in ("paste", "polarmix", "lasermix"):
            if not 0 <= getattr(self, name).probability <= 1:
                found.append(f"augment.{name}.probability must be in [0, 1]")
        if self.paste.count < 1 or self.paste.radius <= 0:
            found.append("augment.paste: count must be >= 1 and radius > 0")
        if not 0 < self.polarmix.swap_deg <= 360 or self.polarmix.copies < 0:
            found.append("augment.polarmix: swap_deg must be in (0, 360] and copies >= 0")
        if not self.lasermix.bands or min(self.lasermix.bands) < 1:
            found.append("augment.lasermix.bands must list band counts >= 1")
        low, high = self.lasermix.pitch_deg if len(self.lasermix.pitch_deg) == 2 else (0.0, 0.0)
        if not low < high:
            found.append("augment.lasermix.pitch_deg must be [low, high] with low < high (degrees)")
        if self.lasermix.partner not in LASERMIX_PARTNERS:
            found.append(f"augment.lasermix.partner must be one of {LASERMIX_PARTNERS}, got {self.lasermix.partner!r}")
        return found


@dataclass(frozen=True)
class LossConfig:
    """Weights of the segmentation loss terms (see :mod:`pvkd.train.losses`)."""

    voxel_ce: float
    voxel_lovasz: float
    point_ce: float
    class_weight_power: float  # CE class weights = frequency ** -power (train-split stats); 0 = unweighted


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    epochs: int
    batch_size: int  # scans per step and process: the global batch is batch_size x processes
    lr: float  # peak learning rate
    weight_decay: float  # AdamW, on weight matrices and kernels only (not on biases and norms)
    schedule: str  # onecycle | cosine
    warmup_fraction: float  # share of the steps spent warming up
    grad_clip: float  # max global gradient norm; 0 = no clipping
    amp: str  # CUDA mixed precision: fp16 | bf16 | off (ignored on the CPU)
    loss: LossConfig
    augment: AugmentConfig
    semi: SemiConfig
    val_every: int  # steps between validations (always one at the end); 0 = only at the end
    val_batch_size: int
    checkpoint_every: int  # steps between resumable checkpoints (also at every validation and the end)
    log_every: int  # steps between logged training points
    keep: str  # the checkpoint exported as the model: best (val mIoU) | last
    workers: int  # data-loader processes per training process; 0 = load in the training process
    threads: int  # CPU threads per training process; 0 = the machine's cores / local processes - workers
    device: str  # auto | cpu | cuda
    processes: int | str  # training processes on this machine; auto = one per GPU (1 on the CPU)
    sync_batchnorm: bool  # SyncBatchNorm across processes (CUDA only)

    @classmethod
    def from_dict(cls, section: dict[str, Any], where: str = "train") -> TrainConfig:
        values = section_fields(cls, section, where)
        values["loss"] = LossConfig(**section_fields(LossConfig, section["loss"], f"{where}.loss"))
        values["augment"] = AugmentConfig.from_dict(section["augment"], f"{where}.augment")
        semi = section_fields(SemiConfig, section["semi"], f"{where}.semi")
        values["semi"] = SemiConfig(**{**semi, "bands": tuple(int(b) for b in semi["bands"]),
                                       **{k: float(semi[k]) for k in ("ema_decay", "threshold", "mix_weight",
                                                                       "consistency_weight")}})
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    def validate(self, where: str) -> None:
        problems = []
        for name in ("epochs", "batch_size", "val_batch_size", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("val_every", "checkpoint_every", "workers", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {AMP_MODES}")
        if self.keep not in KEEP:
            problems.append(f"keep must be one of {KEEP}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append("device must be auto, cpu or cuda")
        if self.processes != "auto" and not (isinstance(self.processes, int) and self.processes >= 1):
            problems.append("processes must be auto or an integer >= 1")
        if not 0 <= self.warmup_fraction < 1:
            problems.append("warmup_fraction must be in [0, 1)")
        problems += self.augment.problems()
        if self.semi.on:
            problems += self.semi.problems()
            if self.augment.lasermix.probability > 0 and self.augment.lasermix.partner == "unlabelled":
                problems.append("semi mixes labelled with unlabelled scans itself: set augment.lasermix.partner to "
                                "same (or its probability to 0)")
        if problems:
            raise ParamsError(f"{where}: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The keys that decide what a run computes (a resumed run must agree on all of them)."""
        return {k: v for k, v in self.as_dict().items() if k not in RUNTIME_KEYS}


def describe_augment(augment: dict[str, Any] | None) -> str:
    """A model record's ``train.augment`` in words: the affine recipe and every mixing transform that was on."""
    if not augment:
        return "unknown"
    words = ["affine"]
    for name, label in (("paste", "instance paste"), ("polarmix", "PolarMix"), ("lasermix", "LaserMix")):
        section = augment.get(name) or {}
        if section.get("probability", 0.0) > 0:
            partner = " with unlabelled scans" if section.get("partner") == "unlabelled" else ""
            words.append(f"{label}{partner} p={section['probability']:g}")
    return " + ".join(words)


def section_fields(cls, section: dict[str, Any], where: str) -> dict[str, Any]:
    """``section`` restricted to ``cls``'s fields, every field present, no unknown key."""
    if not isinstance(section, dict):
        raise ParamsError(f"{where} must be a mapping, got {section!r}")
    names = {f.name for f in fields(cls)}
    missing, unknown = sorted(names - set(section)), sorted(set(section) - names)
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing} (copy them from the project's params.yaml)")
    if unknown:
        problems.append(f"unknown key(s) {unknown}")
    if problems:
        raise ParamsError(f"{where}: " + "; ".join(problems))
    return dict(section)


def merge_sections(base: dict, override: dict | None) -> dict:
    """``base`` with ``override``'s keys merged in, recursively (``teacher.train`` over ``train``)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (configs, fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
