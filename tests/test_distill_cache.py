"""The teacher cache: codecs against hand-made distributions, a cache written and read back against the
teacher's own outputs, refusal of a mismatched or unfinished cache, and resuming after an interruption."""

import json
import math

import numpy as np
import pytest
import torch

from pvkd.distill.cache import (
    CacheConfig,
    TeacherCache,
    decode_features,
    decode_outputs,
    encode_features,
    encode_outputs,
    file_sha256,
    fit_projection,
    make_cache,
    output_width,
)
from pvkd.errors import DataError
from pvkd.objects import BankConfig, build_bank
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model
from pvkd.train.data import ScanDataset, collate

from train_fixtures import augment_config, make_processed, save_teacher

CPU = torch.device("cpu")


def config(**overrides) -> CacheConfig:
    values = dict(splits=("train",), outputs="topk", topk=2, feature_dim=3, feature_scans=2, batch_size=2, device="cpu")
    return CacheConfig(**{**values, **overrides})


def kl(p_log, q_log):
    return float((p_log.exp() * (p_log - q_log)).sum(1).mean())


def test_topk_keeps_k_classes_and_spreads_the_rest_evenly():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04], [0.01, 0.01, 0.97, 0.01]])
    records = encode_outputs(probs.log(), "topk", 2)
    assert records.shape == (2, output_width("topk", 4, 2)) == (2, 5)
    assert records[0, :2].tolist() == [0, 1] and records[1, 0] == 2
    decoded = decode_outputs(torch.from_numpy(records), "topk", 4, 2).exp()
    # row 0: 0.6 and 0.3 kept, the other two share 0.1 equally; 0.05-nat steps -> within 2.5 %
    assert decoded[0].tolist() == pytest.approx([0.6, 0.3, 0.05, 0.05], rel=0.03)
    assert decoded[1, 2] == pytest.approx(0.97, rel=0.03)
    assert decoded.sum(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("codec, max_kl", [("fp16", 1e-6), ("int8", 1e-3), ("topk", 0.05)])
def test_codecs_decode_close_to_the_full_distribution(codec, max_kl):
    logits = torch.randn(500, 20, generator=torch.Generator().manual_seed(0)) * 3
    logp = torch.log_softmax(logits, 1)
    decoded = decode_outputs(torch.from_numpy(encode_outputs(logp, codec, 5)), codec, 20, 5)
    assert decoded.shape == (500, 20)
    assert decoded.exp().sum(1) == pytest.approx(torch.ones(500), abs=1e-5)
    assert kl(logp, decoded) < max_kl
    assert kl(logp, decoded) > 0 or codec == "fp16"


def test_features_keep_their_cosine_similarities_through_an_exact_projection():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=gen))[0]  # features of rank 3 in 8 dims
    features = torch.randn(200, 3, generator=gen) @ basis.T
    projection = fit_projection([features[:100], features[100:]], 3)
    decoded = decode_features(torch.from_numpy(encode_features(features, projection)))
    a = torch.nn.functional.normalize(features, dim=1)
    cosine_full, cosine_cached = a @ a.T, decoded @ decoded.T
    assert (cosine_full - cosine_cached).abs().max() < 0.03  # int8 rounding only
    assert fit_projection([features], 8).equal(torch.eye(8))  # nothing to compress


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    processed = make_processed(root, {"00": 5, "08": 2}, {"train": ["00"], "val": ["08"]})
    teacher = save_teacher(processed, root / "teacher.pt")
    return processed, teacher, root


def test_cache_holds_the_teachers_outputs_for_every_train_point(setup):
    processed, teacher, root = setup
    out = root / "full"
    manifest = make_cache(teacher, processed, out, config(outputs="fp16"), CPU)
    assert manifest["complete"] and len(manifest["scans"]) == 5
    cache = TeacherCache(out, ProcessedData(processed), file_sha256(teacher))
    dataset = ScanDataset(processed, "train", extras=cache.extras())
    model, _ = load_model(teacher)
    for position in (0, 4):
        batch = collate([dataset[(0, position)]])
        decoded = cache.decode(batch.extras)
        with torch.no_grad():
            expected = torch.log_softmax(model(batch.points).point_logits, 1)
        assert decoded["logp"].shape == expected.shape
        assert torch.allclose(decoded["logp"], expected, atol=2e-2)
        assert decoded["point_feature"].shape == (len(expected), 3)


def test_students_refuse_a_cache_of_another_teacher_or_an_unfinished_one(setup):
    processed, teacher, root = setup
    out = root / "checked"
    make_cache(teacher, processed, out, config(), CPU)
    data = ProcessedData(processed)
    with pytest.raises(DataError, match="another teacher.*dvc repro cache-logits"):
        TeacherCache(out, data, "0" * 64)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        TeacherCache(out, data)
    with pytest.raises(DataError, match="no teacher cache"):
        TeacherCache(root / "nowhere", data)


def test_an_interrupted_cache_resumes_and_ends_identical(setup):
    processed, teacher, root = setup
    reference = root / "reference"
    make_cache(teacher, processed, reference, config(), CPU)

    class Stop(Exception):
        pass

    def stop_after_first(shard):
        raise Stop(shard)

    out = root / "resumed"
    with pytest.raises(Stop):
        make_cache(teacher, processed, out, config(), CPU, after_shard=stop_after_first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["done_shards"]) == 1
    written = []
    make_cache(teacher, processed, out, config(batch_size=1), CPU, after_shard=written.append)
    assert manifest["done_shards"][0] not in written and len(written) == 2  # 5 scans, 2 per shard: 3 shards
    for shard in sorted((reference / "train/shards").glob("*.parquet")):
        mine = TeacherCache(out, ProcessedData(processed)).read(f"train/shards/{shard.name}", 0)
        theirs = TeacherCache(reference, ProcessedData(processed)).read(f"train/shards/{shard.name}", 0)
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)


