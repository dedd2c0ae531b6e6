"""The report's "How sure" section: committed seed studies read, tabled, pictured, and quoted under the headline.

The study files are written here with round numbers, in the formats of bench/distill_seeds.py and
bench/label_budget.py; every expected cell is worked out by hand in the comments. With 3 pairs a
95 % t-interval is mean +- t(0.975, 2) sd / sqrt(3), t(0.975, 2) = 0.95 / sqrt(2 x 0.975 x 0.025)
= 4.302653, so +- 2.484 sd; the two-sided p of t with 2 df is 1 - |t| / sqrt(t^2 + 2).
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

TITLE = "How sure: paired differences over seeds"

# bench/distill_seeds.py: per-seed dicts; teacher 52, baseline 40, 42, 44. The hinton cell carries a stale
# summary (an unpaired gain, a wrong paired mean): the report reads only the per-seed scores.
DISTILL = {
    "device": "cpu (test)", "teacher_miou": 0.52, "seeds": [0, 1, 2], "train_epochs": 2, "baseline": "baseline",
    "summary": {
        "baseline": {"per_seed": {"0": 0.40, "1": 0.42, "2": 0.44}},
        "pvkd": {"per_seed": {"0": 0.44, "1": 0.47, "2": 0.50}},
        "hinton": {"per_seed": {"0": 0.43, "1": 0.42, "2": 0.47}, "gain_over_baseline": 0.5,
                   "vs_baseline": {"baseline": "baseline", "mean": 0.09, "verdict": "gain"}},
        "bad": {"per_seed": {"0": 0.30, "1": 0.31, "2": 0.32}},
    },
}

# bench/label_budget.py: summary[steps][labelled streets][student]; steps listed out of order on purpose, pvkd's
# seeds out of order and with a seed 5 the baseline lacks
LABEL = {
    "device": "cpu (test)", "seeds": [0, 1, 2, 5], "teacher_steps": 800,
    "budgets": {"1": {"teacher_miou": 0.40, "labelled_scans": 25, "unlabelled_streets": 7, "runs": []},
                "2": {"teacher_miou": 0.45, "labelled_scans": 50, "unlabelled_streets": 6, "runs": []},
                "8": {"teacher_miou": 0.60, "labelled_scans": 200, "unlabelled_streets": 0, "runs": []}},
    "summary": {
        "1600": {"1": {
            "baseline": {"per_seed": {"0": 0.40}},
            "hinton": {"per_seed": {"0": 0.38}},
        }},
        "400": {
            "1": {
                "pseudo": {"per_seed": {"0": 0.31, "1": 0.32, "2": 0.36}},
                "baseline": {"per_seed": {"0": 0.30, "1": 0.32, "2": 0.34}},
                "pvkd": {"per_seed": {"2": 0.39, "0": 0.36, "1": 0.39, "5": 0.50}},
            },
            "2": {"baseline": {"per_seed": {"0": 0.48, "1": 0.52, "2": 0.53}},
                  "hinton": {"per_seed": {"0": 0.50, "1": 0.52, "2": 0.54}}},
            "8": {"baseline": {"per_seed": {"0": 0.49, "1": 0.52, "2": 0.55}}},
        },
    },
}

# bench/semi_supervised.py: three comparisons of one budget, each against its own baseline; the file's stale
# summary means (0.99) are not read, only the per-seed scores
BASE, SEMI, HINTON, PVKD = ({"0": a, "1": b, "2": c} for a, b, c in
                            ((0.40, 0.42, 0.44), (0.41, 0.45, 0.46), (0.40, 0.45, 0.47), (0.44, 0.47, 0.50)))
SEMI_STUDY = {
    "device": "cpu (test)", "budget": "1/8", "steps": 1600, "teacher_steps": 1200, "semi_teacher_seed_distilled": 1,
    "runs": [{"cell": "semi-teacher", "seed": 0, "effective": {"train": {"semi": {"mixed_scans": 1}}}}],
    "summary": {
        "teachers": {"supervised": {"per_seed": BASE, "mean": 0.99}, "semi": {"per_seed": PVKD}},
        "students": {"baseline": {"per_seed": BASE}, "semi": {"per_seed": SEMI}, "hinton": {"per_seed": HINTON},
                     "pvkd": {"per_seed": PVKD}, "full": {"per_seed": {"0": 0.49, "1": 0.52, "2": 0.55}}},
        "students_vs_semi": {"semi": {"per_seed": SEMI}, "hinton": {"per_seed": HINTON}, "pvkd": {"per_seed": PVKD}},
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
    assert table.header == ["model", "mIoU (%)", "per seed (%)", "diff (pts)", "95 % interval (pts)", "p", "pairs",
                            "verdict"]
    assert table.rows == [
        # the baseline first, then the file's order
        ["baseline", "42.00 ± 2.00", "40.00, 42.00, 44.00", "–", "–", "–", "–", "reference"],
        # differences 4, 5, 6: mean 5, sd 1: 5 +- 2.48 = [2.52, 7.48] above 0; t = 5 sqrt(3),
        # p = 1 - sqrt(75 / 77) = 0.0131
        ["pvkd", "47.00 ± 3.00", "44.00, 47.00, 50.00", "+5.00", "[+2.52, +7.48]", "0.013", "3", "gain"],
        # differences 3, 0, 3: mean 2, sd sqrt(3), se 1: 2 +- 4.30 = [-2.30, +6.30]; t = 2, p = 1 - 2 / sqrt(6)
        # = 0.1835 (the file's stale +50-point "gain" is not read); std of 43, 42, 47 = sqrt(14 / 2) = 2.65
        ["hinton", "44.00 ± 2.65", "43.00, 42.00, 47.00", "+2.00", "[-2.30, +6.30]", "0.184", "3", "within noise"],
        # differences -10, -11, -12: mean -11, sd 1: [-13.48, -8.52] below 0; p = 1 - sqrt(363 / 365) = 0.0027
        ["bad", "31.00 ± 1.00", "30.00, 31.00, 32.00", "-11.00", "[-13.48, -8.52]", "0.003", "3", "loss"],
    ]
    assert table.caption == f"`{studies[0]}`: committed study, 3 seeds, not this pipeline run."


def test_label_budget_study_by_hand(studies):
    study, note = load_study(studies[1])
    assert note is None and study.kind == "label_budget"
    assert study.teacher_miou == {1: 0.40, 2: 0.45, 8: 0.60} and study.total_streets == 8
    assert study.teacher_steps == 800
    assert [t.steps for t in study.tables] == [400, 1600]  # numeric order
    short, long = (seed_table(study, t) for t in study.tables)
    assert short.header == ["labelled streets", "model", "mIoU (%)", "per seed (%)", "diff (pts)",
                            "95 % interval (pts)", "p", "pairs", "verdict", "share of the label gap"]
    assert short.rows == [
        ["1/8", "baseline", "32.00 ± 2.00", "30.00, 32.00, 34.00", "–", "–", "–", "–", "reference", "–"],
        # differences 1, 0, 2: mean 1, sd 1: [-1.48, +3.48]; t = sqrt(3), p = 1 - sqrt(3 / 5) = 0.2254;
        # share 1 / 20 of the 1/8 label gap (whose interval excludes 0)
        ["1/8", "pseudo", "33.00 ± 2.65", "31.00, 32.00, 36.00", "+1.00", "[-1.48, +3.48]", "0.225", "3",
         "within noise", "5 %"],
        # seed 5 has no baseline: 3 pairs, 36 - 30, 39 - 32, 39 - 34 = 6, 7, 5: [3.52, 8.48],
        # p = 1 - sqrt(108 / 110) = 0.0091; share 6 / 20. Its own spread is over all 4 seeds:
        # 36, 39, 39, 50 -> mean 41, std sqrt((25 + 4 + 4 + 81) / 3) = 6.16
        ["1/8", "pvkd", "41.00 ± 6.16", "36.00, 39.00, 39.00, 50.00", "+6.00", "[+3.52, +8.48]", "0.009", "3",
         "gain", "30 %"],
        # std of 48, 52, 53: sqrt((9 + 1 + 4) / 2) = 2.65
        ["2/8", "baseline", "51.00 ± 2.65", "48.00, 52.00, 53.00", "–", "–", "–", "–", "reference", "–"],
        # differences 2, 0, 1: mean 1, sd 1: within noise; the 2/8 label gap holds 0, so no share
        ["2/8", "hinton", "52.00 ± 2.00", "50.00, 52.00, 54.00", "+1.00", "[-1.48, +3.48]", "0.225", "3",
         "within noise", "–"],
        ["8/8", "baseline", "52.00 ± 3.00", "49.00, 52.00, 55.00", "–", "–", "–", "–", "reference", "–"],
    ]
    assert short.caption == f"400 student steps, `{studies[1]}`: committed study, up to 4 seeds, not this pipeline run."
    # one pair: its difference, but no interval, no p, no verdict either way; no 8/8 run, no label gap
    assert long.header[-1] == "verdict"
    assert long.rows == [
        ["1/8", "baseline", "40.00 (1 seed)", "40.00", "–", "–", "–", "–", "reference"],
        ["1/8", "hinton", "38.00 (1 seed)", "38.00", "-2.00", "–", "–", "1", "too few seeds"],
    ]
    assert "committed study, 1 seed, not this pipeline run" in long.caption
    # 8/8 minus 1/8: 49 - 30, 52 - 32, 55 - 34 = 19, 20, 21: [17.52, 22.48], p = 1 - sqrt(1200 / 1202) = 0.0008;
    # 8/8 minus 2/8: 1, 0, 2: within noise
    gaps = study.tables[0].label_gaps
    assert gaps[1].verdict == "gain" and gaps[1].mean == pytest.approx(0.20)
    assert gaps[1].p == pytest.approx(1 - (1200 / 1202) ** 0.5, rel=1e-6)
    assert gaps[2].verdict == "within noise" and study.tables[1].label_gaps == {}


def test_semi_supervised_study_by_hand(tmp_path):
    study, note = load_study(write_study(tmp_path, "semi_supervised_test.json", SEMI_STUDY))
    assert note is None and study.kind == "semi_supervised" and study.total_streets == 8
    teachers, students, vs_semi = (seed_table(study, t) for t in study.tables)
    assert teachers.rows == [
        ["supervised", "42.00 ± 2.00", "40.00, 42.00, 44.00", "–", "–", "–", "–", "reference"],
        # differences 4, 5, 6: mean 5, sd 1: [+2.52, +7.48], p = 1 - sqrt(75 / 77) = 0.0131
        ["semi", "47.00 ± 3.00", "44.00, 47.00, 50.00", "+5.00", "[+2.52, +7.48]", "0.013", "3", "gain"],
    ]
    assert teachers.caption.startswith("Teachers (supervised against semi-supervised), `")
    assert students.caption.startswith("0.5x students against the labelled-only one, 1600 student steps, `")
    # the label gap: full minus baseline 9, 10, 11: mean 10, sd 1: [+7.52, +12.48], a gain, so shares are shown
    assert students.header[-1] == "share of the label gap"
    assert students.rows == [
        ["baseline", "42.00 ± 2.00", "40.00, 42.00, 44.00", "–", "–", "–", "–", "reference", "–"],
        # differences 1, 3, 2: mean 2, sd 1: [-0.48, +4.48], p = 1 - sqrt(12 / 14) = 0.0742; 2 / 10 of the gap;
        # std of 41, 45, 46: sqrt((9 + 1 + 4) / 2) = 2.65
        ["semi", "44.00 ± 2.65", "41.00, 45.00, 46.00", "+2.00", "[-0.48, +4.48]", "0.074", "3", "within noise",
         "20 %"],
        # differences 0, 3, 3: mean 2, sd sqrt(3): [-2.30, +6.30], p 0.184; std of 40, 45, 47: sqrt(13) = 3.61
        ["hinton", "44.00 ± 3.61", "40.00, 45.00, 47.00", "+2.00", "[-2.30, +6.30]", "0.184", "3", "within noise",
         "20 %"],
        ["pvkd", "47.00 ± 3.00", "44.00, 47.00, 50.00", "+5.00", "[+2.52, +7.48]", "0.013", "3", "gain", "50 %"],
        # the gap itself: no share of itself; p = 1 - sqrt(300 / 302) = 0.0033
        ["full", "52.00 ± 3.00", "49.00, 52.00, 55.00", "+10.00", "[+7.52, +12.48]", "0.003", "3", "gain", "–"],
    ]
    assert vs_semi.rows == [
        ["semi", "44.00 ± 2.65", "41.00, 45.00, 46.00", "–", "–", "–", "–", "reference"],
        # differences -1, 0, 1: mean 0, sd 1: [-2.48, +2.48], p 1
        ["hinton", "44.00 ± 3.61", "40.00, 45.00, 47.00", "+0.00", "[-2.48, +2.48]", "1.000", "3", "within noise"],
        # differences 3, 2, 4: mean 3, sd 1: [+0.52, +5.48], p = 1 - sqrt(27 / 29) = 0.0351
        ["pvkd", "47.00 ± 3.00", "44.00, 47.00, 50.00", "+3.00", "[+0.52, +5.48]", "0.035", "3", "gain"],
    ]
    section = section_seed_studies([study], [], {})
    text = " ".join(b for b in section.blocks if isinstance(b, str))
    assert "1/8 of the train streets are labelled" in text and "Teachers (Cylinder3D) train 1200 steps" in text
    assert "(train.semi, 1 mixed scan per labelled x unlabelled pair)" in text
    assert "The 0.5x students train 1600 steps" in text and "semi-supervised teacher of seed 1 " in text
    assert ("Label gap at 1600 steps (8/8 baseline minus the budget's, paired): 1/8: +10.00 points, 95 % interval "
            "[+7.52, +12.48], p 0.003, 3 pairs: gain.") in text


def test_baseline_found_or_absent_in_a_distill_seeds_study(tmp_path):
    # an older file: per-seed lists in the order of "seeds", the baseline named only by the others' comparisons
    older = {"seeds": [3, 4], "summary": {
        "plain": {"mean": 0.4, "std": 0.01, "per_seed": [0.39, 0.41]},
        "pvkd": {"per_seed": [0.40, 0.43], "vs_baseline": {"baseline": "plain"}},
        "short": {"per_seed": [0.40]}}}  # a list that does not match the seeds cannot be paired: left out
    study, _ = load_study(write_study(tmp_path, "older.json", older))
    assert study.baseline == "plain" and [r.model for r in study.tables[0].rows] == ["plain", "pvkd"]
    pvkd = study.tables[0].rows[1]
    assert pvkd.per_seed == {"3": 0.40, "4": 0.43} and pvkd.vs_baseline.differences == pytest.approx((0.01, 0.02))
    assert [r.verdict for r in study.tables[0].rows] == ["reference", "within noise"]
    alone = {"seeds": [0, 1], "baseline": None, "summary": {k: {"per_seed": {"0": 0.39, "1": 0.41}}
                                                            for k in ("pvkd", "hinton")}}
    study, _ = load_study(write_study(tmp_path, "alone.json", alone))
    assert study.baseline is None and [r.verdict for r in study.tables[0].rows] == [None, None]
    assert seed_table(study, study.tables[0]).rows[0][-5:] == ["–"] * 5


def test_unreadable_study_files_give_notes(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    write_study(tmp_path, "other.json", {"results": []})
    write_study(tmp_path, "empty.json", {"budgets": {}, "summary": {}})
    notes = [load_study(tmp_path / name)[1] for name in ("absent.json", "broken.json", "other.json", "empty.json")]
    assert notes[0].endswith("absent.json: not found (listed in report.seed_studies)")
    assert "not readable JSON" in notes[1]
    assert "not a result of bench/distill_seeds.py, bench/label_budget.py or bench/semi_supervised.py" in notes[2]
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
    assert headings[:3] == ["Headline", TITLE, "Per-class IoU"]
    assert f"400 student steps, `{studies[1]}`: committed study, up to 4 seeds, not this pipeline run." in md
    assert f"`{studies[0]}`: committed study, 3 seeds, not this pipeline run." in md
    assert "| 1/8 | pvkd | 41.00 ± 6.16 | 36.00, 39.00, 39.00, 50.00 | +6.00 | [+3.52, +8.48] | 0.009 | 3 | gain |" \
        in md
    assert ("Label gap at 400 steps (8/8 baseline minus the budget's, paired): 1/8: +20.00 points, 95 % interval "
            "[+17.52, +22.48], p < 0.001, 3 pairs: gain; 2/8: +1.00 points, 95 % interval [-1.48, +3.48], p 0.225, "
            "3 pairs: within noise.") in md
    assert f"{TITLE}: {missing}: not found (listed in report.seed_studies)" in report.notes
    assert "fig-seeds-label-budget-test.png" in [p.name for p in report.figures]
    page = report.html.read_text()
    assert f"<caption><code>{studies[0]}</code>: committed study, 3 seeds, not this pipeline run.</caption>" in page


def test_headline_gap_closed_is_single_seed_and_points_at_the_study(built):
    report, studies, _ = built
    md = report.markdown.read_text()
    assert "| model | description | mIoU (%) | Δ mIoU (pts) | gap closed (1 seed) |" in md
    headline = md.split("## How sure")[0]
    assert (f"Over seeds, pvkd minus baseline in `{studies[0]}` (committed study, paired per seed +4.00, +5.00, "
            "+6.00): +5.00 points, 95 % interval [+2.52, +7.48], p 0.013, 3 pairs: gain.") in headline
    assert (f"Over seeds, hinton minus baseline in `{studies[0]}` (committed study, paired per seed +3.00, +0.00, "
            "+3.00): +2.00 points, 95 % interval [-2.30, +6.30], p 0.184, 3 pairs: within noise.") in headline
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
    section = (paths["out"] / "report.md").read_text().split(f"## {TITLE}")[1].split("\n## ")[0]
    assert "distill_seeds_test.json" in section and "label_budget_test" not in section
    result = CliRunner().invoke(app, [*args, "--studies", str(studies[1])])  # the option wins over the params
    assert result.exit_code == 0, result.output
    section = (paths["out"] / "report.md").read_text().split(f"## {TITLE}")[1].split("\n## ")[0]
    assert "label_budget_test.json" in section and "distill_seeds_test.json" not in section
    assert "7 figures" in result.output
