"""From a finished Tune run to a decision: leaderboard, winner, held-out test scores, MLflow tags.

Selection vs reporting: trials are compared on ``eval_*`` and the winner is chosen
only among trials that reached the full budget (ASHA-stopped trials reach Optuna as
COMPLETE with a partial value, PITFALLS 3). The winner, ES-SDE and the paper's
baseline are then scored once on ``test_*``, which the search never saw.

Talks to MLflow (called by ``search.py``); imports torch only to score checkpoints.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sde_search.config import SpaceConfig, Task
from sde_search.design import ES_SDE, PAPER_BASELINE, Design
from sde_search.render import render

if TYPE_CHECKING:
    from sde_search.search import RunInfo


@dataclass
class TrialRow:
    """One trial's outcome."""

    trial_id: str
    design: Design
    hparams: dict[str, Any]
    status: str  # full | stopped | failed
    metrics: dict[str, Any]
    error: str = ""
    checkpoint: str | None = None
    test: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        """The metric's last value (NaN when absent)."""
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) else float("nan")


def collect(results: Any, fixed: Mapping[str, Any]) -> list[TrialRow]:
    """Turns a Tune ``ResultGrid`` into rows (full / stopped by ASHA / failed)."""
    rows = []
    for r in results:
        metrics = dict(r.metrics or {})
        config = {**fixed, **(r.config or {})}
        hparams = {k[len("train."):]: v for k, v in config.items() if k.startswith("train.")}
        trial_id = metrics.get("trial_id") or Path(r.path).name
        status = "failed" if r.error is not None else ("full" if metrics.get("progress", 0) >= 1 else "stopped")
        ckpt = r.checkpoint.path if r.checkpoint is not None else None
        rows.append(TrialRow(str(trial_id), Design.from_params(config), hparams, status, metrics,
                             error=_error_text(r.error), checkpoint=ckpt))
    return rows


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def pick_winner(rows: Sequence[TrialRow], metric: str) -> TrialRow | None:
    """Best full-budget trial; ties: fewer format errors, then less training time."""
    full = [r for r in rows if r.status == "full" and not math.isnan(r.value(metric))]
    if not full:
        return None
    return max(full, key=lambda r: (round(r.value(metric), 6), -r.value("format_error_rate"), -r.value("train_s")))


def _find(rows: Sequence[TrialRow], design: Design) -> TrialRow | None:
    return next((r for r in rows if r.design == design and r.status == "full"), None)


def test_scores(task: Task, rows: Sequence[TrialRow], winner: TrialRow | None, threads: int = 1,
                ) -> dict[str, tuple[Design, dict[str, float], str]]:
    """Scores the winner, ES-SDE and the baseline once on the test splits (retraining a preset if needed)."""
    if not any(s in task.splits for s in ("test_id", "test_ood")):
        return {}
    from sde_search import train

    out = {}
    wanted = {"winner": winner.design if winner else None, "es_sde": ES_SDE, "paper_baseline": PAPER_BASELINE}
    for name, design in wanted.items():
        if design is None:
            continue
        row = winner if name == "winner" else _find(rows, design)
        hparams = row.hparams if row else {}
        if row and row.checkpoint:
            ckpt, how = row.checkpoint, f"trial {row.trial_id}"
        else:
            print(f"retraining {name} ({design.short()}) at full budget for the test comparison", flush=True)
            tmp = tempfile.mkdtemp(prefix="sde-final-")
            train.fit(task, design, hparams, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
            ckpt, how = str(sorted(Path(tmp).glob("report-*"))[-1]), "retrained"
        out[name] = (design, train.evaluate_checkpoint(task, design, hparams, ckpt, threads=threads), how)
    return out


# ---------------------------------------------------------------- MLflow


def _client(info: RunInfo) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(info.tracking_uri)


def child_runs(info: RunInfo) -> list[Any]:
    """The trial runs nested under the search's parent run."""
    client = _client(info)
    exp = client.get_experiment_by_name(info.experiment)
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{info.parent_run_id}'",
                              max_results=5000)


def close_stale_runs(info: RunInfo) -> int:
    """Marks trial runs left RUNNING by a killed driver as KILLED; returns how many."""
    client = _client(info)
    stale = [r for r in child_runs(info) if r.info.status == "RUNNING"]
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, "sde.stale", "killed-driver")
    return len(stale)


