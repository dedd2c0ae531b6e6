"""Procedural street worlds: one persistent world per sequence, built from its own seed.

The world is a street running along +x whose centreline bends gently (``y = c(x)``). Places
are given in *street coordinates* ``(s, d)``: ``s`` along the street (= world x) and ``d`` the
lateral offset from the centreline (``y - c(x)``, positive = left of the driving direction).
Each side of the street is cut into lots (urban block, house with a yard, green strip,
parking lot, side street); the lot decides the ground beyond the sidewalk and what stands on
it. Along the street run the road (right-hand traffic, a dashed centre line), parking lanes,
the sidewalk with lamps, sign posts and street trees; behind the lots a far field of terrain,
tree lines and large buildings gives the long-range returns.

The numbers below (widths, heights, rates) come from suburban German streets like those of
KITTI and were then tuned until the point shares a simulated sensor sees match SemanticKITTI's
(see ``realism.py``) for any seed, not just on average. Hence two rules:
- persons and two-wheelers stand in yards or across the street, never close to the ego's
  lane, and one of each kind waits at a kerb beyond the end of the drive: every sequence shows
  them, mostly far away, and none floods a sequence (they stay rare and hard);
- a truck and two buses or trailers are parked at fixed kerb spots beyond both ends of the
  drive rather than drawn at random: each is so big that one more or less would swing its
  class's share by a factor of three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pvkd.synth.raycast import BOX, CYLINDER, ELLIPSOID, Solids

# Raw SemanticKITTI ids used by the generator.
UNLABELED, OUTLIER = 0, 1
CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE = 10, 11, 15, 18, 20
PERSON, BICYCLIST, MOTORCYCLIST = 30, 31, 32
ROAD, PARKING, SIDEWALK, OTHER_GROUND = 40, 44, 48, 49
BUILDING, FENCE, OTHER_STRUCTURE, LANE_MARKING = 50, 51, 52, 60
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN, OTHER_OBJECT = 70, 71, 72, 80, 81, 99
MOVING_CAR, MOVING_BICYCLIST, MOVING_PERSON, MOVING_MOTORCYCLIST = 252, 253, 254, 255

# Material per raw id: (mean reflectivity, spread between instances, penetration depth in m).
# Vegetation is porous: its returns come from inside the canopy, not from its hull.
MATERIALS: dict[int, tuple[float, float, float]] = {
    UNLABELED: (0.3, 0.1, 0.0),
    OUTLIER: (0.1, 0.05, 0.0),
    CAR: (0.3, 0.15, 0.0),
    MOVING_CAR: (0.3, 0.15, 0.0),
    BICYCLE: (0.25, 0.1, 0.0),
    MOTORCYCLE: (0.3, 0.1, 0.0),
    TRUCK: (0.35, 0.1, 0.0),
    OTHER_VEHICLE: (0.35, 0.1, 0.0),
    PERSON: (0.3, 0.08, 0.0),
    MOVING_PERSON: (0.3, 0.08, 0.0),
    BICYCLIST: (0.3, 0.08, 0.0),
    MOVING_BICYCLIST: (0.3, 0.08, 0.0),
    MOTORCYCLIST: (0.3, 0.08, 0.0),
    MOVING_MOTORCYCLIST: (0.3, 0.08, 0.0),
    ROAD: (0.2, 0.03, 0.0),
    PARKING: (0.22, 0.03, 0.0),
    SIDEWALK: (0.3, 0.04, 0.0),
    OTHER_GROUND: (0.27, 0.05, 0.0),
    LANE_MARKING: (0.7, 0.1, 0.0),
    BUILDING: (0.3, 0.1, 0.0),
    FENCE: (0.3, 0.12, 0.0),
    OTHER_STRUCTURE: (0.3, 0.1, 0.0),
    VEGETATION: (0.45, 0.1, 0.35),
    TRUNK: (0.35, 0.05, 0.0),
    TERRAIN: (0.45, 0.08, 0.05),
    POLE: (0.3, 0.08, 0.0),
    TRAFFIC_SIGN: (0.9, 0.08, 0.0),
    OTHER_OBJECT: (0.3, 0.1, 0.0),
}

# Lot types along each side of the street, drawn with weights that slide from town to country
# (``StreetLayout.urbanness``): a drive passes blocks of houses, then open fields, then town again.
URBAN, HOUSE, GREEN, PARKING_LOT, SIDE_STREET = range(5)
_LOT_WEIGHTS_TOWN = np.array([0.50, 0.30, 0.08, 0.05, 0.07])
_LOT_WEIGHTS_COUNTRY = np.array([0.02, 0.10, 0.83, 0.0, 0.05])
_LOT_LENGTH = {
    URBAN: (18.0, 40.0),
    HOUSE: (16.0, 26.0),
    GREEN: (20.0, 50.0),
    PARKING_LOT: (20.0, 35.0),
    SIDE_STREET: (8.0, 12.0),
}
CURB_HEIGHT_M = 0.12
_FAR_FIELD_START_M = 28.0  # beyond the lots (from the road edge): fields, tree lines, big buildings
_EMBANKMENT_M = 0.8  # how much the far field rises above the street
_DRIVEWAY_WIDTH_M, _DRIVEWAY_LENGTH_M = 4.0, 12.0
_VRU_MIN_LATERAL_M = 10.0  # persons and two-wheelers keep this far from the ego's lane
_LANE_MARK_WIDTH_M = 0.12


@dataclass(frozen=True)
class SceneDensity:
    """Multipliers on the default rates of the scene generator (1.0 = the tuned street)."""

    traffic: float = 1.0  # parked and driving vehicles
    vegetation: float = 1.0  # street trees, bushes, hedges, tree lines
    vulnerable_road_users: float = 1.0  # persons, bicycles, motorcycles and their riders
    far_field: float = 1.0  # buildings and tree lines beyond the lots


# One lot along a side of the street.
_LOT_DTYPE = np.dtype(
    [
        ("start", np.float64),
        ("end", np.float64),
        ("type", np.int64),
        ("parking_lane", bool),  # a parking lane runs along the lot
        ("ground", np.int64),  # raw id of the ground behind the sidewalk
        ("depth", np.float64),  # how far (from the sidewalk) that ground reaches
        ("driveway", np.float64),  # s of a paved driveway's centre line, NaN if none
        ("paved_verge", bool),  # the verge before the lot is paved (other-ground), not grass
    ]
)


@dataclass
class StreetLayout:
    """Everything the ground needs: centreline, cross-section widths and the lots of each side."""

    bend_amplitude_m: float
    bend_wavelength_m: float
    bend_phase: float
    urbanness_wavelength_m: float
    urbanness_phase: float
    road_half_width_m: float
    parking_width_m: float
    verge_width_m: tuple[float, float]  # grass strip between curb and sidewalk: right (d < 0), left (d > 0)
    sidewalk_width_m: tuple[float, float]
    relief: np.ndarray  # (K, 4): amplitude, kx, ky, phase of the ground's gentle relief
    lots: tuple[np.ndarray, np.ndarray]  # per side (right, left): rows of _LOT_DTYPE sorted by start

    def centre_y(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.bend_wavelength_m
        return self.bend_amplitude_m * np.sin(k * x + self.bend_phase)

    def heading(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.bend_wavelength_m
        return np.arctan(self.bend_amplitude_m * k * np.cos(k * x + self.bend_phase))

    def urbanness(self, s: float) -> float:
        """1 = town (facades, houses), 0 = country (open fields), varying smoothly along the street."""
        return 0.5 + 0.5 * float(np.sin(2.0 * np.pi * s / self.urbanness_wavelength_m + self.urbanness_phase))

    def height_bounds(self) -> tuple[float, float]:
        amp = float(np.abs(self.relief[:, 0]).sum())
        return -amp - 0.1, amp + CURB_HEIGHT_M + _EMBANKMENT_M + 0.1

    def lot_index(self, side: int, s: np.ndarray | float) -> np.ndarray | int:
        """Index into ``lots[side]`` of the lot holding street position ``s``."""
        starts = self.lots[side]["start"]
        return np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(starts) - 1)

    def _cross_section(self, x: np.ndarray, y: np.ndarray):
        """Per point: lateral offset d, distance u beyond the road edge, its lot, and where that
        lot's parking lane, verge and sidewalk end (in u)."""
        d = y - self.centre_y(x)
        side = d > 0
        lot = np.empty(len(x), dtype=_LOT_DTYPE)
        for k in (0, 1):
            sel = side == k
            lot[sel] = self.lots[k][self.lot_index(k, x[sel])]
        u = np.abs(d) - self.road_half_width_m
        parking_end = np.where(lot["parking_lane"], self.parking_width_m, 0.0)
        verge_end = parking_end + np.where(side, *self.verge_width_m[::-1])
        sidewalk_end = verge_end + np.where(side, *self.sidewalk_width_m[::-1])
        return d, u, lot, parking_end, verge_end, sidewalk_end

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground height: gentle relief + road crown + raised curb side + embankments in the far field."""
        amp, kx, ky, phase = self.relief.T
        z = (amp * np.sin(np.multiply.outer(x, kx) + np.multiply.outer(y, ky) + phase)).sum(axis=-1)
        d, u, lot, parking_end, _, _ = self._cross_section(x, y)
        z -= 0.01 * np.minimum(np.abs(d), self.road_half_width_m)  # crown: the road drains outwards
        raised = (u >= parking_end) & (lot["type"] != SIDE_STREET)
        z += np.where(raised, CURB_HEIGHT_M, 0.0)
        z += np.clip(0.05 * (u - _FAR_FIELD_START_M), 0.0, _EMBANKMENT_M)  # the far field rises
        return z

    def label(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Raw semantic id of the ground at world (x, y)."""
        d, u, lot, parking_end, verge_end, sidewalk_end = self._cross_section(x, y)
        out = np.full(len(x), TERRAIN, dtype=np.uint16)  # the verge and the far field are grass
        in_lot = (u >= sidewalk_end) & (u < sidewalk_end + lot["depth"])
        out[in_lot] = lot["ground"][in_lot]
        driveway = (np.abs(x - lot["driveway"]) < _DRIVEWAY_WIDTH_M / 2) & (
            u < sidewalk_end + _DRIVEWAY_LENGTH_M
        )
        paved_verge = lot["paved_verge"] & (u < verge_end)
        out[(driveway | paved_verge) & (u >= parking_end) & ((u < verge_end) | in_lot)] = OTHER_GROUND
        out[(u >= verge_end) & (u < sidewalk_end)] = SIDEWALK
        out[(u >= 0) & (u < parking_end)] = PARKING
        out[(lot["type"] == SIDE_STREET) & (u >= 0) & (u < _FAR_FIELD_START_M + 20)] = ROAD
        out[u < 0] = ROAD
        dash = (np.abs(d) < _LANE_MARK_WIDTH_M / 2) & ((x % 9.0) < 3.0)  # 3 m dashes, 6 m gaps
        out[dash] = LANE_MARKING
        return out


