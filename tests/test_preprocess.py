from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from pvkd.datasets import DataError
from pvkd.datasets.semantickitti import SemanticKITTI
from pvkd.grid import Grid
from pvkd.labels import SEMANTICKITTI_LEARNING_MAP
from pvkd.preprocess import band_of, preprocess
from pvkd.shards import ProcessedData

from kitti_tree import write_tree

GRID = Grid("cylinder", (48, 36, 8), (0.0, -np.pi, -4.0), (50.0, np.pi, 2.0))
BANDS = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
SPLITS = {"train": ["00", "01"], "val": ["08"]}


def run(root, out, workers=1, scans_per_shard=2):
    ds = SemanticKITTI(root, splits=SPLITS)
    return preprocess(ds, GRID, out, ["train", "val"], BANDS, scans_per_shard=scans_per_shard, workers=workers)


@pytest.fixture
def processed(tmp_path):
    scans = write_tree(tmp_path / "raw", {"00": 3, "01": 1, "08": 2})
    nan_scan = tmp_path / "raw/sequences/01/velodyne/000000.bin"
    pts = np.fromfile(nan_scan, np.float32).reshape(-1, 4)
    pts[[5, 9], 0] = np.nan
    pts[11, 3] = np.inf
    pts.tofile(nan_scan)
    scans["01"][0] = (pts, scans["01"][0][1])
    meta = run(tmp_path / "raw", tmp_path / "processed")
    return scans, ProcessedData(tmp_path / "processed"), meta


def expected_rows(points, raw):
    finite = np.isfinite(points).all(1)
    labels = np.array([SEMANTICKITTI_LEARNING_MAP[int(r) & 0xFFFF] for r in raw])
    return points[finite], labels[finite], np.flatnonzero(finite)


def test_round_trip_is_exact(processed):
    scans, data, _ = processed
    for _, row in data.index.iterrows():
        seq, frame = row.scan_id.split("/")
        points, labels, kept = expected_rows(*scans[seq][int(frame)])
        scan = data.read(row)
        np.testing.assert_array_equal(scan.xyz, points[:, :3])
        np.testing.assert_array_equal(scan.intensity, points[:, 3])
        np.testing.assert_array_equal(scan.label, labels)
        np.testing.assert_array_equal(scan.point_index, kept)
        np.testing.assert_array_equal(scan.cell, GRID.cell_of(GRID.to_grid_coords(points[:, :3])))


def test_one_row_group_per_scan_and_index(processed):
    _, data, meta = processed
    idx = data.index
    assert idx.scan_id.tolist() == ["00/000000", "00/000001", "00/000002", "01/000000", "08/000000", "08/000001"]
    assert idx.shard.tolist() == ["train/shards/00000.parquet"] * 2 + ["train/shards/00001.parquet"] * 2 + [
        "val/shards/00000.parquet"
    ] * 2
    for shard, rows in idx.groupby("shard"):
        f = pq.ParquetFile(data.root / shard)
        assert f.metadata.num_row_groups == len(rows)
        assert f.metadata.row_group(0).column(0).compression == "ZSTD"
        for _, r in rows.iterrows():
            assert f.metadata.row_group(r.row_group).num_rows == r.num_points
    assert idx.num_dropped.tolist() == [0, 0, 0, 3, 0, 0]
    assert meta["splits"]["train"]["dropped_nonfinite"] == 3
    assert (idx.num_points == idx.num_source_points - idx.num_dropped).all()
    assert not list(data.root.parent.glob("*.staging")) and not list(data.root.rglob("*.tmp"))


def test_stats_equal_independent_counts(processed):
    scans, data, _ = processed
    stats = data.stats.set_index(["split", "band_index", "class_id"])
    for split, seqs in SPLITS.items():
        points_count = np.zeros((6, 20), int)
        voxel_count = np.zeros((6, 20), int)
        for seq in seqs:
            for raw_points, raw in scans[seq]:
                pts, labels, _ = expected_rows(raw_points, raw)
                dist = np.sqrt((pts[:, :3].astype(np.float64) ** 2).sum(1))
                band = np.array([sum(d >= e for e in BANDS[1:]) for d in dist])
                for b, c in zip(band, labels):
                    points_count[b, c] += 1
                cells = GRID.cell_of(GRID.to_grid_coords(pts[:, :3]))
                votes, dists = {}, {}
                for cell, c, d in zip(map(tuple, cells), labels, dist):
                    if c:
                        votes.setdefault(cell, Counter())[c] += 1
                        dists.setdefault(cell, []).append(d)
                for cell, counter in votes.items():
                    top = max(counter.values())
                    winner = min(c for c, n in counter.items() if n == top)
                    voxel_count[sum(np.mean(dists[cell]) >= e for e in BANDS[1:]), winner] += 1
        got = stats.loc[split]
        np.testing.assert_array_equal(got["points"].to_numpy().reshape(6, 20), points_count)
        np.testing.assert_array_equal(got["voxels"].to_numpy().reshape(6, 20), voxel_count)


def test_band_edges_are_half_open():
    d = np.array([0.0, 9.999, 10.0, 49.9, 50.0, 80.0])
    assert band_of(d, BANDS).tolist() == [0, 0, 1, 4, 5, 5]


def test_parallel_workers_write_identical_shards(tmp_path, processed):
    _, data, meta = processed
    meta2 = run(data.root.parent / "raw", tmp_path / "parallel", workers=2)
    assert meta2["splits"] == meta["splits"]  # the shards' hash of each split included