def merge_duplicate_runs(info: RunInfo) -> int:
    """A resumed trial opens a second run; copy the old run's metric history into the newest and delete the old."""
    from mlflow.entities import Metric

    client = _client(info)
    by_trial: dict[str, list[Any]] = {}
    for run in child_runs(info):
        by_trial.setdefault(run.data.tags.get("trial_name", run.info.run_id), []).append(run)
    merged = 0
    for runs in by_trial.values():
        if len(runs) < 2:
            continue
        runs.sort(key=lambda r: r.info.start_time)
        keep = runs[-1]
        for old in runs[:-1]:
            for key in old.data.metrics:
                have = {m.step for m in client.get_metric_history(keep.info.run_id, key)}
                hist = [Metric(key, m.value, m.timestamp, m.step)
                        for m in client.get_metric_history(old.info.run_id, key) if m.step not in have]
                for i in range(0, len(hist), 500):
                    client.log_batch(keep.info.run_id, metrics=hist[i:i + 500])
            client.delete_run(old.info.run_id)
            merged += 1
    return merged


def tag_runs(info: RunInfo, rows: Sequence[TrialRow], winner: TrialRow | None) -> None:
    """Tags each trial run with its design, budget, status and error; marks the winner."""
    client = _client(info)
    by_id = {r.trial_id: r for r in rows}
    for run in child_runs(info):
        name = run.data.tags.get("trial_name", "")
        row = next((r for tid, r in by_id.items() if name.endswith(tid)), None)
        if row is None:
            continue
        tags = dict(row.design.to_params())
        tags.update({"budget": row.status if row.status != "failed" else "failed", "best": str(row is winner).lower(),
                     "design": row.design.short()})
        if row.status == "stopped":
            tags["stopped_by"] = "asha"
        if row.error:
            tags["error"] = row.error[:250]
        for k, v in tags.items():
            client.set_tag(run.info.run_id, k, v)
        if row.status == "failed" and run.info.status != "FAILED":
            client.set_terminated(run.info.run_id, status="FAILED")


# ---------------------------------------------------------------- writing


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else ("-" if isinstance(v, float) else str(v))