# One solid in street coordinates; World.solids_at turns the rows into world-frame Solids.
_ROW_DTYPE = np.dtype(
    [
        ("kind", np.int8),
        ("s", np.float64),
        ("d", np.float64),
        ("z_bottom", np.float64),
        ("half", np.float64, 3),
        ("yaw_rel", np.float64),
        ("label", np.uint16),
        ("instance", np.uint16),
        ("reflectivity", np.float32),
        ("transmittance", np.float32),
        ("speed", np.float64),
    ]
)


@dataclass
class _Parts:
    """Solids being placed, as rows of ``_ROW_DTYPE``."""

    rows: list = field(default_factory=list)
    next_instance: int = 1

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def add(self, kind, s, d, z_bottom, half, yaw_rel, label, rng, instance=0, speed=0.0, transmittance=0.0):
        """One solid whose lowest point is ``z_bottom`` above the ground under its centre."""
        mean, spread, _ = MATERIALS[label]
        reflectivity = float(np.clip(rng.normal(mean, spread), 0.03, 1.0))
        self.rows.append(
            (kind, s, d, z_bottom, half, yaw_rel, label, instance, reflectivity, transmittance, speed)
        )


@dataclass
class World:
    """One sequence's persistent world: the street layout (ground) and its solids."""

    layout: StreetLayout
    solids_street: np.ndarray  # rows of _ROW_DTYPE
    ego_s: np.ndarray  # ego position along the street per frame
    ego_d: float

    def solids_at(self, frame: int) -> Solids:
        """World-frame solids at ``frame`` (moving vehicles advance along the street)."""
        r = self.solids_street
        s = r["s"] + r["speed"] * frame
        x, y = s, self.layout.centre_y(s) + r["d"]
        z = self.layout.height(x, y) + r["z_bottom"] + r["half"][:, 2]
        return Solids(
            kind=r["kind"].astype(np.int8),
            center=np.stack([x, y, z], axis=1),
            half=r["half"],
            yaw=r["yaw_rel"] + self.layout.heading(s),
            label=r["label"].astype(np.uint16),
            instance=r["instance"].astype(np.uint16),
            reflectivity=r["reflectivity"].astype(np.float32),
            transmittance=r["transmittance"].astype(np.float32),
        )

    def ego_pose(self, frame: int, mount_height: float) -> tuple[np.ndarray, float]:
        """Sensor position (world xyz) and heading at ``frame``."""
        s = np.array([self.ego_s[frame]])
        y = self.layout.centre_y(s) + self.ego_d
        z = self.layout.height(s, y) + mount_height
        return np.array([s[0], y[0], z[0]]), float(self.layout.heading(s)[0])


