"""From a finished search to a decision: winner, held-out test scores, report, plots.

Selection vs reporting: trials are compared on ``eval_*`` and the winner is chosen only among
trials that reached the full budget (ASHA-stopped trials reach Optuna as COMPLETE with a partial
value, PITFALLS 3). The winner, ES-SDE and the paper's baseline are then scored once on
``test_*``, which the search never saw, and compared with a paired bootstrap over test records.

A run folder holds everything the report needs (``trials.json``, ``tests.json``,
``summary.json``, ``outputs/``), so ``sde-search report RUN`` rebuilds it without Ray or training.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sde_search import analysis, plots, tracking
from sde_search.analysis import TrialRow
from sde_search.config import SpaceConfig, Task
from sde_search.design import ES_SDE, PAPER_BASELINE, Design
from sde_search.render import parse, render
from sde_search.sampler import optuna_space

if TYPE_CHECKING:
    from sde_search.search import RunInfo

HISTORY_KEYS = ("report", "step", "score", "score_ood", "format_error_rate", "train_loss")


# ---------------------------------------------------------------- from Tune to rows


def collect(results: Any, fixed: Mapping[str, Any]) -> list[TrialRow]:
    """Turns a Tune ``ResultGrid`` into rows (full / stopped by ASHA / failed) with their report history."""
    rows = []
    for r in results:
        metrics = {k: v for k, v in (r.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
        config = {**fixed, **(r.config or {})}
        hparams = {k[len("train."):]: v for k, v in config.items() if k.startswith("train.")}
        trial_id = metrics.get("trial_id") or Path(r.path).name
        status = "failed" if r.error is not None else ("full" if metrics.get("progress", 0) >= 1 else "stopped")
        ckpt = r.checkpoint.path if r.checkpoint is not None else None
        rows.append(TrialRow(str(trial_id), Design.from_params(config), hparams, status, metrics,
                             history=_history(r), error=_error_text(r.error), checkpoint=ckpt))
    return rows


def _history(result: Any) -> list[dict[str, float]]:
    frame = result.metrics_dataframe
    if frame is None or frame.empty:
        return []
    cols = [c for c in HISTORY_KEYS if c in frame.columns]
    return [{k: float(v) for k, v in row.items() if v == v} for row in frame[cols].to_dict("records")]


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def pick_winner(rows: Sequence[TrialRow], metric: str) -> TrialRow | None:
    """Best full-budget trial; ties: fewer format errors, then less training time."""
    full = analysis.full_budget(rows, metric)
    if not full:
        return None
    return max(full, key=lambda r: (round(r.value(metric), 6), -r.value("format_error_rate"), -r.value("train_s")))


# ---------------------------------------------------------------- held-out test sets


def _find(rows: Sequence[TrialRow], design: Design) -> TrialRow | None:
    return next((r for r in rows if r.design == design and r.status == "full"), None)


def test_scores(task: Task, rows: Sequence[TrialRow], winner: TrialRow | None, run_dir: Path,
                threads: int = 1) -> dict[str, dict[str, Any]]:
    """Scores the winner, ES-SDE and the baseline once on the test splits; keeps their generations.

    A preset that ASHA stopped is retrained at full budget first. Generations go to
    ``outputs/<name>.<split>.jsonl`` (the notebook's error analysis and the bootstrap read them).
    """
    if not any(s in task.splits for s in ("test_id", "test_ood")):
        return {}
    from sde_search import train

    out: dict[str, dict[str, Any]] = {}
    wanted = {"winner": winner.design if winner else None, "es_sde": ES_SDE, "paper_baseline": PAPER_BASELINE}
    for name, design in wanted.items():
        if design is None:
            continue
        row = winner if name == "winner" else _find(rows, design)
        hparams = row.hparams if row else {}
        try:
            if row and row.checkpoint:
                ckpt, how = row.checkpoint, f"trial {row.trial_id}"
            else:
                print(f"retraining {name} ({design.short()}) at full budget for the test comparison", flush=True)
                tmp = tempfile.mkdtemp(prefix="sde-final-")
                train.fit(task, design, hparams, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
                ckpt, how = str(sorted(Path(tmp).glob("report-*"))[-1]), "retrained"
            generations: dict[str, list[str]] = {}
            scores = train.evaluate_checkpoint(task, design, hparams, ckpt, threads=threads, outputs=generations)[0]
        except Exception as exc:  # noqa: BLE001 - one failed comparison must not lose the search's report
            print(f"warning: test scoring of {name} failed: {exc}", file=sys.stderr, flush=True)
            out[name] = {"design": design.to_params(), "hparams": hparams, "scores": {},
                         "source": f"failed: {str(exc)[:200]}"}
            continue
        for split, texts in generations.items():
            save_outputs(run_dir / "outputs" / f"{name}.{split}.jsonl", task, design, split, texts)
        out[name] = {"design": design.to_params(), "hparams": hparams, "scores": scores, "source": how}
    return out


def rescore(run_dir: Path, task: Task, space: SpaceConfig) -> dict[str, dict[str, Any]]:
    """``sde-search report RUN --rescore``: the test scoring of :func:`finish` again, into ``tests.json``.

    Nothing else runs then, so it uses every CPU core (the search's own scoring used one trial's share).
    """
    rows = analysis.load_rows(run_dir / "trials.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    winner = next((r for r in rows if r.trial_id == summary.get("winner")), None)
    tests = test_scores(task, rows, winner, run_dir, threads=max(1, int(space.resources.cpu), os.cpu_count() or 1))
    (run_dir / "tests.json").write_text(json.dumps(tests, indent=1))
    return tests


def save_outputs(path: Path, task: Task, design: Design, split: str, texts: Sequence[str]) -> None:
    """One JSON line per record: id, gold, generation, parsed answer and format errors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ood = split.endswith("_ood")
    with open(path, "w", encoding="utf-8") as f:
        for record, text in zip(task.splits[split], texts, strict=False):
            p = parse(text, design, task, ood=ood)
            f.write(json.dumps({"id": record.id, "gold": task.gold(record, split), "output": text,
                                "parsed": p.answer, "errors": list(p.errors)}) + "\n")


def _load_outputs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def compare(task: Task, run_dir: Path, a: str, b: str, split: str) -> analysis.Difference | None:
    """Paired bootstrap of the test score of design ``a`` minus ``b`` on the same records."""
    ra = _load_outputs(run_dir / "outputs" / f"{a}.{split}.jsonl")
    rb = _load_outputs(run_dir / "outputs" / f"{b}.{split}.jsonl")
    if not ra or len(ra) != len(rb):
        return None
    return _paired(task, split, ra, [_answer(x["parsed"]) for x in rb])


def versus_fixed(task: Task, run_dir: Path, a: str, split: str) -> analysis.Difference | None:
    """Paired bootstrap of design ``a``'s test score minus the fixed answer's on the same records."""
    ra = _load_outputs(run_dir / "outputs" / f"{a}.{split}.jsonl")
    return _paired(task, split, ra, [task.fixed_answer(split)] * len(ra)) if ra else None


def _answer(d: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in d.items()}


def _paired(task: Task, split: str, ra: Sequence[Mapping[str, Any]],
            pb: Sequence[Mapping[str, tuple[str, ...]]]) -> analysis.Difference:
    slots, key = task.slots_for(split), task.kind.score_key
    golds = [_answer(x["gold"]) for x in ra]
    pa = [_answer(x["parsed"]) for x in ra]
    kw = {"slots": slots, "values": task.config.labels.values, "unmentioned": task.unmentioned}

    def score(idx: Sequence[int]) -> tuple[float, float]:
        idx = list(idx)
        g = [golds[i] for i in idx]
        return (task.kind.score(g, [pa[i] for i in idx], **kw)[key],
                task.kind.score(g, [pb[i] for i in idx], **kw)[key])

    return analysis.paired_bootstrap(score, len(golds), samples=500)


# ---------------------------------------------------------------- importance


def importances(rows: Sequence[TrialRow], space: SpaceConfig, metric: str) -> tuple[dict[str, float], Any]:
    """Optuna's fANOVA importance over the full-budget trials; returns (importances, the study)."""
    import optuna

    searched, _ = optuna_space(space)
    study = optuna.create_study(direction="maximize")
    for r in analysis.full_budget(rows, metric):
        params = {**r.design.to_params(), **{f"train.{k}": v for k, v in r.hparams.items()}}
        study.add_trial(optuna.trial.create_trial(params={k: params[k] for k in searched},
                                                  distributions=searched, value=r.value(metric)))
    if len(study.trials) < 3:
        return {}, study
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):
        return {}, study
    return dict(values), study


