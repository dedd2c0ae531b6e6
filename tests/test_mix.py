"""The object bank and the mixing augmentations: hand-built scans, and every point's rows following it."""

import dataclasses

import numpy as np
import pytest
import torch

from pvkd.errors import DataError, ParamsError
from pvkd.objects import BankConfig, ObjectBank, build_bank, components, scan_objects
from pvkd.shards import ProcessedData
from pvkd.train import mix
from pvkd.train.config import describe_augment
from pvkd.train.data import ScanDataset, collate

from train_fixtures import augment_config, make_processed

ROAD, CAR, PERSON, BUILDING = 9, 1, 6, 13  # SemanticKITTI training ids


def scan(xyz, label, tag: int) -> mix.Scan:
    """A scan whose fake teacher rows name their source: ``tag`` * 100000 + row."""
    xyz = np.asarray(xyz, np.float32)
    n = len(xyz)
    return {"xyz": xyz, "intensity": np.arange(n, dtype=np.float32) / 100, "label": np.asarray(label, np.int64),
            "teacher_records": (tag * 100_000 + np.arange(n))[:, None].repeat(3, 1).astype(np.int32)}


def source(out: mix.Scan) -> tuple[np.ndarray, np.ndarray]:
    """(tag, row) of each output point, read back from its teacher rows."""
    return np.divmod(out["teacher_records"][:, 0], 100_000)


def follows(out: mix.Scan, scans: dict[int, mix.Scan]) -> bool:
    """Every output point carries the label, intensity and teacher row of the source point it names (an empty
    output shows nothing: it does not follow)."""
    tags, rows = source(out)
    if len(tags) == 0:
        return False
    for key in ("label", "intensity", "teacher_records"):
        expected = np.stack([scans[t][key][r] for t, r in zip(tags, rows)])
        if not np.array_equal(out[key], expected):
            return False
    return True


def test_components_link_neighbouring_cells_only():
    a = np.array([[0.1, 0.1, 0.1], [0.6, 0.1, 0.1], [1.1, 0.6, 0.1]])  # a chain of diagonal neighbours
    b = a + [5.0, 0.0, 0.0]  # far away
    c = np.array([[0.1, 2.1, 0.1]])  # one empty cell between it and a
    ids = components(np.concatenate([a, b, c]), link=0.5)
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert components(np.concatenate([a, c]), link=1.0).tolist() == [0, 0, 0, 1]
    assert components(np.concatenate([a, c]), link=2.5).tolist() == [0, 0, 0, 0]
    assert len(components(np.zeros((0, 3)), 0.5)) == 0


def test_scan_objects_split_a_class_into_components_and_drop_small_ones():
    rng = np.random.default_rng(0)
    person_1 = rng.uniform([5, 5, -1.5], [5.4, 5.4, 0.2], (30, 3))
    person_2 = rng.uniform([10.1, -2.9, -1.4], [10.4, -2.6, -1.1], (12, 3))
    stray = np.array([[20.0, 20.0, 0.0]])
    cars = rng.uniform([-8, 0, -1.5], [-4, 2, 0], (50, 3))
    xyz = np.concatenate([person_1, person_2, stray, cars])
    label = np.array([PERSON] * 43 + [CAR] * 50)
    found = scan_objects(xyz, label, [PERSON], BankConfig((), link=0.5, min_points=10))
    assert [(o["label"], o["num_points"]) for o in found] == [(PERSON, 30), (PERSON, 12)]
    assert found[0]["rows"].tolist() == list(range(30)) and found[1]["rows"].tolist() == list(range(30, 42))
    assert found[0]["z_min"] == pytest.approx(person_1[:, 2].min())
    assert found[1]["center_x"] == pytest.approx(person_2[:, 0].mean(), rel=1e-6)


def at_inclinations(degrees, distance):
    angles = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([distance * np.cos(angles), np.zeros(len(angles)), distance * np.sin(angles)], 1)