@pytest.mark.parametrize(
    "corrupt, message, bad",
    [
        (lambda r: _truncate(r / "sequences/08/velodyne/000001.bin", 5), "000001.bin: size", "val"),
        (lambda r: _truncate(r / "sequences/08/labels/000001.label", 4), "000001.label: 500 labels", "val"),
        (lambda r: _set_label(r / "sequences/00/labels/000002.label", 77), r"raw label id\(s\) \[77\]", "train"),
    ],
)
def test_bad_input_leaves_no_output_of_its_split(tmp_path, corrupt, message, bad):
    write_tree(tmp_path / "raw", {"00": 3, "01": 1, "08": 2})
    corrupt(tmp_path / "raw")
    out = tmp_path / "processed"
    for workers in (1, 2):
        with pytest.raises(DataError, match=message):
            run(tmp_path / "raw", out, workers=workers)
        # splits are written in order, each whole: a split before the bad one is complete, the bad one absent
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert written == (["train"] if bad == "val" else [])
        if written:
            assert ProcessedData(out).meta["splits"]["train"]["scans"] == 4


def test_failed_run_keeps_the_previous_output(tmp_path):
    write_tree(tmp_path / "raw", {"00": 1, "01": 1, "08": 1})
    out = tmp_path / "processed"
    meta = run(tmp_path / "raw", out)
    _truncate(tmp_path / "raw/sequences/08/velodyne/000000.bin", 1)
    with pytest.raises(DataError):
        run(tmp_path / "raw", out)
    assert ProcessedData(out).meta["splits"] == meta["splits"]


def test_a_split_added_later_leaves_the_other_splits_untouched(tmp_path):
    write_tree(tmp_path / "raw", {"00": 1, "01": 1, "08": 1})
    out = tmp_path / "processed"
    run(tmp_path / "raw", out)
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in out.rglob("*") if f.is_file()}
    ds = SemanticKITTI(tmp_path / "raw", splits={**SPLITS, "u": ["01"]})
    preprocess(ds, GRID, out, ["u"], BANDS, scans_per_shard=2)
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in before} == before
    data = ProcessedData(out)
    assert sorted(data.meta["splits"]) == ["train", "u", "val"] and data.scans("u").scan_id.tolist() == ["01/000000"]
    assert data.hashes(["train"]) == {"train": data.meta["splits"]["train"]["shards_hash"]}


def test_splits_preprocessed_with_other_params_are_refused(tmp_path):
    write_tree(tmp_path / "raw", {"00": 1, "01": 1, "08": 1})
    out = tmp_path / "processed"
    run(tmp_path / "raw", out)
    other = Grid("cylinder", (24, 36, 8), GRID.min_bound, GRID.max_bound)
    preprocess(SemanticKITTI(tmp_path / "raw", splits={"u": ["01"]}), other, out, ["u"], BANDS)
    with pytest.raises(DataError, match=r"u/meta.json and .*train/meta.json differ in \['grid'\]"):
        ProcessedData(out)


def test_the_old_one_folder_layout_is_refused_with_the_fix(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="old one-folder layout; run `dvc repro`"):
        ProcessedData(tmp_path)


def _truncate(path, nbytes):
    path.write_bytes(path.read_bytes()[:-nbytes])


def _set_label(path, raw_id):
    raw = np.fromfile(path, np.uint32)
    raw[10] = raw_id
    raw.tofile(path)


def test_unlabelled_split_and_empty_scans(tmp_path):
    from pvkd.train.data import ScanDataset

    write_tree(tmp_path / "raw", {"00": 3, "02": 3})
    seq = tmp_path / "raw/sequences"
    (seq / "00/velodyne/000001.bin").write_bytes(b"")  # an empty sweep, and its empty label file
    (seq / "00/labels/000001.label").write_bytes(b"")
    nan = np.full((7, 4), np.nan, np.float32)  # a scan whose points are all non-finite
    nan.tofile(seq / "02/velodyne/000002.bin")
    # split u is not labelled: its label files on disk are never read
    ds = SemanticKITTI(tmp_path / "raw", splits={"train": ["00"], "u": ["02"]})
    meta = preprocess(ds, GRID, tmp_path / "out", ["train", "u"], BANDS, scans_per_shard=2)
    assert meta["splits"]["train"]["labelled"] and not meta["splits"]["u"]["labelled"]
    assert meta["splits"]["train"]["empty_scans"] == 1 and meta["splits"]["u"]["empty_scans"] == 1
    assert meta["splits"]["u"]["dropped_nonfinite"] == 7
    data = ProcessedData(tmp_path / "out")
    assert data.index.num_points.tolist()[1] == 0 and data.scans("u").num_points.tolist()[2] == 0
    for _, row in data.index.iterrows():  # empty scans keep their (empty) row group: row groups stay aligned
        assert pq.ParquetFile(data.root / row.shard).metadata.row_group(int(row.row_group)).num_rows == row.num_points
    u = data.scans("u")
    assert all(not data.read(row, ["label"])["label"].any() for _, row in u.iterrows())
    stats = data.stats[data.stats.split == "u"]
    assert stats.voxels.sum() == 0
    assert stats.points.sum() == stats[stats.class_id == 0].points.sum() == u.num_points.sum()
    # training skips the empty scans; the cache and submissions keep every scan
    assert len(ScanDataset(data.root, "train")) == 2 and len(ScanDataset(data.root, "train", keep_empty=True)) == 3
