"""How real the synthetic data is: its figures next to SemanticKITTI's, and pass/fail checks.

Collected while the scans are written (:class:`SequenceStats`), summarised into a JSON-able
dict (:func:`summarize`), checked against the targets of DESIGN.md (:func:`realism_checks`)
and printed as a plain text table (:func:`realism_report`):
- class shares: every class with a real share >= 0.001 within a factor of 3 of SemanticKITTI's;
  the rare classes (bicycle, motorcycle, person, bicyclist, motorcyclist) present in every
  split but at most 0.1 % each; the ten largest classes in close to the real order;
- geometry: points per scan in the sensor's range (100k-130k for the HDL-64E), the share of
  points beyond 30 m (SemanticKITTI: roughly 10-20 %), and ground density (points per m^2)
  falling with range as a spinning sensor's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pvkd.labels import SEMANTICKITTI_CLASSES, SEMANTICKITTI_POINT_SHARE

N_CLASSES = len(SEMANTICKITTI_CLASSES)
RANGE_BAND_EDGES_M = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, np.inf)
GROUND_RINGS_M = ((5.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 50.0))
GROUND_IDS = (9, 10, 11, 12, 17)  # road, parking, sidewalk, other-ground, terrain
RARE_IDS = (2, 3, 6, 7, 8)  # bicycle, motorcycle, person, bicyclist, motorcyclist
RARE_MAX_SHARE = 0.001
SHARE_FACTOR = 3.0
MIN_CHECKED_SHARE = 0.001
BEYOND_30M_TARGET = (0.10, 0.20)
POINTS_PER_SCAN_TARGET = {"hdl64": (100_000, 130_000), "default": (15_000, 25_000)}
RANK_TAU_MIN = 0.6  # Kendall's tau between real and synthetic shares of the ten largest classes


def _band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}m" if np.isfinite(hi) else f">{lo:g}m"


@dataclass
class SequenceStats:
    """Running counts of one sequence (picklable, so worker processes can return it)."""

    split: str
    sequence: str
    points_per_scan: list[int] = field(default_factory=list)
    class_points: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, dtype=np.int64))
    band_points: np.ndarray = field(
        default_factory=lambda: np.zeros(len(RANGE_BAND_EDGES_M) - 1, dtype=np.int64)
    )
    ground_ring_points: np.ndarray = field(
        default_factory=lambda: np.zeros(len(GROUND_RINGS_M), dtype=np.int64)
    )
    rare_instances: dict[int, set[int]] = field(default_factory=lambda: {c: set() for c in RARE_IDS})

    def add_scan(self, points: np.ndarray, train_ids: np.ndarray, instances: np.ndarray) -> None:
        self.points_per_scan.append(len(points))
        self.class_points += np.bincount(train_ids, minlength=N_CLASSES)[:N_CLASSES]
        distance = np.linalg.norm(points[:, :3], axis=1)
        self.band_points += np.histogram(distance, bins=RANGE_BAND_EDGES_M)[0]
        ground = np.isin(train_ids, GROUND_IDS)
        horizontal = np.hypot(points[ground, 0], points[ground, 1])
        for k, (lo, hi) in enumerate(GROUND_RINGS_M):
            self.ground_ring_points[k] += np.count_nonzero((horizontal >= lo) & (horizontal < hi))
        for c in RARE_IDS:
            self.rare_instances[c].update(np.unique(instances[train_ids == c]).tolist())


def summarize(stats: list[SequenceStats], config: dict, seconds: float) -> dict:
    """JSON-able figures of the whole dataset, per split where it matters."""
    per_scan = np.concatenate([s.points_per_scan for s in stats])
    class_points = np.sum([s.class_points for s in stats], axis=0)
    bands = np.sum([s.band_points for s in stats], axis=0)
    rings = np.sum([s.ground_ring_points for s in stats], axis=0)
    ring_area = np.array([np.pi * (hi**2 - lo**2) for lo, hi in GROUND_RINGS_M])
    total = int(class_points.sum())
    splits: dict[str, dict] = {}
    for s in stats:
        split = splits.setdefault(
            s.split,
            {
                "sequences": [],
                "scans": 0,
                "class_points": np.zeros(N_CLASSES, int),
                "rare_instances": {SEMANTICKITTI_CLASSES[c]: 0 for c in RARE_IDS},
            },
        )
        split["sequences"].append(s.sequence)
        split["scans"] += len(s.points_per_scan)
        split["class_points"] = split["class_points"] + s.class_points
        for c in RARE_IDS:
            split["rare_instances"][SEMANTICKITTI_CLASSES[c]] += len(s.rare_instances[c])
    for split in splits.values():
        split["class_points"] = split["class_points"].astype(int).tolist()
    edges = RANGE_BAND_EDGES_M
    return {
        "config": config,
        "scans": int(len(per_scan)),
        "seconds": round(float(seconds), 2),
        "points_per_scan": {
            "mean": float(per_scan.mean()),
            "min": int(per_scan.min()),
            "max": int(per_scan.max()),
        },
        "class_points": class_points.astype(int).tolist(),
        "class_share": (class_points / max(total, 1)).tolist(),
        "range_band_share": {
            _band_name(lo, hi): float(n / max(total, 1)) for lo, hi, n in zip(edges[:-1], edges[1:], bands)
        },
        "share_beyond_30m": float(bands[3:].sum() / max(total, 1)),
        "ground_points_per_m2": {
            _band_name(lo, hi): float(n / a / len(per_scan))
            for (lo, hi), n, a in zip(GROUND_RINGS_M, rings, ring_area)
        },
        "splits": splits,
    }


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    i, j = np.triu_indices(len(a), k=1)
    return float(np.mean(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])))


def top10_rank_tau(class_share: list[float]) -> float:
    real = np.asarray(SEMANTICKITTI_POINT_SHARE)
    top = 1 + np.argsort(-real[1:])[:10]
    return _kendall_tau(real[top], np.asarray(class_share)[top])


def realism_checks(summary: dict) -> dict[str, bool]:
    """Each target of DESIGN.md's "how real is real enough", as a named pass/fail."""
    share = np.asarray(summary["class_share"])
    real = np.asarray(SEMANTICKITTI_POINT_SHARE)
    checked = real >= MIN_CHECKED_SHARE
    ratio = share[checked] / real[checked]
    rare_ok = all(
        split["class_points"][c] > 0
        and split["class_points"][c] <= RARE_MAX_SHARE * sum(split["class_points"])
        for split in summary["splits"].values()
        for c in RARE_IDS
    )
    sensor = summary["config"]["sensor"]
    lo, hi = POINTS_PER_SCAN_TARGET[sensor]
    density = list(summary["ground_points_per_m2"].values())
    return {
        f"classes with real share >= {MIN_CHECKED_SHARE:g} within {SHARE_FACTOR:g}x": bool(
            np.all((ratio >= 1 / SHARE_FACTOR) & (ratio <= SHARE_FACTOR))
        ),
        f"rare classes present in every split, <= {RARE_MAX_SHARE:.1%} each": rare_ok,
        f"top-10 class order: Kendall tau >= {RANK_TAU_MIN}": top10_rank_tau(summary["class_share"])
        >= RANK_TAU_MIN,
        f"points per scan {lo:,}-{hi:,} ({sensor})": lo <= summary["points_per_scan"]["mean"] <= hi,
        f"share beyond 30 m {BEYOND_30M_TARGET[0]:.0%}-{BEYOND_30M_TARGET[1]:.0%}": BEYOND_30M_TARGET[0]
        <= summary["share_beyond_30m"]
        <= BEYOND_30M_TARGET[1],
        "ground density falls with range": bool(np.all(np.diff(density) < 0)),
    }


