"""The seed stage: the search's top designs, ES-SDE and the paper baseline, each trained with several seeds.

One trial per design says little: training seeds alone move a score by more than most gaps between designs
(seed sd up to 0.14 was measured on MAMS). After the search, the top ``budget.seed_top`` distinct full-budget
designs, ES-SDE and the paper baseline are trained ``budget.seeds`` times each (seeds ``train.seed``,
``train.seed + 1``, ...), all at the hyper-parameters of the search's best trial, so that no design wins by
its hyper-parameters. A design's trial at the first seed and those hyper-parameters is reused from its
checkpoint (scored again, not retrained). Every run is scored on the eval sets (which choose the winner: the
best mean) and on the test sets (which judge it), and its per-record predictions are kept in
``seeds/<design>.seed<k>.json``: a search killed during this stage resumes it without redoing finished runs.

The judgement itself (:func:`judge`) is pure: it reads those files and asks :mod:`sde_search.verdicts`.
Training runs in worker processes (``spawn``); torch is imported there, never here.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sde_search import analysis, verdicts
from sde_search.analysis import TrialRow
from sde_search.config import Task
from sde_search.design import ES_SDE, PAPER_BASELINE, Design

log = logging.getLogger(__name__)

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
    """One training run of the stage: a design at one seed, trained anew or scored from a trial's checkpoint."""

    design: Design
    hparams: Mapping[str, Any]
    seed: int
    checkpoint: str | None
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


def plan(task: Task, rows: Sequence[TrialRow], cands: Sequence[Candidate], hparams: Mapping[str, Any], seeds: int,
         folder: Path) -> list[Job]:
    """Every (candidate, seed) run; the first seed reuses a full-budget trial with the same hyper-parameters."""
    base = int(hparams.get("seed", task.config.train.seed))
    jobs = []
    for cand in cands:
        for k in range(seeds):
            seed = base + k
            reuse = next((r.checkpoint for r in rows if k == 0 and r.design == cand.design and r.status == "full"
                          and r.checkpoint and dict(r.hparams) == dict(hparams)
                          and Path(r.checkpoint).exists()), None)
            jobs.append(Job(cand.design, dict(hparams), seed, reuse, folder / f"{cand.name}.seed{seed}.json"))
    return jobs