def test_a_changed_cache_param_starts_afresh(setup):
    processed, teacher, root = setup
    out = root / "changed"
    make_cache(teacher, processed, out, config(topk=2), CPU)
    make_cache(teacher, processed, out, config(topk=3), CPU)
    cache = TeacherCache(out, ProcessedData(processed))
    assert cache.topk == 3 and cache.read("train/shards/00000.parquet", 0)["outputs"].shape[1] == 7
    assert math.isclose(cache.manifest["bytes_per_point"]["outputs"], 7)


def test_cache_covers_the_unlabelled_split_and_keeps_empty_scans_aligned(tmp_path):
    from pvkd.datasets.semantickitti import SemanticKITTI
    from pvkd.preprocess import preprocess

    from kitti_tree import write_tree
    from train_fixtures import BANDS, GRID

    raw = tmp_path / "raw"
    write_tree(raw, {"00": 3, "03": 3}, points_per_scan=300, seed=1)
    (raw / "sequences/03/velodyne/000001.bin").write_bytes(b"")  # an empty sweep between two scans
    processed = tmp_path / "processed"
    preprocess(SemanticKITTI(raw, splits={"train": ["00"], "unlabelled": ["03"]}), GRID, processed,
               ["train", "unlabelled"], BANDS, scans_per_shard=3)
    teacher = save_teacher(processed, tmp_path / "teacher.pt")
    with pytest.raises(DataError, match="cache.splits \\['val'\\]"):
        make_cache(teacher, processed, tmp_path / "bad", config(splits=("train", "val")), CPU)
    make_cache(teacher, processed, tmp_path / "cache", config(outputs="fp16", batch_size=3), CPU)
    train_bytes = (tmp_path / "cache/train/shards/00000.parquet").read_bytes()
    # a split added to cache.splits is computed alone: the train shards and the projection are kept
    written = []
    manifest = make_cache(teacher, processed, tmp_path / "cache", config(splits=("train", "unlabelled"),
                                                                         outputs="fp16", batch_size=3), CPU,
                          after_shard=written.append)
    assert written == ["unlabelled/shards/00000.parquet"]
    assert (tmp_path / "cache/train/shards/00000.parquet").read_bytes() == train_bytes
    assert set(manifest["content_hashes"]) == {"train", "unlabelled"}
    assert [s["num_points"] == 0 for s in manifest["scans"]] == [False] * 4 + [True, False]
    cache = TeacherCache(tmp_path / "cache", ProcessedData(processed))
    assert cache.splits == ("train", "unlabelled")
    assert {k: v.shape for k, v in cache.read("unlabelled/shards/00000.parquet", 1).items()} == {
        "outputs": (0, 40), "point_feature": (0, 3), "voxel_feature": (0, 3)}
    # the scan after the empty one gets its own outputs: its row group is its scan's
    dataset = ScanDataset(processed, ["train", "unlabelled"], extras=cache.extras(), unlabelled=["unlabelled"])
    assert len(dataset) == 5  # the empty scan is left out of training
    batch = collate([dataset[(0, 4)]])
    model, _ = load_model(teacher)
    with torch.no_grad():
        expected = torch.log_softmax(model(batch.points).point_logits, 1)
    assert torch.allclose(cache.decode(batch.extras)["logp"], expected, atol=2e-2)


def test_mixed_scans_carry_each_points_own_cached_teacher_row(setup):
    processed, teacher, root = setup
    out = root / "for_mixing"
    make_cache(teacher, processed, out, config(outputs="fp16"), CPU)
    data = ProcessedData(processed)
    cache = TeacherCache(out, data, file_sha256(teacher))
    cached = cache.extras()

    def extras(row):  # the cache's records plus each point's (scan, row), to look its own records up
        return cached(row) | {"source": data.index.index[data.index["scan_id"] == row["scan_id"]][0] * 100_000
                              + np.arange(row["num_points"])}

    aug = augment_config(paste={"probability": 1.0, "count": 4, "ground_classes": ["road"], "radius": 5.0},
                         polarmix={"probability": 1.0}, lasermix={"probability": 1.0})
    dataset = ScanDataset(processed, "train", aug, seed=3, extras=extras,
                          bank=build_bank(data, BankConfig(("car",), link=4.0, min_points=5)))
    sources = 0
    for position in range(len(dataset)):
        sample = dataset[(0, position)]
        scan, rows = np.divmod(sample["extras"].pop("source"), 100_000)
        for s in np.unique(scan):
            row = data.index.iloc[s]
            own = cache.read(row["shard"], int(row["row_group"]))
            mine = scan == s
            # the point is the source's (its intensity, untouched by any transform) and so are its records
            assert np.array_equal(sample["intensity"][mine], data.read(row, ["intensity"])["intensity"][rows[mine]])
            for name, records in sample["extras"].items():
                assert np.array_equal(records[mine], own[name.removeprefix("teacher_")][rows[mine]])
        sources += len(np.unique(scan))
    assert sources > 2 * len(dataset)  # the scans were mixed: points came from several scans each
