"""Exact nearest-hit ray casting of a scan's ray grid against solids and a heightfield ground.

Solids are oriented boxes, vertical cylinders and ellipsoids (yaw about z only), stored as
one struct of arrays (:class:`Solids`). Rays form the sensor's ``beams x columns`` grid, so
the rays that can meet a solid are a rectangle of that grid: its azimuth interval times its
elevation interval, both taken from the solid's bounding box and always conservative. Every
(ray, solid) pair in those rectangles is tested in one vectorized pass per solid kind
(chunked to bound memory), and each ray keeps its nearest hit over all solids and the
ground: occlusion is exact, not a depth-sorted approximation.

Everything here works in the sensor frame (origin at the sensor, z up), except the ground,
which is a function of world coordinates and is cast with world-frame rays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
_PAIRS_PER_CHUNK = 1 << 20  # (ray, solid) pairs tested at once: ~100 MB of temporaries at most
_GROUND_MARCH_STEPS = 12
_GROUND_BRACKET_M = 0.2  # bisect down to this, then interpolate


@dataclass
class Solids:
    """Struct of arrays, one row per solid.

    ``half`` is the box half-extent, ``(r, r, half-height)`` for a cylinder and the three
    radii of an ellipsoid; ``center`` is the solid's centre. ``transmittance`` is the chance
    that a ray passes through untouched (foliage has gaps; 0 for anything solid).
    """

    kind: np.ndarray  # int8
    center: np.ndarray  # (N, 3) float64
    half: np.ndarray  # (N, 3) float64
    yaw: np.ndarray  # (N,) float64, rotation about z
    label: np.ndarray  # (N,) uint16 raw SemanticKITTI semantic id
    instance: np.ndarray  # (N,) uint16, 0 for stuff
    reflectivity: np.ndarray  # (N,) float32 in 0..1
    transmittance: np.ndarray  # (N,) float32 in 0..1

    def __len__(self) -> int:
        return len(self.kind)

    @staticmethod
    def concatenate(parts: list[Solids]) -> Solids:
        return Solids(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Solids)})


def rotate_z(xy: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate the first two columns of ``xy`` (..., >=2) by ``angle`` about z; other columns kept."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 0] = c * xy[..., 0] - s * xy[..., 1]
    out[..., 1] = s * xy[..., 0] + c * xy[..., 1]
    return out


def ray_directions(elevations: np.ndarray, azimuth0: float, columns: int) -> np.ndarray:
    """Unit directions of the ray grid, ray id = beam * columns + column, shape (beams * columns, 3)."""
    az = azimuth0 + np.arange(columns) * (2.0 * np.pi / columns)
    ce, se = np.cos(elevations)[:, None], np.sin(elevations)[:, None]
    dirs = np.stack(np.broadcast_arrays(ce * np.cos(az), ce * np.sin(az), se), axis=-1)
    return dirs.reshape(-1, 3)


@dataclass
class _Footprints:
    solid: np.ndarray  # which solids have a non-empty ray rectangle
    col0: np.ndarray
    n_cols: np.ndarray
    beam0: np.ndarray
    n_beams: np.ndarray


def _footprints(solids: Solids, elevations: np.ndarray, azimuth0: float, columns: int, max_range: float):
    """Ray-grid rectangle (columns x beams) that can meet each solid's bounding box."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None, :, :] * solids.half[:, None, :]
    corners = rotate_z(local, solids.yaw[:, None]) + solids.center[:, None, :]

    # Azimuth: a convex footprint that does not contain the sensor spans less than pi, and
    # its extreme azimuths are at corners; measure them relative to the centre's azimuth.
    az_center = np.arctan2(solids.center[:, 1], solids.center[:, 0])
    rel = np.arctan2(corners[..., 1], corners[..., 0]) - az_center[:, None]
    rel = (rel + np.pi) % (2.0 * np.pi) - np.pi
    az_lo, az_hi = az_center + rel.min(axis=1), az_center + rel.max(axis=1)

    # Elevation: the steepest rays reach the footprint's nearest point, the flattest its farthest.
    sensor_local = rotate_z(-solids.center[:, :2], -solids.yaw)
    gap = np.maximum(np.abs(sensor_local) - solids.half[:, :2], 0.0)
    rho_min = np.hypot(gap[:, 0], gap[:, 1])
    rho_max = np.hypot(corners[..., 0], corners[..., 1]).max(axis=1)
    top = solids.center[:, 2] + solids.half[:, 2]
    bottom = solids.center[:, 2] - solids.half[:, 2]
    el_hi = np.arctan2(top, np.where(top > 0, rho_min, rho_max))
    el_lo = np.arctan2(bottom, np.where(bottom < 0, rho_min, rho_max))

    step = 2.0 * np.pi / columns
    col0 = np.ceil((az_lo - azimuth0) / step).astype(np.int64)
    n_cols = np.floor((az_hi - azimuth0) / step).astype(np.int64) - col0 + 1
    surrounds = rho_min == 0.0  # the sensor stands under it (a canopy over the road): all azimuths
    col0 = np.where(surrounds, 0, col0) % columns
    n_cols = np.clip(np.where(surrounds, columns, n_cols), 0, columns)
    beam0 = np.searchsorted(elevations, el_lo, side="left")
    n_beams = np.searchsorted(elevations, el_hi, side="right") - beam0

    keep = np.flatnonzero((rho_min < max_range) & (n_cols > 0) & (n_beams > 0))
    return _Footprints(keep, col0[keep], n_cols[keep], beam0[keep], n_beams[keep])


