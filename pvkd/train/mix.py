"""The field's scan-mixing augmentations: instance paste, PolarMix and LaserMix.

A scan here is a dict of per-point arrays with the same first dimension: ``xyz``, ``intensity``,
``label`` and the per-point records of the teacher cache (the distill stages' extras). Every
transform builds its output only by taking rows of its input scans (:func:`take`, :func:`concat`)
and moving ``xyz``, so each output point keeps its own row of every array: its label, and the
teacher's cached distribution and features for that very point. That is what lets a student
trained on mixed scans use a cache computed on the unmixed ones.

All three work in the sensor frame, before Cylinder3D's affine augmentation (:mod:`.augment`):

* **instance paste** (the instance augmentation of the published Cylinder3D/PVKD entries):
  objects of the bank (:mod:`pvkd.objects`), a class drawn uniformly, then an object of it,
  each turned about the sensor's z axis (its range and elevation stay plausible), set on the
  ground points near its new place, and dropped if its footprint overlaps any non-ground point.
* **PolarMix** (Xiao et al., NeurIPS 2022): the points of an azimuth sector come from a partner
  scan, then copies of the partner's objects turned about z are added (copy ``j`` of ``k`` by an
  angle drawn in ``[j, j + 1) * 2 pi / (k + 1)``).
* **LaserMix** (Kong et al., CVPR 2023): the inclination range of the two scans cut into
  ``n`` equal bands (``n`` drawn from ``bands``); even bands from the scan, odd from the partner.
"""

from __future__ import annotations

import numpy as np

Scan = dict[str, np.ndarray]


def take(scan: Scan, rows: np.ndarray) -> Scan:
    """The scan restricted to ``rows`` (indices or a mask), every array alike."""
    return {k: v[rows] for k, v in scan.items()}


def concat(*scans: Scan) -> Scan:
    """The points of ``scans`` one after another (the first scan's keys)."""
    return {k: np.concatenate([s[k] for s in scans]) for k in scans[0]}


def moved(scan: Scan, xyz: np.ndarray) -> Scan:
    """The scan with its points at ``xyz``."""
    return {**scan, "xyz": xyz.astype(np.float32)}


def rotate_z(xyz: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return (xyz.astype(np.float64) @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])).astype(np.float32)


def azimuth(xyz: np.ndarray) -> np.ndarray:
    return np.arctan2(xyz[:, 1], xyz[:, 0])


def inclination(xyz: np.ndarray) -> np.ndarray:
    return np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))


def pitch_band(xyz: np.ndarray, count: int, pitch_deg: tuple[float, float]) -> np.ndarray:
    """Each point's inclination band: ``count`` equal bands over the sensor's fixed pitch range ``pitch_deg``
    (degrees, as LaserMix: the bands are the sensor's, not those of the extremes of the points at hand).
    Points above or below the range fall in the first or last band."""
    low, high = np.radians(pitch_deg[0]), np.radians(pitch_deg[1])
    inner = np.linspace(low, high, count + 1)[1:-1]
    return np.searchsorted(inner, inclination(xyz), side="right")


def laser_mix(a: Scan, b: Scan, bands: tuple[int, ...], pitch_deg: tuple[float, float],
              rng: np.random.Generator) -> Scan:
    """LaserMix: even inclination bands from ``a``, odd ones from ``b`` (bands of the fixed ``pitch_deg`` range)."""
    n = int(rng.choice(bands))
    band_a, band_b = pitch_band(a["xyz"], n, pitch_deg), pitch_band(b["xyz"], n, pitch_deg)
    return concat(take(a, band_a % 2 == 0), take(b, band_b % 2 == 1))


def polar_mix(a: Scan, b: Scan, swap_deg: float, copies: int, object_ids: list[int],
              rng: np.random.Generator) -> Scan:
    """PolarMix: ``b``'s points in a ``swap_deg`` azimuth sector replace ``a``'s, plus ``copies``
    turned copies of ``b``'s points of the ``object_ids`` classes."""
    start, width = rng.uniform(-np.pi, np.pi), np.deg2rad(swap_deg)
    angles = [rng.uniform(j, j + 1) * 2 * np.pi / (copies + 1) for j in range(copies)]

    def in_sector(scan: Scan) -> np.ndarray:
        return np.mod(azimuth(scan["xyz"]) - start, 2 * np.pi) < width

    out = [take(a, ~in_sector(a)), take(b, in_sector(b))]
    objects = take(b, np.isin(b["label"], object_ids))
    out += [moved(objects, rotate_z(objects["xyz"], angle)) for angle in angles]
    return concat(*out)


def paste_objects(scan: Scan, objects: list[Scan], ground_ids: list[int], radius: float,
                  rng: np.random.Generator) -> tuple[Scan, int]:
    """Instance paste: each of ``objects`` turned about z by a uniform angle, lifted onto the median
    height of the scan's ground points within ``radius`` metres of its new centre (none: dropped),
    and dropped if its x-y footprint holds a non-ground point of the scan or of an earlier paste.
    Returns the scan with the objects that fit appended, and how many fitted."""
    ground = np.isin(scan["label"], ground_ids)
    ground_xyz = scan["xyz"][ground]
    obstacles = [scan["xyz"][~ground, :2]]
    angles = rng.uniform(-np.pi, np.pi, len(objects))  # one draw per object whether it fits or not
    pasted = []
    for obj, angle in zip(objects, angles):
        xyz = rotate_z(obj["xyz"], angle)
        centre = xyz[:, :2].mean(axis=0)
        near = np.linalg.norm(ground_xyz[:, :2] - centre, axis=1) < radius
        if not near.any():
            continue
        xyz[:, 2] += np.median(ground_xyz[near, 2]) - xyz[:, 2].min()
        lo, hi = xyz[:, :2].min(axis=0), xyz[:, :2].max(axis=0)
        others = np.concatenate(obstacles)
        if ((others >= lo) & (others <= hi)).all(axis=1).any():
            continue
        pasted.append(moved(obj, xyz))
        obstacles.append(xyz[:, :2])
    return concat(scan, *pasted), len(pasted)
