"""One LiDAR revolution in a world: ray casting, then what a real sensor does to the returns.

After the exact nearest hit of every ray (:mod:`pvkd.synth.raycast`) a return is kept only
if it is strong enough: its strength is reflectivity x cos(incidence) / range^2 with a
log-normal fluctuation, so dark, grazing and far surfaces (the road at 50 m) fade out the way
they do on a real sensor, plus a small random dropout. Vegetation returns come from inside
the canopy (a random penetration depth), ranges get Gaussian noise, a few outliers
(multipath ghosts) are added, and the remission is the surface's reflectivity shaded by the
incidence angle, clipped to 0..1 and quantized to 0.01 like KITTI's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pvkd.synth.raycast import Solids, cast_heightfield, cast_solids, ray_directions, rotate_z
from pvkd.synth.scene import MATERIALS, OUTLIER, World
from pvkd.synth.sensor import Sensor

_OUTLIER_RATE = 0.001
_STRENGTH_SPREAD = 0.5  # sigma of the log-normal fluctuation of return strength


def _material_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = max(MATERIALS) + 1
    mean, spread, penetration = np.zeros(size), np.zeros(size), np.zeros(size)
    for raw, (m, s, p) in MATERIALS.items():
        mean[raw], spread[raw], penetration[raw] = m, s, p
    return mean, spread, penetration


_REFLECTIVITY_MEAN, _REFLECTIVITY_SPREAD, _PENETRATION = _material_tables()


def _to_sensor_frame(solids: Solids, origin: np.ndarray, heading: float) -> Solids:
    return replace(solids, center=rotate_z(solids.center - origin, -heading), yaw=solids.yaw - heading)


def simulate_scan(world: World, sensor: Sensor, frame: int, rng: np.random.Generator):
    """Points (N, 4) float32 ``x, y, z, remission`` in the sensor frame and uint32 labels
    (raw semantic id | instance << 16) of ``frame``; also the sensor's world position and heading.
    """
    origin, heading = world.ego_pose(frame, sensor.mount_height_m)
    elevations = sensor.beam_elevations()
    columns = sensor.azimuth_steps
    azimuth0 = rng.uniform(0.0, sensor.azimuth_step_rad)  # revolutions do not start on the same column

    solids = _to_sensor_frame(world.solids_at(frame), origin, heading)
    hits = cast_solids(solids, elevations, azimuth0, columns, sensor.max_range_m, rng)
    dirs = ray_directions(elevations, azimuth0, columns)
    dirs_world = rotate_z(dirs, heading)
    t_ground = cast_heightfield(
        world.layout.height, world.layout.height_bounds(), origin, dirs_world, sensor.max_range_m
    )

    on_ground = t_ground < hits.t
    t = np.where(on_ground, t_ground, hits.t)
    ray = np.flatnonzero((t >= sensor.min_range_m) & (t < sensor.max_range_m))
    t, on_ground = t[ray], on_ground[ray]

    solid = hits.solid[ray]
    label = solids.label[np.where(on_ground, 0, solid)].astype(np.int64)
    instance = solids.instance[np.where(on_ground, 0, solid)].astype(np.uint32)
    reflectivity = solids.reflectivity[np.where(on_ground, 0, solid)].astype(np.float64)
    cos = hits.cos_incidence[ray]
    g = np.flatnonzero(on_ground)
    hit_world = origin + t[g, None] * dirs_world[ray[g]]
    label[g] = world.layout.label(hit_world[:, 0], hit_world[:, 1])
    instance[g] = 0
    reflectivity[g] = rng.normal(_REFLECTIVITY_MEAN[label[g]], _REFLECTIVITY_SPREAD[label[g]])
    cos[g] = -dirs_world[ray[g], 2]  # the relief is gentle: the ground normal is close to +z
    reflectivity = np.clip(reflectivity, 0.02, 1.0)

    strength = reflectivity * np.maximum(cos, 0.02) / (t / 10.0) ** 2
    strength *= rng.lognormal(0.0, _STRENGTH_SPREAD, len(t))
    kept = (strength > sensor.detection_threshold) & (rng.random(len(t)) >= sensor.dropout)
    ray, t, label, instance, reflectivity, cos = (
        a[kept] for a in (ray, t, label, instance, reflectivity, cos)
    )

    porous = _PENETRATION[label] > 0
    t[porous] += rng.exponential(_PENETRATION[label[porous]])
    t += rng.normal(0.0, sensor.range_noise_m, len(t))

    ghosts = np.flatnonzero(rng.random(len(t)) < _OUTLIER_RATE)  # multipath: a return at the wrong range
    t[ghosts] *= rng.uniform(0.3, 1.6, len(ghosts))
    label[ghosts], instance[ghosts] = OUTLIER, 0

    remission = reflectivity * (0.55 + 0.45 * cos) * np.exp(-t / 400.0) + rng.normal(0.0, 0.03, len(t))
    remission = np.round(np.clip(remission, 0.0, 1.0), 2)

    points = np.empty((len(t), 4), dtype=np.float32)
    points[:, :3] = dirs[ray] * t[:, None]
    points[:, 3] = remission
    labels = (instance << 16) | label.astype(np.uint32)
    return points, labels, origin, heading
