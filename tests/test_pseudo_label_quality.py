"""bench/pseudo_label_quality.py's summary: shares and precisions of confident pseudo-labels, worked out by hand
from point counts (no model)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pseudo_label_quality as plq  # noqa: E402

NAMES = ["unlabeled", "building", "fence"]


@pytest.fixture
def counts():
    # [band, true class, label]: the confident label (over all classes, as train.semi) and the arg-max prediction.
    # Totals: building 10 points, 8 confident (6 building, 2 fence), arg-max 7 building, 3 fence; fence 5 points,
    # all confident (1 building, 4 fence), arg-max 5 fence
    shape = (len(plq.RANGE_BANDS), 3, 3)
    c = {"confident": np.zeros(shape, int), "argmax": np.zeros(shape, int)}
    # building: 4 points under 10 m (1 called building, 3 fence; 2 confident, both fence), 6 at 15-20 m
    c["argmax"][0, 1] = [0, 1, 3]
    c["confident"][0, 1] = [0, 0, 2]
    c["argmax"][2, 1] = [0, 6, 0]
    c["confident"][2, 1] = [0, 6, 0]
    c["argmax"][0, 2] = [0, 0, 5]
    c["confident"][0, 2] = [0, 1, 4]
    return c


def test_per_class_shares_and_precision_by_hand(counts):
    s = plq.summarize(counts, NAMES, ["building"])
    building, fence = s["per_class"]["building"], s["per_class"]["fence"]
    # building: 8 of 10 confident, 2 of them fence: 80 % confident, 20 % confidently wrong; labels 6:2
    assert building["confident_pct"] == 80.0 and building["confidently_wrong_pct"] == 20.0
    assert building["confident_labels_go_to_pct"] == {"building": 75.0, "fence": 25.0}
    assert building["argmax_goes_to_pct"] == {"building": 70.0, "fence": 30.0}
    # confident building labels: 6 true building, 1 true fence: precision 6 / 7
    assert building["confident_label_precision_pct"] == 85.7
    # confident fence labels: 2 true building, 4 true fence: precision 4 / 6
    assert fence["confident_label_precision_pct"] == 66.7
    assert fence["confident_label_is_truly_pct"] == {"fence": 66.7, "building": 33.3}
    assert "unlabeled" not in s["per_class"]  # class 0 is not scored
    # 13 confident of 15 labelled points; confident labels 7 building, 6 fence; true shares 10 and 5 of 15
    assert s["overall"]["confident_pct"] == 86.7
    assert s["overall"]["confident_label_pct"] == {"building": 53.8, "fence": 46.2}
    assert s["overall"]["true_class_pct"] == {"building": 66.7, "fence": 33.3}


def test_by_range_bands_by_hand(counts):
    bands = plq.summarize(counts, NAMES, ["building"])["by_range"]["building"]
    assert list(bands) == ["0-10 m", "10-15 m", "15-20 m", ">= 20 m"]
    assert bands["0-10 m"] == {"points": 4, "argmax_goes_to_pct": {"fence": 75.0, "building": 25.0},
                               "confident_labels_go_to_pct": {"fence": 100.0}, "confident_pct": 50.0}
    assert bands["10-15 m"] == {"points": 0, "argmax_goes_to_pct": {}, "confident_labels_go_to_pct": {},
                                "confident_pct": 0.0}
    assert bands["15-20 m"]["argmax_goes_to_pct"] == {"building": 100.0} and bands["15-20 m"]["confident_pct"] == 100
