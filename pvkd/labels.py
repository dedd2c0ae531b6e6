"""Label maps of SemanticKITTI and nuScenes-lidarseg, in one place.

Inside the project every label is an official *training id*: SemanticKITTI 0..19,
nuScenes 0..16, with 0 = ignored everywhere. Raw ids are mapped with a lookup array
(``lut[raw]``), never element by element in Python. A raw id the map does not know maps
to ``UNKNOWN`` so that readers can name it in their error instead of guessing.
"""

from __future__ import annotations

import numpy as np

UNKNOWN = -1

# ---------------------------------------------------------------- SemanticKITTI
# learning_map of semantic-kitti.yaml: raw semantic id -> training id.
SEMANTICKITTI_LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
    40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
    80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
# learning_map_inv: training id -> raw id written into submission files.
SEMANTICKITTI_LEARNING_MAP_INV: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44,
    11: 48, 12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}
SEMANTICKITTI_CLASSES: tuple[str, ...] = (
    "unlabeled", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person",
    "bicyclist", "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building",
    "fence", "vegetation", "trunk", "terrain", "pole", "traffic-sign",
)
# Share of all train-split points per training id (the dataset's `content` table mapped
# through learning_map); the synthetic generator is measured against it.
SEMANTICKITTI_POINT_SHARE: tuple[float, ...] = (
    0.0315, 0.0426, 0.00017, 0.00040, 0.00217, 0.00181, 0.00034, 0.00013, 0.000037,
    0.1988, 0.0147, 0.1439, 0.0039, 0.1327, 0.0724, 0.2668, 0.0060, 0.0781, 0.0029, 0.0006,
)
SEMANTICKITTI_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}

# ---------------------------------------------------------------- nuScenes-lidarseg
# The 16 challenge classes are reached from the 32 fine classes *by name*
# (category.json's `index` field gives the fine id; the annotator guide's table disagrees).
NUSCENES_CLASSES: tuple[str, ...] = (
    "ignore", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation",
)
NUSCENES_NAME_TO_CHALLENGE: dict[str, int] = {
    "noise": 0,
    "animal": 0,
    "human.pedestrian.adult": 7,
    "human.pedestrian.child": 7,
    "human.pedestrian.construction_worker": 7,
    "human.pedestrian.personal_mobility": 0,
    "human.pedestrian.police_officer": 7,
    "human.pedestrian.stroller": 0,
    "human.pedestrian.wheelchair": 0,
    "movable_object.barrier": 1,
    "movable_object.debris": 0,
    "movable_object.pushable_pullable": 0,
    "movable_object.trafficcone": 8,
    "static_object.bicycle_rack": 0,
    "vehicle.bicycle": 2,
    "vehicle.bus.bendy": 3,
    "vehicle.bus.rigid": 3,
    "vehicle.car": 4,
    "vehicle.construction": 5,
    "vehicle.emergency.ambulance": 0,
    "vehicle.emergency.police": 0,
    "vehicle.motorcycle": 6,
    "vehicle.trailer": 9,
    "vehicle.truck": 10,
    "flat.driveable_surface": 11,
    "flat.other": 12,
    "flat.sidewalk": 13,
    "flat.terrain": 14,
    "static.manmade": 15,
    "static.other": 0,
    "static.vegetation": 16,
    "vehicle.ego": 0,
}


def lookup_table(mapping: dict[int, int], size: int | None = None) -> np.ndarray:
    """Dense int16 lookup array ``lut[raw] = train id``; ids absent from ``mapping`` are UNKNOWN."""
    size = size if size is not None else max(mapping) + 1
    lut = np.full(size, UNKNOWN, dtype=np.int16)
    lut[np.fromiter(mapping.keys(), dtype=np.int64)] = np.fromiter(mapping.values(), dtype=np.int16)
    return lut


def semantickitti_lut() -> np.ndarray:
    """Raw semantic id (``label & 0xFFFF``) -> training id, 65536 entries so any uint16 indexes it."""
    return lookup_table(SEMANTICKITTI_LEARNING_MAP, size=1 << 16)


def semantickitti_inverse_lut() -> np.ndarray:
    """Training id -> raw SemanticKITTI id (uint32), for submission files."""
    return lookup_table(SEMANTICKITTI_LEARNING_MAP_INV).astype(np.uint32)


def nuscenes_lut(fine_index_to_name: dict[int, str]) -> np.ndarray:
    """Fine-class index (as in category.json) -> challenge id, built by class name.

    Names outside the known 32 raise, because a silent 0 would hide a new taxonomy.
    """
    unknown = sorted(set(fine_index_to_name.values()) - NUSCENES_NAME_TO_CHALLENGE.keys())
    if unknown:
        raise ValueError(f"nuScenes categories not in the 32-class taxonomy: {unknown}")
    mapping = {idx: NUSCENES_NAME_TO_CHALLENGE[name] for idx, name in fine_index_to_name.items()}
    return lookup_table(mapping, size=256)


def class_names(dataset: str) -> tuple[str, ...]:
    """Training-id class names (index 0 = ignored) of ``dataset``."""
    if dataset == "semantickitti":
        return SEMANTICKITTI_CLASSES
    if dataset == "nuscenes":
        return NUSCENES_CLASSES
    raise ValueError(f"unknown dataset {dataset!r}: expected 'semantickitti' or 'nuscenes'")