def leaderboard(rows: Sequence[TrialRow], metric: str) -> list[str]:
    """Markdown table of full-budget trials (best first), then stopped and failed ones."""
    lines = [f"| # | trial | design | hparams | {metric} | OOD | format err | fixed-answer margin | distinct | "
             "reports | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"full": 0, "stopped": 1, "failed": 2}
    ranked = sorted(rows, key=lambda r: (order[r.status], -(r.value(metric) if not math.isnan(r.value(metric))
                                                            else -1e9)))
    for i, r in enumerate(ranked, 1):
        margin = r.value("score") - r.value("baseline_fixed")
        flag = "" if math.isnan(margin) or margin > 0 else " (not reading the input)"
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in r.hparams.items()) or "-"
        status = "" if r.status == "full" else f" [{r.status}]"
        cells = [str(i), r.trial_id + status, r.design.short(), hp, _fmt(r.value(metric)), _fmt(r.value("score_ood")),
                 _fmt(r.value("format_error_rate")), _fmt(margin) + flag, f"{r.value('distinct_predictions'):.0f}",
                 f"{r.value('report'):.0f}", f"{r.value('train_s'):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _delta(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) else f"{a - b:+.3f}"


def write_report(task: Task, space: SpaceConfig, info: RunInfo, rows: Sequence[TrialRow], winner: TrialRow | None,
                 tests: Mapping[str, tuple[Design, dict[str, float], str]], metric: str, wall_s: float) -> str:
    """Writes ``report.md`` and ``best_design.yaml`` into the run directory; returns the markdown."""
    run_dir = Path(info.run_dir)
    hp = task.config.train
    steps_full = math.ceil(len(task.splits["train"]) / hp.batch_size) * hp.epochs
    spent = sum(r.value("step") for r in rows if not math.isnan(r.value("step")))
    counts = {s: sum(r.status == s for r in rows) for s in ("full", "stopped", "failed")}
    md = [f"# sde-search report: {info.name}", "",
          f"Task `{task.config.name}` ({task.config.type}), space `{Path(info.space_path).name}` "
          f"({space.size()} designs), objective `{task.config.objective}` (metric `{metric}`), model "
          f"`{task.config.model.name}`.", "",
          f"- trials: {len(rows)} ({counts['full']} full budget, {counts['stopped']} stopped early by ASHA, "
          f"{counts['failed']} failed)",
          f"- train steps spent: {spent:.0f} of {steps_full * len(rows)} had every trial run to full budget "
          f"({spent / max(1, steps_full * len(rows)):.0%}); a grid of all {space.size()} designs would cost "
          f"{steps_full * space.size()} steps",
          f"- wall time: {wall_s / 60:.1f} min", "", "## Leaderboard (eval sets)", "", *leaderboard(rows, metric), ""]
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        md += ["## Failed trials", "", *[f"- {r.trial_id} ({r.design.short()}): {r.error}" for r in failed], ""]
    if winner:
        md += ["## Winner", "", f"`{winner.design.short()}` (trial {winner.trial_id}), "
               f"{metric} {winner.value(metric):.3f} on the eval set.", ""]
        sample = render(task.splits["train"][0], winner.design, task)
        md += ["```", sample.prompt + sample.target, "```", ""]
    else:
        md += ["## Winner", "", "No trial reached the full budget; no winner.", ""]
    if tests:
        md += ["## Held-out test sets (scored once, never seen by the search)", "",
               "| design | | test ID | test OOD | format err | fixed answer | source |",
               "|---|---|---|---|---|---|---|"]
        for name, (design, sc, how) in tests.items():
            cells = [_fmt(sc.get(k, math.nan)) for k in ("score", "score_ood", "format_error_rate", "baseline_fixed")]
            md.append(f"| {name} | {design.short()} | " + " | ".join(cells) + f" | {how} |")
        if "winner" in tests:
            w = tests["winner"][1]
            for ref in ("es_sde", "paper_baseline"):
                if ref in tests:
                    r = tests[ref][1]
                    gain_id = _delta(w.get("score", math.nan), r.get("score", math.nan))
                    gain_ood = _delta(w.get("score_ood", math.nan), r.get("score_ood", math.nan))
                    md.append(f"\nGain of the winner over {ref}: ID {gain_id}, OOD {gain_ood}.")
            n = w.get("n_eval", 0)
            md.append(f"\nNote: one seed, {int(n)} test records: differences of a few points are within noise.")
        md.append("")
    text = "\n".join(md)
    (run_dir / "report.md").write_text(text)
    if winner:
        best = {"design": {k.removeprefix("design."): v for k, v in winner.design.to_params().items()},
                "train": winner.hparams, "score": winner.value(metric), "trial": winner.trial_id}
        (run_dir / "best_design.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    with open(run_dir / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = ["score", "score_ood", "format_error_rate", "baseline_fixed", "progress", "report", "step", "train_s",
                "gen_s", "tokens_per_sample"]
        w.writerow(["trial", "status", "design", *keys, "error"])
        for r in rows:
            w.writerow([r.trial_id, r.status, r.design.short(), *[r.metrics.get(k, "") for k in keys], r.error])
    return text


def finish(task: Task, space: SpaceConfig, info: RunInfo, results: Any, *, metric: str, wall_s: float) -> int:
    """Collects results, scores test sets, writes and logs the report, closes the parent run."""
    from sde_search.search import optuna_space

    rows = collect(results, optuna_space(space)[1])
    winner = pick_winner(rows, metric)
    merge_duplicate_runs(info)
    close_stale_runs(info)
    tag_runs(info, rows, winner)
    tests = test_scores(task, rows, winner, threads=max(1, int(space.resources.cpu)))
    text = write_report(task, space, info, rows, winner, tests, metric, wall_s)
    client = _client(info)
    for name in ("report.md", "best_design.yaml", "trials.csv"):
        path = Path(info.run_dir) / name
        if path.exists():
            client.log_artifact(info.parent_run_id, str(path))
    final = {"wall_s": wall_s, "trials_full": sum(r.status == "full" for r in rows),
             "trials_stopped": sum(r.status == "stopped" for r in rows),
             "trials_failed": sum(r.status == "failed" for r in rows)}
    if winner:
        final["best_score"] = winner.value(metric)
    for name, (_, sc, _how) in tests.items():
        final.update({f"test_{name}_{k}": v for k, v in sc.items() if k in ("score", "score_ood")})
    for k, v in final.items():
        if isinstance(v, (int, float)) and not math.isnan(v):
            client.log_metric(info.parent_run_id, k, float(v))
    client.set_terminated(info.parent_run_id, status="FINISHED", end_time=int(time.time() * 1000))
    print("\n" + text)
    db = info.tracking_uri
    print(f"\nreport: {Path(info.run_dir) / 'report.md'}\nreview in MLflow: mlflow ui --backend-store-uri {db} "
          f"--host 127.0.0.1   (or: sde-search ui --runs-dir {Path(info.run_dir).parent})")
    return 0
