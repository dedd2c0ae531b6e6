"""Knobs of the synthetic dataset (the ``synth`` section of params.yaml) and its two profiles.

``SynthConfig()`` is the small CPU default: a 32-beam sensor (~22k points per scan), four
training sequences and one validation sequence of 50 scans, 2 m apart. ``SynthConfig.profile
("hdl64")`` is the SemanticKITTI-scale profile for GPU runs: the 64-beam HDL-64E (~120k points
per scan), KITTI's ten training sequences and sequence 08 for validation, 1 m apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pvkd.synth.scene import SceneDensity
from pvkd.synth.sensor import SENSORS


def _default_sequences() -> dict[str, list[str]]:
    return {"train": ["00", "01", "02", "03"], "val": ["08"]}


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    sensor: str = "default"  # "default" (32 beams, ~22k points) or "hdl64" (64 beams, ~120k points)
    sequences: dict[str, list[str]] = field(default_factory=_default_sequences)  # split -> sequence names
    # splits whose streets get label files; the others are written without (unlabelled scans, as a real
    # dataset's test sequences or sweeps), for distillation on unlabelled scans
    labelled_splits: tuple[str, ...] = ("train", "val")
    scans_per_sequence: int = 50
    frame_step_m: float = 2.0  # ego motion between scans (KITTI: ~1 m at 10 Hz; 2 m spreads few scans wider)
    traffic_density: float = 1.0  # parked and driving vehicles, x the tuned rate
    vegetation_density: float = 1.0  # trees, bushes, hedges, tree lines
    vulnerable_road_user_density: float = 1.0  # persons and two-wheelers (0 removes them)
    far_field_density: float = 1.0  # big buildings and tree lines beyond the lots
    workers: int = 1  # processes, one sequence each; the output does not depend on it

    def __post_init__(self):
        problems = []
        if self.sensor not in SENSORS:
            problems.append(f"sensor {self.sensor!r} is not one of {sorted(SENSORS)}")
        if self.scans_per_sequence < 1:
            problems.append(f"scans_per_sequence must be >= 1, got {self.scans_per_sequence}")
        if not self.frame_step_m > 0:
            problems.append(f"frame_step_m must be > 0, got {self.frame_step_m}")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        for name in (
            "traffic_density",
            "vegetation_density",
            "vulnerable_road_user_density",
            "far_field_density",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        names = [s for seqs in self.sequences.values() for s in seqs]
        if not names:
            problems.append("sequences lists no sequence")
        for name in names:
            if not (isinstance(name, str) and name.isdigit() and len(name) == 2):
                problems.append(f"sequence name {name!r} is not two digits like '08'")
        if len(set(names)) != len(names):
            problems.append(f"a sequence appears in two splits: {names}")
        if problems:
            raise ValueError("invalid synth parameters: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> SynthConfig:
        """Build from a params.yaml section; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown synth parameter(s) {unknown}; known: {sorted(known)}")
        params = dict(params)
        if "sequences" in params:  # YAML may give numbers (8) where names ("08") are meant
            params["sequences"] = {
                split: [f"{int(s):02d}" for s in seqs] for split, seqs in params["sequences"].items()
            }
        if "labelled_splits" in params:
            params["labelled_splits"] = tuple(params["labelled_splits"] or ())
        return cls(**params)

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> SynthConfig:
        """``"default"`` (small, CPU) or ``"hdl64"`` (SemanticKITTI scale), with ``overrides`` applied."""
        if name not in PROFILES:
            raise ValueError(f"unknown synth profile {name!r}: expected one of {sorted(PROFILES)}")
        return replace(PROFILES[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def density(self) -> SceneDensity:
        return SceneDensity(
            traffic=self.traffic_density,
            vegetation=self.vegetation_density,
            vulnerable_road_users=self.vulnerable_road_user_density,
            far_field=self.far_field_density,
        )


PROFILES: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "hdl64": SynthConfig(
        sensor="hdl64",
        sequences={
            "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
            "val": ["08"],
        },
        scans_per_sequence=200,
        frame_step_m=1.0,
        workers=8,
    ),
}
