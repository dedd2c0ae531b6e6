"""Spinning multi-beam LiDAR model: which rays one revolution fires and how returns degrade.

A scan is a regular grid of rays, ``beams x azimuth_steps``: every beam has a fixed
elevation (the table below), every column an azimuth ``az0 + j * step``. The raycaster
exploits that grid (an object covers a rectangle of it), so the rays are never listed one
by one in Python.

Two profiles:
- ``hdl64``: Velodyne HDL-64E as mounted on the KITTI car: 64 beams from +2.0 to -24.8 deg
  (upper block of 32 at 1/3 deg, lower block of 32 at 1/2 deg, as the data sheet gives),
  2000 columns per revolution (0.18 deg at 10 Hz), 1.73 m above the ground, 120 m range;
  about 120k returns per scan, like SemanticKITTI.
- ``default``: every other beam of the HDL-64E table (32 beams, still dense near the horizon,
  so as many far returns as the real sensor) and 720 columns (0.5 deg): the same geometry at
  a sixth of the points (about 20k), so the whole CPU pipeline stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sensor:
    name: str
    elevations_deg: tuple[float, ...]  # one per beam, any order
    azimuth_steps: int  # columns per revolution
    mount_height_m: float  # sensor origin above the ground under the car
    max_range_m: float
    min_range_m: float  # returns closer than this are dropped (the car body, the sensor housing)
    range_noise_m: float  # standard deviation of the Gaussian range error
    dropout: float  # probability that a return is lost whatever its strength
    # Detection threshold on reflectivity * cos(incidence) / (range / 10 m)^2: weak, grazing,
    # far returns (the road at 60 m) vanish first, as on a real sensor.
    detection_threshold: float

    @property
    def n_beams(self) -> int:
        return len(self.elevations_deg)

    @property
    def azimuth_step_rad(self) -> float:
        return 2.0 * np.pi / self.azimuth_steps

    def beam_elevations(self) -> np.ndarray:
        """Beam elevations in radians, sorted ascending (the raycaster searches in this order)."""
        return np.sort(np.radians(np.asarray(self.elevations_deg, dtype=np.float64)))


def _hdl64_elevations() -> tuple[float, ...]:
    upper = 2.0 - np.arange(32) / 3.0  # +2.0 .. -8.33 deg
    lower = -8.83 - np.arange(32) * 0.5  # -8.83 .. -24.33 deg
    table = np.concatenate([upper, lower])
    table[-1] = -24.8  # the data sheet's lowest beam
    return tuple(float(e) for e in np.round(table, 3))


HDL64 = Sensor(
    name="hdl64",
    elevations_deg=_hdl64_elevations(),
    azimuth_steps=2000,
    mount_height_m=1.73,
    max_range_m=120.0,
    min_range_m=2.5,
    range_noise_m=0.02,
    dropout=0.02,
    detection_threshold=0.00008,
)

DEFAULT = Sensor(
    name="default",
    elevations_deg=_hdl64_elevations()[::2],
    azimuth_steps=720,
    mount_height_m=1.73,
    max_range_m=120.0,
    min_range_m=2.5,
    range_noise_m=0.02,
    dropout=0.02,
    detection_threshold=0.00008,
)

SENSORS: dict[str, Sensor] = {s.name: s for s in (DEFAULT, HDL64)}


def sensor_by_name(name: str) -> Sensor:
    if name not in SENSORS:
        raise ValueError(f"unknown synth sensor {name!r}: expected one of {sorted(SENSORS)}")
    return SENSORS[name]
