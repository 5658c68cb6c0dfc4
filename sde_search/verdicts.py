"""Verdicts a sceptical reader can check: is a split measured, does a design read the input, is a gain real.

Three questions, each answered from per-record predictions, never from one summary number:

- **Measured?** A split whose predictions are all one answer, or all format errors, measures nothing:
  :func:`degenerate` names why, and the report writes "not measured" instead of a score of 0.000.
- **Reads the input?** A design reads the input only when it beats the better of the trivial answers (each
  slot's most common training value; always empty) on the objective *and* on accuracy, with the lower end of
  a 95 % bootstrap interval above zero (:func:`reads_input`). A constant answer has kappa 0, so kappa alone
  cannot fail; accuracy against the majority answer can.
- **A real gain?** Design a beats design b only when the interval of the difference excludes zero under a
  bootstrap that resamples test records *and* training seeds together (:func:`gain`): one training seed says
  little when seeds alone move a score by more than most gaps.

Pure core: standard library only; never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sde_search import metrics

Answer = Mapping[str, tuple[str, ...]]
Scorer = Callable[[Sequence[Answer], Sequence[Answer]], Mapping[str, float]]
"""(golds, predictions) -> metrics; must hold ``score`` (the objective) and ``accuracy``."""

CHECKED = ("score", "accuracy")
"""The metrics a design must beat the trivial answers on."""

BOOTSTRAP_SAMPLES = 1000
METHOD = ("95 % percentile bootstrap that resamples the scored records (paired: both sides score the same "
          "records) and, independently for each side, its training seeds; a side's score is its mean over seeds")


@dataclass(frozen=True)
class Interval:
    """A difference a - b with its 95 % bootstrap interval."""

    delta: float
    low: float
    high: float
    records: int
    seeds: tuple[int, int]  # training runs on each side

    @property
    def positive(self) -> bool:
        """True when the whole interval is above zero."""
        return self.low > 0

    @property
    def real(self) -> bool:
        """True when the interval excludes zero."""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        """``+0.123 (95 % CI +0.050 to +0.200; 120 records x 3/3 seeds)``."""
        return (f"{self.delta:+.3f} (95 % CI {self.low:+.3f} to {self.high:+.3f}; {self.records} records x "
                f"{self.seeds[0]}/{self.seeds[1]} seeds)")

    def to_json(self) -> dict[str, float]:
        """Plain numbers for ``summary.json``."""
        return {"delta": self.delta, "low": self.low, "high": self.high, "records": self.records,
                "seeds_a": self.seeds[0], "seeds_b": self.seeds[1]}


def degenerate(answers: Sequence[Answer], errors: Sequence[Sequence[str]]) -> str:
    """Why a split's predictions measure nothing, or ``""`` when they measure something.

    Args:
        answers: Parsed predictions, one per record.
        errors: Per record, the parse's error kinds.

    Returns:
        The reason (every generation a format error; every prediction the same answer), else ``""``.
    """
    n = len(answers)
    if not n:
        return "no records were scored"
    if errors and all(errors):
        return f"every one of the {n} generations is a format error"
    if n > 1 and metrics.distinct_answers(answers) <= 1:
        return f"all {n} predictions are the same answer"
    return ""


def _mean_over(scores: Sequence[Mapping[str, float]], key: str) -> float:
    values = [s[key] for s in scores if not math.isnan(s[key])]
    return statistics.fmean(values) if values else math.nan


def _percentile(values: list[float], q: float) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q * len(values)))]


def gain(score: Scorer, golds: Sequence[Answer], a_runs: Sequence[Sequence[Answer]],
         b_runs: Sequence[Sequence[Answer]], *, keys: Sequence[str] = ("score",), samples: int = BOOTSTRAP_SAMPLES,
         seed: int = 0) -> dict[str, Interval]:
    """Mean score of a's runs minus b's on the same records, records and seeds resampled together.

    Each bootstrap sample draws the records with replacement (the same records for both sides) and, for each
    side on its own, its runs (training seeds) with replacement; a side's score is the mean over its drawn runs.
    A side with one run contributes no seed noise: say so when reporting (:attr:`Interval.seeds`).

    Args:
        score: The task's scorer.
        golds: Gold answers of the records.
        a_runs: Per training run of design a, its predictions aligned with ``golds``.
        b_runs: The same for b (a trivial answer is one run).
        keys: Metrics to compare.
        samples: Bootstrap samples.
        seed: Seed of the resampling.

    Returns:
        Metric -> interval of a - b.
    """
    n = len(golds)
    if not n or not a_runs or not b_runs or any(len(r) != n for r in (*a_runs, *b_runs)):
        raise ValueError(f"every run must predict the same {n} records; got lengths "
                         f"{[len(r) for r in a_runs]} and {[len(r) for r in b_runs]}")
    rng = random.Random(seed)

    def side(runs: Sequence[Sequence[Answer]], idx: Sequence[int], picks: Sequence[int]) -> dict[str, float]:
        g = [golds[i] for i in idx]
        cache: dict[int, Mapping[str, float]] = {}
        for k in picks:
            if k not in cache:
                cache[k] = score(g, [runs[k][i] for i in idx])
        return {key: _mean_over([cache[k] for k in picks], key) for key in keys}

    everything = range(n)
    point_a, point_b = side(a_runs, everything, range(len(a_runs))), side(b_runs, everything, range(len(b_runs)))
    deltas: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        sa = side(a_runs, idx, [rng.randrange(len(a_runs)) for _ in a_runs])
        sb = side(b_runs, idx, [rng.randrange(len(b_runs)) for _ in b_runs])
        for key in keys:
            deltas[key].append(sa[key] - sb[key])
    return {key: Interval(point_a[key] - point_b[key], _percentile(deltas[key], 0.025),
                          _percentile(deltas[key], 0.975), n, (len(a_runs), len(b_runs))) for key in keys}


@dataclass(frozen=True)
class ReadsInput:
    """A design against the trivial answers: per checked metric, design minus the better trivial answer."""

    margins: Mapping[str, Interval]
    trivial: Mapping[str, Mapping[str, float]]  # "fixed"/"empty" -> metric -> score

    @property
    def reads(self) -> bool:
        """True when every checked metric's interval lies above the better trivial answer."""
        return bool(self.margins) and all(m.positive for m in self.margins.values())

    def why_not(self) -> str:
        """Which metric fails, with its interval; ``""`` when the design reads the input."""
        failing = [f"{key} {m.text()}" for key, m in self.margins.items() if not m.positive]
        return "" if self.reads else "no better than a trivial answer on " + "; ".join(failing)

    def to_json(self) -> dict[str, object]:
        """Plain data for ``summary.json``."""
        return {"reads": self.reads, "margins": {k: m.to_json() for k, m in self.margins.items()},
                "trivial": {k: dict(v) for k, v in self.trivial.items()}}


