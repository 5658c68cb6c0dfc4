"""The seed stage: the search's top designs, ES-SDE and the paper baseline, each trained with several seeds.

One trial per design says little: training seeds alone move a score by more than most gaps between designs
(seed sd up to 0.14 was measured on MAMS). After the search, the top ``budget.seed_top`` distinct full-budget
designs, ES-SDE and the paper baseline are trained ``budget.seeds`` times each (seeds ``train.seed + 1``,
``train.seed + 2``, ...: not the search's own, whose scores chose the top designs), all at the
hyper-parameters of the search's best trial, so that no design wins by its hyper-parameters. Every run is
scored on the eval sets (which choose the winner: the best mean) and on the test sets (which judge it), and
its per-record predictions are kept in ``seeds/<design>.seed<k>.json``: a search killed during this stage
resumes it without redoing finished runs.

Pure core: this module chooses the stage's designs and seeds (:func:`candidates`, :func:`plan`) and judges the
runs' files (:func:`judge`, with :mod:`sde_search.verdicts`); :mod:`sde_search.seedruns` trains them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sde_search import analysis, verdicts
from sde_search.analysis import TrialRow
from sde_search.config import Task
from sde_search.design import ES_SDE, PAPER_BASELINE, Design

SPLITS = ("eval_id", "eval_ood", "test_id", "test_ood")
PRESET_ROLES = {"es_sde": ES_SDE, "paper_baseline": PAPER_BASELINE}


@dataclass
class Candidate:
    """A design of the seed stage and why it is there (``top1``..., ``es_sde``, ``paper_baseline``)."""

    design: Design
    roles: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The design's short form, ``/`` replaced (a file-name stem)."""
        return self.design.short().replace("/", "-")


@dataclass(frozen=True)
class Job:
    """One training run of the stage: a design at one seed."""

    design: Design
    hparams: Mapping[str, Any]
    seed: int
    path: Path


def candidates(rows: Sequence[TrialRow], metric: str, top: int) -> list[Candidate]:
    """The top ``top`` distinct full-budget designs, then ES-SDE and the baseline (roles merged when equal)."""
    chosen: dict[Design, Candidate] = {}
    for row in analysis.full_budget(rows, metric):
        if len(chosen) >= top:
            break
        if row.design not in chosen:
            chosen[row.design] = Candidate(row.design, [f"top{len(chosen) + 1}"])
    for role, design in PRESET_ROLES.items():
        chosen.setdefault(design, Candidate(design)).roles.append(role)
    return list(chosen.values())


def plan(task: Task, cands: Sequence[Candidate], hparams: Mapping[str, Any], seeds: int, folder: Path) -> list[Job]:
    """Every (candidate, seed) run, at seeds the search did not use.

    The search trained every design at ``train.seed``; a top design's score at that seed is the maximum that
    made it a top design, so reusing it would tilt the winner's choice towards the top designs and against
    ES-SDE and the baseline. The stage's seeds start at ``train.seed + 1``.
    """
    base = int(hparams.get("seed", task.config.train.seed))
    return [Job(cand.design, dict(hparams), base + k, folder / f"{cand.name}.seed{base + k}.json")
            for cand in cands for k in range(1, seeds + 1)]


def matches(task: Task, job: Job, data: Mapping[str, Any]) -> bool:
    """Whether a saved run belongs to this job and task (same design, seed, hparams and records per split).

    A run folder resumed after its task file changed (``data.max_test``, say) must not mix old runs in.
    """
    if data.get("design") != job.design.to_params() or data.get("seed") != job.seed \
            or data.get("hparams") != {**job.hparams, "seed": job.seed}:
        return False
    return all(split in task.splits and [r["id"] for r in entry["records"]] == [r.id for r in task.splits[split]]
               for split, entry in data.get("splits", {}).items())


# ---------------------------------------------------------------- the judgement (pure)


def answers(records: Sequence[Mapping[str, Any]], key: str = "parsed") -> list[dict[str, tuple[str, ...]]]:
    """The answers saved under ``key`` (``parsed`` or ``gold``) of per-record JSON lines, values as tuples."""
    return [{k: tuple(v) for k, v in r[key].items()} for r in records]


