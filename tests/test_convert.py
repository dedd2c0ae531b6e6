"""`pvkd import-teacher`: a published spconv 1.x checkpoint computes, on spconv 2, what spconv 1.x computed.

The reference is ``spconv1_reference``: spconv 1.x's pair sharing by indice_key and its
``filters.view(-1, C_in, C_out)[k]`` reading, in plain torch, under the published module and key
names. A random checkpoint of it (tiny width and grid, random BN statistics, NaN in the taps of
``conv3`` that spconv 1.x never read) is saved in the spconv 1.x layout, imported with the command,
and must give the same voxel logits in float64 (relative 1e-6) on a scan of the processed data.
Negative controls: the same weights in today's declared kernels, a flipped or transposed kernel,
and a NaN in a tap that is read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pvkd.convert as convert
from pvkd.cli import main
from pvkd.errors import ParamsError
from pvkd.models import PointBatch, build_model
from pvkd.shards import ProcessedData
from pvkd.train.checkpoint import load_model

from spconv1_reference import PublishedCylinder3D, randomize
from train_fixtures import GRID, make_processed

# tiny, and every width distinct so an in/out swap cannot fit by accident: base width 4, point MLP 8-12-16 -> 16,
# compression 2; 20 classes (SemanticKITTI)
TINY = dict(init_size=4, mlp=(8, 12, 16), out_pt_fea_dim=16, fea_compre=2)
REL_TOL = 1e-6


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("convert"), {"00": 2, "08": 1}, {"train": ["00"], "val": ["08"]},
                          points=1500)


def published(seed: int = 0, nan_unused_taps: bool = True) -> PublishedCylinder3D:
    model = PublishedCylinder3D(GRID.size, GRID.min_bound, GRID.max_bound, num_classes=20, **TINY)
    # drawn in float32 (what the file holds), computed in float64
    return randomize(model, seed, nan_unused_taps).double().eval()


def save_spconv1(model: PublishedCylinder3D, path, **changes) -> str:
    """The model's state_dict as spconv 1.x wrote it (float32, [k0, k1, k2, in, out]), in torch's pre-1.6 format."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state.update(changes)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return str(path)


def run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the `pvkd` program (its user-error handling included); returns (exit code, stdout + stderr)."""
    monkeypatch.setattr("sys.argv", ["pvkd", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def val_scan(processed) -> PointBatch:
    data = ProcessedData(processed)
    scan = data.read(data.scans("val").iloc[0])
    xyz, intensity = (torch.from_numpy(np.asarray(a, np.float64).copy()) for a in (scan.xyz, scan.intensity))
    return PointBatch(xyz, intensity, torch.zeros(len(xyz), dtype=torch.long), 1)


def by_site(sites: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by (batch, i, j, k): the two implementations order their voxels differently."""
    s = sites.long()
    order = torch.argsort(((s[:, 0] * 1000 + s[:, 1]) * 1000 + s[:, 2]) * 1000 + s[:, 3])
    return s[order], values[order]


def relative_difference(model, reference: PublishedCylinder3D, points: PointBatch) -> float:
    """max |pvkd - reference| / max |reference| over the voxel logits of ``points``, in float64."""
    with torch.no_grad():
        out = model.double()(points)
        ref_sites, ref_logits = reference(points.xyz, points.intensity, points.batch)
    sites, logits = by_site(out.voxel_coords, out.voxel_logits)
    ref_sites, ref_logits = by_site(ref_sites, ref_logits)
    assert torch.equal(sites, ref_sites), "the two voxelize the scan differently"
    return float((logits - ref_logits).abs().max() / ref_logits.abs().max())