def test_laser_mix_takes_even_bands_from_the_scan_and_odd_ones_from_the_partner():
    # points at inclinations -20, -10, 0 and +10 degrees; the sensor's range [-25, 15]: two bands split at -5
    pitch = (-25.0, 15.0)
    xyz = at_inclinations([-20.0, -10.0, 0.0, 10.0], 10)
    a, b = scan(xyz, [ROAD, ROAD, CAR, CAR], 1), scan(xyz * 2, [ROAD, PERSON, BUILDING, BUILDING], 2)
    out = mix.laser_mix(a, b, (2,), pitch, np.random.default_rng(0))
    tags, rows = source(out)
    assert list(zip(tags, rows)) == [(1, 0), (1, 1), (2, 2), (2, 3)]
    assert follows(out, {1: a, 2: b})
    assert np.array_equal(out["xyz"], np.concatenate([a["xyz"][:2], b["xyz"][2:]]))
    # four bands (edges -15, -5, 5): a keeps its points of bands 0 and 2, b gives its points of bands 1 and 3
    out4 = mix.laser_mix(a, b, (4,), pitch, np.random.default_rng(0))
    assert list(zip(*source(out4))) == [(1, 0), (1, 2), (2, 1), (2, 3)]
    # the bands are the sensor's, not the points': scans within [-10, -6] lie in band 1 of 4 whatever they span
    narrow = at_inclinations([-10.0, -8.0, -6.0], 10)
    out_narrow = mix.laser_mix(scan(narrow, [ROAD] * 3, 1), scan(narrow, [CAR] * 3, 2), (4,), pitch,
                               np.random.default_rng(0))
    assert list(zip(*source(out_narrow))) == [(2, 0), (2, 1), (2, 2)]


def test_polar_mix_swaps_a_sector_and_adds_turned_copies_of_the_partners_objects():
    rng = np.random.default_rng(3)
    phi = rng.uniform(-np.pi, np.pi, 200)
    ring = np.stack([15 * np.cos(phi), 15 * np.sin(phi), rng.uniform(-1, 1, 200)], 1)
    a = scan(ring, [BUILDING] * 200, 1)
    b_label = np.array([ROAD] * 190 + [PERSON] * 10)
    b = scan(ring[::-1] * [1.1, 1.1, 1.0], b_label, 2)
    out = mix.polar_mix(a, b, swap_deg=90.0, copies=2, object_ids=[PERSON], rng=np.random.default_rng(5))
    assert follows(out, {1: a, 2: b})
    start = np.random.default_rng(5).uniform(-np.pi, np.pi)
    tags, rows = source(out)
    base = len(out["label"]) - 20  # the two copies come last
    sector = np.mod(np.arctan2(out["xyz"][:base, 1], out["xyz"][:base, 0]) - start, 2 * np.pi) < np.pi / 2
    assert np.array_equal(tags[:base] == 2, sector) and 0 < sector.sum() < base
    # the copies: b's person points, turned about z (range and height kept, azimuth moved)
    copies = out["xyz"][base:].reshape(2, 10, 3)
    person = b["xyz"][b_label == PERSON]
    # copy j is turned by an angle drawn in its own interval [j, j + 1) x 2 pi / 3: the draws of the same stream
    draws = np.random.default_rng(5)
    draws.uniform(-np.pi, np.pi)  # the sector's start
    expected = [draws.uniform(j, j + 1) * 2 * np.pi / 3 for j in range(2)]
    for j, copy in enumerate(copies):
        assert np.allclose(np.hypot(copy[:, 0], copy[:, 1]), np.hypot(person[:, 0], person[:, 1]), atol=1e-4)
        assert np.allclose(copy[:, 2], person[:, 2])
        turn = np.mod(np.arctan2(copy[:, 1], copy[:, 0]) - np.arctan2(person[:, 1], person[:, 0]), 2 * np.pi)
        assert np.allclose(turn, expected[j], atol=1e-4)
        assert j * 2 * np.pi / 3 <= turn[0] < (j + 1) * 2 * np.pi / 3
    assert (out["label"][base:] == PERSON).all()


def ground_scan(tag: int, obstacle=None) -> mix.Scan:
    g = np.stack(np.meshgrid(np.arange(-20, 20.5, 1.0), np.arange(-20, 20.5, 1.0)), -1).reshape(-1, 2)
    xyz = np.c_[g, np.full(len(g), -1.7)]
    label = [ROAD] * len(g)
    if obstacle is not None:
        xyz, label = np.r_[xyz, obstacle], label + [BUILDING] * len(obstacle)
    return scan(xyz, label, tag)