def realism_report(summary: dict) -> str:
    """Plain text: class shares next to SemanticKITTI's, geometry figures, and the checks."""
    share = summary["class_share"]
    real = SEMANTICKITTI_POINT_SHARE
    lines = [
        f"synthetic dataset: {summary['scans']} scans, sensor {summary['config']['sensor']}, "
        f"generated in {summary['seconds']:.1f} s",
        "",
        f"{'id':>3}  {'class':<14}{'SemanticKITTI':>14}{'synthetic':>12}{'ratio':>8}",
    ]
    for c in sorted(range(N_CLASSES), key=lambda k: -real[k]):
        ratio = share[c] / real[c]
        flag = ""
        if c in RARE_IDS:
            flag = "  rare" if 0 < share[c] <= RARE_MAX_SHARE else "  RARE CLASS OFF"
        elif real[c] >= MIN_CHECKED_SHARE and not 1 / SHARE_FACTOR <= ratio <= SHARE_FACTOR:
            flag = "  OFF"
        lines.append(
            f"{c:>3}  {SEMANTICKITTI_CLASSES[c]:<14}{real[c]:>14.5f}{share[c]:>12.5f}{ratio:>8.2f}{flag}"
        )
    pps = summary["points_per_scan"]
    lines += [
        "",
        f"top-10 class order (Kendall tau vs SemanticKITTI): {top10_rank_tau(share):.2f}",
        f"points per scan: mean {pps['mean']:,.0f}, min {pps['min']:,}, max {pps['max']:,} "
        f"(SemanticKITTI ~120k with the HDL-64E)",
        f"share of points beyond 30 m: {summary['share_beyond_30m']:.1%} (SemanticKITTI roughly 10-20%)",
        "share of points by distance: "
        + ", ".join(f"{k} {v:.1%}" for k, v in summary["range_band_share"].items()),
        "ground points per m^2 by horizontal distance: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["ground_points_per_m2"].items()),
    ]
    for name, split in summary["splits"].items():
        rare = ", ".join(f"{k} {v}" for k, v in split["rare_instances"].items())
        lines.append(
            f"split {name} ({', '.join(split['sequences'])}; {split['scans']} scans) rare instances: {rare}"
        )
    lines += ["", "checks:"]
    lines += [f"  [{'PASS' if ok else 'FAIL'}] {name}" for name, ok in realism_checks(summary).items()]
    return "\n".join(lines)