def test_imported_checkpoint_computes_the_published_function(tmp_path, processed, monkeypatch, capsys):
    reference = published()
    assert len(reference.state_dict()) == 274  # the official file's key count
    path = save_spconv1(reference, tmp_path / "cyl.pt")
    out = tmp_path / "teacher.pt"
    code, output = run(monkeypatch, capsys, "import-teacher", path, "--data", str(processed), "--out", str(out))
    assert code == 0, output
    assert "check on 1 val scan(s)" in output and "dropped" in output  # the NaN taps of the four conv3
    model, record = load_model(out)
    assert record["model"]["kernels"] == "published" and record["model"]["point_head"] is False
    assert record["imported"]["keys"] == 274 and record["imported"]["kind"] == "PVKD release"  # not width 32
    assert record["train_splits"] == ["train", "val"]
    assert set(record["imported"]["dropped_nonfinite"]) == {
        f"cylinder_3d_spconv_seg.upBlock{n}.conv3.weight" for n in range(4)
    }
    points = val_scan(processed)
    difference = relative_difference(model, reference, points)
    print(f"voxel logits, float64: max |pvkd - spconv 1.x reference| / max |reference| = {difference:.2e}")  # -rP
    assert difference < REL_TOL
    # without a head, a point takes its voxel's logits, as the published model labels it
    with torch.no_grad():
        out = model(points)
    assert torch.equal(out.point_logits, out.voxel_logits[out.point_to_voxel])


def test_every_conv_of_the_published_kernels_is_the_trained_operator():
    """The model param and the converter agree conv by conv (a fact derived twice: by hand and from the keys)."""
    model = build_model({"arch": "cylinder3d", "width": 2, "num_classes": 3, "kernels": "published"},
                        {"type": "cylinder", "cylinder": {"size": [16, 16, 8], "min_bound": [0, -3.1, -4],
                                                          "max_bound": [50, 3.1, 2]}})
    names = convert.module_names()
    for conv in convert.PUBLISHED_CONVS:
        ours = names[convert.SEGMENTOR + conv.module] + ".weight"
        assert tuple(model.state_dict()[ours].shape[1:4]) == convert.trained_kernel(conv), conv.module
    trained = {c.module: convert.trained_kernel(c) for c in convert.PUBLISHED_CONVS}
    assert trained["upBlock0.conv3"] == (1, 3, 3) and trained["ReconNet.conv1_3"] == (3, 1, 1)
    assert trained["resBlock2.conv1_2"] == (3, 1, 3) and trained["downCntx.conv2"] == (1, 3, 3)


def test_todays_declared_kernels_compute_another_function(tmp_path, processed):
    """The negative control: the same weights, permuted only, in the kernels each line declares."""
    reference = published(nan_unused_taps=False)
    state = {convert.pvkd_key(k, convert.module_names()): v.permute(4, 0, 1, 2, 3) if v.dim() == 5 else v
             for k, v in reference.state_dict().items()}
    config = convert.detect_config(reference.state_dict(), tmp_path)
    model = build_model({**config, "kernels": "declared", "point_head": False},
                        ProcessedData(processed).grid).double().eval()
    model.load_state_dict(state)  # every shape fits: nothing but the function tells the two apart
    assert relative_difference(model, reference, val_scan(processed)) > 0.05


@pytest.mark.parametrize("mistake", ["kernel flipped", "in and out swapped", "axes rolled"])
def test_the_equivalence_sees_a_misread_weight(tmp_path, processed, monkeypatch, mistake):
    """The test can fail: a converter that flips the kernel, swaps C_in and C_out of the square convs, or reads
    the taps along other axes gives other logits."""
    real = convert.convert_conv

    def wrong(weight, kernel, key, path):
        w, dropped = real(weight, kernel, key, path)
        if mistake == "kernel flipped":
            w = w.flip(1, 2, 3)
        elif mistake == "in and out swapped" and w.shape[0] == w.shape[-1]:
            w = w.transpose(0, -1)
        elif mistake == "axes rolled" and kernel == (1, 3, 3):
            w = w.transpose(2, 3)
        return w.contiguous(), dropped

    monkeypatch.setattr(convert, "convert_conv", wrong)
    reference = published()
    converted = convert.convert_state_dict(reference.state_dict(), tmp_path)
    config = convert.detect_config(reference.state_dict(), tmp_path)
    model = build_model({**config, "point_head": False}, ProcessedData(processed).grid).double().eval()
    model.load_state_dict(converted.state_dict)
    assert relative_difference(model, reference, val_scan(processed)) > 1e-3