def _split_summary(task: Task, split: str, runs: Sequence[Mapping[str, Any]], samples: int) -> dict[str, Any]:
    """Mean and sd over seeds, whether the split measures anything, and the reads-the-input test."""
    golds = [task.gold(r, split) for r in task.splits[split]]
    predicted = [answers(run["records"]) for run in runs]
    reasons = [verdicts.degenerate(a, [r["errors"] for r in run["records"]]) for a, run in zip(predicted, runs,
                                                                                            strict=True)]
    ms = [run["metrics"] for run in runs]

    def stat(key: str) -> tuple[float, float]:
        values = [float(m[key]) for m in ms if key in m and not math.isnan(float(m[key]))]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan

    out: dict[str, Any] = {"runs": len(runs), "records": len(golds)}
    for key in ("score", "accuracy", "format_error_rate", "repair_rate", "distinct_predictions", "baseline_fixed",
                "accuracy_fixed"):
        out[f"{key}_mean"], out[f"{key}_sd"] = stat(key)
    bad = [r for r in reasons if r]
    out["measured"] = not bad
    out["why_not_measured"] = f"{len(bad)} of {len(runs)} seeds: {bad[0]}" if bad else ""
    check = None if bad else verdicts.reads_input(  # a degenerate split reads nothing: no bootstrap needed
        lambda g, p: task.score(g, p, split), golds, predicted, task.fixed_answer(split),
        dict.fromkeys(task.slots_for(split), task.kind.empty(task.unmentioned)), samples=samples)
    out["reads"] = check.to_json() if check else {}
    out["reads_input"] = bool(check and check.reads)
    out["why_not_reading"] = check.why_not() if check else out["why_not_measured"]
    return out


OBJECTIVE_SPLITS = {"id": ("eval_id",), "pareto": ("eval_id",), "ood": ("eval_ood",), "mean": ("eval_id", "eval_ood")}
"""The eval splits a design must read the input on, per objective."""


