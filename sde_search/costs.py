"""What a search will cost, worked out from measured timings: the arithmetic behind ``sde-search --estimate``.

:mod:`sde_search.estimate` times a few real training steps and generation batches; this module turns those
seconds into the table the command prints: how many trials ASHA lets through each rung (successive halving),
the search's wall time at its concurrency, the same search without early stopping, the exhaustive grid of the
space and the seed stage, beside the fixed costs. Every number it assumes rather than measures is a named
constant here, and the table lists them.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from statistics import NormalDist

SCORE_SD = 0.12
"""Assumed spread (sd) of the trials' scores at an ASHA rung, in score units. ``asha.margin`` is in the same
units, so this sets how much the margin protects: on the demo task's exhaustive grid the scores' sd was 0.11 at
report 3 and 0.17 at report 6, and 0.12 reproduces the share of steps the grid replay measured for margins
0, 0.05 and 0.1 (bench/results/pruning.md)."""

RAY_START_S = 3.0
"""Assumed: ``ray.init`` of a local Ray (measured 2.3-3.3 s on 2 idle cores, bench/results/overhead.md; 4.6-8.1 s
when the cores are busy with other jobs)."""

TUNER_START_S = 2.5
"""Assumed: from building the Tuner to the first trial running (measured 2.5 s, bench/results/overhead.md)."""

TRIAL_GAP_S = 0.1
"""Assumed: a slot's idle time between two trials when workers are reused (measured 0.10 s)."""

WORKER_START_S = 6.5
"""Assumed: a fresh Ray worker process before its first import (measured about 6.5 s on 2 cores); paid once per
slot when workers are reused (CPU), once per trial when not (GPU)."""


def expected_max(values: Sequence[float], k: int) -> float:
    """The expected largest of ``k`` values drawn without replacement from ``values`` (order statistics).

    A padded batch is as wide as its longest sample, so this is a batch's width when samples are shuffled.

    Args:
        values: The population (or a sample standing for it); at least one value.
        k: Draws; clipped to ``1..len(values)``.
    """
    xs = sorted(values)
    n, k = len(xs), max(1, min(k, len(xs)))
    total = math.comb(n, k)
    # the j-th smallest (1-based) is the maximum in comb(j - 1, k - 1) of the comb(n, k) equally likely draws
    return sum(x * math.comb(j - 1, k - 1) for j, x in enumerate(xs, start=1)) / total