def _layout(rng: np.random.Generator, s_min: float, s_max: float) -> StreetLayout:
    layout = StreetLayout(
        bend_amplitude_m=rng.uniform(0.0, 12.0),
        bend_wavelength_m=rng.uniform(350.0, 700.0),
        bend_phase=rng.uniform(0, 2 * np.pi),
        urbanness_wavelength_m=rng.uniform(160.0, 320.0),
        urbanness_phase=rng.uniform(0, 2 * np.pi),
        road_half_width_m=rng.uniform(2.6, 3.4),
        parking_width_m=rng.uniform(2.2, 2.6),
        verge_width_m=tuple(rng.uniform(1.0, 2.5) if rng.random() < 0.6 else 0.0 for _ in range(2)),
        sidewalk_width_m=(rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)),
        relief=np.stack(
            [
                rng.uniform(0.05, 0.15, 3),
                rng.uniform(-1, 1, 3) * 2 * np.pi / rng.uniform(60, 200, 3),
                rng.uniform(-1, 1, 3) * 2 * np.pi / rng.uniform(60, 200, 3),
                rng.uniform(0, 2 * np.pi, 3),
            ],
            axis=1,
        ),
        lots=(),
    )
    lots = []
    for _side in (0, 1):
        rows = []
        s = s_min
        while s < s_max:
            town = layout.urbanness(s)
            weights = town * _LOT_WEIGHTS_TOWN + (1.0 - town) * _LOT_WEIGHTS_COUNTRY
            kind = int(rng.choice(len(weights), p=weights / weights.sum()))
            if rows and rows[-1][2] == SIDE_STREET and kind == SIDE_STREET:
                kind = URBAN
            length = rng.uniform(*_LOT_LENGTH[kind])
            parking_lane = kind in (URBAN, HOUSE) and rng.random() < 0.22
            ground = {URBAN: int(rng.choice([SIDEWALK, TERRAIN])), PARKING_LOT: PARKING}.get(kind, TERRAIN)
            depth = rng.uniform(14.0, 24.0) if kind == PARKING_LOT else 30.0
            # Other-ground comes in many small patches (driveways, a paved verge before some town
            # lots), not a few big ones, so that this small class's share is steady across seeds.
            has_driveway = rng.random() < {URBAN: 0.6, HOUSE: 0.8}.get(kind, 0.0)
            driveway = rng.uniform(s + 2.0, s + length - 2.0) if has_driveway else np.nan
            paved_verge = kind == URBAN and rng.random() < 0.15
            rows.append((s, s + length, kind, parking_lane, ground, depth, driveway, paved_verge))
            s += length
        lots.append(np.array(rows, dtype=_LOT_DTYPE))
    layout.lots = tuple(lots)
    return layout


