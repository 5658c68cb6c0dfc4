"""The report of a finished search: ``report.md``, ``trials.csv``, ``best_design.yaml`` and ``plots/``.

Selection vs reporting: trials are compared on ``eval_*``, and only full-budget trials count (a stopped
trial's partial score is never a final one). The best few designs, ES-SDE and the paper's baseline then go
through the seed stage (:mod:`sde_search.seeds`): several training seeds each, the winner chosen by its mean
eval score among designs that read the input, and judged on ``test_*``, which the search never saw, with
intervals over test records and seeds together (:mod:`sde_search.verdicts`).

A run folder holds everything the report needs (``trials.json``, ``verdict.json``, ``summary.json``,
``seeds/``, ``outputs/``), so ``sde-search report RUN`` rebuilds it without Ray, MLflow, torch or training:
this module reads files and writes markdown, tables and figures, and nothing it imports trains or tracks
(the stages that train or score, and MLflow, are :mod:`sde_search.stages` and :mod:`sde_search.tracking`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sde_search import analysis, generations, metrics, plots, seeds, verdicts
from sde_search.analysis import TrialRow
from sde_search.config import SpaceConfig, Task
from sde_search.design import Design, dimensions_of, train_params
from sde_search.render import render
from sde_search.runfolder import summary_of, update_summary


def pick_winner(rows: Sequence[TrialRow], metric: str) -> TrialRow | None:
    """Best full-budget trial (its hyper-parameters go to the seed stage); ties: less training time.

    Format errors break no tie: under ``placeholder`` a missing slot is an error that ``omit`` cannot make.
    """
    full = analysis.full_budget(rows, metric)
    if not full:
        return None
    return max(full, key=lambda r: (round(r.value(metric), 6), -r.value("train_s")))


# ---------------------------------------------------------------- generations on the held-out test sets


def save_outputs(path: Path, task: Task, design: Design, split: str, texts: Sequence[str]) -> None:
    """One JSON line per record (:mod:`sde_search.generations`): id, gold, prompt, target, output, parse, errors."""
    generations.write(path, task, design, split, texts)


def versus_fixed(task: Task, run_dir: Path, a: str, split: str) -> verdicts.Interval | None:
    """Design ``a``'s score minus the fixed answer's on ``outputs/<a>.<split>.jsonl`` (records bootstrap)."""
    path = run_dir / "outputs" / f"{a}.{split}.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    golds, preds = seeds.answers(records, "gold"), seeds.answers(records)
    fixed = metrics.same_answer(task.fixed_answer(split), golds)
    return verdicts.gain(lambda g, p: task.score(g, p, split), golds, [preds], [fixed])["score"]


# ---------------------------------------------------------------- importance


def importances(rows: Sequence[TrialRow], space: SpaceConfig, metric: str) -> tuple[dict[str, float], Any]:
    """Optuna's fANOVA importance over the full-budget trials; returns (importances, the study).

    A trial whose values the space no longer holds (its file was edited after the search) cannot be placed in
    the study and is left out; the report counts them.
    """
    import optuna  # not at module level: the report's other sections do without it

    from sde_search.sampler import optuna_space

    searched, _ = optuna_space(space)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line on the new in-memory study is noise here
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    for r in analysis.full_budget(rows, metric):
        params = {**r.design.to_params(), **train_params(r.hparams)}
        if not set(searched) <= set(params):
            continue
        try:
            trial = optuna.trial.create_trial(params={k: params[k] for k in searched}, distributions=searched,
                                              value=r.value(metric))
        except ValueError:  # a value outside its distribution
            continue
        study.add_trial(trial)
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
    """The trial's own reads-the-input test on its eval set (``reads_input``): yes, no, or - (not recorded)."""
    reads = row.value("reads_input")
    if math.isnan(reads):
        return "-"
    return "yes" if reads > 0 else "no"


def id_cell(row: TrialRow, metric: str) -> Any:
    """An ID value, or "not measured" when the eval predictions were one answer or all format errors."""
    return "not measured" if row.value("measured") == 0 else row.value(metric)


