"""Verdicts a sceptical reader can check: is a split measured, does a design read the input, is a gain real.

Three questions, each answered from per-record predictions, never from one summary number:

- **Measured?** A split whose predictions are all one answer, or all format errors, measures nothing:
  :func:`degenerate` names why, and the report writes "not measured" instead of a score of 0.000.
- **Reads the input?** A design reads the input only when it beats both trivial answers (each slot's most
  common training value; always empty) on the objective *and* on accuracy, with the lower end of a 95 %
  interval above zero (:func:`reads_input`). A constant answer has kappa 0, so kappa alone cannot fail;
  accuracy against the majority answer can.
- **A real gain?** Design a beats design b only when the interval of the difference excludes zero with test
  records *and* training seeds as sources of noise (:func:`gain`, :data:`METHOD`): one training seed says
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

BOOTSTRAP_SAMPLES = 500
METHOD = ("difference of the mean scores over training seeds; 95 % interval = difference +- t x SE, where SE^2 = "
          "the variance of a paired bootstrap over the scored records (both sides' seed-averaged scores on the same "
          "resampled records) + each side's between-seed variance / its number of seeds, and t has the "
          "Welch-Satterthwaite degrees of freedom of the seed terms; a side with one seed has no seed term, so a "
          "gain is called real only with at least 2 seeds on each trained side")


@dataclass(frozen=True)
class Interval:
    """A difference a - b with its 95 % interval over records and training seeds."""

    delta: float
    low: float
    high: float
    records: int
    seeds: tuple[int, int]  # training runs on each side (0 for a fixed answer)
    seed_noise: bool = True  # every trained side had >= 2 runs, so seed noise is in the interval

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
        seeds = f"{self.seeds[0]}/{self.seeds[1]}" if self.seeds[1] else str(self.seeds[0])
        return (f"{self.delta:+.3f} (95 % CI {self.low:+.3f} to {self.high:+.3f}; {self.records} records x "
                f"{seeds} seeds)")

    def to_json(self) -> dict[str, float]:
        """Plain numbers for ``summary.json``."""
        return {"delta": self.delta, "low": self.low, "high": self.high, "records": self.records,
                "seeds_a": self.seeds[0], "seeds_b": self.seeds[1], "seed_noise": self.seed_noise}


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


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(q: float, df: float) -> float:
    """Quantile ``q`` (> 0.5) of Student's t with ``df`` degrees of freedom; the normal's when df is infinite.

    The standard library has the normal distribution but not Student's t, so the t CDF is computed from the
    incomplete beta function and inverted by bisection.
    """
    if math.isinf(df) or df > 1e6:
        return statistics.NormalDist().inv_cdf(q)
    def upper(t: float) -> float:  # P(T > t), t >= 0
        return 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while upper(hi) > 1 - q:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper(mid) > 1 - q else (lo, mid)
    return (lo + hi) / 2


def gain(score: Scorer, golds: Sequence[Answer], a_runs: Sequence[Sequence[Answer]],
         b_runs: Sequence[Sequence[Answer]], *, keys: Sequence[str] = ("score",), samples: int = BOOTSTRAP_SAMPLES,
         seed: int = 0, b_trained: bool = True) -> dict[str, Interval]:
    """Mean score of a's runs minus b's on the same records, with an interval over records and seeds (:data:`METHOD`).

    A paired bootstrap of the records (each side's score averaged over its runs) gives the record part of the
    variance; each side's between-run variance over its number of runs gives the seed part. Resampling only 3
    seeds with replacement would understate their variance (and allow only 10 mixes), so seeds enter through
    their sample variance and a t quantile instead.

    Args:
        score: The task's scorer.
        golds: Gold answers of the records.
        a_runs: Per training run of design a, its predictions aligned with ``golds``.
        b_runs: The same for b.
        keys: Metrics to compare.
        samples: Bootstrap samples of the records.
        seed: Seed of the resampling.
        b_trained: False when b is a fixed answer (no training, so no seed noise on its side).

    Returns:
        Metric -> interval of a - b.
    """
    n = len(golds)
    if not n or not a_runs or not b_runs or any(len(r) != n for r in (*a_runs, *b_runs)):
        raise ValueError(f"every run must predict the same {n} records; got lengths "
                         f"{[len(r) for r in a_runs]} and {[len(r) for r in b_runs]}")
    rng = random.Random(seed)
    whole = {side: [score(golds, run) for run in runs] for side, runs in (("a", a_runs), ("b", b_runs))}
    deltas: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        g = [golds[i] for i in idx]
        sa = [score(g, [run[i] for i in idx]) for run in a_runs]
        sb = [score(g, [run[i] for i in idx]) for run in b_runs]
        for key in keys:
            deltas[key].append(_mean_over(sa, key) - _mean_over(sb, key))
    out = {}
    for key in keys:
        point = _mean_over(whole["a"], key) - _mean_over(whole["b"], key)
        finite = [d for d in deltas[key] if not math.isnan(d)]
        parts = [statistics.variance(finite) if len(finite) > 1 else math.nan]
        seed_parts = []
        for side, trained in (("a", True), ("b", b_trained)):
            values = [s[key] for s in whole[side] if not math.isnan(s[key])]
            if trained and len(values) > 1:
                seed_parts.append((statistics.variance(values) / len(values), len(values) - 1))
        total = sum(parts) + sum(v for v, _ in seed_parts)
        spread = sum(v * v / df for v, df in seed_parts)
        df = total * total / spread if spread > 0 else math.inf
        half = t_quantile(0.975, df) * math.sqrt(total) if not math.isnan(total) else math.nan
        noise = len(a_runs) > 1 and (len(b_runs) > 1 or not b_trained)
        out[key] = Interval(point, point - half, point + half, n, (len(a_runs), len(b_runs) if b_trained else 0),
                            noise)
    return out


@dataclass(frozen=True)
class ReadsInput:
    """A design against the trivial answers: per checked metric, the margin over the harder trivial answer."""

    margins: Mapping[str, Interval]
    trivial: Mapping[str, Mapping[str, float]]  # "fixed"/"empty" -> metric -> score

    @property
    def reads(self) -> bool:
        """True when every checked metric's interval lies above the better trivial answer."""
        return bool(self.margins) and all(m.positive for m in self.margins.values())

    def why_not(self) -> str:
        """Which metric fails, with its interval over the harder trivial answer; ``""`` when it reads the input."""
        failing = [f"{key} {m.text()}" for key, m in self.margins.items() if not m.positive]
        return "" if self.reads else "not above both trivial answers on " + "; ".join(failing)

    def to_json(self) -> dict[str, object]:
        """Plain data for ``summary.json``."""
        return {"reads": self.reads, "margins": {k: m.to_json() for k, m in self.margins.items()},
                "trivial": {k: dict(v) for k, v in self.trivial.items()}}


def reads_input(score: Scorer, golds: Sequence[Answer], runs: Sequence[Sequence[Answer]], fixed: Answer,
                empty: Answer, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> ReadsInput:
    """Whether a design's runs beat both trivial answers on the objective and on accuracy.

    Each metric is compared with each trivial answer (:func:`gain`, the trivial side untrained); the margin kept
    for a metric is the one with the lower interval end, so "reads the input" means beating both. A metric the
    task does not score (NaN for the trivial answers, e.g. a plugin without ``accuracy``) is left out.

    Args:
        score: The task's scorer (``score`` and ``accuracy`` keys).
        golds: Gold answers.
        runs: Per training run of the design, its predictions.
        fixed: Each slot's most common training value.
        empty: The answer with every slot empty.
        samples: Bootstrap samples.
        seed: Seed of the resampling.
    """
    answers = {name: metrics.same_answer(answer, golds) for name, answer in (("fixed", fixed), ("empty", empty))}
    trivial = {name: score(golds, given) for name, given in answers.items()}
    keys = [k for k in CHECKED if any(not math.isnan(float(t.get(k, math.nan))) for t in trivial.values())]
    versus = {name: gain(score, golds, runs, [given], keys=keys, samples=samples, seed=seed, b_trained=False)
              for name, given in answers.items()}
    margins = {key: min((v[key] for v in versus.values()), key=lambda m: -math.inf if math.isnan(m.low) else m.low)
               for key in keys}
    return ReadsInput(margins, {k: {m: float(v.get(m, math.nan)) for m in CHECKED} for k, v in trivial.items()})
