"""The report's "How sure" section: committed seed studies read, tabled, pictured, and quoted under the headline.

The two study files are written here with round numbers, in the formats of bench/distill_seeds.py
and bench/label_budget.py; every expected cell is worked out by hand in the comments.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pvkd import report as rp
from pvkd.cli import app
from pvkd.report.figures import model_colors
from pvkd.report.sections import section_seed_studies, seed_table
from pvkd.report.studies import load_study

from report_fixtures import write_inputs

# bench/distill_seeds.py: per-seed lists in the order of "seeds"; teacher 52, baseline 42 -> a 10-point gap
DISTILL = {
    "device": "cpu (test)", "teacher_miou": 0.52, "seeds": [0, 1, 2], "train_epochs": 2,
    "summary": {
        "baseline": {"mean": 0.42, "std": 0.02, "per_seed": [0.40, 0.42, 0.44]},
        "pvkd": {"mean": 0.47, "std": 0.02, "per_seed": [0.45, 0.47, 0.49], "paired_gain_per_seed": [0.05, 0.05, 0.05],
                 "gain_over_baseline": 0.05, "gain_beyond_2_std": True, "gap_closed": 0.5},
        "hinton": {"mean": 0.44, "std": 0.026457513110645904, "per_seed": [0.43, 0.42, 0.47],
                   "paired_gain_per_seed": [0.03, 0.0, 0.03], "gain_over_baseline": 0.02, "gain_beyond_2_std": False,
                   "gap_closed": 0.2},
        "bad": {"mean": 0.31, "std": 0.01, "per_seed": [0.30, 0.31, 0.32],
                "paired_gain_per_seed": [-0.10, -0.11, -0.12], "gain_over_baseline": -0.11, "gain_beyond_2_std": False,
                "gap_closed": -1.1},
    },
}

# bench/label_budget.py: summary[steps][labelled streets][student], per-seed dicts in the order the runs
# finished, paired gains over the seeds both have in numeric order; steps listed out of order on purpose
LABEL = {
    "device": "cpu (test)", "seeds": [0, 1, 2], "teacher_steps": 800,
    "budgets": {"1": {"teacher_miou": 0.40, "labelled_scans": 25, "unlabelled_streets": 7, "runs": []},
                "8": {"teacher_miou": 0.60, "labelled_scans": 200, "unlabelled_streets": 0, "runs": []}},
    "summary": {
        "1600": {"1": {
            "baseline": {"per_seed": {"0": 0.40}, "mean": 0.40, "std": 0.0},
            "hinton": {"per_seed": {"0": 0.38}, "mean": 0.38, "std": 0.0, "paired_gain_per_seed": [-0.02],
                       "gain_over_baseline": -0.02, "gain_beyond_2_std": False},
        }},
        "400": {
            "1": {
                "pseudo": {"per_seed": {"0": 0.31, "1": 0.33, "2": 0.35}, "mean": 0.33, "std": 0.02,
                           "paired_gain_per_seed": [0.01, 0.01, 0.01], "gain_over_baseline": 0.01,
                           "gain_beyond_2_std": False, "full_label_baseline": 0.52, "gap_to_full_labels_closed": 0.05},
                "baseline": {"per_seed": {"0": 0.30, "1": 0.32, "2": 0.34}, "mean": 0.32, "std": 0.02},
                "pvkd": {"per_seed": {"2": 0.39, "0": 0.36, "1": 0.39}, "mean": 0.38, "std": 0.017320508075688773,
                         "paired_gain_per_seed": [0.06, 0.07, 0.05], "gain_over_baseline": 0.06,
                         "gain_beyond_2_std": True, "full_label_baseline": 0.52, "gap_to_full_labels_closed": 0.3},
            },
            "8": {"baseline": {"per_seed": {"0": 0.50, "1": 0.52, "2": 0.54}, "mean": 0.52, "std": 0.02}},
        },
    },
}


def write_study(folder, name: str, data: dict):
    path = folder / name
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    return write_study(folder, "distill_seeds_test.json", DISTILL), write_study(folder, "label_budget_test.json", LABEL)


@pytest.fixture(scope="module")
def built(tmp_path_factory, studies):
    """One report from the fake pipeline inputs with both studies and a missing third one."""
    paths = write_inputs(tmp_path_factory.mktemp("report"))
    missing = studies[0].parent / "not_run_yet.json"
    report = rp.build_report(paths["metrics"], paths["eval"], paths["data"], paths["live"], paths["out"],
                             params_path=paths["params"], seed_studies=[*studies, missing])
    return report, studies, missing


# ---------------------------------------------------------------- the numbers


def test_distill_seeds_study_by_hand(studies):
    study, note = load_study(studies[0])
    assert note is None and study.kind == "distill_seeds" and study.baseline == "baseline"
    assert study.teacher_miou == {None: 0.52} and len(study.tables) == 1
    table = seed_table(study, study.tables[0])
    assert table.header == ["model", "mIoU (%)", "per seed (%)", "gain (pts)", "paired gain per seed (pts)",
                            "2σ (pts)", "verdict", "gap closed"]
    assert table.rows == [
        # the baseline first, then the file's order
        ["baseline", "42.00 ± 2.00", "40.00, 42.00, 44.00", "–", "–", "–", "reference", "–"],
        # 2σ = 2 x max(2.00, 2.00) = 4.00 < +5.00: beyond; gap closed 5 / (52 - 42)
        ["pvkd", "47.00 ± 2.00", "45.00, 47.00, 49.00", "+5.00", "+5.00, +5.00, +5.00", "4.00", "beyond 2σ", "50 %"],
        # std of 43, 42, 47 = sqrt((1 + 4 + 9) / 2) = 2.65; 2σ = 5.29 > +2.00: noise
        ["hinton", "44.00 ± 2.65", "43.00, 42.00, 47.00", "+2.00", "+3.00, +0.00, +3.00", "5.29", "within noise",
         "20 %"],
        # -11 points, further below than 2σ = 4.00: the file's flag (gain > 2σ) is false, but this is no noise
        ["bad", "31.00 ± 1.00", "30.00, 31.00, 32.00", "-11.00", "-10.00, -11.00, -12.00", "4.00", "worse, beyond 2σ",
         "-110 %"],
    ]
    assert table.caption == f"`{studies[0]}`: committed study, 3 seeds, not this pipeline run."


def test_label_budget_study_by_hand(studies):
    study, note = load_study(studies[1])
    assert note is None and study.kind == "label_budget"
    assert study.teacher_miou == {1: 0.40, 8: 0.60} and study.total_streets == 8 and study.teacher_steps == 800
    assert [t.steps for t in study.tables] == [400, 1600]  # numeric order
    short, long = (seed_table(study, t) for t in study.tables)
    assert short.header == ["labelled streets", "model", "mIoU (%)", "per seed (%)", "gain (pts)",
                            "paired gain per seed (pts)", "2σ (pts)", "verdict", "gap to full labels closed"]
    assert short.rows == [
        ["1/8", "baseline", "32.00 ± 2.00", "30.00, 32.00, 34.00", "–", "–", "–", "reference", "–"],
        ["1/8", "pseudo", "33.00 ± 2.00", "31.00, 33.00, 35.00", "+1.00", "+1.00, +1.00, +1.00", "4.00",
         "within noise", "5 %"],
        # seeds in numeric order 0, 1, 2: 36 - 30, 39 - 32, 39 - 34; std sqrt((4 + 1 + 1) / 2) = 1.73;
        # 2σ = 2 x max(1.73, 2.00); gap to full labels (38 - 32) / (52 - 32)
        ["1/8", "pvkd", "38.00 ± 1.73", "36.00, 39.00, 39.00", "+6.00", "+6.00, +7.00, +5.00", "4.00", "beyond 2σ",
         "30 %"],
        ["8/8", "baseline", "52.00 ± 2.00", "50.00, 52.00, 54.00", "–", "–", "–", "reference", "–"],
    ]
    assert short.caption == f"400 student steps, `{studies[1]}`: committed study, 3 seeds, not this pipeline run."
    # one seed: no std, no noise level, no verdict either way
    assert long.header[-1] == "verdict"
    assert long.rows == [
        ["1/8", "baseline", "40.00 (1 seed)", "40.00", "–", "–", "–", "reference"],
        ["1/8", "hinton", "38.00 (1 seed)", "38.00", "-2.00", "-2.00", "–", "too few seeds"],
    ]
    assert "committed study, 1 seed, not this pipeline run" in long.caption


def test_baseline_found_or_absent_in_a_distill_seeds_study(tmp_path):
    renamed = {"seeds": [0, 1], "summary": {
        "plain": {"mean": 0.4, "std": 0.01, "per_seed": [0.39, 0.41]},
        "pvkd": {"mean": 0.41, "std": 0.01, "per_seed": [0.40, 0.42], "paired_gain_per_seed": [0.01, 0.01],
                 "gain_over_baseline": 0.01, "gain_beyond_2_std": False}}}
    study, _ = load_study(write_study(tmp_path, "renamed.json", renamed))
    assert study.baseline == "plain" and [r.verdict for r in study.tables[0].rows] == ["reference", "within noise"]
    alone = {"seeds": [0, 1], "summary": {k: {"mean": 0.4, "std": 0.01, "per_seed": [0.39, 0.41]}
                                          for k in ("pvkd", "hinton")}}
    study, _ = load_study(write_study(tmp_path, "alone.json", alone))
    assert study.baseline is None and [r.verdict for r in study.tables[0].rows] == [None, None]
    assert seed_table(study, study.tables[0]).rows[0][-1] == "–"


def test_unreadable_study_files_give_notes(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    write_study(tmp_path, "other.json", {"results": []})
    write_study(tmp_path, "empty.json", {"budgets": {}, "summary": {}})
    notes = [load_study(tmp_path / name)[1] for name in ("absent.json", "broken.json", "other.json", "empty.json")]
    assert notes[0].endswith("absent.json: not found (listed in report.seed_studies)")
    assert "not readable JSON" in notes[1]
    assert "not a result of bench/distill_seeds.py or bench/label_budget.py" in notes[2]
    assert "no student with a score over seeds yet" in notes[3]
    assert all(load_study(tmp_path / n)[0] is None for n in ("absent.json", "broken.json", "other.json"))


# ---------------------------------------------------------------- the figure


def test_label_budget_figure_renders(studies):
    study, _ = load_study(studies[1])
    colors = model_colors(["teacher", "pvkd", "baseline", "hinton", "pseudo"], "teacher")
    section = section_seed_studies([study], [], colors)
    figures = [b for b in section.blocks if isinstance(b, rp.Figure)]
    assert [f.name for f in figures] == ["fig-seeds-label-budget-test"]
    image = Image.open(io.BytesIO(figures[0].png))
    image.verify()
    image = np.asarray(Image.open(io.BytesIO(figures[0].png)).convert("RGB"))
    assert image.shape[1] > 600 and image.shape[0] > 200  # two panels: 400 and 1600 steps
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2  # not blank
    for model in ("pvkd", "baseline", "pseudo"):  # each student drawn in its report colour
        rgb = np.array([int(colors[model][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(image.astype(int) - rgb).sum(axis=2) < 10).any(), model


# ---------------------------------------------------------------- in the report


def test_report_has_the_section_after_the_headline(built):
    report, studies, missing = built
    md = report.markdown.read_text()
    headings = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["Headline", "How sure: gains over seeds", "Per-class IoU"]
    assert f"400 student steps, `{studies[1]}`: committed study, 3 seeds, not this pipeline run." in md
    assert f"`{studies[0]}`: committed study, 3 seeds, not this pipeline run." in md
    assert "| 1/8 | pvkd | 38.00 ± 1.73 | 36.00, 39.00, 39.00 | +6.00 |" in md
    assert f"How sure: gains over seeds: {missing}: not found (listed in report.seed_studies)" in report.notes
    assert "fig-seeds-label-budget-test.png" in [p.name for p in report.figures]
    page = report.html.read_text()
    assert f"<caption><code>{studies[0]}</code>: committed study, 3 seeds, not this pipeline run.</caption>" in page


def test_headline_gap_closed_is_single_seed_and_points_at_the_study(built):
    report, studies, _ = built
    md = report.markdown.read_text()
    assert "| model | description | mIoU (%) | Δ mIoU (pts) | gap closed (1 seed) |" in md
    headline = md.split("## How sure")[0]
    assert (f"Over seeds, pvkd: +5.00 points over baseline in `{studies[0]}` (committed study, 3 seeds; per seed "
            "+5.00, +5.00, +5.00; 2σ = 4.00): beyond 2σ, gap closed 50 %.") in headline
    assert (f"Over seeds, hinton: +2.00 points over baseline in `{studies[0]}` (committed study, 3 seeds; per seed "
            "+3.00, +0.00, +3.00; 2σ = 5.29): within noise, gap closed 20 %.") in headline
    # minkunet is in no study; the label-budget study is another setting and is not quoted here
    assert "Over seeds, minkunet" not in headline and "label_budget_test" not in headline


def test_without_studies_no_section_and_no_quotes(tmp_path, studies):
    section, _ = rp.section_headline(rp.load_metrics(write_inputs(tmp_path)["metrics"]))
    assert section.blocks[0].header[4] == "gap closed (1 seed)"
    assert not any(isinstance(b, str) and b.startswith("Over seeds") for b in section.blocks)


def test_command_reads_the_studies_from_params_or_studies_option(tmp_path, studies):
    paths = write_inputs(tmp_path)
    paths["params"].write_text(paths["params"].read_text() + f"  seed_studies:\n    - {studies[0]}\n")
    args = ["report", "--params", str(paths["params"]), "--metrics", str(paths["metrics"]), "--eval",
            str(paths["eval"]), "--data", str(paths["data"]), "--live", str(paths["live"]), "--out", str(paths["out"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    section = (paths["out"] / "report.md").read_text().split("## How sure: gains over seeds")[1].split("\n## ")[0]
    assert "distill_seeds_test.json" in section and "label_budget_test" not in section
    result = CliRunner().invoke(app, [*args, "--studies", str(studies[1])])  # the option wins over the params
    assert result.exit_code == 0, result.output
    section = (paths["out"] / "report.md").read_text().split("## How sure: gains over seeds")[1].split("\n## ")[0]
    assert "label_budget_test.json" in section and "distill_seeds_test.json" not in section
    assert "7 figures" in result.output
