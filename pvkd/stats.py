"""Seed statistics of the studies: paired same-seed differences, their 95 % t-interval and a verdict.

A seed fixes a run's initial weights, scan order and augmentation draws, so two settings trained
at the same seed are paired: the difference of their scores cancels what the seed alone moves.
Every comparison here is made over the seeds both runs have; a seed only one of them has is left
out (nothing is compared unpaired). The rule every bench and the report apply: a difference is
claimed only where the 95 % t-interval of the paired differences excludes 0.

* ``gain``: the interval lies above 0; ``loss``: it lies below 0; ``within noise``: it holds 0.
* ``too few seeds``: under 2 shared seeds the differences have no spread, so there is no interval,
  no p and no claim either way.

Per run, :func:`spread` gives the mean and the sample std over its seeds. Seeds are keyed by
their decimal string (what JSON keeps of an int key) and ordered numerically.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy import stats as scipy_stats

LEVEL = 0.95
GAIN, LOSS, NOISE, TOO_FEW = "gain", "loss", "within noise", "too few seeds"
RULE = ("a difference is claimed only where the 95 % t-interval of the paired same-seed differences "
        "excludes 0 (gain above, loss below; within noise when it holds 0; too few seeds under 2 pairs)")


def seed_key(seed: int | str) -> str:
    """A seed as JSON keys it: ``0`` and ``"0"`` are the same seed."""
    return str(int(seed)) if str(seed).lstrip("-").isdigit() else str(seed)


def numeric_key(text: str) -> tuple:
    """Numeric strings (seeds, steps, budgets) in numeric order ("2" before "10"), other names after."""
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def seed_order(seeds: Iterable[str]) -> list[str]:
    """Seeds in numeric order."""
    return sorted(seeds, key=numeric_key)


def by_seed(scores: Mapping) -> dict[str, float]:
    """``scores`` keyed by :func:`seed_key`, in seed order."""
    keyed = {seed_key(k): float(v) for k, v in scores.items()}
    return {k: keyed[k] for k in seed_order(keyed)}


@dataclass(frozen=True)
class Spread:
    """One run over its seeds."""

    n: int
    mean: float
    std: float | None  # sample std (n - 1 in the denominator); None for a single seed

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std}


def spread(scores: Mapping) -> Spread:
    """Mean and sample std of one run's scores over its seeds (at least one)."""
    values = list(by_seed(scores).values())
    if not values:
        raise ValueError("a run without a score has no spread")
    return Spread(len(values), statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class Paired:
    """A run against its baseline over the seeds both have: run minus baseline, per seed and on average."""

    seeds: tuple[str, ...]  # the shared seeds, in numeric order
    differences: tuple[float, ...]  # run - baseline at each of them
    mean: float | None  # None without a shared seed
    low: float | None  # the 95 % t-interval of the mean difference; None under 2 shared seeds
    high: float | None
    p: float | None  # two-sided p of the one-sample t-test against 0; None under 2 shared seeds
    verdict: str  # GAIN | LOSS | NOISE | TOO_FEW

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def excludes_zero(self) -> bool:
        return self.verdict in (GAIN, LOSS)

    def to_json(self) -> dict:
        return {"seeds": list(self.seeds), "differences": list(self.differences), "n": self.n, "mean": self.mean,
                "interval": None if self.low is None else [self.low, self.high], "level": LEVEL, "p": self.p,
                "verdict": self.verdict}


def paired(run: Mapping, baseline: Mapping, level: float = LEVEL) -> Paired:
    """``run`` against ``baseline`` (each seed -> score) over their shared seeds."""
    run, baseline = by_seed(run), by_seed(baseline)
    seeds = tuple(seed_order(set(run) & set(baseline)))
    diffs = tuple(run[s] - baseline[s] for s in seeds)
    mean = statistics.mean(diffs) if diffs else None
    if len(diffs) < 2:
        return Paired(seeds, diffs, mean, None, None, None, TOO_FEW)
    df = len(diffs) - 1
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * se
    if se > 0:
        p = float(2 * scipy_stats.t.sf(abs(mean) / se, df))
    else:  # identical differences: t is infinite unless they are all 0
        p = 1.0 if mean == 0 else 0.0
    low, high = mean - half, mean + half
    verdict = GAIN if low > 0 else LOSS if high < 0 else NOISE
    return Paired(seeds, diffs, mean, low, high, p, verdict)


def share(part: Paired, whole: Paired) -> float | None:
    """``part``'s mean difference as a share of ``whole``'s (e.g. of a label gap), only where ``whole``'s
    interval excludes 0 (a share of a gap inside the noise would be a ratio of two noises) and ``part`` has
    an interval (2 pairs or more: one pair is one draw of the seed noise)."""
    if part.low is None or not whole.excludes_zero:
        return None
    return part.mean / whole.mean


def summary_table(runs: Mapping[str, Mapping], baseline: str | None) -> dict[str, dict]:
    """Per run (name -> seed -> score): its scores, spread and, for all but ``baseline``, the paired
    comparison with it (when the baseline is among ``runs``). The summary block of every seed study."""
    base = runs.get(baseline) if baseline is not None else None
    table = {}
    for name, scores in runs.items():
        cell = {"per_seed": by_seed(scores), **spread(scores).to_json()}
        if base is not None and name != baseline:
            cell["vs_baseline"] = {"baseline": baseline, **paired(scores, base).to_json()}
        table[name] = cell
    return table