def test_paste_sets_objects_on_the_ground_and_keeps_their_rows():
    target = ground_scan(1)
    person = scan(np.array([[8.0, 0.0, 3.0], [8.2, 0.1, 3.9], [8.1, -0.1, 4.6]]), [PERSON] * 3, 2)
    out, fitted = mix.paste_objects(target, [person], [ROAD], 2.0, np.random.default_rng(1))
    assert fitted == 1 and follows(out, {1: target, 2: person})
    pasted = out["xyz"][len(target["label"]):]
    assert pasted[:, 2].min() == pytest.approx(-1.7)  # its lowest point on the ground
    assert np.allclose(np.diff(pasted[:, 2]), np.diff(person["xyz"][:, 2]), atol=1e-5)  # its shape kept
    assert np.allclose(np.hypot(pasted[:, 0], pasted[:, 1]), np.hypot(person["xyz"][:, 0], person["xyz"][:, 1]),
                       atol=1e-4)  # turned about the sensor's z axis


def test_paste_drops_objects_without_ground_or_on_an_obstacle():
    person = scan(np.array([[8.0, 0.0, 0.0], [8.3, 0.3, 1.0]]), [PERSON] * 2, 2)
    far = scan(person["xyz"] * 10, [PERSON] * 2, 3)  # 80 m out: no ground point within 2 m
    angle = np.random.default_rng(4).uniform(-np.pi, np.pi)  # the angle paste will draw for the first object
    footprint = mix.rotate_z(person["xyz"], angle).mean(axis=0)
    blocked = ground_scan(1, obstacle=np.array([[footprint[0], footprint[1], 0.0]]))
    out, fitted = mix.paste_objects(blocked, [person], [ROAD], 2.0, np.random.default_rng(4))
    assert fitted == 0 and len(out["label"]) == len(blocked["label"])
    _, fitted = mix.paste_objects(ground_scan(1), [far], [ROAD], 2.0, np.random.default_rng(4))
    assert fitted == 0


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("data"), {"00": 4, "01": 3, "08": 2},
                          {"train": ["00"], "unlabelled": ["01"], "val": ["08"]})


BANK = BankConfig(("car",), link=4.0, min_points=5)


def test_bank_round_trip_and_its_shards_check(processed, tmp_path):
    data = ProcessedData(processed)
    bank = build_bank(data, BANK)
    assert len(bank.table) > 0 and set(bank.table["label"]) == {CAR}
    for _, obj in bank.table.iterrows():  # every banked row is a car point of its scan
        row = data.index[data.index["scan_id"] == obj["scan_id"]].iloc[0]
        assert (data.read(row, ["label"])["label"][obj["rows"]] == CAR).all()
        assert row["split"] == "train"
    bank.write(tmp_path / "objects.parquet")
    back = ObjectBank.read(tmp_path / "objects.parquet")
    assert back.classes == ("car",) and back.shards_hash == data.shards_hash("train")
    assert back.table["rows"].map(list).tolist() == bank.table["rows"].map(list).tolist()
    back.check(data, "objects.parquet")
    with pytest.raises(DataError, match="other shards"):
        ObjectBank(back.table, back.classes, "0" * 16).check(data, "objects.parquet")
    with pytest.raises(DataError, match="unlabelled"):
        build_bank(data, BANK, split="unlabelled")
    with pytest.raises(ParamsError, match="unknown class"):
        build_bank(data, BankConfig(("pedestrian",), 1.0, 5))


def tagged_extras(data: ProcessedData):
    """Fake teacher rows naming each point's scan and row, as the cache's extras would be aligned."""
    positions = {scan_id: i for i, scan_id in enumerate(data.index["scan_id"])}

    def extras(row):
        return {"teacher_records": (positions[row["scan_id"]] * 1000 + np.arange(row["num_points"]))[:, None]}
    return extras