# ---------------------------------------------------------------- markdown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{round(v, 3) + 0.0:.3f}"  # never "-0.000"
    return str(v)


def _table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_fmt(c) for c in line) + " |" for line in lines]]


def reading_flag(row: TrialRow) -> str:
    """'not reading the input' when the trial does not beat both trivial answers (fixed, empty) on its ID set."""
    trivial = [v for v in (row.value("baseline_fixed"), row.value("baseline_empty")) if not math.isnan(v)]
    margin = row.value("score") - max(trivial) if trivial else math.nan
    return "" if math.isnan(margin) or margin > 0 else "not reading the input"


def leaderboard(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Full-budget trials, best first."""
    lines = [[i, r.trial_id, r.design.short(), ", ".join(f"{k}={_fmt(v)}" for k, v in r.hparams.items()) or "-",
              r.value(metric), r.value("score_ood"), r.value("format_error_rate"), r.value("baseline_fixed"),
              r.value("baseline_empty"), f"{r.value('distinct_predictions'):.0f}", reading_flag(r) or "yes"]
             for i, r in enumerate(analysis.full_budget(rows, metric), 1)]
    return _table(["#", "trial", "design", "hparams", metric, "OOD", "format err", "fixed answer", "empty answer",
                   "distinct", "reads input"], lines)


def stopped_table(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Trials stopped by ASHA, with how far they got."""
    stopped = sorted((r for r in rows if r.status == "stopped"), key=lambda r: -r.value("progress"))
    return _table(["trial", "design", f"{metric} when stopped", "budget used", "reports"],
                  [[r.trial_id, r.design.short(), r.value(metric), f"{r.value('progress'):.0%}",
                    f"{r.value('report'):.0f}"] for r in stopped])


def cost_table(rows: Sequence[TrialRow]) -> list[str]:
    """Per design (full-budget trials): tokens per sample, train and generation seconds."""
    full = sorted((r for r in rows if r.status == "full"), key=lambda r: r.value("train_s"))
    return _table(["design", "tokens / sample", "train s", "generation s", "trial s"],
                  [[r.design.short(), f"{r.value('tokens_per_sample'):.0f}", f"{r.value('train_s'):.1f}",
                    f"{r.value('gen_s'):.1f}", f"{r.value('time_total_s'):.1f}"] for r in full])


def cost_lines(rows: Sequence[TrialRow], summary: Mapping[str, Any], space_size: int) -> list[str]:
    """The search's own cost against every trial at full budget and an exhaustive grid."""
    c = analysis.search_cost(rows, int(summary["steps_per_trial"]), space_size)
    counts = {s: sum(r.status == s for r in rows) for s in ("full", "stopped", "failed")}
    lines = [f"- trials: {len(rows)} ({counts['full']} full budget, {counts['stopped']} stopped early by ASHA, "
             f"{counts['failed']} failed)",
             f"- train steps: {c['steps']:.0f} spent, {c['steps_all_full']:.0f} had every trial run to full budget "
             f"({c['steps'] / max(1, c['steps_all_full']):.0%}); an exhaustive grid of all {space_size} designs: "
             f"{c['steps_grid']:.0f} steps ({c['steps'] / max(1, c['steps_grid']):.0%} of it spent)",
             f"- time: {summary['wall_s'] / 60:.1f} min wall; {c['trial_seconds'] / 60:.1f} min inside trials; "
             f"the grid would take about {c['grid_seconds_estimate'] / 60:.0f} trial-minutes"]
    return lines + overhead_lines(rows, summary)


def overhead_lines(rows: Sequence[TrialRow], summary: Mapping[str, Any]) -> list[str]:
    """Where the time went: Ray start, time inside trials and inside ``fit()``, slot use."""
    timed = [r for r in rows if not math.isnan(r.value("time_total_s"))]
    if not timed:
        return []
    inside = sum(r.value("time_total_s") for r in timed)
    fit = [r.value("fit_s") for r in timed]
    in_fit = 0.0 if any(math.isnan(f) for f in fit) else sum(fit)  # trials of an older version report no fit_s
    work = sum(r.value("train_s") + r.value("gen_s") for r in timed)
    width = min(int(summary["max_concurrent"]), len(rows))
    slots = max(summary["wall_s"] * width, 1e-9)
    n = len(timed)
    lines = [f"- Ray start: {summary.get('ray_init_s', math.nan):.1f} s; per trial: {inside / n:.1f} s in the trial, "
             f"of which {work / n:.1f} s training + generation and {(inside - work) / n:.1f} s set-up (imports, "
             "model build, checkpoints)"]
    if in_fit:
        lines.append(f"- trial slots busy {inside / slots:.0%} of {width} x wall, {in_fit / slots:.0%} inside "
                     f"fit(); the rest ({max(0.0, slots - in_fit) / slots:.0%}: Ray start, worker imports, "
                     "scheduling, MLflow) is orchestration")
    else:
        lines.append(f"- trial slots busy {inside / slots:.0%} of {width} x wall; the rest (Ray, scheduling, "
                     f"MLflow) {max(0.0, slots - inside) / slots:.0%}")
    return lines


def test_section(task: Task, run_dir: Path, tests: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Held-out scores of the winner, ES-SDE and the baseline, gains with a bootstrap interval."""
    if not tests:
        return []
    md = ["## Held-out test sets (scored once, never seen by the search)", ""]
    md += _table(["design", "", "test ID", "test OOD", "format err", "fixed answer", "empty answer", "distinct",
                  "source"],
                 [[name, Design.from_params(t["design"]).short(), *(t["scores"].get(k, math.nan) for k in (
                     "score", "score_ood", "format_error_rate", "baseline_fixed", "baseline_empty")),
                   f"{t['scores'].get('distinct_predictions', math.nan):.0f}", t["source"]]
                  for name, t in tests.items()])
    md.append("")
    for name in tests:
        d = versus_fixed(task, run_dir, name, "test_id")
        if d is not None:
            verdict = "reads the input" if d.low > 0 else "not shown to beat it (the interval reaches 0)"
            md.append(f"- {name} vs the fixed answer, ID: {d.delta:+.3f} (95 % paired bootstrap over {d.records} "
                      f"records: {d.low:+.3f} to {d.high:+.3f}): {verdict}")
    if "winner" not in tests:
        return [*md, ""]
    for ref in ("es_sde", "paper_baseline"):
        if ref not in tests:
            continue
        if tests[ref]["design"] == tests["winner"]["design"]:
            md.append(f"- the winner is {ref} itself.")
            continue
        for split, label in (("test_id", "ID"), ("test_ood", "OOD")):
            d = compare(task, run_dir, "winner", ref, split)
            if d is None:
                continue
            verdict = "a real difference" if d.significant else "within noise (the interval includes 0)"
            md.append(f"- winner vs {ref}, {label}: {d.delta:+.3f} (95 % paired bootstrap over "
                      f"{d.records} records: "
                      f"{d.low:+.3f} to {d.high:+.3f}): {verdict}")
    md += ["", "One training seed per design: the interval covers test-set sampling, not training noise "
           "(`sde-search robust RUN` measures that).", ""]
    return md


def build(run_dir: Path, task: Task, space: SpaceConfig) -> str:
    """Writes ``report.md``, ``trials.csv``, ``best_design.yaml`` and ``plots/`` from the run folder's files."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = analysis.load_rows(run_dir / "trials.json")
    tests = json.loads((run_dir / "tests.json").read_text()) if (run_dir / "tests.json").exists() else {}
    metric = summary["metric"]
    winner = next((r for r in rows if r.trial_id == summary.get("winner")), None)
    figures = run_dir / "plots"
    figures.mkdir(exist_ok=True)
    md = [f"# sde-search report: {summary['name']}", "",
          f"Task `{task.config.name}` ({task.config.type}), space `{Path(summary['space_path']).name}` "
          f"({space.size()} designs), objective `{task.config.objective}` (metric `{metric}`), model "
          f"`{task.config.model.name}`.", "", "## Cost of the search", "",
          *cost_lines(rows, summary, space.size()), "",
          "## Leaderboard (full budget, eval sets)", "", *leaderboard(rows, metric), "",
          "`fixed answer`: the score of always answering each slot's most common training label, with no model; "
          "`empty answer`: always answering unmentioned / no items; `distinct`: distinct predictions on the set. "
          "A design at or below both trivial answers is not reading the input.", ""]
    if any(r.status == "stopped" for r in rows):
        md += ["## Stopped early by ASHA (never eligible to win)", "", *stopped_table(rows, metric), ""]
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        md += ["## Failed trials", "", *[f"- {r.trial_id} ({r.design.short()}): {r.error}" for r in failed], ""]
    md += winner_section(task, winner, metric)
    md += test_section(task, run_dir, tests)
    md += analysis_sections(rows, space, metric, figures)
    md += ["## Cost per design (full-budget trials)", "", *cost_table(rows), ""]
    text = "\n".join(md)
    (run_dir / "report.md").write_text(text)
    write_tables(run_dir, rows, winner, metric)
    return text


def winner_section(task: Task, winner: TrialRow | None, metric: str) -> list[str]:
    """The winning design and one rendered training sample."""
    if winner is None:
        return ["## Winner", "", "No trial reached the full budget; no winner.", ""]
    sample = render(task.splits["train"][0], winner.design, task)
    return ["## Winner", "", f"`{winner.design.short()}` (trial {winner.trial_id}), {metric} "
            f"{winner.value(metric):.3f} on the eval set.", "", "```", sample.prompt + sample.target, "```", ""]


def analysis_sections(rows: Sequence[TrialRow], space: SpaceConfig, metric: str, figures: Path) -> list[str]:
    """Pareto front, option effects, importance and the figures."""
    md: list[str] = []
    front = analysis.pareto_front(rows)
    if front and any(not math.isnan(r.value("score_ood")) for r in front):
        md += ["## ID / OOD Pareto front", "",
               *_table(["design", "ID", "OOD"], [[r.design.short(), r.value("score"), r.value("score_ood")]
                                                 for r in front]), ""]
        plots.pareto(rows, figures / "pareto.png")
    effects = analysis.option_effects(rows, metric)
    if effects:
        md += ["## Per-option effects (full-budget trials)", "",
               *_table(["dimension", "value", f"mean {metric}", "std", "trials"],
                       [[e.dimension, e.value, e.mean, e.std, e.n] for e in effects]), "",
               "Marginal means over the trials that happened to use each value: with few trials they mix the "
               "effect of the other options in.", ""]
        plots.effects(effects, figures / "effects.png")
    values, study = importances(rows, space, metric)
    if values:
        md += ["## Option importance (Optuna fANOVA over full-budget trials)", "",
               *_table(["parameter", "importance"], [[k, v] for k, v in values.items()]), ""]
        plots.importance(values, figures / "importance.png")
    plots.leaderboard(rows, metric, figures / "leaderboard.png")
    plots.curves(rows, metric, figures / "curves.png")
    html = plots.optuna_html(study, figures) if len(study.trials) >= 2 else []
    md += ["## Figures", "", *[f"![{p.stem}](plots/{p.name})" for p in sorted(figures.glob("*.png"))],
           *[f"- interactive: [plots/{p.name}](plots/{p.name})" for p in html], ""]
    return md


def write_tables(run_dir: Path, rows: Sequence[TrialRow], winner: TrialRow | None, metric: str) -> None:
    """``best_design.yaml`` (the winner, ready for ``train --design``) and ``trials.csv``."""
    if winner:
        best = {"design": {k.removeprefix("design."): v for k, v in winner.design.to_params().items()},
                "train": winner.hparams, "score": winner.value(metric), "trial": winner.trial_id}
        (run_dir / "best_design.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    keys = ["score", "score_ood", "format_error_rate", "baseline_fixed", "baseline_empty", "distinct_predictions",
            "progress", "report", "step", "train_s",
            "gen_s", "tokens_per_sample"]
    with open(run_dir / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "design", *keys, "error"])
        for r in rows:
            w.writerow([r.trial_id, r.status, r.design.short(), *[r.metrics.get(k, "") for k in keys], r.error])


# ---------------------------------------------------------------- end of a search


def _tracked(what: str, fn: Any, *args: Any) -> Any:
    """Runs one MLflow step; when the store is unreachable, says so and goes on (the run folder has it all)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the local report must still be written
        print(f"warning: MLflow step failed ({what}): {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr,
              flush=True)
        return None


def finish(task: Task, space: SpaceConfig, info: RunInfo, results: Any, *, metric: str, wall_s: float,
           ray_init_s: float = math.nan) -> int:
    """Collects results, scores test sets, writes the report, logs it to MLflow and closes the parent run."""
    run_dir = Path(info.run_dir)
    rows = collect(results, optuna_space(space)[1])
    winner = pick_winner(rows, metric)
    _tracked("merging resumed trial runs", tracking.merge_duplicate_runs, info)
    _tracked("closing stale runs", tracking.close_stale_runs, info)
    _tracked("tagging trial runs", tracking.tag_runs, info, rows, winner)
    analysis.save_rows(run_dir / "trials.json", rows)
    tests = test_scores(task, rows, winner, run_dir, threads=max(1, int(space.resources.cpu)))
    (run_dir / "tests.json").write_text(json.dumps(tests, indent=1))
    hp = task.config.train
    summary = {"name": info.name, "space_path": info.space_path, "metric": metric, "wall_s": wall_s,
               "ray_init_s": ray_init_s, "max_concurrent": space.budget.max_concurrent,
               "steps_per_trial": hp.steps_per_epoch(len(task.splits["train"])) * hp.epochs,
               "winner": winner.trial_id if winner else None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    text = build(run_dir, task, space)
    final = {"wall_s": wall_s, "ray_init_s": ray_init_s, **{f"trials_{s}": float(sum(r.status == s for r in rows))
                                                            for s in ("full", "stopped", "failed")}}
    if winner:
        final["best_score"] = winner.value(metric)
    for name, t in tests.items():
        final.update({f"test_{name}_{k}": v for k, v in t["scores"].items() if k in ("score", "score_ood")})
    _tracked("attaching the report", tracking.log_to_parent, info,
             [run_dir / n for n in ("report.md", "best_design.yaml", "trials.csv", "trials.json", "plots")], final)
    _tracked("closing the parent run", tracking.close_parent, info)
    print("\n" + text)
    print(f"\nreport: {run_dir / 'report.md'}\nreview in MLflow: mlflow ui --backend-store-uri {info.tracking_uri} "
          f"--host 127.0.0.1   (or: sde-search ui --runs-dir {run_dir.parent})")
    return 0
