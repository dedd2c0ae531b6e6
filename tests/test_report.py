import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pvkd import report as rp
from pvkd.cli import app, main
from pvkd.errors import DataError, PvkdError

from report_fixtures import EXP_SHOW_JSON, MODELS, metrics_of, write_inputs

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "google-chrome-stable")


def build(paths: dict, **kw) -> rp.Report:
    return rp.build_report(paths["metrics"], paths["eval"], paths["data"], paths["live"], paths["out"],
                           params_path=paths["params"], **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report from the full fake inputs, with the captured experiment table."""
    paths = write_inputs(tmp_path_factory.mktemp("report"))
    return paths, build(paths, exp_show=json.loads(EXP_SHOW_JSON), title="Test report <&>")


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def md_table(md: str, first_header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose first header cell is ``first_header``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


# ---------------------------------------------------------------- numbers


def test_headline_ratios_and_gap_closed_by_hand():
    rows = {r["model"]: r for r in rp.headline(metrics_of())}
    assert list(rows) == ["teacher", "pvkd", "baseline", "hinton", "minkunet"]
    t, p = rows["teacher"], rows["pvkd"]
    assert (t["miou_diff_pts"], t["params_ratio"], t["gap_closed"]) == (None, None, None)
    assert p["miou_diff_pts"] == pytest.approx(-4.0)  # (0.56 - 0.60) x 100
    assert p["params_ratio"] == pytest.approx(0.25)  # 1.0 / 4.0
    assert p["macs_ratio"] == pytest.approx(0.25)  # 5 / 20
    assert p["latency_ratio"] == pytest.approx(1 / 3)  # 40 / 120
    # (student - baseline) / (teacher - baseline) with teacher 0.60, baseline 0.50
    assert p["gap_closed"] == pytest.approx(0.6)
    assert rows["hinton"]["gap_closed"] == pytest.approx(0.3)
    assert rows["minkunet"]["gap_closed"] == pytest.approx(0.45)
    assert rows["minkunet"]["params_ratio"] == pytest.approx(0.3)
    assert rows["baseline"]["gap_closed"] is None
    assert rows["baseline"]["miou_diff_pts"] == pytest.approx(-10.0)


def test_gap_closed_only_with_a_baseline_below_the_teacher():
    no_baseline = {k: v for k, v in MODELS.items() if k != "baseline"}
    assert all(r["gap_closed"] is None for r in rp.headline(metrics_of(no_baseline)))
    m = metrics_of()
    m["baseline"]["miou"] = 0.61  # above the teacher: no positive gap
    assert all(r["gap_closed"] is None for r in rp.headline(m))
    # two "no distillation" students: the one named baseline is the reference
    m = metrics_of()
    m = {"teacher": m["teacher"], "plain": {**m["baseline"], "miou": 0.40}, **{k: m[k] for k in m if k != "teacher"}}
    assert rp.baseline_name(m) == "baseline"
    assert {r["model"]: r["gap_closed"] for r in rp.headline(m)}["plain"] == pytest.approx(-1.0)


def test_missing_values_give_dashes_not_errors():
    m = metrics_of()
    del m["hinton"]["latency_ms"]
    m["minkunet"]["params_m"] = None
    m["pvkd"]["macs_g"] = float("nan")
    rows = {r["model"]: r for r in rp.headline(m)}
    assert rows["hinton"]["latency_ratio"] is None and rows["minkunet"]["params_ratio"] is None
    assert rows["pvkd"]["macs_ratio"] is None
    section, _ = rp.section_headline(m)
    cells = {row[0]: row for row in section.blocks[0].rows}
    assert cells["hinton"][-1] == "–" and cells["pvkd"][-2] == "–"


def test_class_shares_per_split_by_hand():
    stats = pd.DataFrame({
        "split": ["train"] * 4 + ["val"] * 4,
        "band": ["0-10", "10-20"] * 4,
        "class_id": [0, 0, 1, 1] * 2,
        "class_name": ["unlabeled", "unlabeled", "car", "car"] * 2,
        "points": [10, 10, 30, 50, 0, 0, 5, 15],
        "voxels": [0] * 8,
    })
    shares = rp.class_shares(stats)
    assert list(shares.columns) == ["train", "val"] and list(shares.index) == ["unlabeled", "car"]
    assert shares.loc["unlabeled", "train"] == pytest.approx(0.2)  # 20 / 100
    assert shares.loc["car", "train"] == pytest.approx(0.8)
    assert shares.loc["unlabeled", "val"] == 0.0 and shares.loc["car", "val"] == pytest.approx(1.0)


def test_agreement_and_pictured_student():
    label = np.array([0, 1, 1, 1, 1])
    teacher = np.array([1, 1, 1, 2, 2])
    student = np.array([2, 1, 2, 1, 2])
    assert rp.agreement_ids(label, teacher, student).tolist() == [0, 1, 2, 3, 4]
    m = metrics_of()
    assert rp.pictured_student(m, ["teacher", "baseline", "pvkd"]) == "pvkd"
    assert rp.pictured_student(m, ["teacher", "hinton", "baseline"]) == "baseline"  # first student in metrics order
    assert rp.pictured_student(m, ["teacher"]) is None


# ---------------------------------------------------------------- dvc exp show


def test_parse_exp_show_on_captured_sample():
    rows = rp.parse_exp_show(json.loads(EXP_SHOW_JSON))
    assert [(r.name, r.kind) for r in rows] == [
        ("workspace", "workspace"), ("master", "commit"), ("sv20", "experiment"), ("uniform", "experiment"),
        ("aff05", "experiment"),
    ]
    assert [r.changed for r in rows] == [
        ["distill.point_weight"], [], ["distill.supervoxel.size"], ["distill.sampling"], ["distill.affinity_weight"],
    ]
    byname = {r.name: r for r in rows}
    assert byname["master"].miou == {"teacher": 0.6, "pvkd": 0.531, "baseline": 0.5}
    assert byname["aff05"].miou["pvkd"] == 0.561 and byname["aff05"].params["distill.affinity_weight"] == 0.5
    assert byname["sv20"].params["distill.supervoxel.size"] == [20, 10, 2]
    assert byname["workspace"].miou == {} and "No such file" in byname["workspace"].error
    assert byname["master"].error is None

    table = rp.ablation_table(rows)
    assert table.header == ["experiment", "kind", "distill.point_weight", "distill.affinity_weight",
                            "distill.sampling", "distill.supervoxel.size", "teacher mIoU (%)", "pvkd mIoU (%)",
                            "baseline mIoU (%)"]
    assert table.rows == [
        ["workspace (error)", "workspace", "-1", "0.2", "difficulty", "[40, 20, 4]", "–", "–", "–"],
        ["master", "commit", "0.5", "0.2", "difficulty", "[40, 20, 4]", "60.0", "53.1", "50.0"],
        ["sv20", "experiment", "0.5", "0.2", "difficulty", "[20, 10, 2]", "60.0", "53.1", "50.0"],
        ["uniform", "experiment", "0.5", "0.2", "uniform", "[40, 20, 4]", "60.0", "52.1", "50.0"],
        ["aff05", "experiment", "0.5", "0.5", "difficulty", "[40, 20, 4]", "60.0", "56.1", "50.0"],
    ]
    assert table.bold == {(0, 2), (2, 5), (3, 4), (4, 3)}


def test_parse_exp_show_is_defensive():
    sample = json.loads(EXP_SHOW_JSON)
    assert rp.parse_exp_show([]) == [] and rp.parse_exp_show(None) == [] and rp.parse_exp_show([None, 3]) == []
    # the workspace equal to a listed row is not repeated
    clean = [dict(sample[0], data=sample[1]["data"]), sample[1]]
    assert [r.name for r in rp.parse_exp_show(clean)] == ["master", "sv20", "uniform", "aff05"]
    # older key "exps", a group without revs, a rev without data, an errored commit
    commit = dict(sample[1])
    commit["exps"] = commit.pop("experiments") + [{"revs": []}, {"revs": [{"rev": "abc1234def", "data": None}]}]
    commit["error"] = {"type": "X", "msg": "broken"}
    rows = rp.parse_exp_show([commit])
    assert [r.name for r in rows] == ["master", "sv20", "uniform", "aff05", "abc1234"]
    assert rows[0].error == "broken" and rows[-1].params == {} and rows[-1].miou == {}
    # DVC 2's dict keyed by revision
    dvc2 = {"workspace": {"baseline": {"data": sample[0]["data"]}},
            "2adb46b": {"baseline": {"data": {**sample[1]["data"], "name": "master"}},
                        "91d8b4f": {"data": {**sample[1]["experiments"][0]["revs"][0]["data"], "name": "sv20"}}}}
    assert [(r.name, r.changed) for r in rp.parse_exp_show(dvc2)] == [
        ("workspace", ["distill.point_weight"]), ("master", []), ("sv20", ["distill.supervoxel.size"])]


def test_an_edited_workspace_adds_no_columns():
    sample = json.loads(EXP_SHOW_JSON)
    params = sample[0]["data"]["params"]["params.yaml"]["data"]
    params["evaluate"] = {f"knob{i}": i for i in range(7)}  # uncommitted new section: 7 more changed params
    rows = rp.parse_exp_show(sample)
    assert len(rows[0].changed) == 8
    notes = []
    table = rp.ablation_table(rows, notes)
    assert table.header[2:4] == ["distill.affinity_weight", "distill.sampling"] and len(table.header) == 8
    assert table.rows[0][:3] == ["workspace (error)", "workspace", "0.2"] and (0, 2) not in table.bold
    assert notes == ["workspace: 8 params differ from the last commit (distill.point_weight, evaluate.knob0, "
                     "evaluate.knob1, evaluate.knob2, ...): not shown as columns"]


def test_run_exp_show_runs_dvc_and_reports_failure(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw["cwd"]))
        return subprocess.CompletedProcess(cmd, 0, stdout=EXP_SHOW_JSON, stderr="")

    monkeypatch.setattr(rp.experiments.subprocess, "run", fake_run)
    assert rp.run_exp_show(tmp_path) == json.loads(EXP_SHOW_JSON)
    assert calls == [(["dvc", "exp", "show", "--json"], tmp_path)]
    monkeypatch.setattr(rp.experiments.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 255, "", "ERROR: not a DVC repository"))
    with pytest.raises(PvkdError, match="not a DVC repository"):
        rp.run_exp_show(tmp_path)


# ---------------------------------------------------------------- the files


def test_markdown_tables_carry_the_numbers(built):
    paths, report = built
    md = report.markdown.read_text()
    assert md.startswith("# Test report <&>\n")
    assert md_table(md, "model") == [
        ["teacher", "Cylinder3D 1x", "60.0", "–", "–", "4.00", "20.00", "120.0"],
        ["pvkd", "PVKD, Cylinder3D 0.5x", "56.0", "-4.0", "60 %", "1.00 (0.25×)", "5.00 (0.25×)", "40.0 (0.33×)"],
        ["baseline", "no distillation, Cylinder3D 0.5x", "50.0", "-10.0", "baseline", "1.00 (0.25×)",
         "5.00 (0.25×)", "42.0 (0.35×)"],
        ["hinton", "Hinton KD (point KL only), Cylinder3D 0.5x", "53.0", "-7.0", "30 %", "1.00 (0.25×)",
         "5.00 (0.25×)", "41.0 (0.34×)"],
        ["minkunet", "PVKD, MinkUNet from the Cylinder3D teacher", "54.5", "-5.5", "45 %", "1.20 (0.30×)",
         "6.00 (0.30×)", "30.0 (0.25×)"],
    ]
    assert "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" in md  # numbers right-aligned
    shares = {row[0]: row[1:] for row in md_table(md, "class")}
    assert shares["road"] == ["19.9", "19.9", "19.9"] and shares["vegetation"][0] == "26.7"
    ablation = md_table(md, "experiment")
    assert ablation[2] == ["sv20", "experiment", "0.5", "0.2", "difficulty", "**[20, 10, 2]**", "60.0", "53.1",
                           "50.0"]
    assert "```yaml\ndistill:\n  point_weight: 0.5" in md and "<details>" in md
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings == ["Headline", "Per-class IoU", "mIoU by distance", "Accuracy against cost", "Training curves",
                        "One val scan from above", "The data", "Experiments", "Params"]


def test_markdown_figures_are_files_beside_it(built):
    _, report = built
    md = report.markdown.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == [p.name for p in report.figures] and len(links) == 6
    for link in links:
        assert "/" not in link and (report.markdown.parent / link).is_file()
    assert sorted(p.name for p in report.markdown.parent.iterdir()) == sorted(links + ["report.html", "report.md"])


def test_html_is_self_contained_and_every_image_decodes(built):
    _, report = built
    page = report.html.read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<title>Test report &lt;&amp;&gt;</title>" in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    pngs = embedded_pngs(page)
    assert len(srcs) == len(pngs) == len(report.figures) == 6
    for png, path in zip(pngs, report.figures):
        assert png == path.read_bytes()
        image = Image.open(io.BytesIO(png))
        image.verify()
        image = Image.open(io.BytesIO(png)).convert("RGB")
        assert image.width > 300 and image.height > 200
        assert len(image.getcolors(maxcolors=1 << 20) or range(2)) > 2  # not blank
    # numbers right-aligned, tables in order
    assert '<td class="num">56.0</td>' in page and '<td class="num">60 %</td>' in page
    assert "<details><summary>params.yaml</summary>" in page
    assert page.count("<section id=") == 9


def test_same_inputs_same_bytes(built, tmp_path):
    paths, report = built
    again = build({**paths, "out": tmp_path / "again"}, exp_show=json.loads(EXP_SHOW_JSON), title="Test report <&>")
    assert again.markdown.read_bytes() == report.markdown.read_bytes()
    assert again.html.read_bytes() == report.html.read_bytes()  # no time stamps: reruns diff clean


def test_notes_for_models_missing_from_inputs(built):
    _, report = built
    notes = "\n".join(report.notes)
    assert "Training curves: minkunet: no curves" in notes
    assert "Training curves: hinton: no val/miou curve" in notes
    assert "One val scan from above: minkunet: no predictions" in notes
    md = report.markdown.read_text()
    assert "- minkunet: no curves" in md


def test_sparse_inputs_give_notes_never_a_crash(tmp_path):
    paths = write_inputs(tmp_path, curves=(), no_val_curve=(), scan_models=("pvkd",))
    m = json.loads(paths["metrics"].read_text())
    del m["hinton"]["iou"], m["hinton"]["miou_by_distance"]  # -> read from the CSVs
    del m["minkunet"]["iou"]
    m["minkunet"]["miou_by_distance"] = {}
    paths["metrics"].write_text(json.dumps(m))
    csv = pd.read_csv(paths["eval"] / "per_class_iou.csv")
    csv[csv["model"] != "minkunet"].to_csv(paths["eval"] / "per_class_iou.csv", index=False)
    (paths["eval"] / "distance_miou.csv").unlink()
    shutil.rmtree(paths["data"])
    shutil.rmtree(paths["live"], ignore_errors=True)
    report = build(paths)
    notes = "\n".join(report.notes)
    assert "Per-class IoU: minkunet: no per-class IoU" in notes and "hinton: no per-class" not in notes
    assert "mIoU by distance: minkunet: no mIoU by distance" in notes
    assert "mIoU by distance: hinton" in notes  # its CSV fallback is gone too
    assert "the picture needs the teacher's and a student's predictions" in notes
    assert "meta.json: not found" in notes
    assert "Training curves: teacher: no curves" in notes
    names = {p.name for p in report.figures}
    assert names == {"fig-per-class-iou.png", "fig-distance-miou.png", "fig-accuracy-cost.png"}
    assert "Experiments" not in report.markdown.read_text()


def test_out_folder_is_replaced_whole_but_never_a_foreign_one(built, tmp_path):
    paths, _ = built
    out = tmp_path / "r"
    out.mkdir()
    (out / "fig-old.png").write_bytes(b"x")
    report = rp.build_report(paths["metrics"], paths["eval"], paths["data"], paths["live"], out,
                             params_path=paths["params"])
    assert not (out / "fig-old.png").exists() and report.html.is_file()
    assert not (tmp_path / "r.partial").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a report's"):
        rp.build_report(paths["metrics"], paths["eval"], paths["data"], paths["live"], out)
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- the command


def cli_args(paths: dict) -> list[str]:
    return ["report", "--params", str(paths["params"]), "--metrics", str(paths["metrics"]), "--eval",
            str(paths["eval"]), "--data", str(paths["data"]), "--live", str(paths["live"]), "--out", str(paths["out"])]


def test_command_writes_both_files_and_experiments(tmp_path, monkeypatch):
    paths = write_inputs(tmp_path)
    monkeypatch.setattr(rp.experiments.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=EXP_SHOW_JSON, stderr=""))
    result = runner.invoke(app, cli_args(paths) + ["--experiments"])
    assert result.exit_code == 0, result.output
    assert "6 figures" in result.output and "note:" in result.output
    md = (paths["out"] / "report.md").read_text()
    assert md.startswith("# Test report <&>") and "## Experiments" in md
    assert "<h2>Experiments</h2>" in (paths["out"] / "report.html").read_text()


def test_help_and_missing_metrics_is_one_line_naming_the_stage(tmp_path, monkeypatch, capsys):
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    for option in ("--metrics", "--eval", "--live", "--experiments", "report.html"):
        assert option in result.output
    paths = write_inputs(tmp_path)
    paths["metrics"].unlink()
    monkeypatch.setattr("sys.argv", ["pvkd", *cli_args(paths)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "dvc repro evaluate" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not paths["out"].exists()


# ---------------------------------------------------------------- in a real browser


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def chromium(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)


def test_chromium_renders_every_figure(built, tmp_path):
    """Headless Chromium decodes each embedded figure and paints a non-blank page (skipped without a browser).

    Install one with `apt-get install chromium` (Debian); the report itself has no script, so the
    check loads a copy with a probe appended that writes every image's decoded size into the DOM.
    """
    exe = browser()
    if exe is None:
        pytest.skip(f"no headless browser on PATH ({', '.join(BROWSERS)}); apt-get install chromium")
    _, report = built
    page = report.html.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>addEventListener('load', () => document.body.setAttribute("
                                             "'data-decoded', [...document.images].map(i => i.complete ? "
                                             "i.naturalWidth + 'x' + i.naturalHeight : 'pending').join(' ')))"
                                             "</script></body>"))
    done = chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    decoded = re.search(r'data-decoded="([^"]*)"', done.stdout)
    assert decoded, done.stdout[:500]
    sizes = decoded.group(1).split()
    expected = []
    for png in embedded_pngs(page):
        image = Image.open(io.BytesIO(png))
        expected.append(f"{image.width}x{image.height}")
    assert sizes == expected  # every figure decoded at its full size

    shot = tmp_path / "shot.png"
    done = chromium(exe, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", report.html.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.shape == (2400, 1280)
    assert image.std() > 20 and (image < 128).mean() > 0.005  # text and figures, not a blank page


def test_labels_of_models_with_the_same_cost_are_stacked_apart():
    # three students of one architecture share MACs and nearly share mIoU (this once looped forever)
    import matplotlib.pyplot as plt

    from pvkd.report import _place_labels

    fig, ax = plt.subplots()
    xs, ys = np.array([2.529, 2.529, 2.529, 10.0]), np.array([39.99, 39.59, 38.74, 47.37])
    ax.scatter(xs, ys)
    _place_labels(ax, xs, ys, ["pvkd", "baseline", "hinton", "teacher"], ["k"] * 4)
    fig.canvas.draw()
    heights = sorted(t.get_window_extent().y0 for t in ax.texts[:3])
    assert len(ax.texts) == 4
    assert min(b - a for a, b in zip(heights, heights[1:])) > 5  # pixels: no two labels on one line
    plt.close(fig)


def test_the_data_section_leaves_unlabelled_splits_out_of_the_class_shares(tmp_path):
    from pvkd.report.blocks import Columns
    from pvkd.report.sections import section_data

    from report_fixtures import stats_table, write_processed

    stats = stats_table({"train": 1000, "unlabelled": 0})
    stats.loc[(stats.split == "unlabelled") & (stats.class_id == 0), "points"] = 700  # every label 0
    write_processed(tmp_path, stats, {"train": {"labelled": True, "scans": 4, "points": 1000},
                                      "unlabelled": {"labelled": False, "scans": 7, "points": 4200}})
    section = section_data(tmp_path)
    assert "unlabelled (unlabelled): 7 scans" in section.blocks[0]
    table = next(b for b in section.blocks if isinstance(b, Columns)).blocks[0]
    assert table.header == ["class", "train (%)", "SemanticKITTI train (%)"]


def test_a_model_scored_on_sequences_it_trained_on_is_marked_not_held_out():
    from pvkd.report.inputs import headline

    from report_fixtures import metrics_of

    metrics = metrics_of()
    metrics["pvkd"]["trained_on_scored_sequences"] = ["08"]  # evaluate --allow-trained-on
    rows = {r["model"]: r["description"] for r in headline(metrics)}
    assert rows["pvkd"] == "PVKD, Cylinder3D 0.5x [not held out: trained on 1 scored sequence(s)]"
    assert rows["baseline"] == "no distillation, Cylinder3D 0.5x"