def ood_cell(row: TrialRow, key: str = "score_ood") -> Any:
    """An OOD value, or why there is none: a No-inst design has no OOD score, a degenerate split is not measured."""
    if math.isnan(row.value("score_ood")):
        return "-"
    if row.value("measured_ood") == 0:
        return "not measured"
    return row.value(key)


def leaderboard(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Full-budget trials, best first (unmeasured ones last), with accuracy against the majority answer."""
    measured = analysis.full_budget(rows, metric)
    rest = [r for r in rows if r.status == "full" and r not in measured]
    lines = [[i, r.trial_id, r.design.short(), ", ".join(f"{k}={_fmt(v)}" for k, v in r.hparams.items()) or "-",
              id_cell(r, metric) if metric != "score_ood" else ood_cell(r), r.value("accuracy"),
              r.value("accuracy_fixed"), r.value("baseline_fixed"), r.value("format_error_rate"),
              r.value("repair_rate"), f"{r.value('distinct_predictions'):.0f}", reading_flag(r), ood_cell(r),
              r.value("format_error_rate_ood"), _count(r.value("distinct_predictions_ood"))]
             for i, r in enumerate([*measured, *rest], 1)]
    return _table(["#", "trial", "design", "hparams", metric, "accuracy", "majority acc", "fixed answer",
                   "format err", "repairs", "distinct", "reads input", "OOD", "OOD format err", "OOD distinct"],
                  lines)


def _count(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0f}"


def stopped_table(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Trials stopped early, with how far they got."""
    stopped = sorted((r for r in rows if r.status == "stopped"), key=lambda r: -r.value("progress"))
    return _table(["trial", "design", f"{metric} when stopped", "distinct", "budget used", "reports"],
                  [[r.trial_id, r.design.short(), r.value(metric), _count(r.value("distinct_predictions")),
                    f"{r.value('progress'):.0%}", f"{r.value('report'):.0f}"] for r in stopped])


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
    lines = [f"- trials: {len(rows)} ({counts['full']} full budget, {counts['stopped']} stopped early, "
             f"{counts['failed']} failed)",
             f"- train steps: {c['steps']:.0f} spent, {c['steps_all_full']:.0f} had every trial run to full budget "
             f"({c['steps'] / max(1, c['steps_all_full']):.0%}); an exhaustive grid of all {space_size} designs: "
             f"{c['steps_grid']:.0f} steps ({c['steps'] / max(1, c['steps_grid']):.0%} of it spent)",
             f"- time: {_minutes(summary.get('wall_s'), 'wall')}; {c['trial_seconds'] / 60:.1f} min inside trials; "
             f"the grid would take about {c['grid_seconds_estimate'] / 60:.0f} trial-minutes"]
    if summary.get("seed_stage_s"):
        lines.append(f"- seed stage: {summary['seed_stage_s'] / 60:.1f} min")
    return lines + overhead_lines(rows, summary)


def _known(value: Any) -> bool:
    """A time ``summary.json`` recorded (null or NaN: not known, e.g. in a rebuilt summary)."""
    return isinstance(value, (int, float)) and not math.isnan(value)


def _minutes(seconds: Any, what: str) -> str:
    return f"{seconds / 60:.1f} min {what}" if _known(seconds) else f"{what} time unknown"


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
    n = len(timed)
    ray_s = summary.get("ray_init_s")
    lines = [f"- Ray start: {f'{ray_s:.1f} s' if _known(ray_s) else 'unknown'}; per trial: {inside / n:.1f} s in "
             f"the trial, of which {work / n:.1f} s training + generation and {(inside - work) / n:.1f} s set-up "
             "(imports, model build, checkpoints)"]
    if not _known(summary.get("wall_s")):
        return lines
    slots = max(summary["wall_s"] * width, 1e-9)
    if in_fit:
        lines.append(f"- trial slots busy {inside / slots:.0%} of {width} x wall, {in_fit / slots:.0%} inside "
                     f"fit(); the rest ({max(0.0, slots - in_fit) / slots:.0%}: Ray start, worker imports, "
                     "scheduling, MLflow) is orchestration")
    else:
        lines.append(f"- trial slots busy {inside / slots:.0%} of {width} x wall; the rest (Ray, scheduling, "
                     f"MLflow) {max(0.0, slots - inside) / slots:.0%}")
    return lines


def _mean_sd(split: Mapping[str, Any] | None, key: str = "score") -> str:
    if not split:
        return "-"
    if not split.get("measured", True) and key == "score":
        return "not measured"
    mean, sd = split.get(f"{key}_mean"), split.get(f"{key}_sd")
    if not isinstance(mean, (int, float)):  # a verdict.json of an older version, or edited
        return "-"
    return _fmt(float(mean)) + ("" if not _known(sd) else f" ± {sd:.3f}")


def _yes_no(split: Mapping[str, Any] | None) -> str:
    return "-" if not split or "reads_input" not in split else ("yes" if split["reads_input"] else "no")


def verdict_section(task: Task, verdict: Mapping[str, Any]) -> list[str]:
    """The seed stage: every candidate's mean ± sd over seeds, reads-the-input tests, and the winner's gains."""
    if not verdict.get("candidates"):
        return []
    key = task.kind.score_key
    md = [f"## Seed stage: {verdict['seeds']} training seeds per design (at the best trial's hyper-parameters "
          f"{verdict.get('hparams') or '{}'})", ""]
    lines = []
    for c in verdict["candidates"]:
        sp = c["splits"]
        name = c["short"] + (" **(winner)**" if c["short"] == verdict.get("winner") else "")
        lines.append([name, ", ".join(c["roles"]), len(c["seeds"]), _mean_sd(sp.get("eval_id")),
                      _mean_sd(sp.get("eval_id"), "accuracy"), _mean_sd(sp.get("eval_id"), "accuracy_fixed"),
                      _yes_no(sp.get("eval_id")), _mean_sd(sp.get("test_id")), _mean_sd(sp.get("test_id"), "accuracy"),
                      _mean_sd(sp.get("test_id"), "accuracy_fixed"), _yes_no(sp.get("test_id")),
                      _mean_sd(sp.get("test_ood")), _mean_sd(sp.get("test_ood"), "format_error_rate"),
                      _mean_sd(sp.get("test_ood"), "distinct_predictions")])
    md += _table(["design", "role", "seeds", f"eval {key}", "eval accuracy", "majority acc", "reads input (eval)",
                  f"test {key}", "test accuracy", "majority acc", "reads input (test)", f"test OOD {key}",
                  "OOD format err", "OOD distinct"], lines)
    md += ["", f"Mean ± sd over seeds. Reads the input: beats both trivial answers (each slot's most common "
           f"training value; all empty) on {key} and on accuracy, the lower end of the 95 % interval (test records "
           "and seeds, method below) above 0. The winner is the best mean eval score among designs that read the "
           "input on eval.", ""]
    for c in verdict["candidates"]:
        for split, label in (("eval_id", "eval"), ("test_id", "test"), ("eval_ood", "eval OOD"),
                             ("test_ood", "test OOD")):
            entry = c["splits"].get(split)
            if entry and not entry["measured"]:
                md.append(f"- {c['short']}, {label}: not measured: {entry['why_not_measured']}")
            elif entry and split.endswith("_id") and not entry["reads_input"]:
                md.append(f"- {c['short']}, {label}: {entry['why_not_reading']}")
    if verdict.get("gains"):
        md += ["", "The winner against every other design of the stage, on the test sets (against the runners-up: "
               "is its lead real?):", ""]
        for g in verdict["gains"]:
            split = "ID" if g["split"] == "test_id" else "OOD"
            if "delta" in g:
                md.append(f"- winner vs {g['vs']} ({', '.join(g['roles'])}), {split}: {g['text']}: {g['note']}")
            else:
                md.append(f"- winner vs {g['vs']} ({', '.join(g['roles'])}), {split}: {g['note']}")
    md += ["", f"Method: {verdict['method']}.", ""]
    return md


def build(run_dir: Path, task: Task, space: SpaceConfig) -> str:
    """Writes ``report.md``, ``trials.csv``, ``best_design.yaml`` and ``plots/`` from the run folder's files.

    Every file read is checked first (a broken one raises ConfigError before anything is written); a missing
    ``summary.json`` is rebuilt, a missing ``verdict.json`` means no seed stage, and the report says so.
    """
    rows = analysis.load_rows(run_dir / "trials.json")
    verdict = analysis.read_verdict(run_dir / "verdict.json")
    rebuilt = not (run_dir / "summary.json").exists()
    summary = summary_of(run_dir, task, space)
    if rebuilt:
        summary = update_summary(run_dir, rows, verdict)
    metric = summary["metric"]
    figures = run_dir / "plots"
    figures.mkdir(exist_ok=True)
    headline = verdict.get("headline") or "The seed stage did not run; no verdict."
    md = [f"# sde-search report: {summary['name']}", "", f"**{headline}**", "",
          *[f"- note: {n}" for n in (task.kappa_note(), *summary.get("missing", [])) if n],
          f"Task `{task.config.name}` ({task.config.type}), space `{Path(summary['space_path']).name}` "
          f"({space.size()} designs), objective `{task.config.objective}` (metric `{metric}`), model "
          f"`{task.config.model.name}`.", ""]
    md += verdict_section(task, verdict)
    md += winner_section(task, verdict)
    md += ["## Cost of the search", "", *cost_lines(rows, summary, space.size()), "",
           "## Leaderboard (full budget, eval sets, one seed each)", "", *leaderboard(rows, metric), "",
           "`accuracy` against `majority acc` (always each slot's most common training value); `fixed answer`: "
           "that answer's score; `distinct`: distinct predictions; `repairs`: share of generations read leniently "
           "(a key or label repaired); `reads input`: the trial's own test on its eval set (one seed). OOD `not "
           "measured`: constant predictions or all format errors; `-`: not scored (No-inst designs name no OOD "
           "slots).", ""]
    if any(r.status == "stopped" for r in rows):
        md += ["## Stopped early (never eligible to win)", "", *stopped_table(rows, metric), ""]
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        md += ["## Failed trials", "", *[f"- {r.trial_id} ({r.design.short()}): {r.error}" for r in failed], ""]
    md += analysis_sections(rows, space, metric, figures)
    md += ["## Cost per design (full-budget trials)", "", *cost_table(rows), ""]
    text = "\n".join(md)
    (run_dir / "report.md").write_text(text)
    write_tables(run_dir, rows, verdict, metric)
    return text


def winner_section(task: Task, verdict: Mapping[str, Any]) -> list[str]:
    """The winning design and one rendered training sample."""
    if not verdict.get("winner_design"):
        return ["## Winner", "", "No design reached the seed stage; no winner.", ""]
    design = Design.from_params(verdict["winner_design"])
    sample = render(task.splits["train"][0], design, task)
    return ["## Winner", "", f"`{design.short()}`" + ("" if verdict.get("reads_input") else
                                                       " (best mean, but not shown to read the input)"),
            "", "```", sample.prompt + sample.target, "```", ""]


MIN_IMPORTANCE_TRIALS = 8
"""fANOVA over fewer full-budget trials ranks noise: below this the report says why there is no table."""


def analysis_sections(rows: Sequence[TrialRow], space: SpaceConfig, metric: str, figures: Path) -> list[str]:
    """Pareto front (measured OOD only), option effects with their n, importance and the figures."""
    md: list[str] = []
    full = analysis.full_budget(rows, metric)
    front = analysis.pareto_front(rows)
    unmeasured = [r for r in full if r.value("measured_ood") == 0]
    if front:
        md += ["## ID / OOD Pareto front (designs whose OOD split is measured)", "",
               *_table(["design", "ID", "OOD", "OOD format err"],
                       [[r.design.short(), r.value("score"), r.value("score_ood"), r.value("format_error_rate_ood")]
                        for r in front]), ""]
        plots.pareto(rows, figures / "pareto.png")
    if unmeasured:
        md += [f"OOD not measured for {len(unmeasured)} of {len(full)} full-budget designs (constant predictions "
               "or all format errors on the OOD set); they are left out of the front.", ""]
    effects = analysis.option_effects(rows, metric)
    if effects:
        dropped = sum(r.status == "full" for r in rows) - len(full)
        md += [f"## Per-option effects ({len(full)} full-budget trials: survivors only)", "",
               *_table(["dimension", "value", f"mean {metric}", "std", "n"],
                       [[e.dimension, e.value, e.mean, e.std, e.n] for e in effects]), "",
               "Marginal means over the full-budget trials that used each value (n; values with fewer than "
               f"{analysis.MIN_EFFECT_N} trials are left out). Trials stopped early are left out, so a value whose "
               "designs start slowly is under-represented here (survivorship); with few trials the means also mix in "
               "the other options' effects."
               + (f" {dropped} full-budget trials whose eval predictions measure nothing are left out too." if dropped
                  else ""), ""]
        plots.effects(effects, figures / "effects.png")
    md += early_effects_section(rows, metric)
    values, study = importances(rows, space, metric)
    if len(full) < MIN_IMPORTANCE_TRIALS:
        md += ["## Option importance", "", f"No importance table: {len(full)} full-budget trials, fewer than the "
               f"{MIN_IMPORTANCE_TRIALS} needed for fANOVA to rank more than noise.", ""]
    elif values:
        md += [f"## Option importance (Optuna fANOVA over {len(study.trials)} full-budget trials: survivors only)",
               "", *_table(["parameter", "importance"], [[k, v] for k, v in values.items()]), ""]
        plots.importance(values, figures / "importance.png")
    if len(full) >= MIN_IMPORTANCE_TRIALS and len(study.trials) < len(full):
        md += [f"Importance: {len(full) - len(study.trials)} of {len(full)} full-budget trials are left out: their "
               "values are not in the space file as it is now (edited after the search?).", ""]
    plots.leaderboard(rows, metric, figures / "leaderboard.png")
    plots.curves(rows, metric, figures / "curves.png")
    html = plots.optuna_html(study, figures) if len(study.trials) >= 2 else []
    md += ["## Figures", "", *[f"![{p.stem}](plots/{p.name})" for p in sorted(figures.glob("*.png"))],
           *[f"- interactive: [plots/{p.name}](plots/{p.name})" for p in html], ""]
    return md


def early_effects_section(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Option effects over every trial (stopped ones too) at the last report all of them reached."""
    at, effects = analysis.effects_at_common_report(rows, metric)
    if not effects or not any(r.status == "stopped" for r in rows):
        return []
    return [f"## Per-option effects at report {at} (every trial, stopped ones too)", "",
            *_table(["dimension", "value", f"mean {metric}", "std", "n"],
                    [[e.dimension, e.value, e.mean, e.std, e.n] for e in effects]), "",
            f"No survivorship here, but an early fidelity: report {at} is the last one every trial reached.", ""]


def write_tables(run_dir: Path, rows: Sequence[TrialRow], verdict: Mapping[str, Any], metric: str) -> None:
    """``best_design.yaml`` (the winner, ready for ``train --design``) and ``trials.csv``."""
    if verdict.get("winner_design"):
        cand = next(c for c in verdict["candidates"] if c["short"] == verdict["winner"])
        ev = cand["splits"].get("eval_id", {})
        best = {"design": dimensions_of(verdict["winner_design"]),
                "train": verdict.get("hparams", {}), "eval_score_mean": ev.get("score_mean"),
                "eval_score_sd": ev.get("score_sd"), "seeds": cand["seeds"],
                "reads_input": bool(verdict.get("reads_input"))}
        (run_dir / "best_design.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    keys = ["score", "accuracy", "accuracy_fixed", "score_ood", "measured_ood", "format_error_rate",
            "format_error_rate_ood", "repair_rate", "baseline_fixed", "baseline_empty", "distinct_predictions",
            "reads_input", "progress", "report", "step", "train_s", "gen_s", "tokens_per_sample"]
    with open(run_dir / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "design", *keys, "error"])
        for r in rows:
            w.writerow([r.trial_id, r.status, r.design.short(), *[r.metrics.get(k, "") for k in keys], r.error])