def run_job(task: Task, job: Job, threads: int) -> dict[str, Any]:
    """Trains (unless a checkpoint is given) and scores one run on every split; returns what its file holds."""
    import warnings

    # peft/transformers warn about a deprecated attribute once per model build: noise in the command's output
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from sde_search import train  # heavy: torch, peft
    from sde_search.render import parse

    hp = {**job.hparams, "seed": job.seed}
    tmp = None
    checkpoint, source = job.checkpoint, "trial checkpoint"
    if checkpoint is None:
        tmp = tempfile.mkdtemp(prefix="sde-seed-")
        train.fit(task, job.design, hp, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
        checkpoint, source = str(sorted(Path(tmp).glob("report-*"))[-1]), "trained"
    try:
        out: dict[str, Any] = {"design": job.design.to_params(), "hparams": hp, "seed": job.seed, "source": source,
                               "splits": {}}
        for split in (s for s in SPLITS if s in task.splits):
            texts: dict[str, list[str]] = {}
            scores = train.evaluate_checkpoint(task, job.design, hp, checkpoint, splits=[split], threads=threads,
                                               outputs=texts)[0]
            if split not in texts:  # not scored (a No-inst design on OOD slots)
                continue
            ood = split.endswith("_ood")
            records = []
            for record, text in zip(task.splits[split], texts[split], strict=True):
                p = parse(text, job.design, task, ood=ood)
                records.append({"id": record.id, "output": text, "parsed": {k: list(v) for k, v in p.answer.items()},
                                "errors": list(p.errors)})
            suffix = "_ood" if ood else ""
            out["splits"][split] = {"metrics": {k.removesuffix(suffix): v for k, v in scores.items()},
                                    "records": records}
        return out
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _write(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: a killed stage leaves whole files or none


def run(task: Task, jobs: Sequence[Job], *, workers: int, threads: int) -> dict[Path, dict[str, Any]]:
    """Runs the jobs whose file does not exist yet (``workers`` processes at once); returns every file's data.

    A failed job is logged and left without a file (a later ``--resume`` or ``report --rescore`` retries it).
    """
    todo = [j for j in jobs if not j.path.exists()]
    if todo:
        todo[0].path.parent.mkdir(parents=True, exist_ok=True)
        log.info("seed stage: %d runs (%d already done), %d at once", len(todo), len(jobs) - len(todo), workers)
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context) as pool:
            futures = {pool.submit(run_job, task, job, threads): job for job in todo}
            done = 0
            for future in concurrent.futures.as_completed(futures):
                job, done = futures[future], done + 1
                try:
                    data = future.result()
                except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others or the report
                    log.warning("seed stage: %s seed %d failed: %s", job.design.short(), job.seed, exc)
                    continue
                _write(job.path, data)
                score = data["splits"].get("eval_id", {}).get("metrics", {}).get("score", math.nan)
                log.info("seed stage: %d/%d %s seed %d (%s): eval %.3f", done, len(todo), job.design.short(),
                         job.seed, data["source"], score)
    return {j.path: json.loads(j.path.read_text()) for j in jobs if j.path.exists()}


# ---------------------------------------------------------------- the judgement (pure)


def _answers(records: Sequence[Mapping[str, Any]]) -> list[dict[str, tuple[str, ...]]]:
    return [{k: tuple(v) for k, v in r["parsed"].items()} for r in records]


def _split_summary(task: Task, split: str, runs: Sequence[Mapping[str, Any]], samples: int) -> dict[str, Any]:
    """Mean and sd over seeds, whether the split measures anything, and the reads-the-input test."""
    golds = [task.gold(r, split) for r in task.splits[split]]
    answers = [_answers(run["records"]) for run in runs]
    reasons = [verdicts.degenerate(a, [r["errors"] for r in run["records"]]) for a, run in zip(answers, runs,
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
    check = verdicts.reads_input(lambda g, p: task.score(g, p, split), golds, answers, task.fixed_answer(split),
                                 dict.fromkeys(task.slots_for(split), task.kind.empty(task.unmentioned)),
                                 samples=samples)
    out["reads"] = check.to_json()
    out["reads_input"] = check.reads and not bad
    out["why_not_reading"] = check.why_not() or (out["why_not_measured"] if bad else "")
    return out


def judge(task: Task, cands: Sequence[Candidate], results: Mapping[Path, Mapping[str, Any]],
          jobs: Sequence[Job], *, objective: str = "id", samples: int = verdicts.BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """The stage's verdict: each candidate's seed statistics, the winner, and its gains over the presets.

    The winner is the best mean eval score (of the ``objective``: ID, OOD or their mean; ID for pareto) among
    candidates that read the input on the eval set; with none, the best mean overall, and the verdict says
    that no design reads the input. An OOD objective counts only measured OOD splits. A gain over ES-SDE or the
    baseline is real only when the winner reads the input on eval and test, both splits are measured, and
    the records x seeds interval (:func:`verdicts.gain`) excludes zero.
    """
    by_design: dict[Design, list[Mapping[str, Any]]] = {}
    for job in jobs:
        if job.path in results:
            by_design.setdefault(job.design, []).append(results[job.path])
    table = []
    for cand in cands:
        runs = by_design.get(cand.design, [])
        entry: dict[str, Any] = {"design": cand.design.to_params(), "short": cand.design.short(),
                                 "roles": cand.roles, "seeds": [r["seed"] for r in runs], "splits": {}}
        for split in SPLITS:
            split_runs = [r["splits"][split] for r in runs if split in r["splits"]]
            if split_runs and len(split_runs) == len(runs):
                entry["splits"][split] = _split_summary(task, split, split_runs, samples)
        table.append(entry)
    scored = [e for e in table if not math.isnan(_objective(e, objective))]
    reading = [e for e in scored if e["splits"]["eval_id"]["reads_input"]]
    pool = reading or scored
    winner = max(pool, key=lambda e: _objective(e, objective)) if pool else None
    verdict: dict[str, Any] = {"method": verdicts.METHOD, "candidates": table, "gains": [],
                               "winner": winner["short"] if winner else None,
                               "winner_design": winner["design"] if winner else None}
    if winner is None:
        verdict.update(reads_input=False, headline="No design of the seed stage was scored; no winner.")
        return verdict
    test_ok = "test_id" not in winner["splits"] or winner["splits"]["test_id"]["reads_input"]
    verdict["reads_input"] = bool(reading) and test_ok
    verdict["headline"] = _headline(task, winner, bool(reading), test_ok)
    for ref in (e for e in table if e is not winner and {"es_sde", "paper_baseline"} & set(e["roles"])):
        for split in ("test_id", "test_ood"):
            verdict["gains"].append(_gain(task, split, winner, ref, by_design, verdict["reads_input"], samples))
    verdict["gains"] = [g for g in verdict["gains"] if g]
    return verdict


def _objective(entry: Mapping[str, Any], objective: str) -> float:
    """A candidate's mean eval score under the objective; NaN when not scored or (OOD) not measured."""
    def mean(split: str) -> float:
        s = entry["splits"].get(split)
        return float(s["score_mean"]) if s and s["measured"] else math.nan

    if "eval_id" not in entry["splits"]:
        return math.nan
    if objective == "ood":
        return mean("eval_ood")
    if objective == "mean":
        return (mean("eval_id") + mean("eval_ood")) / 2
    return float(entry["splits"]["eval_id"]["score_mean"])


def _headline(task: Task, winner: Mapping[str, Any], reads_eval: bool, reads_test: bool) -> str:
    ev = winner["splits"]["eval_id"]
    if not reads_eval:
        return ("No design reads the input at this budget: none beats the trivial answers (each slot's most "
                f"common training value, or all empty) on {task.kind.score_key} and on accuracy with a 95 % "
                f"interval above zero; the best, {winner['short']}, is {ev['why_not_reading']}. To change that: "
                "more training records or steps (train.epochs), a larger model (model.name), or a higher lr. No "
                "gain below is called real.")
    if not reads_test:
        return (f"The winner, {winner['short']}, reads the input on the eval set but is not shown to on the test "
                f"set ({winner['splits']['test_id']['why_not_reading']}); no gain below is called real.")
    return (f"The winner, {winner['short']}, reads the input: eval {task.kind.score_key} "
            f"{ev['score_mean']:.3f} (sd {ev['score_sd']:.3f} over {ev['runs']} seeds), accuracy "
            f"{ev['accuracy_mean']:.3f} against {ev['accuracy_fixed_mean']:.3f} for the majority answer.")


def _gain(task: Task, split: str, winner: Mapping[str, Any], ref: Mapping[str, Any],
          by_design: Mapping[Design, Sequence[Mapping[str, Any]]], reads: bool, samples: int) -> dict[str, Any]:
    """Winner minus a preset on one test split, over records x seeds; empty when the split is absent."""
    if split not in winner["splits"] or split not in ref["splits"]:
        return {}
    out: dict[str, Any] = {"vs": ref["short"], "roles": ref["roles"], "split": split}
    unmeasured = [f"{e['short']}: {e['splits'][split]['why_not_measured']}" for e in (winner, ref)
                  if not e["splits"][split]["measured"]]
    if unmeasured:
        return {**out, "real": False, "note": "not measured: " + "; ".join(unmeasured)}
    golds = [task.gold(r, split) for r in task.splits[split]]
    runs = [[_answers(r["splits"][split]["records"]) for r in by_design[Design.from_params(e["design"])]]
            for e in (winner, ref)]
    interval = verdicts.gain(lambda g, p: task.score(g, p, split), golds, runs[0], runs[1], samples=samples)["score"]
    real = reads and interval.real
    note = ("a real difference" if real else "within noise (the interval includes 0)" if not interval.real
            else "not called real: the winner is not shown to read the input")
    return {**out, **interval.to_json(), "real": real, "note": note, "text": interval.text()}