def _hit_box(o, d, half):
    """Slab test; o, d, half (P, 3) in the box frame. Returns t (inf = miss) and |cos incidence|."""
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (-half - o) / d, (half - o) / d
    t_in, t_out = np.minimum(t1, t2), np.maximum(t1, t2)
    near_axis = np.argmax(t_in, axis=1)
    t_near = np.take_along_axis(t_in, near_axis[:, None], axis=1)[:, 0]
    t_far = t_out.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    cos = np.abs(np.take_along_axis(d, near_axis[:, None], axis=1)[:, 0])
    return np.where(hit, t_near, np.inf), cos


def _hit_cylinder(o, d, half):
    """Vertical cylinder of radius half[:, 0] and half-height half[:, 2], side and top cap."""
    r, hz = half[:, 0], half[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2.0 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r**2
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2.0 * a)
        z_side = o[:, 2] + t_side * d[:, 2]
        side = (disc >= 0) & (t_side > 0) & (np.abs(z_side) <= hz)
        t_top = (hz - o[:, 2]) / d[:, 2]
    px, py = o[:, 0] + t_top * d[:, 0], o[:, 1] + t_top * d[:, 1]
    top = (o[:, 2] > hz) & (d[:, 2] < 0) & (px**2 + py**2 <= r**2)
    t = np.minimum(np.where(side, t_side, np.inf), np.where(top, t_top, np.inf))
    hx, hy = o[:, 0] + t_side * d[:, 0], o[:, 1] + t_side * d[:, 1]
    cos_side = np.abs(hx * d[:, 0] + hy * d[:, 1]) / np.maximum(r, 1e-9)
    cos = np.where(top & (t == t_top), np.abs(d[:, 2]), cos_side)
    return t, np.nan_to_num(cos, nan=1.0)


def _hit_ellipsoid(o, d, half):
    """Ellipsoid with radii ``half``, centred at the origin of its frame."""
    os_, ds = o / half, d / half
    a = (ds * ds).sum(axis=1)
    b = 2.0 * (os_ * ds).sum(axis=1)
    c = (os_ * os_).sum(axis=1) - 1.0
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2.0 * a)
    hit = (disc >= 0) & (t > 0)
    t = np.where(hit, t, np.inf)
    normal = (o + np.where(hit, t, 0.0)[:, None] * d) / half**2
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return t, np.abs((normal * d).sum(axis=1))


_HIT_FUNCTIONS = {BOX: _hit_box, CYLINDER: _hit_cylinder, ELLIPSOID: _hit_ellipsoid}


@dataclass
class RayHits:
    """Nearest hit of every ray of the grid; ``solid`` = -1 where the nearest hit is not a solid."""

    t: np.ndarray  # (R,) distance along the unit ray, inf = no hit
    solid: np.ndarray  # (R,) int64 index into the solids that were cast
    cos_incidence: np.ndarray  # (R,) |cos| between ray and surface normal


