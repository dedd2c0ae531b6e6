"""The synthetic LiDAR generator: SemanticKITTI layout, determinism, sensor geometry, occlusion, BEV."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from pvkd.datasets.semantickitti import SemanticKITTI, read_poses
from pvkd.labels import SEMANTICKITTI_LEARNING_MAP, semantickitti_lut
from pvkd.plots import render_bev
from pvkd.synth import SynthConfig, generate, realism_checks, realism_report
from pvkd.synth.raycast import BOX, CYLINDER, ELLIPSOID, Solids, cast_heightfield, cast_solids, ray_directions
from pvkd.synth.sensor import DEFAULT, HDL64
from pvkd.synth.writer import VELO_TO_CAM

SPLITS = {"train": ["00"], "val": ["08"]}
TINY = SynthConfig(seed=3, sequences=SPLITS, scans_per_sequence=4, frame_step_m=2.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "kitti"
    calls = []
    summary = generate(root, TINY, progress=lambda done, total: calls.append((done, total)))
    total = 2 * TINY.scans_per_sequence
    assert calls == [(k, total) for k in range(1, total + 1)]
    return root, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scans(root: Path, split: str = "train"):
    reader = SemanticKITTI(root, splits=SPLITS)
    return [reader.load(record) for record in reader.scans(split)]


# ------------------------------------------------------------------ layout and reader


def test_reader_reads_the_dataset_unchanged(dataset):
    root, _ = dataset
    reader = SemanticKITTI(root, splits=SPLITS)
    for split in SPLITS:
        records = reader.scans(split)
        assert len(records) == TINY.scans_per_sequence
        for record in records:
            points, labels = reader.load(record)  # raises on unknown raw ids or a count mismatch
            assert points.dtype == np.float32 and points.shape[1] == 4
            assert labels.dtype == np.uint8 and labels.shape == (len(points),)
            assert 15_000 < len(points) < 25_000  # the default sensor's ~22k returns
            assert Path(record.points_path).stat().st_size == 16 * len(points)
            assert Path(record.labels_path).stat().st_size == 4 * len(points)
            assert points[:, 3].min() >= 0.0 and points[:, 3].max() <= 1.0
    for seq in ("00", "08"):
        assert (root / "sequences" / seq / "calib.txt").read_text().count("\n") == 5


def test_raw_ids_are_known_and_instances_only_on_things(dataset):
    root, _ = dataset
    lut = semantickitti_lut()
    for label_path in sorted((root / "sequences").rglob("*.label")):
        raw = np.fromfile(label_path, dtype=np.uint32)
        semantic, instance = raw & 0xFFFF, raw >> 16
        assert set(np.unique(semantic).tolist()) <= set(SEMANTICKITTI_LEARNING_MAP)
        train = lut[semantic]
        things = (train >= 1) & (train <= 8)
        assert things.any()
        assert (instance[things] > 0).all(), "every car, person, two-wheeler ... needs an instance id"
        assert (instance[~things] == 0).all(), "stuff and ground carry no instance id"


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(dataset, tmp_path):
    root, _ = dataset
    generate(tmp_path / "again", SynthConfig(**{**TINY.to_dict(), "workers": 2}))  # one process per sequence
    assert _files(tmp_path / "again") == _files(root)
    generate(tmp_path / "other", SynthConfig(**{**TINY.to_dict(), "seed": 4}))
    other = _files(tmp_path / "other")
    original = _files(root)
    assert other.keys() == original.keys()
    assert all(other[k] != original[k] for k in original if k.endswith(".bin"))


def test_poses_follow_the_drive_along_the_street(dataset):
    root, _ = dataset
    for seq in ("00", "08"):
        poses = read_poses(root / "sequences" / seq / "poses.txt")
        assert len(poses) == TINY.scans_per_sequence
        np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)
        # back from KITTI's camera frame to the velodyne frame of the first scan
        velo = np.linalg.inv(VELO_TO_CAM) @ poses @ VELO_TO_CAM
        steps = np.diff(velo[:, :3, 3], axis=0)
        assert (steps[:, 0] > 0.9 * TINY.frame_step_m).all(), "the car drives forward along +x"
        np.testing.assert_allclose(np.linalg.norm(steps[:, :2], axis=1), TINY.frame_step_m, rtol=0.05)
        assert np.abs(poses[:, 2, 3]).max() > 0 and (np.diff(poses[:, 2, 3]) > 0).all()  # camera z = forward


def test_static_world_lines_up_across_scans(dataset):
    """The same world seen from two positions: with the poses, poles and trunks land on themselves."""
    root, _ = dataset
    poses = np.linalg.inv(VELO_TO_CAM) @ read_poses(root / "sequences" / "00" / "poses.txt") @ VELO_TO_CAM
    clouds = []
    for (points, labels), pose in zip(_scans(root)[:2], poses[:2]):
        upright = points[np.isin(labels, [16, 18, 19]), :3].astype(np.float64)  # trunk, pole, traffic-sign
        clouds.append(upright @ pose[:3, :3].T + pose[:3, 3])
    assert min(len(c) for c in clouds) > 30
    nearest = np.sqrt(((clouds[1][:, None, :] - clouds[0][None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert np.median(nearest) < 0.2  # without the poses they would lie a frame step (2 m) apart


def test_remission_depends_on_material(dataset):
    root, _ = dataset
    points = np.concatenate([p for p, _ in _scans(root)])
    labels = np.concatenate([lab for _, lab in _scans(root)])
    remission = points[:, 3]
    assert remission.min() >= 0.0 and remission.max() <= 1.0
    np.testing.assert_allclose(remission * 100, np.round(remission * 100), atol=1e-3)  # KITTI's 0.01 steps
    # grass (terrain) reflects the near infrared far better than asphalt
    assert remission[labels == 17].mean() > remission[labels == 9].mean() + 0.1


def test_generate_replaces_its_own_output_but_not_foreign_folders(dataset, tmp_path):
    root, _ = dataset
    assert not (root.parent / f".{root.name}.partial").exists()
    foreign = tmp_path / "real_dataset"
    (foreign / "sequences").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        generate(foreign, TINY)


# ------------------------------------------------------------------ sensor geometry and content


def test_ground_density_falls_with_range(dataset):
    root, _ = dataset
    near = far = 0
    for points, labels in _scans(root):
        ground = np.isin(labels, [9, 10, 11, 12, 17])
        rho = np.hypot(points[ground, 0], points[ground, 1])
        near += np.count_nonzero((rho >= 5) & (rho < 10))
        far += np.count_nonzero((rho >= 20) & (rho < 30))
    near_density, far_density = near / (np.pi * (10**2 - 5**2)), far / (np.pi * (30**2 - 20**2))
    assert near_density > 5 * far_density


def test_points_are_in_the_sensor_frame(dataset):
    root, _ = dataset
    points, labels = _scans(root)[0]
    road = labels == 9
    rho = np.hypot(points[road, 0], points[road, 1])
    # the road under the car lies a mount height below the sensor
    assert abs(np.median(points[road][(rho > 4) & (rho < 8), 2]) + DEFAULT.mount_height_m) < 0.2


def test_expected_classes_present_and_rare_ones_rare(dataset):
    _, summary = dataset
    share = np.asarray(summary["class_share"])
    for train_id in (1, 9, 11, 13, 14, 15, 17):  # car, road, sidewalk, building, fence, vegetation, terrain
        assert share[train_id] > 0.01
    assert share[[2, 3, 6, 7, 8]].max() <= 0.002
    assert abs(share.sum() - 1.0) < 1e-9


def test_realism_report_lists_classes_and_checks(dataset):
    _, summary = dataset
    report = realism_report(summary)
    assert "vegetation" in report and "beyond 30 m" in report and "checks:" in report
    checks = realism_checks(summary)
    assert checks["ground density falls with range"]
    assert checks["points per scan 15,000-25,000 (default)"]


# ------------------------------------------------------------------ ray casting


def _opaque(kind, centers, halves, labels) -> Solids:
    n = len(centers)
    return Solids(
        kind=np.full(n, kind, dtype=np.int8),
        center=np.asarray(centers, float),
        half=np.asarray(halves, float),
        yaw=np.zeros(n),
        label=np.asarray(labels, np.uint16),
        instance=np.zeros(n, np.uint16),
        reflectivity=np.full(n, 0.5, np.float32),
        transmittance=np.zeros(n, np.float32),
    )


@pytest.mark.parametrize("car_first", [False, True])
def test_box_in_front_of_a_wall_casts_a_shadow(car_first):
    car = _opaque(BOX, [[10.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], [10])
    wall = _opaque(BOX, [[30.0, 0.0, 0.0]], [[0.5, 40.0, 10.0]], [50])
    solids = Solids.concatenate([car, wall] if car_first else [wall, car])
    car_index, wall_index = (0, 1) if car_first else (1, 0)
    elevations = np.radians(np.linspace(-10, 10, 41))
    columns = 3600
    hits = cast_solids(solids, elevations, 0.0, columns, max_range=120.0)
    dirs = ray_directions(elevations, 0.0, columns)
    azimuth = np.arctan2(dirs[:, 1], dirs[:, 0])
    elevation = np.arcsin(dirs[:, 2])
    # rays aimed into the box's silhouette stop at its face (x = 9), never at the wall behind it
    inside = (
        (np.abs(np.tan(azimuth)) * 9.0 < 0.95) & (np.abs(np.tan(elevation)) * 9.0 < 0.95) & (dirs[:, 0] > 0)
    )
    assert inside.sum() > 50
    assert (hits.solid[inside] == car_index).all()
    np.testing.assert_allclose(hits.t[inside] * dirs[inside, 0], 9.0, atol=1e-9)
    # rays just beside the box reach the wall (x = 29.5)
    beside = (dirs[:, 0] > 0) & (np.abs(np.tan(azimuth)) * 9.0 > 1.05) & (np.abs(np.tan(azimuth)) < 1.0)
    assert (hits.solid[beside] == wall_index).all()
    np.testing.assert_allclose(hits.t[beside] * dirs[beside, 0], 29.5, atol=1e-9)
    # rays pointing away from both meet nothing
    assert np.isinf(hits.t[dirs[:, 0] < -0.5]).all()


def test_sphere_and_cylinder_distances_are_exact():
    ball = _opaque(ELLIPSOID, [[0.0, 10.0, 0.0]], [[1.0, 1.0, 1.0]], [70])
    pole = _opaque(CYLINDER, [[-8.0, 0.0, 0.0]], [[0.5, 0.5, 3.0]], [80])
    hits = cast_solids(Solids.concatenate([ball, pole]), np.array([0.0]), 0.0, 4, max_range=120.0)
    # columns: +x, +y, -x, -y
    assert np.isinf(hits.t[0]) and np.isinf(hits.t[3])
    assert hits.solid[1] == 0 and hits.t[1] == pytest.approx(9.0)
    assert hits.solid[2] == 1 and hits.t[2] == pytest.approx(7.5)
    assert hits.cos_incidence[1] == pytest.approx(1.0) and hits.cos_incidence[2] == pytest.approx(1.0)


def test_heightfield_hit_matches_flat_ground():
    elevations = np.radians([-20.0, -10.0, -3.0, 1.0])
    dirs = ray_directions(elevations, 0.0, 8)
    t = cast_heightfield(lambda x, y: np.zeros_like(x), (-0.5, 0.5), np.array([0.0, 0.0, 1.73]), dirs, 120.0)
    expected = 1.73 / np.sin(-elevations)
    np.testing.assert_allclose(t.reshape(4, 8)[:3], np.repeat(expected[:3, None], 8, axis=1), atol=0.01)
    assert np.isinf(t.reshape(4, 8)[3]).all()  # a rising ray never meets the ground


# ------------------------------------------------------------------ config


def test_config_rejects_unknown_keys_and_reads_yaml_numbers():
    with pytest.raises(ValueError, match="unknown synth parameter"):
        SynthConfig.from_dict({"seed": 1, "scan_per_sequence": 3})
    cfg = SynthConfig.from_dict({"sequences": {"train": [0, 1], "val": [8]}, "sensor": "hdl64"})
    assert cfg.sequences == {"train": ["00", "01"], "val": ["08"]}
    with pytest.raises(ValueError, match="sensor"):
        SynthConfig(sensor="vlp16")


def test_hdl64_profile_is_semantickitti_scale():
    cfg = SynthConfig.profile("hdl64")
    assert cfg.sensor == "hdl64" and cfg.sequences["val"] == ["08"] and len(cfg.sequences["train"]) == 10
    assert HDL64.n_beams == 64 and max(HDL64.elevations_deg) == 2.0 and min(HDL64.elevations_deg) == -24.8
    assert SynthConfig.profile("hdl64", scans_per_sequence=5).scans_per_sequence == 5


# ------------------------------------------------------------------ bird's-eye view


def test_bev_png_shows_several_classes(dataset, tmp_path):
    root, _ = dataset
    points, labels = _scans(root)[0]
    path = render_bev(points, labels, tmp_path / "bev.png", title="scan 0")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 400
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 8
    # the road's colour (magenta, blended by anti-aliasing) is drawn
    assert ((image[..., 0] > 0.8) & (image[..., 1] < 0.5) & (image[..., 2] > 0.8)).sum() > 500
    with pytest.raises(ValueError):
        render_bev(points, labels[:-1], tmp_path / "bad.png")


def test_streets_of_unlabelled_splits_get_no_label_files(dataset, tmp_path):
    root, _ = dataset
    cfg = SynthConfig.from_dict({**TINY.to_dict(), "sequences": {"train": ["00"], "unlabelled": ["05"]},
                                 "labelled_splits": ["train"]})
    generate(tmp_path / "kitti", cfg)
    seqs = tmp_path / "kitti" / "sequences"
    assert len(list((seqs / "05" / "velodyne").glob("*.bin"))) == 4 and not (seqs / "05" / "labels").exists()
    assert len(list((seqs / "00" / "labels").glob("*.label"))) == 4
    # the labelled street is the same scan for scan as when every split is labelled (streets draw their own streams)
    assert (seqs / "00" / "labels" / "000001.label").read_bytes() == (
        root / "sequences" / "00" / "labels" / "000001.label").read_bytes()
    reader = SemanticKITTI(tmp_path / "kitti", splits={"train": ["00"], "unlabelled": ["05"]})
    assert all(r.labels_path is None for r in reader.scans("unlabelled"))