def reads_input(score: Scorer, golds: Sequence[Answer], runs: Sequence[Sequence[Answer]], fixed: Answer,
                empty: Answer, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> ReadsInput:
    """Whether a design's runs beat both trivial answers on the objective and on accuracy.

    On each metric the comparison is against whichever trivial answer scores higher on these records (the
    majority answer, for accuracy, is usually the fixed one), with :func:`gain`'s interval.

    Args:
        score: The task's scorer (``score`` and ``accuracy`` keys).
        golds: Gold answers.
        runs: Per training run of the design, its predictions.
        fixed: Each slot's most common training value.
        empty: The answer with every slot empty.
        samples: Bootstrap samples.
        seed: Seed of the resampling.
    """
    n = len(golds)
    trivial = {"fixed": score(golds, [fixed] * n), "empty": score(golds, [empty] * n)}
    margins: dict[str, Interval] = {}
    for key in CHECKED:
        best = max(trivial, key=lambda name: -math.inf if math.isnan(trivial[name][key]) else trivial[name][key])
        answer = fixed if best == "fixed" else empty
        margins[key] = gain(score, golds, runs, [[answer] * n], keys=(key,), samples=samples, seed=seed)[key]
    return ReadsInput(margins, {k: {m: float(v[m]) for m in CHECKED} for k, v in trivial.items()})