def test_a_nan_in_a_tap_that_is_read_is_refused_naming_the_key(tmp_path, processed, monkeypatch, capsys):
    reference = published()
    key = "cylinder_3d_spconv_seg.upBlock2.conv3.weight"
    weight = reference.state_dict()[key].float().clone()
    weight[0, 2, 1, 0, 0] = torch.nan  # in weight[0]: a tap of the 1x3x3 operator
    path = save_spconv1(reference, tmp_path / "bad.pt", **{key: weight})
    out = tmp_path / "teacher.pt"
    code, output = run(monkeypatch, capsys, "import-teacher", path, "--data", str(processed), "--out", str(out))
    assert code == 1 and key in output and "tap(s) [7]" in output and "Traceback" not in output
    assert not out.exists()

    var = "cylinder_3d_spconv_seg.resBlock3.bn1.running_var"
    stats = reference.state_dict()[var].float().clone()
    stats[1] = torch.inf
    path = save_spconv1(reference, tmp_path / "bad_bn.pt", **{var: stats})
    code, output = run(monkeypatch, capsys, "import-teacher", path, "--data", str(processed), "--out", str(out))
    assert code == 1 and var in output


def test_keys_it_cannot_place_and_foreign_layouts_are_refused(tmp_path, processed, monkeypatch, capsys):
    reference = published()
    extra = "cylinder_3d_spconv_seg.upBlock0.dropout.weight"
    path = save_spconv1(reference, tmp_path / "extra.pt", **{extra: torch.zeros(3)})
    out = str(tmp_path / "teacher.pt")
    code, output = run(monkeypatch, capsys, "import-teacher", path, "--data", str(processed), "--out", out)
    assert code == 1 and extra in output and "no place" in output

    state = {k: v for k, v in reference.state_dict().items() if "resBlock4.bn2.running_mean" not in k}
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    code, output = run(monkeypatch, capsys, "import-teacher", str(path), "--data", str(processed), "--out", out)
    assert code == 1 and "down.2.res.branch_b.1.bn.running_mean" in output
    assert "cylinder_3d_spconv_seg.resBlock4.bn2.running_mean" in output

    # a spconv-2 port's file ([out, k0, k1, k2, in]) was trained with its own kernels: refused, not misread
    ported = {k: v.permute(4, 0, 1, 2, 3) if v.dim() == 5 else v for k, v in reference.state_dict().items()}
    path = tmp_path / "ported.pt"
    torch.save(ported, path)
    code, output = run(monkeypatch, capsys, "import-teacher", str(path), "--data", str(processed), "--out", out)
    assert code == 1 and "spconv 2 layout" in output


def test_point_head_trained_alone_on_the_frozen_network(tmp_path, processed, monkeypatch, capsys):
    reference = published()
    path = save_spconv1(reference, tmp_path / "cyl.pt")
    out = tmp_path / "teacher.pt"
    code, output = run(monkeypatch, capsys, "import-teacher", path, "--data", str(processed), "--out", str(out),
                       "--point-head", "train", "--head-steps", "6", "--head-lr", "0.01", "--train-splits", "train",
                       "--check-scans", "0")
    assert code == 0, output
    model, record = load_model(out)
    assert record["model"]["point_head"] is True and record["train_splits"] == ["train"]
    head = record["imported"]["head_training"]
    assert head["steps"] == 6 and head["last_loss"] < head["first_loss"]
    # the backbone is untouched: its voxel logits are still the published function (BN statistics included)
    assert relative_difference(model, reference, val_scan(processed)) < REL_TOL


def test_published_kernels_model_counts_and_options():
    """At the official config the published-kernels network holds the official file's parameters less the 18 taps
    of each decoder conv3 that spconv 1.x never read; the options default to today's model (older records)."""
    grid = {"type": "cylinder", "cylinder": {"size": [480, 360, 32], "min_bound": [0, -np.pi, -4],
                                             "max_bound": [50, np.pi, 2]}}
    with torch.device("meta"):
        published_net = build_model({"arch": "cylinder3d", "width": 32, "num_classes": 20, "kernels": "published",
                                     "point_head": False}, grid)
        declared = build_model({"arch": "cylinder3d", "width": 32, "num_classes": 20}, grid)
    unread = 18 * sum(c * c for c in (512, 256, 128, 64))
    assert sum(p.numel() for p in published_net.parameters()) == 55_853_366 - unread
    assert declared.kernels == "declared" and declared.point_head is not None
    with pytest.raises(ParamsError, match="kernels"):
        build_model({"arch": "cylinder3d", "width": 2, "num_classes": 3, "kernels": "trained"}, grid)