def cast_solids(
    solids: Solids,
    elevations: np.ndarray,
    azimuth0: float,
    columns: int,
    max_range: float,
    rng: np.random.Generator | None = None,
) -> RayHits:
    """Nearest solid hit per ray of the grid (solids in the sensor frame, sensor at the origin).

    With ``rng``, a ray passes through a solid with the solid's transmittance (gaps in foliage)
    and meets whatever lies behind; without it every solid is opaque.
    """
    n_rays = len(elevations) * columns
    best_t = np.full(n_rays, np.inf)
    best_solid = np.full(n_rays, -1, dtype=np.int64)
    best_cos = np.ones(n_rays)
    if len(solids) == 0:
        return RayHits(best_t, best_solid, best_cos)
    dirs = ray_directions(elevations, azimuth0, columns)
    fp = _footprints(solids, elevations, azimuth0, columns, max_range)
    origin_local = rotate_z(-solids.center, -solids.yaw)  # the sensor seen from each solid

    counts = fp.n_cols * fp.n_beams
    chunk_of = np.cumsum(counts) // _PAIRS_PER_CHUNK
    hits = []
    for chunk in np.unique(chunk_of):
        rows = np.flatnonzero(chunk_of == chunk)
        row = np.repeat(rows, counts[rows])
        offsets = np.cumsum(counts[rows]) - counts[rows]
        k = np.arange(len(row)) - np.repeat(offsets, counts[rows])
        n_beams = fp.n_beams[row]
        column = (fp.col0[row] + k // n_beams) % columns
        ray = (fp.beam0[row] + k % n_beams) * columns + column
        solid = fp.solid[row]
        d_local = rotate_z(dirs[ray], -solids.yaw[solid])
        t = np.full(len(ray), np.inf)
        cos = np.ones(len(ray))
        for kind, hit_fn in _HIT_FUNCTIONS.items():
            sel = np.flatnonzero(solids.kind[solid] == kind)
            if len(sel):
                s = solid[sel]
                t[sel], cos[sel] = hit_fn(origin_local[s], d_local[sel], solids.half[s])
        if rng is not None:
            t[rng.random(len(t)) < solids.transmittance[solid]] = np.inf
        found = np.flatnonzero(t < max_range)
        np.minimum.at(best_t, ray[found], t[found])
        hits.append((ray[found], t[found], solid[found], cos[found]))

    for ray, t, solid, cos in hits:
        nearest = t <= best_t[ray]
        best_solid[ray[nearest]] = solid[nearest]
        best_cos[ray[nearest]] = cos[nearest]
    return RayHits(best_t, best_solid, best_cos)


def cast_heightfield(
    height: Callable[[np.ndarray, np.ndarray], np.ndarray],
    height_bounds: tuple[float, float],
    origin: np.ndarray,
    dirs: np.ndarray,
    max_range: float,
) -> np.ndarray:
    """First crossing of world-frame rays from ``origin`` with the surface ``z = height(x, y)``.

    The surface lies between ``height_bounds``, so the crossing of a descending ray lies
    between the ranges where it passes those two heights: march that bracket to find the first
    sample below the surface, bisect until the bracket is short, then interpolate linearly
    (the surface is smooth at that scale; a curb step is found by the bisection).
    Returns t per ray (inf where the ray does not meet the ground within ``max_range``).
    """
    h_min, h_max = height_bounds
    t = np.full(len(dirs), np.inf)
    down = np.flatnonzero(dirs[:, 2] < -1e-6)
    t_start = np.maximum((origin[2] - h_max) / -dirs[down, 2], 0.0)
    t_end = np.minimum((origin[2] - h_min) / -dirs[down, 2], max_range)
    ok = t_start < t_end
    down, t_start, t_end = down[ok], t_start[ok], t_end[ok]
    d = dirs[down]

    def clearance(tt, rows):  # height of the ray above the surface at range tt
        p = origin + tt[:, None] * d[rows]
        return p[:, 2] - height(p[:, 0], p[:, 1])

    lo, hi = t_start.copy(), np.full(len(down), np.nan)
    f_lo, f_hi = clearance(t_start, np.arange(len(down))), np.zeros(len(down))
    for k in range(1, _GROUND_MARCH_STEPS + 1):
        pending = np.flatnonzero(np.isnan(hi) & (f_lo > 0))
        tk = t_start[pending] + (t_end[pending] - t_start[pending]) * (k / _GROUND_MARCH_STEPS)
        f = clearance(tk, pending)
        below = f <= 0
        hi[pending[below]], f_hi[pending[below]] = tk[below], f[below]
        lo[pending[~below]], f_lo[pending[~below]] = tk[~below], f[~below]
    found = np.flatnonzero(~np.isnan(hi))
    lo, hi, f_lo, f_hi = lo[found], hi[found], f_lo[found], f_hi[found]
    active = np.flatnonzero(hi - lo > _GROUND_BRACKET_M)
    while len(active):
        mid = 0.5 * (lo[active] + hi[active])
        f = clearance(mid, found[active])
        up = f > 0
        lo[active[up]], f_lo[active[up]] = mid[up], f[up]
        hi[active[~up]], f_hi[active[~up]] = mid[~up], f[~up]
        active = active[hi[active] - lo[active] > _GROUND_BRACKET_M]
    t[down[found]] = lo + (hi - lo) * f_lo / np.maximum(f_lo - f_hi, 1e-12)
    return t