def judge(task: Task, cands: Sequence[Candidate], results: Mapping[Path, Mapping[str, Any]],
          jobs: Sequence[Job], *, objective: str = "id", samples: int = verdicts.BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """The stage's verdict: each candidate's seed statistics, the winner, and its gains over the presets.

    Eligible to win: candidates with at least 2 finished seed runs (or all of them, with ``budget.seeds`` 1)
    that read the input on the objective's eval splits (ID; OOD; both for ``mean``). The winner is the
    eligible candidate with the best mean eval score of the objective (ID for pareto); with none eligible, the
    best mean overall, and the verdict says that no design reads the input. A gain over ES-SDE or the baseline
    on a test split is real only when the winner reads the input on the objective's eval splits and on that
    test split, both sides are measured there with at least 2 seeds each, and the interval
    (:func:`verdicts.gain`) excludes zero.
    """
    by_design: dict[Design, list[Mapping[str, Any]]] = {}
    for job in jobs:
        if job.path in results:
            by_design.setdefault(job.design, []).append(results[job.path])
    planned = {d: sum(j.design == d for j in jobs) for d in {j.design for j in jobs}}
    table = []
    for cand in cands:
        runs = by_design.get(cand.design, [])
        entry: dict[str, Any] = {"design": cand.design.to_params(), "short": cand.design.short(),
                                 "roles": cand.roles, "seeds": [r["seed"] for r in runs],
                                 "planned_seeds": planned.get(cand.design, 0), "splits": {}}
        for split in SPLITS:
            split_runs = [r["splits"][split] for r in runs if split in r["splits"]]
            if split_runs and len(split_runs) == len(runs):
                entry["splits"][split] = _split_summary(task, split, split_runs, samples)
        table.append(entry)
    needed = OBJECTIVE_SPLITS.get(objective, ("eval_id",))
    scored = [e for e in table if not math.isnan(_objective(e, objective))
              and len(e["seeds"]) >= min(2, e["planned_seeds"])]
    reading = [e for e in scored if all(e["splits"].get(s, {}).get("reads_input") for s in needed)]
    pool = reading or scored
    winner = max(pool, key=lambda e: _objective(e, objective)) if pool else None
    verdict: dict[str, Any] = {"method": verdicts.METHOD, "candidates": table, "gains": [],
                               "winner": winner["short"] if winner else None,
                               "winner_design": winner["design"] if winner else None}
    if winner is None:
        ran = [e for e in table if len(e["seeds"]) >= min(2, e["planned_seeds"]) and e["seeds"]]
        verdict.update(reads_input=False, headline=(
            "No design reads the input at this budget: every design of the seed stage wrote one constant answer "
            "(or only format errors) on the eval set, so nothing was measured; no winner. To change that: more "
            "training records or steps (train.epochs), a larger model (model.name), or a higher lr." if ran else
            "No winner: the seed stage's runs failed (each design needs 2 finished seed runs); see the warnings "
            "above, then: sde-search report RUN --rescore"))
        return verdict
    test_needed = [s.replace("eval_", "test_") for s in needed if s.replace("eval_", "test_") in winner["splits"]]
    test_ok = all(winner["splits"][s]["reads_input"] for s in test_needed)
    verdict["reads_input"] = bool(reading) and test_ok
    verdict["headline"] = _headline(task, winner, bool(reading), test_ok, needed, test_needed)
    for ref in (e for e in table if e is not winner):  # the presets, and the runners-up: is the lead real?
        for split in ("test_id", "test_ood"):
            reads = bool(reading) and winner["splits"].get(split, {}).get("reads_input", False)
            verdict["gains"].append(_gain(task, split, winner, ref, by_design, reads, samples))
    verdict["gains"] = [g for g in verdict["gains"] if g]
    return verdict


def _objective(entry: Mapping[str, Any], objective: str) -> float:
    """A candidate's mean eval score under the objective; NaN when not scored or not measured."""
    def mean(split: str) -> float:
        s = entry["splits"].get(split)
        return float(s["score_mean"]) if s and s["measured"] else math.nan

    if objective == "ood":
        return mean("eval_ood")
    if objective == "mean":
        return (mean("eval_id") + mean("eval_ood")) / 2
    return mean("eval_id")


def _headline(task: Task, winner: Mapping[str, Any], reads_eval: bool, reads_test: bool, needed: Sequence[str],
              test_needed: Sequence[str]) -> str:
    ev = winner["splits"][needed[0]]
    where = " and ".join(s.replace("_", " ") for s in needed)
    if not reads_eval:
        why = "; ".join(f"{s.replace('_', ' ')}: {winner['splits'][s]['why_not_reading']}" for s in needed
                        if s in winner["splits"] and winner["splits"][s]["why_not_reading"])
        return ("No design reads the input at this budget: none beats both trivial answers (each slot's most "
                f"common training value, or all empty) on {task.kind.score_key} and on accuracy on {where}, with a "
                f"95 % interval above zero; the best mean, {winner['short']}, is {why or 'not measured'}. To change "
                "that: more training records or steps (train.epochs), a larger model (model.name), or a higher lr. "
                "No gain below is called real.")
    if not reads_test:
        why = "; ".join(f"{s.replace('_', ' ')}: {winner['splits'][s]['why_not_reading']}" for s in test_needed
                        if winner["splits"][s]["why_not_reading"])
        return (f"The winner, {winner['short']}, reads the input on {where} but is not shown to on the test set "
                f"({why}); no gain below is called real.")
    return (f"The winner, {winner['short']}, reads the input: {where} {task.kind.score_key} "
            f"{ev['score_mean']:.3f} (sd {ev['score_sd']:.3f} over {ev['runs']} seeds), accuracy "
            f"{ev['accuracy_mean']:.3f} against {ev['accuracy_fixed_mean']:.3f} for the majority answer.")


def _gain(task: Task, split: str, winner: Mapping[str, Any], ref: Mapping[str, Any],
          by_design: Mapping[Design, Sequence[Mapping[str, Any]]], reads: bool, samples: int) -> dict[str, Any]:
    """Winner minus a preset on one test split, over records x seeds; empty when the split is absent."""
    out: dict[str, Any] = {"vs": ref["short"], "roles": ref["roles"], "split": split}
    if split not in winner["splits"] and split not in ref["splits"]:
        return {}
    missing = [e["short"] for e in (winner, ref) if split not in e["splits"]]
    if missing:
        return {**out, "real": False, "note": f"no scored seed run of {', '.join(missing)} on this split"}
    unmeasured = [f"{e['short']}: {e['splits'][split]['why_not_measured']}" for e in (winner, ref)
                  if not e["splits"][split]["measured"]]
    if unmeasured:
        return {**out, "real": False, "note": "not measured: " + "; ".join(unmeasured)}
    golds = [task.gold(r, split) for r in task.splits[split]]
    runs = [[answers(r["splits"][split]["records"]) for r in by_design[Design.from_params(e["design"])]]
            for e in (winner, ref)]
    interval = verdicts.gain(lambda g, p: task.score(g, p, split), golds, runs[0], runs[1], samples=samples)["score"]
    real = reads and interval.real and interval.seed_noise
    note = ("a real difference" if real else "within noise (the interval includes 0)" if not interval.real
            else "not called real: fewer than 2 seeds on a side, so seed noise is unknown" if not interval.seed_noise
            else "not called real: the winner is not shown to read the input here")
    return {**out, **interval.to_json(), "real": real, "note": note, "text": interval.text()}