def chunks(n: int, size: int) -> list[int]:
    """The batch sizes of ``n`` items cut into batches of ``size`` (the last one smaller)."""
    return [min(size, n - start) for start in range(0, n, max(1, size))]


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of the line through two points (one point, or two at one x: a flat line)."""
    (x1, y1), (x2, y2) = points[0], points[-1]
    if x1 == x2:
        return (y1 + y2) / 2, 0.0
    slope = (y2 - y1) / (x2 - x1)
    return y1 - slope * x1, slope


@dataclass(frozen=True)
class GenSpeed:
    """Seconds of one batched greedy generation, as two lines through two timed batches.

    The prompt pass grows with the padded prompt tokens, each decoding step with the rows of the batch.

    Attributes:
        prefill: Intercept and slope of the prompt pass in padded prompt tokens (rows x width).
        step: Intercept and slope of one decoding step in rows.
    """

    prefill: tuple[float, float]
    step: tuple[float, float]

    @classmethod
    def fit(cls, timed: Sequence[tuple[int, float, float, float]], length: int) -> GenSpeed:
        """From batches timed as ``(rows, width, seconds for 1 new token, seconds for length new tokens)``."""
        prefill = fit_line([(rows * width, one) for rows, width, one, _ in timed])
        step = fit_line([(rows, max(0.0, (many - one) / max(1, length - 1))) for rows, _, one, many in timed])
        return cls(prefill, step)

    def step_s(self, rows: int) -> float:
        """One decoding step of a batch of ``rows`` prompts."""
        return max(0.0, self.step[0] + self.step[1] * rows)

    def batch_s(self, rows: int, width: float, new: int) -> float:
        """A batch of ``rows`` prompts, left-padded to ``width`` tokens, writing ``new`` tokens."""
        prefill = max(0.0, self.prefill[0] + self.prefill[1] * rows * width)
        return prefill + max(0, new - 1) * self.step_s(rows)


def tokens_per_step(lengths: Sequence[float], records: int, batch_size: int, grad_accum: int = 1) -> float:
    """Expected padded tokens of one optimizer step, averaged over an epoch of ``records`` shuffled records.

    Each micro-batch is right-padded to its longest sample (:func:`expected_max` of the sample ``lengths``); an
    epoch's last step may hold fewer records, as in the trial.
    """
    per_step = batch_size * grad_accum
    steps = math.ceil(records / per_step)
    micro = [b for s in range(steps) for b in chunks(min(per_step, records - s * per_step), batch_size)]
    return sum(b * expected_max(lengths, b) for b in micro) / steps


# ---------------------------------------------------------------- one trial


@dataclass(frozen=True)
class TrialCost:
    """Seconds of one trial of a design, from its measured parts.

    Attributes:
        setup_s: Model build, the training records encoded, the scorer (every trial pays it).
        step_s: One optimizer step.
        steps: Optimizer steps at the full budget.
        reports: Reports at the full budget (ASHA's ``max_t``).
        report_s: One intermediate report: generation on the report subsets, scoring, the checkpoint.
        final_s: The last report: the whole eval sets, the reads-the-input test, the checkpoint.
        test_s: After training, in the seed stage only: the model loaded again and the test splits scored.
    """

    setup_s: float
    step_s: float
    steps: int
    reports: int
    report_s: float
    final_s: float
    test_s: float = 0.0

    @property
    def per_report_s(self) -> float:
        """The training steps between two reports and one intermediate report."""
        return self.steps / self.reports * self.step_s + self.report_s

    @property
    def full_s(self) -> float:
        """A trial that runs to the full budget."""
        return self.seconds(self.reports)

    def seconds(self, reports_done: float) -> float:
        """A trial stopped after ``reports_done`` reports (the full budget when equal to ``reports``)."""
        full = reports_done >= self.reports
        return self.setup_s + reports_done * self.per_report_s + (self.final_s - self.report_s if full else 0.0)


def mean_cost(costs: Sequence[TrialCost]) -> TrialCost:
    """The field-by-field mean of trial costs (a trial's seconds are linear in them, so this is the mean trial).

    Raises:
        ValueError: For no costs, or costs with different step or report counts.
    """
    if not costs:
        raise ValueError("mean_cost: no trial costs")
    if len({(c.steps, c.reports) for c in costs}) > 1:
        raise ValueError("mean_cost: trials of different lengths")
    floats = {f.name: sum(getattr(c, f.name) for c in costs) / len(costs) for f in fields(TrialCost)
              if f.name not in ("steps", "reports")}
    return TrialCost(steps=costs[0].steps, reports=costs[0].reports, **floats)


# ---------------------------------------------------------------- ASHA


@dataclass(frozen=True)
class Asha:
    """The space's early stopping, in reports.

    Attributes:
        enabled: ``asha.enabled``.
        grace: ``asha.grace_period``.
        rf: ``asha.reduction_factor``.
        max_t: Reports at the full budget.
        margin: ``asha.margin`` (a trial is cut only when this far below the rung's cutoff).
    """

    enabled: bool
    grace: int
    rf: int
    max_t: int
    margin: float = 0.0

    def rungs(self) -> list[int]:
        """The reports where ASHA may cut: ``grace x rf^k`` below ``max_t`` (none when disabled)."""
        out: list[int] = []
        milestone = self.grace
        while self.enabled and milestone < self.max_t:
            out.append(milestone)
            milestone *= self.rf
        return out


def cut_chance(rf: int, margin: float = 0.0, score_sd: float = SCORE_SD) -> float:
    """The chance that a trial arriving at a rung after others is cut there.

    A rung cuts a trial whose score is below the ``1 - 1/rf`` quantile of the scores recorded there, less the
    margin. Without a margin that is successive halving's share, ``1 - 1/rf``; with one, scores spread normally
    with sd ``score_sd`` are cut with ``Phi(Phi^-1(1 - 1/rf) - margin / score_sd)``.
    """
    quantile = 1 - 1 / rf
    if margin <= 0:
        return quantile
    normal = NormalDist()
    return normal.cdf(normal.inv_cdf(quantile) - margin / score_sd)


@dataclass(frozen=True)
class Spend:
    """What a search of ``trials`` trials spends in reports.

    Attributes:
        trials: Trials started.
        points: The rungs, then the full budget (reports).
        reached: Expected trials that reach each point.
    """

    trials: int
    points: tuple[int, ...]
    reached: tuple[float, ...]

    @property
    def reports(self) -> float:
        """Expected reports over all trials."""
        starts = (0, *self.points[:-1])
        return sum(n * (end - start) for n, start, end in zip(self.reached, starts, self.points, strict=True))

    @property
    def full(self) -> float:
        """Expected trials that reach the full budget."""
        return self.reached[-1]

    @property
    def share(self) -> float:
        """Reports spent, as a share of every trial run to the full budget."""
        return self.reports / (self.trials * self.points[-1])


def spend(trials: int, asha: Asha, cut: float | None = None) -> Spend:
    """Expected trials reaching each rung, then the full budget.

    All trials reach the first rung; at each rung the first arrival always goes on (there is nothing to
    compare it with), each later one is cut with chance ``cut``.

    Args:
        trials: Trials in the search.
        asha: The early stopping.
        cut: The chance of a cut (default: :func:`cut_chance` of the settings, without a margin:
            plain successive halving).
    """
    cut = cut_chance(asha.rf) if cut is None else cut
    rungs = asha.rungs()
    reached = [float(trials)]
    for _ in rungs:
        n = reached[-1]
        reached.append(min(n, 1.0) + max(n - 1.0, 0.0) * (1 - cut))
    return Spend(trials, (*rungs, asha.max_t), tuple(reached))


def trial_seconds(cost: TrialCost, sp: Spend) -> float:
    """The seconds inside all trials of a search: set-ups, reports reached, the full trials' last evaluation."""
    return sp.trials * cost.setup_s + sp.reports * cost.per_report_s + sp.full * (cost.final_s - cost.report_s)


def slots(max_concurrent: int, cpu_per_trial: float, gpu_per_trial: float, cpus: int, gpus: int) -> int:
    """Trials that can run at once: ``budget.max_concurrent``, limited by the CPUs and GPUs a trial takes."""
    fit = [max_concurrent, math.floor(cpus / cpu_per_trial + 1e-9)]
    if gpu_per_trial > 0:
        fit.append(math.floor(gpus / gpu_per_trial + 1e-9))
    return max(1, min(fit))


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Plan:
    """What the search will run, from the space, the task and this machine.

    Attributes:
        trials: ``budget.num_samples``.
        space_size: Designs in the space (the exhaustive grid).
        slots: Trials that can run at once (:func:`slots`; a search of fewer trials runs fewer).
        asha: The early stopping.
        reuse_workers: Whether a Ray worker runs trial after trial (CPU) or each trial gets a new one (GPU).
        seed_top: The search's top designs the seed stage trains (``budget.seed_top``, at most the trials).
        seed_presets: The presets it trains too (ES-SDE and the paper baseline).
        presets_searched: How many of those presets the search also trains (``baselines:``, inside the space):
            one that ends among the top designs is trained once.
        seeds: Seed-stage runs per design (``budget.seeds``).
        seed_workers: Seed-stage runs at once.
    """

    trials: int
    space_size: int
    slots: int
    asha: Asha
    reuse_workers: bool
    seed_top: int
    seed_presets: int
    presets_searched: int
    seeds: int
    seed_workers: int


@dataclass(frozen=True)
class Measured:
    """What :mod:`sde_search.estimate` timed on this machine.

    Attributes:
        search: The mean trial over the space's designs.
        seed: The mean seed-stage run (the top designs as the space's mean, ES-SDE and the baseline their own).
        import_s: Importing torch, transformers and peft (every worker process pays it once).
        prepare_s: Once per machine, cached afterwards: the tiny model's tokenizer trained on the task's texts (on
            the driver), or a GGUF file converted (by the first trial).
        peak_mb: Peak resident memory of the timing process, MiB.
        gpu_peak_mb: Peak CUDA memory allocated, MiB (None on CPU).
    """

    search: TrialCost
    seed: TrialCost
    import_s: float
    prepare_s: float
    peak_mb: float
    gpu_peak_mb: float | None = None


@dataclass(frozen=True)
class Row:
    """One line of the table: wall seconds, trial-slot seconds (nan: none) and what it counts."""

    name: str
    wall_s: float
    trial_s: float
    note: str


@dataclass(frozen=True)
class Estimate:
    """The table and what it rests on.

    Attributes:
        rows: The lines of the table, by name in :attr:`row`.
        spend: The search's expected reports with ASHA as configured.
        nominal: The same with plain successive halving (no margin).
        assumptions: What was assumed rather than measured, one line each.
    """

    rows: tuple[Row, ...]
    spend: Spend
    nominal: Spend
    assumptions: tuple[str, ...] = field(default=())

    def row(self, name: str) -> Row:
        """The row named ``name`` (KeyError when there is none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


SEARCH_ASHA = "search, ASHA"
SEARCH_NOMINAL = "search, ASHA as plain successive halving"
SEARCH_FULL = "search, no early stopping"
GRID = "exhaustive grid"
SEED_STAGE = "seed stage"
TOTAL = "total (search + seed stage)"


def _fixed_rows(plan: Plan, m: Measured) -> list[Row]:
    """What every search pays besides its trials' training: starts, first use, a trial's set-up, one trial."""
    c = m.search
    return [
        Row("Ray + Tuner start (assumed)", RAY_START_S + TUNER_START_S, math.nan, "once per search"),
        Row("worker start", WORKER_START_S + m.import_s, math.nan, f"new process (assumed {WORKER_START_S:g} s) + "
            f"imports (measured {m.import_s:.1f} s); " + ("once per slot" if plan.reuse_workers else "once per trial")),
        Row("tokenizer / model conversion", m.prepare_s, math.nan, "first use only (cached afterwards): the tiny "
            "model's tokenizer, or a GGUF file converted"),
        Row("trial set-up", c.setup_s, math.nan, "each trial (and seed run): model build, training records encoded, "
            "scorer"),
        Row("one trial, full budget", c.full_s, c.full_s, f"mean over the space: set-up {c.setup_s:.1f} s, "
            f"{c.steps} steps x {c.step_s:.3f} s, {c.reports} reports ({c.report_s:.2f} s each, last "
            f"{c.final_s:.2f} s)"),
    ]


def seed_designs(plan: Plan, sp: Spend) -> list[tuple[float, int]]:
    """The seed stage's distinct designs: (chance, count) for each number of presets found among the top designs.

    The top designs come from the trials that reach the full budget (``sp.full`` expected). A preset the search
    trains reaches it with chance ``sp.full / trials`` and then ranks like any full-budget trial, so it is one
    of the top designs, and trained once, with chance ``min(full share, seed_top / trials)``; the presets are
    taken as independent.
    """
    tops = min(plan.seed_top, max(1, round(sp.full))) if plan.seed_top else 0
    q = min(sp.full / plan.trials, tops / plan.trials) if plan.trials else 0.0
    n = plan.presets_searched
    return [(math.comb(n, k) * q**k * (1 - q) ** (n - k), tops + plan.seed_presets - k) for k in range(n + 1)]


def _seed_row(plan: Plan, m: Measured, sp: Spend) -> Row:
    """The seed stage: waves of ``seed_workers`` runs after the imports, expected over :func:`seed_designs`."""
    run_s = m.seed.full_s + m.seed.test_s
    spread = seed_designs(plan, sp)
    runs = sum(p * d * plan.seeds for p, d in spread)
    waves = sum(p * math.ceil(d * plan.seeds / max(1, plan.seed_workers)) for p, d in spread)
    most = max(d for _, d in spread)
    return Row(SEED_STAGE, m.import_s + waves * run_s if runs else 0.0, runs * run_s,
               f"{runs:.3g} runs expected ({most} designs x {plan.seeds} seeds at most: a preset among the top "
               f"designs is trained once), {plan.seed_workers} at once, {run_s:.0f} s each with the test splits")


def _assumptions(plan: Plan, cut: float, score_sd: float) -> tuple[str, ...]:
    """The table's assumptions, one line each."""
    return (
        f"concurrency {plan.slots}: budget.max_concurrent limited by the CPUs/GPUs per trial (and the trials)",
        *([f"ASHA: a later arrival at a rung is cut with chance {cut:.2f} (scores spread with sd {score_sd:g}, "
           f"margin {plan.asha.margin:g}); the first arrival always goes on"] if plan.asha.rungs() else []),
        "the trials' designs are the space's average (TPE picks them as it goes); a trained model writes "
        "about its target's length, then stops",
        f"Ray start {RAY_START_S:g} s, Tuner start {TUNER_START_S:g} s, new worker {WORKER_START_S:g} s, "
        f"{TRIAL_GAP_S:g} s between trials on a reused worker (measured on 2 cores, bench/results/overhead.md)",
    )


def build(plan: Plan, m: Measured, *, score_sd: float = SCORE_SD) -> Estimate:
    """The table: fixed costs, the search with and without ASHA, the grid, the seed stage and the total.

    A search's wall is Ray's start, the Tuner's, the workers' start (once per slot when workers are reused) and
    the trial seconds shared over the slots; each trial also leaves its slot idle for a moment between trials.
    Without an ASHA rung below ``max_t`` the search has one row, :data:`SEARCH_FULL` (the others would repeat it).
    """
    worker_s = WORKER_START_S + m.import_s
    per_trial_gap = TRIAL_GAP_S if plan.reuse_workers else worker_s
    start_s = RAY_START_S + TUNER_START_S + (worker_s if plan.reuse_workers else 0.0)

    def search_row(name: str, trials: int, sp: Spend, note: str) -> Row:
        inside = trial_seconds(m.search, sp)
        return Row(name, start_s + (inside + trials * per_trial_gap) / min(plan.slots, trials), inside, note)

    cut = cut_chance(plan.asha.rf, plan.asha.margin, score_sd)
    sp, nominal = spend(plan.trials, plan.asha, cut), spend(plan.trials, plan.asha)
    full = Asha(False, 1, 2, plan.asha.max_t)
    at_once = f"{plan.trials} trials, {min(plan.slots, plan.trials)} at once"
    if plan.asha.rungs():
        search = search_row(SEARCH_ASHA, plan.trials, sp, f"{at_once}; expected {sp.reports:.0f} of "
                            f"{plan.trials * plan.asha.max_t} reports ({sp.share:.0%})")
        others = [search_row(SEARCH_NOMINAL, plan.trials, nominal, f"no margin: {nominal.share:.0%} of the "
                             "reports (the most ASHA could cut)"),
                  search_row(SEARCH_FULL, plan.trials, spend(plan.trials, full),
                             f"every trial to {plan.asha.max_t} reports")]
    else:
        why = "ASHA off" if not plan.asha.enabled else "no ASHA rung below max_t"
        search = search_row(SEARCH_FULL, plan.trials, sp, f"{at_once}; {why}: every trial to {plan.asha.max_t} "
                            "reports")
        others = []
    grid = search_row(GRID, plan.space_size, spend(plan.space_size, full),
                      f"all {plan.space_size} designs, full budget, {plan.slots} at once")
    seed = _seed_row(plan, m, sp)
    total = Row(TOTAL, m.prepare_s + search.wall_s + seed.wall_s, search.trial_s + seed.trial_s,
                "first use + search + seed stage; the report and MLflow bookkeeping take seconds")
    rows = [*_fixed_rows(plan, m), search, *others, grid, seed, total]
    return Estimate(tuple(rows), sp, nominal, _assumptions(plan, cut, score_sd))


def duration(seconds: float) -> str:
    """``42 s``, ``5.9 min``, ``1.3 h``; ``-`` for nan."""
    if math.isnan(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table(est: Estimate, plan: Plan, m: Measured) -> str:
    """The estimate as text: the table, the ASHA shares, memory and the assumptions."""
    lines = ["| cost | wall | trial-hours | what |", "|---|---|---|---|"]
    for r in est.rows:
        hours = "-" if math.isnan(r.trial_s) else f"{r.trial_s / 3600:.2f}"
        lines.append(f"| {r.name} | {duration(r.wall_s)} | {hours} | {r.note} |")
    shares = ", ".join(f"{p}: {n / est.spend.trials:.0%}" for p, n in zip(est.spend.points, est.spend.reached,
                                                                          strict=True))
    nominal = ", ".join(f"{n / est.nominal.trials:.0%}" for n in est.nominal.reached)
    lines.append("")
    if plan.asha.rungs():
        lines.append(f"ASHA (grace {plan.asha.grace}, reduction factor {plan.asha.rf}, max_t {plan.asha.max_t}): "
                     f"trials expected to reach report {shares} (plain successive halving: {nominal})")
    else:
        lines.append("ASHA: " + ("off" if not plan.asha.enabled else f"no rung below max_t {plan.asha.max_t}"))
    memory = f"peak memory per trial: {m.peak_mb:.0f} MiB resident"
    if m.gpu_peak_mb is not None:
        memory += f", {m.gpu_peak_mb:.0f} MiB CUDA allocated"
    lines.append(memory + " (the timing process)")
    lines.extend(f"assumed: {a}" for a in est.assumptions)
    return "\n".join(lines)