def test_dataset_mixes_deterministically_and_every_point_keeps_its_rows(processed):
    data = ProcessedData(processed)
    aug = augment_config(rotation_deg=0.0, flip_x=False, flip_y=False, scale=[1.0, 1.0], translate_std=0.0,
                         paste={"probability": 1.0, "count": 3, "ground_classes": ["road"], "radius": 5.0},
                         polarmix={"probability": 1.0, "swap_deg": 180.0, "copies": 1},
                         lasermix={"probability": 1.0, "bands": [2, 3]})
    with pytest.raises(ParamsError, match="object bank"):
        ScanDataset(processed, ["train", "unlabelled"], aug, unlabelled=["unlabelled"])
    ds = ScanDataset(processed, ["train", "unlabelled"], aug, seed=2, extras=tagged_extras(data),
                     unlabelled=["unlabelled"], bank=build_bank(data, BANK))
    labelled_ids = set(ds.rows["scan_id"][ds.labelled])
    for position in range(len(ds)):
        sample = ds[(1, position)]
        assert all(np.array_equal(sample[k], ds[(1, position)][k]) for k in ("xyz", "label"))  # same key, same scan
        tags, rows = np.divmod(sample["extras"]["teacher_records"][:, 0], 1000)
        kinds = {data.index["scan_id"][t] in labelled_ids for t in tags}
        assert kinds == {bool(ds.labelled[position])}  # partners of the same kind only
        for t in np.unique(tags):  # each point has the intensity and label of the source row it names
            row = data.index.iloc[t]
            cols = data.read(row, ["intensity", "label"])
            mine = tags == t
            assert np.array_equal(sample["intensity"][mine], cols["intensity"][rows[mine]])
            expected = cols["label"][rows[mine]] if row["split"] != "unlabelled" else 0
            assert np.array_equal(sample["label"][mine], np.broadcast_to(expected, mine.sum()))
        if ds.labelled[position]:
            assert len(np.unique(tags)) > 1  # mixed with another scan at least
    # turning the mixes off gives back the plain scan
    off = ScanDataset(processed, "train", augment_config(rotation_deg=0.0, flip_x=False, flip_y=False,
                                                         scale=[1.0, 1.0], translate_std=0.0))
    assert np.array_equal(off[(1, 0)]["xyz"], ScanDataset(processed, "train")[(1, 0)]["xyz"])


def test_lasermix_with_unlabelled_partners_flags_each_point_by_the_scan_it_came_from(processed):
    data = ProcessedData(processed)
    aug = augment_config(lasermix={"probability": 1.0, "bands": [2, 3], "partner": "unlabelled"})
    with pytest.raises(ParamsError, match="students.<name>.train.augment"):
        ScanDataset(processed, "train", aug)  # the teacher's and the baseline's data: no unlabelled scans
    ds = ScanDataset(processed, ["train", "unlabelled"], aug, seed=1, extras=tagged_extras(data),
                     unlabelled=["unlabelled"])
    source_labelled = ~data.index["split"].eq("unlabelled").to_numpy()
    tag_of = {scan_id: i for i, scan_id in enumerate(data.index["scan_id"])}  # as tagged_extras numbers them
    samples = [ds[(0, position)] for position in range(len(ds))]
    for position, sample in enumerate(samples):
        tags = sample["extras"]["teacher_records"][:, 0] // 1000
        assert np.array_equal(sample["labelled"], source_labelled[tags])  # the flag follows each point
        assert not sample["label"][~sample["labelled"]].any()  # no label on disk reaches an unlabelled point
        partner_tags = tags[tags != tag_of[ds.rows["scan_id"][position]]]
        assert not source_labelled[partner_tags].any()  # every partner is an unlabelled scan
        if ds.labelled[position]:
            assert sample["labelled"].any() and not sample["labelled"].all()  # bands of both kinds
            assert (sample["label"][sample["labelled"]] > 0).any()
    flags = np.concatenate([s["labelled"] for s in samples[:2]])
    assert torch.equal(collate(samples[:2]).unlabelled_points(), torch.from_numpy(~flags))


def test_models_say_which_augmentations_they_trained_with():
    default = augment_config()
    assert describe_augment(dataclasses.asdict(default)) == "affine"
    on = augment_config(paste={"probability": 0.5}, lasermix={"probability": 1.0})
    assert describe_augment(dataclasses.asdict(on)) == "affine + instance paste p=0.5 + LaserMix p=1"
    semi = augment_config(lasermix={"probability": 0.5, "partner": "unlabelled"})
    assert describe_augment(dataclasses.asdict(semi)) == "affine + LaserMix with unlabelled scans p=0.5"
    assert "partner" in " ".join(augment_config(lasermix={"partner": "labelled"}).problems())
    assert describe_augment(None) == "unknown"  # a record from before the augment section


def test_a_scan_is_never_its_own_partner(processed):
    ds = ScanDataset(processed, ["train", "unlabelled"], augment_config(lasermix={"probability": 1.0}),
                     unlabelled=["unlabelled"])
    rng = np.random.default_rng(0)
    for position in range(len(ds)):
        kind = bool(ds.labelled[position])
        drawn = {ds.partner(kind, position, rng) for _ in range(50)}
        assert position not in drawn and drawn <= set(ds.partners[kind].tolist())
