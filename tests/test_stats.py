"""pvkd.stats: paired same-seed differences, their 95 % t-interval, p and verdict, checked by hand.

The t quantiles and p-values here come from the closed forms of Student's t with 1 and 2 degrees
of freedom, not from scipy (which pvkd.stats calls):

* 1 df (Cauchy): quantile ``tan(pi (q - 1/2))``; two-sided p of ``t``: ``1 - 2 atan(|t|) / pi``;
* 2 df: quantile ``(2q - 1) / sqrt(2 q (1 - q))``; two-sided p of ``t``: ``1 - |t| / sqrt(t^2 + 2)``.
"""

import math

import pytest

from pvkd.stats import GAIN, LOSS, NOISE, TOO_FEW, paired, share, spread, summary_table

T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t(0.975, 2 df) = 4.302653
T1 = math.tan(math.pi * 0.475)  # t(0.975, 1 df) = 12.706205


def test_closed_forms_match_the_tables():
    assert T2 == pytest.approx(4.302653, abs=1e-6)
    assert T1 == pytest.approx(12.706205, abs=1e-6)


def test_differences_1_2_3_hold_zero():
    # run - baseline per seed: 1, 2, 3 -> mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3)
    c = paired({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert c.seeds == ("0", "1", "2") and c.differences == (1.0, 2.0, 3.0) and c.n == 3
    assert c.mean == pytest.approx(2.0)
    half = T2 / math.sqrt(3)  # 2.484138
    assert half == pytest.approx(2.484138, abs=1e-6)
    assert (c.low, c.high) == (pytest.approx(2 - half), pytest.approx(2 + half))  # [-0.484, 4.484]
    t = 2 * math.sqrt(3)
    assert c.p == pytest.approx(1 - t / math.sqrt(t * t + 2))  # 1 - sqrt(12 / 14) = 0.074180
    assert c.p == pytest.approx(0.074180, abs=1e-6)
    assert c.verdict == NOISE and not c.excludes_zero


def test_gain_and_loss_only_when_the_interval_excludes_zero():
    # differences 2, 3, 4: mean 3, sd 1: [3 - 2.484, 3 + 2.484] = [0.516, 5.484] lies above 0
    c = paired({"0": 2.0, "1": 3.0, "2": 4.0}, {"0": 0.0, "1": 0.0, "2": 0.0})
    assert c.low == pytest.approx(3 - T2 / math.sqrt(3)) and c.low > 0
    t = 3 * math.sqrt(3)
    assert c.p == pytest.approx(1 - math.sqrt(27 / 29)) and c.p == pytest.approx(0.035098, abs=1e-6)
    assert c.verdict == GAIN
    # the same the other way round: a loss, same p
    d = paired({"0": 0.0, "1": 0.0, "2": 0.0}, {"0": 2.0, "1": 3.0, "2": 4.0})
    assert d.mean == pytest.approx(-3) and d.high == pytest.approx(-c.low) and d.p == pytest.approx(c.p)
    assert d.verdict == LOSS
    assert t > T2  # consistent: |t| beyond the quantile <=> p < 0.05 <=> the interval excludes 0


def test_two_pairs_use_one_degree_of_freedom():
    # differences 1, 3: mean 2, sd sqrt(2), se 1, t = 2
    c = paired({0: 1.0, 1: 3.0}, {0: 0.0, 1: 0.0})
    assert (c.low, c.high) == (pytest.approx(2 - T1), pytest.approx(2 + T1))  # 2 +- 12.706
    assert c.p == pytest.approx(1 - 2 * math.atan(2) / math.pi)  # 0.295167
    assert c.p == pytest.approx(0.295167, abs=1e-6)
    assert c.verdict == NOISE


def test_seeds_only_one_run_has_are_ignored():
    # seed 5 only in the run, 7 only in the baseline; keys as ints and as JSON strings are one seed
    c = paired({0: 11.0, "1": 12.0, 2: 13.0, 5: 99.0}, {"0": 10.0, 1: 10.0, "2": 10.0, 7: -99.0})
    assert c.seeds == ("0", "1", "2") and c.differences == (1.0, 2.0, 3.0)
    assert c.mean == pytest.approx(2.0) and c.p == pytest.approx(0.074180, abs=1e-6)


def test_fewer_than_two_pairs_give_no_interval():
    one = paired({0: 0.45, 1: 0.50}, {0: 0.40, 2: 0.41})  # one shared seed, 0: +0.05
    assert one.n == 1 and one.mean == pytest.approx(0.05)
    assert one.low is None and one.high is None and one.p is None and one.verdict == TOO_FEW
    assert one.to_json()["interval"] is None
    none = paired({1: 0.5}, {0: 0.4})
    assert none.n == 0 and none.mean is None and none.verdict == TOO_FEW


def test_identical_differences():
    # sd 0: the interval is the point, t is infinite: p 0 for a non-zero mean, 1 for zero
    c = paired({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (c.low, c.high, c.p, c.verdict) == (1.0, 1.0, 0.0, GAIN)
    z = paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert (z.low, z.high, z.p, z.verdict) == (0.0, 0.0, 1.0, NOISE)


def test_spread_is_mean_and_sample_std():
    s = spread({0: 1.0, 1: 2.0, 2: 3.0})
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)  # sqrt((1 + 0 + 1) / 2)
    assert spread({3: 0.4}).std is None
    with pytest.raises(ValueError):
        spread({})


def test_share_only_of_a_gap_whose_interval_excludes_zero():
    gap = paired({0: 12.0, 1: 13.0, 2: 14.0}, {0: 10.0, 1: 10.0, 2: 10.0})  # 2, 3, 4: gain, mean 3
    part = paired({0: 11.0, 1: 11.5, 2: 12.0}, {0: 10.0, 1: 10.0, 2: 10.0})  # 1, 1.5, 2: mean 1.5 of 3
    assert gap.verdict == GAIN and share(part, gap) == pytest.approx(0.5)
    noisy = paired({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})  # holds 0
    assert share(part, noisy) is None
    assert share(paired({0: 11.0}, {0: 10.0}), gap) is None  # one pair: no interval, no share


def test_summary_table():
    table = summary_table({"base": {0: 10.0, 1: 10.0, 2: 10.0}, "kd": {0: 11.0, 1: 12.0, 2: 13.0},
                           "one": {1: 10.5}}, "base")
    assert table["base"] == {"per_seed": {"0": 10.0, "1": 10.0, "2": 10.0}, "n": 3, "mean": 10.0, "std": 0.0}
    kd = table["kd"]["vs_baseline"]
    assert kd["baseline"] == "base" and kd["seeds"] == ["0", "1", "2"] and kd["verdict"] == NOISE
    assert kd["interval"] == [pytest.approx(2 - T2 / math.sqrt(3)), pytest.approx(2 + T2 / math.sqrt(3))]
    assert table["one"]["std"] is None and table["one"]["vs_baseline"]["verdict"] == TOO_FEW
    assert table["one"]["vs_baseline"]["mean"] == pytest.approx(0.5)
    assert "vs_baseline" not in summary_table({"a": {0: 1.0}, "b": {0: 2.0}}, None)["b"]