class _StreetBuilder:
    """Places every solid of one world; each ``_place_*`` method is one feature of the street."""

    def __init__(self, rng, layout: StreetLayout, density: SceneDensity, s_range, drive_range, step):
        self.rng = rng
        self.layout = layout
        self.density = density
        self.s_min, self.s_max = s_range
        self.drive_min, self.drive_max = drive_range
        self.step = step  # ego metres per frame; other road users move in proportion
        self.parts = _Parts()
        # Where the persons and two-wheelers every sequence must show wait, at the left kerb
        # beyond the end of the drive: kept clear of parked cars, trees and posts.
        self.waiting_spots = self.drive_max + 12.0 + 4.0 * rng.permutation(4) + rng.uniform(0.0, 3.0, 4)
        # Where a truck (right kerb) and a bus or trailer (left kerb) stand parked beyond the end of
        # the drive, and another bus or trailer (right kerb) behind its start.
        self.truck_spot = self.drive_max + rng.uniform(8.0, 12.0)
        self.bus_spots = (self.drive_max + rng.uniform(32.0, 36.0), self.drive_min - rng.uniform(16.0, 22.0))

    # -- helpers -------------------------------------------------------------------------------
    def d_at(self, side: int, u: float) -> float:
        """Lateral offset of a place ``u`` metres beyond the road edge on ``side`` (0 right, 1 left)."""
        return (1 if side else -1) * (self.layout.road_half_width_m + u)

    def lot_edges(self, side: int, k: int) -> tuple[float, float, float]:
        """Where the parking lane, verge and sidewalk of lot ``k`` end, in metres beyond the road edge."""
        parking_end = self.layout.parking_width_m if self.layout.lots[side]["parking_lane"][k] else 0.0
        verge_end = parking_end + self.layout.verge_width_m[side]
        return parking_end, verge_end, verge_end + self.layout.sidewalk_width_m[side]

    def lots(self, *types):
        for side in (0, 1):
            for k, lot in enumerate(self.layout.lots[side]):
                if not types or lot["type"] in types:
                    yield side, k, lot["start"], lot["end"]

    def poisson_positions(self, per_100m: float, lo: float, hi: float) -> np.ndarray:
        n = self.rng.poisson(max(per_100m, 0.0) * (hi - lo) / 100.0)
        return np.sort(self.rng.uniform(lo, hi, n))

    def kerb_is_clear(self, side: int, s: float, margin: float = 4.0) -> bool:
        """Nothing else goes within ``margin`` of the kerb spots of the parked vehicles and road users."""
        if side == 0:
            return abs(self.truck_spot - s) > margin + 5.0 and abs(self.bus_spots[1] - s) > margin + 5.5
        return (
            bool(np.all(np.abs(self.waiting_spots - s) > margin))
            and abs(self.bus_spots[0] - s) > margin + 5.5
        )

    def lot_at(self, side: int, s: float) -> int:
        return int(self.layout.lot_index(side, s))

    def box(self, s, d, z_bottom, size, label, yaw=0.0, instance=0, speed=0.0, transmittance=0.0):
        half = (size[0] / 2, size[1] / 2, size[2] / 2)
        self.parts.add(BOX, s, d, z_bottom, half, yaw, label, self.rng, instance, speed, transmittance)

    def cylinder(self, s, d, z_bottom, radius, height, label, instance=0, speed=0.0):
        self.parts.add(
            CYLINDER, s, d, z_bottom, (radius, radius, height / 2), 0.0, label, self.rng, instance, speed
        )

    def foliage(self, s, d, z_bottom, radii, transmittance=0.2):
        """Canopy or bush: an ellipsoid of vegetation that lets some rays through its gaps."""
        self.parts.add(
            ELLIPSOID, s, d, z_bottom, radii, 0.0, VEGETATION, self.rng, transmittance=transmittance
        )

    # -- objects made of several solids -------------------------------------------------------------
    def tree(self, s, d, crown_base):
        """Trunk, crown (its base drawn from ``crown_base``, metres) and often undergrowth."""
        r = self.rng
        base = r.uniform(*crown_base)
        self.cylinder(s, d, -0.2, r.uniform(0.06, 0.12), base / 0.85 + 0.2, TRUNK)
        radius = r.uniform(2.0, 3.8)
        self.foliage(s, d, base, (radius, radius * r.uniform(0.8, 1.2), r.uniform(2.0, 3.5)))
        if r.random() < 0.8:  # undergrowth around the foot of the trunk
            self.bush(s, d, r.uniform(0.5, 1.0))

    def bush(self, s, d, radius):
        self.foliage(
            s, d, -0.3, (radius * self.rng.uniform(1.0, 1.4), radius, radius * 0.8), transmittance=0.15
        )

    def vehicle(self, s, d, label, yaw=0.0, speed=0.0):
        """Car: a body box and a narrower cabin; truck, bus or trailer: a cab and a long box."""
        r, inst = self.rng, self.parts.new_instance()
        along, across = np.cos(yaw), np.sin(yaw)
        if label in (CAR, MOVING_CAR):
            length, width = r.uniform(3.8, 4.9), r.uniform(1.7, 1.95)
            self.box(s, d, 0.25, (length, width, r.uniform(0.7, 0.85)), label, yaw, inst, speed)
            shift = r.uniform(-0.4, 0.1)
            self.box(
                s + shift * along,
                d + shift * across,
                0.95,
                (length * r.uniform(0.45, 0.6), width * 0.9, r.uniform(0.45, 0.6)),
                label,
                yaw,
                inst,
                speed,
            )
            return
        truck = label == TRUCK
        # other-vehicle: SemanticKITTI's buses, trams, caravans and trailers
        length = r.uniform(6.0, 10.0) if truck else r.uniform(7.0, 11.0)
        height = r.uniform(2.8, 3.8) if truck else r.uniform(2.7, 3.3)
        cab = 1.8
        self.box(
            s + (length - cab) / 2 * along,
            d + (length - cab) / 2 * across,
            0.35,
            (cab, 2.3, height * 0.75),
            label,
            yaw,
            inst,
            speed,
        )
        self.box(
            s - cab / 2 * along,
            d - cab / 2 * across,
            0.4,
            (length - cab, 2.45, height - 0.4),
            label,
            yaw,
            inst,
            speed,
        )

    def two_wheeler(self, s, d, label, yaw=0.0, speed=0.0, rider: bool = False):
        """Bicycle or motorcycle (a box, mostly see-through for a bicycle's frame and spokes),
        with a rider cylinder on top when ``rider``."""
        r, inst = self.rng, self.parts.new_instance()
        motor = label in (MOTORCYCLE, MOTORCYCLIST, MOVING_MOTORCYCLIST)
        size = (r.uniform(1.9, 2.2), 0.7, 1.1) if motor else (r.uniform(1.6, 1.8), 0.12, 1.0)
        self.box(s, d, 0.05, size, label, yaw, inst, speed, transmittance=0.3 if motor else 0.7)
        if rider:
            self.cylinder(s, d, 0.75, r.uniform(0.2, 0.26), r.uniform(0.9, 1.05), label, inst, speed)

    def person(self, s, d, speed=0.0):
        r, label = self.rng, MOVING_PERSON if speed else PERSON
        self.cylinder(
            s, d, 0.0, r.uniform(0.18, 0.25), r.uniform(1.55, 1.9), label, self.parts.new_instance(), speed
        )

    # -- features of the street --------------------------------------------------------------------
    def place_lots(self):
        for side, k, start, end in self.lots():
            kind = self.layout.lots[side]["type"][k]
            *_, front = self.lot_edges(side, k)
            if kind == URBAN:
                self._place_urban(side, start, end, front)
            elif kind == HOUSE:
                self._place_house(side, start, end, front)
            elif kind == GREEN:
                self._place_green(side, start, end, front)
            elif kind == PARKING_LOT:
                self._place_parking_lot(side, start, end, front, self.layout.lots[side]["depth"][k])

    def _place_urban(self, side, start, end, front):
        """A row of facades (1-3 heights) near the sidewalk, with bins and the odd planter in front."""
        r = self.rng
        setback = 0.0 if r.random() < 0.15 else r.uniform(3.0, 10.0)
        depth = r.uniform(10.0, 18.0)
        gap = r.uniform(2.0, 9.0)  # driveways and courtyards: views into the far field
        edges = np.linspace(start + gap / 2, end - gap / 2, int(r.integers(1, 4)) + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            self.box(
                (a + b) / 2,
                self.d_at(side, front + setback + depth / 2),
                -1.0,
                (b - a, depth, r.uniform(6.0, 15.0) + 1.0),
                BUILDING,
            )
        if setback > 2.0 and r.random() < 0.8 * self.density.vegetation:  # planted strip before the facade
            self.box(
                (start + end) / 2,
                self.d_at(side, front + 0.8),
                -0.2,
                ((end - start) * r.uniform(0.5, 0.95), 1.2, r.uniform(0.8, 1.6)),
                VEGETATION,
                transmittance=0.1,
            )
        for s in self.poisson_positions(12.0, start, end):  # bins, boxes, benches: other-object
            self.box(s, self.d_at(side, front - 0.3), 0.0, (0.6, 0.6, 1.1), OTHER_OBJECT)

    def _place_house(self, side, start, end, front):
        """A house set back behind a fence or hedge, with trees, bushes, a shed and maybe a car."""
        r, veg = self.rng, self.density.vegetation
        length = end - start
        boundary = r.random()
        fence_h = r.uniform(0.9, 1.9)
        if boundary < 0.45:  # front fence with a gate
            gate = r.uniform(start + 2.0, end - 4.0)
            for a, b in ((start + 0.2, gate), (gate + r.uniform(1.0, 3.0), end - 0.2)):
                if b - a > 0.5:
                    self.box(
                        (a + b) / 2,
                        self.d_at(side, front + 0.2),
                        -0.1,
                        (b - a, r.uniform(0.04, 0.25), fence_h + 0.1),
                        FENCE,
                    )
        elif boundary < 0.95:  # hedge
            self.box(
                (start + end) / 2,
                self.d_at(side, front + 0.5),
                -0.1,
                (length - 1.0, r.uniform(0.6, 1.2), r.uniform(0.9, 1.7)),
                VEGETATION,
                transmittance=0.1,
            )
        setback = r.uniform(10.0, 22.0)
        width, depth = min(r.uniform(9.0, 14.0), length - 3.0), r.uniform(8.0, 12.0)
        house_s = (
            r.uniform(start + width / 2 + 1.0, end - width / 2 - 1.0)
            if length > width + 2.5
            else start + length / 2
        )
        self.box(
            house_s,
            self.d_at(side, front + setback + depth / 2),
            -1.0,
            (width, depth, r.uniform(6.0, 10.0)),
            BUILDING,
        )
        if r.random() < 0.5:  # side fence between this lot and the next
            self.box(
                end - 0.1,
                self.d_at(side, front + setback / 2 + 0.3),
                -0.1,
                (r.uniform(0.04, 0.2), setback - 0.6, fence_h + 0.1),
                FENCE,
            )
        if r.random() < 0.6:  # garden shed or garage wall: other-structure / unlabeled
            label = OTHER_STRUCTURE if r.random() < 0.4 else UNLABELED
            self.box(
                r.uniform(start + 1.5, end - 1.5),
                self.d_at(side, front + setback + depth + 2.0),
                -0.2,
                (r.uniform(2, 4), r.uniform(2, 3), r.uniform(2, 2.8)),
                label,
            )
        for _ in range(r.poisson(1.0 * veg)):
            self.tree(
                r.uniform(start + 1, end - 1), self.d_at(side, front + r.uniform(1.5, setback)), (0.6, 2.5)
            )
        for _ in range(r.poisson(4.0 * veg)):
            self.bush(
                r.uniform(start + 1, end - 1),
                self.d_at(side, front + r.uniform(1.0, setback)),
                r.uniform(0.5, 1.4),
            )
        if r.random() < 0.25 * self.density.traffic:  # car in the driveway
            self.vehicle(
                r.uniform(start + 2, end - 2),
                self.d_at(side, front + r.uniform(2.5, 4.0)),
                CAR,
                yaw=np.pi / 2,
            )

    def _place_green(self, side, start, end, front):
        """Park or field: grass with trees and shrubs, sometimes fenced, and a tree line behind it.

        In the country (low urbanness) the field is open: sparser trees and a tree line far back.
        """
        r, veg = self.rng, max(self.density.vegetation, 0.1)
        field = self.layout.urbanness(start) < 0.35
        if r.random() < 0.45:  # fence or guard rail along the sidewalk
            self.box(
                (start + end) / 2,
                self.d_at(side, front + 0.3),
                -0.1,
                (end - start, 0.08, r.uniform(0.9, 1.6)),
                FENCE,
            )
        spacing = r.uniform(6.0, 11.0) * (2.0 if field else 1.0) / veg
        for s in np.arange(start + r.uniform(2, 6), end, spacing):
            if r.random() < 0.7:
                self.tree(s, self.d_at(side, front + r.uniform(1.5, 4.0)), (0.6, 2.5))
            else:
                self.bush(s, self.d_at(side, front + r.uniform(1.0, 5.0)), r.uniform(0.8, 1.8))
        for s in np.arange(start + r.uniform(1, 4), end, r.uniform(2.5, 4.0) / veg):  # shrubs at the edge
            if not field or r.random() < 0.7:
                self.bush(s, self.d_at(side, front + r.uniform(0.8, 2.0)), r.uniform(0.6, 1.0))
        if r.random() < 0.3:  # a barn, shed or heap nobody labelled
            self.box(
                r.uniform(start, end),
                self.d_at(side, front + r.uniform(8.0, 20.0)),
                -0.2,
                (r.uniform(3, 8), r.uniform(3, 6), r.uniform(2, 4)),
                UNLABELED,
            )
        band = front + (r.uniform(25.0, 55.0) if field else r.uniform(12.0, 30.0))
        for _ in range(r.poisson(0.15 * (end - start) * veg)):  # shrubs scattered over the grass
            self.bush(
                r.uniform(start, end), self.d_at(side, r.uniform(front + 2.0, band)), r.uniform(0.5, 1.0)
            )
        for _ in range(r.poisson(0.1 * (end - start) * veg)):  # low undergrowth: wide, knee-high
            radius = r.uniform(1.0, 2.5)
            self.foliage(
                r.uniform(start, end),
                self.d_at(side, r.uniform(front + 1.0, band)),
                -0.2,
                (radius * 1.3, radius, r.uniform(0.4, 0.6)),
                transmittance=0.1,
            )
        for s in np.arange(start, end, r.uniform(3.0, 6.0)):
            if r.random() < 0.75:
                radius = r.uniform(2.5, 4.5)
                self.foliage(s, self.d_at(side, band + r.uniform(0, 4)), -0.5, (radius, radius, radius * 1.1))

    def _place_parking_lot(self, side, start, end, front, depth):
        """Rows of cars parked side by side, a fence at the back."""
        r = self.rng
        for row_u in (front + 3.0, front + 9.0):
            if row_u + 2.5 > front + depth:
                break
            for s in np.arange(start + 1.5, end - 1.5, 2.6):
                if r.random() < 0.7 * self.density.traffic:
                    self.vehicle(s, self.d_at(side, row_u), CAR, yaw=np.pi / 2 + r.normal(0, 0.05))
        self.box((start + end) / 2, self.d_at(side, front + depth), 0.0, (end - start, 0.06, 1.6), FENCE)

    def place_sidewalk_furniture(self):
        """Street lamps, sign posts, street trees and the odd bus shelter, along both sidewalks."""
        r = self.rng
        for side in (0, 1):
            s = self.s_min + r.uniform(0, 30)
            while s < self.s_max:  # lamps: a pole and its arm over the road
                k = self.lot_at(side, s)
                if self.layout.lots[side]["type"][k] != SIDE_STREET and self.kerb_is_clear(side, s):
                    parking_end, _, _ = self.lot_edges(side, k)
                    height = r.uniform(6.0, 9.0)
                    self.cylinder(
                        s, self.d_at(side, parking_end + 0.4), -0.2, r.uniform(0.07, 0.11), height, POLE
                    )
                    self.box(s, self.d_at(side, parking_end - 0.4), height - 0.3, (0.5, 1.6, 0.15), POLE)
                s += r.uniform(40.0, 70.0)
            for s in self.poisson_positions(1.8, self.s_min, self.s_max):  # sign posts, plates facing traffic
                if not self.kerb_is_clear(side, s):
                    continue
                parking_end, _, _ = self.lot_edges(side, self.lot_at(side, s))
                height = r.uniform(1.9, 2.4)  # plate bottom: German signs hang at 2.0-2.5 m
                d = self.d_at(side, parking_end + 0.3)
                self.cylinder(s, d, -0.2, r.uniform(0.035, 0.06), height + 0.3, POLE)
                plate = r.uniform(0.6, 0.9)
                self.box(s - 0.05, d, height, (0.04, plate, plate), TRAFFIC_SIGN)
            if r.random() < 0.5 * self.density.vegetation:  # an avenue of street trees
                spacing = r.uniform(8.0, 15.0)
                for s in np.arange(self.s_min + r.uniform(0, spacing), self.s_max, spacing):
                    k = self.lot_at(side, s)
                    if self.layout.lots[side]["type"][k] != SIDE_STREET and self.kerb_is_clear(side, s):
                        parking_end, verge_end, _ = self.lot_edges(side, k)
                        # pruned for traffic: crowns clear the road by 2.5-4 m
                        self.tree(
                            s,
                            self.d_at(
                                side,
                                (parking_end + verge_end) / 2
                                if verge_end > parking_end
                                else parking_end + 0.8,
                            ),
                            (2.5, 4.0),
                        )
            if self.layout.verge_width_m[side] > 0 and r.random() < 0.7 * self.density.vegetation:
                s = self.s_min + r.uniform(0, 3)
                while s < self.s_max:  # shrubs planted along the verge
                    k = self.lot_at(side, s)
                    parking_end, verge_end, _ = self.lot_edges(side, k)
                    if self.layout.lots[side]["type"][k] != SIDE_STREET and self.kerb_is_clear(side, s):
                        self.bush(s, self.d_at(side, (parking_end + verge_end) / 2), r.uniform(0.5, 0.9))
                    s += r.uniform(1.5, 4.0)
            for s in self.poisson_positions(0.3, self.s_min, self.s_max):  # bus shelter, kiosk, wall
                *_, front = self.lot_edges(side, self.lot_at(side, s))
                self.box(s, self.d_at(side, front - 0.8), 0.0, (r.uniform(3, 5), 1.4, 2.5), OTHER_STRUCTURE)

    def place_parked_vehicles(self):
        """Cars nose to tail along the parking lanes, with gaps."""
        r, traffic = self.rng, self.density.traffic
        for side, k, start, end in self.lots(URBAN, HOUSE):
            if not self.layout.lots[side]["parking_lane"][k]:
                continue
            s = start + r.uniform(0.5, 3.0)
            while s < end - 2.5:
                if r.random() < 0.5 * traffic and self.kerb_is_clear(side, s, margin=6.0):
                    self.vehicle(s, self.d_at(side, 1.2 + r.normal(0, 0.1)), CAR, yaw=r.normal(0, 0.03))
                    s += r.uniform(5.2, 6.8)
                else:
                    s += r.uniform(4.0, 8.0)

    def place_traffic(self):
        """Driving vehicles: oncoming ones in the left lane, one or two at the ego's speed in its lane."""
        r, traffic, lane = self.rng, self.density.traffic, self.layout.road_half_width_m / 2
        for s in self.poisson_positions(1.0 * traffic, self.s_min, self.s_max):
            self.vehicle(
                s, lane + r.normal(0, 0.15), MOVING_CAR, yaw=np.pi, speed=-self.step * r.uniform(0.7, 1.2)
            )
        for s0 in (self.drive_min + r.uniform(8.0, 16.0), self.drive_min - r.uniform(10.0, 25.0)):
            if r.random() < 0.6 * traffic:
                self.vehicle(s0, -lane + r.normal(0, 0.1), MOVING_CAR, speed=self.step)
        # A truck and two buses or trailers parked at the kerbs, beyond both ends of the drive: each
        # is so big that a random count or place would swing its share by a factor of three between
        # seeds; this way every sequence holds about SemanticKITTI's.
        spots = (
            (TRUCK, 0, self.truck_spot),
            (OTHER_VEHICLE, 1, self.bus_spots[0]),
            (OTHER_VEHICLE, 0, self.bus_spots[1]),
        )
        for label, side, s in spots:
            parking_end, _, _ = self.lot_edges(side, self.lot_at(side, s))
            u = parking_end / 2 if parking_end > 0 else -1.3  # in the parking lane, or on the road's edge
            self.vehicle(s, self.d_at(side, u), label, yaw=r.normal(0, 0.02))

    def place_vulnerable_road_users(self):
        """Persons, two-wheelers and riders: few and rarely close, yet every sequence shows each kind.

        Most stand in yards, the rest on the far (left) sidewalk, all at least _VRU_MIN_LATERAL_M
        from the ego's lane: the ego passes at 1-2 m per frame, and one person 5 m from its lane
        would flood a sequence. Besides, one of each kind waits at the far curb 12-27 m beyond
        the end of the drive (each at its own spot), so every sequence sees it, first from far
        away and never closer than ~12 m; that cyclist rides ahead at a quarter of the ego's
        speed. One motorcyclist rides 22-32 m ahead in the ego's lane, beyond the car in front.
        """
        r, rate = self.rng, self.density.vulnerable_road_users
        if rate <= 0:
            return
        in_yards = {PERSON: (0.15, 0.9), BICYCLE: (0.08, 0.9), MOTORCYCLE: (0.04, 1.0)}  # per 100 m, share
        for kind, (per_100m, yard_share) in in_yards.items():
            for s in self.poisson_positions(per_100m * rate, self.s_min, self.s_max):
                in_yard = r.random() < yard_share
                side = int(r.integers(2)) if in_yard else 1
                _, verge_end, front = self.lot_edges(side, self.lot_at(side, s))
                if in_yard:
                    u = front + r.uniform(1.5, 6.0)
                elif kind == PERSON:
                    u = verge_end + r.uniform(0.4, max(front - verge_end - 0.4, 0.5))
                else:  # parked at the back of the sidewalk
                    u = front - 1.0
                ego_lane = self.layout.road_half_width_m / 2
                u = max(
                    u, _VRU_MIN_LATERAL_M - self.layout.road_half_width_m - (ego_lane if side else -ego_lane)
                )
                self._road_user(kind, s, self.d_at(side, u), walking=r.random() < 0.5)
        for kind, s in zip((PERSON, BICYCLE, MOTORCYCLE, BICYCLIST), self.waiting_spots):
            parking_end, verge_end, _ = self.lot_edges(1, self.lot_at(1, s))
            u = verge_end + 0.8 if kind == BICYCLIST else parking_end + 0.4  # cycle path, or the curb
            self._road_user(kind, s, self.d_at(1, u), walking=False)
        lane = self.layout.road_half_width_m / 2
        self.two_wheeler(  # near the centre line, so that it shows beside the car in front
            self.drive_min + r.uniform(22.0, 32.0),
            -lane + r.uniform(0.5, 0.9),
            MOVING_MOTORCYCLIST,
            speed=self.step,
            rider=True,
        )

    def _road_user(self, kind, s, d, walking: bool):
        r = self.rng
        if kind == PERSON:
            self.person(s, d, speed=0.14 * self.step * walking * r.choice([-1, 1]))
        elif kind in (BICYCLE, MOTORCYCLE):  # parked across the street's direction
            self.two_wheeler(s, d, kind, yaw=np.pi / 2 + r.normal(0, 0.3))
        else:
            self.two_wheeler(s, d, MOVING_BICYCLIST, speed=0.25 * self.step, rider=True)

    def place_far_field(self):
        """Big buildings and tree lines beyond the lots: most long-range returns come from here."""
        r, rate = self.rng, self.density.far_field
        for side in (0, 1):
            for s in self.poisson_positions(4.5 * rate, self.s_min, self.s_max):
                u = r.uniform(_FAR_FIELD_START_M + 4, 90.0)
                self.box(
                    s,
                    self.d_at(side, u),
                    -1.0,
                    (r.uniform(20, 60), r.uniform(12, 25), r.uniform(10, 25)),
                    BUILDING,
                    yaw=r.normal(0, 0.2),
                )
            for s in self.poisson_positions(9.0 * rate * self.density.vegetation, self.s_min, self.s_max):
                u = r.uniform(_FAR_FIELD_START_M + 2, 80.0)
                for ds in np.arange(0, r.uniform(15, 60), 4.0):
                    radius = r.uniform(3.0, 5.0)
                    self.foliage(
                        s + ds, self.d_at(side, u + r.normal(0, 1.5)), -0.5, (radius, radius, radius * 1.2)
                    )
            for s in self.poisson_positions(
                3.0, self.s_min, self.s_max
            ):  # heaps, containers: unlabeled clutter
                self.box(
                    s,
                    self.d_at(side, r.uniform(_FAR_FIELD_START_M, 60.0)),
                    -0.2,
                    (r.uniform(2, 8), r.uniform(2, 6), r.uniform(1, 3)),
                    UNLABELED,
                )


def build_world(
    rng: np.random.Generator,
    n_frames: int,
    frame_step_m: float,
    view_range_m: float,
    density: SceneDensity = SceneDensity(),
) -> World:
    """A persistent street world for a drive of ``n_frames`` frames of ``frame_step_m`` metres."""
    drive_length = frame_step_m * max(n_frames - 1, 0)
    margin = view_range_m + 20.0
    layout = _layout(rng, -margin, drive_length + margin)
    ego_d = -layout.road_half_width_m / 2  # right-hand traffic: the right lane
    builder = _StreetBuilder(
        rng, layout, density, (-margin, drive_length + margin), (0.0, drive_length), frame_step_m
    )
    builder.place_lots()
    builder.place_sidewalk_furniture()
    builder.place_parked_vehicles()
    builder.place_traffic()
    builder.place_vulnerable_road_users()
    builder.place_far_field()
    rows = np.array(builder.parts.rows, dtype=_ROW_DTYPE)
    return World(layout=layout, solids_street=rows, ego_s=np.arange(n_frames) * frame_step_m, ego_d=ego_d)
