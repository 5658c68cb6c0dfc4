"""The run folder of a search (``runs/<name>/``): what it records, written and read back.

A search's folder holds ``run.json`` (names, URIs, the parent MLflow run: :class:`RunInfo`), ``summary.json``
(the search's metric, times and winner), ``trials.json`` (one row per trial), ``results/<trial>.jsonl`` (every
report a trial made, as it arrived) and, after the seed stage, ``verdict.json``. The checked readers of the JSON
files are in :mod:`sde_search.analysis`; this module writes them and turns Tune's results into rows.

Plain file I/O: importing it imports no Ray, MLflow or torch, so that ``sde-search report RUN`` stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sde_search.analysis import TrialRow, full_budget, read_run_info, read_summary
from sde_search.config import OBJECTIVE_METRIC, SpaceConfig, Task
from sde_search.design import Design, hparams_of


def write_atomic(path: Path, text: str) -> None:
    """Writes a file so that a reader sees the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunInfo:
    """What ``run.json`` records about a search, so that it can be resumed and reported."""

    name: str
    run_dir: str
    task_path: str
    space_path: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    study_name: str
    overrides: tuple[str, ...] = ()
    storage: str = ""
    """Shared storage of Tune's experiment and a copy of this folder (``--storage``); empty: this folder alone."""

    def save(self) -> None:
        """Writes ``run.json`` (atomically: a kill leaves the old or the new file)."""
        data = {**self.__dict__, "overrides": list(self.overrides)}
        write_atomic(Path(self.run_dir, "run.json"), json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunInfo:
        """Reads ``run.json`` of a run directory (raises ConfigError naming it when it is cut short or mistyped).

        Every field must be there with its type (``overrides`` and ``storage`` may be absent); keys of other versions
        are ignored. ``run_dir`` is the folder read, whatever the file says: a folder fetched from shared storage,
        or moved, names the place it was written in.
        """
        kinds = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "tuple[str, ...]": "list"}
        optional = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        fields = {f.name: kinds.get(str(f.type), "string|integer|number|boolean|list|mapping|null")
                  + ("?" if f.name in optional else "") for f in dataclasses.fields(cls)}
        data = read_run_info(run_dir, fields)
        return cls(**{**{k: v for k, v in data.items() if k in fields}, "overrides": tuple(data.get("overrides", ())),
                      "run_dir": os.path.abspath(run_dir)})


# ---------------------------------------------------------------- results/<trial>.jsonl


RESULTS = "results"
"""The run folder's folder of trial results, one ``<trial id>.jsonl`` per trial (every report, as it arrived)."""


def append_result(run_dir: Path, trial_id: str, result: Mapping[str, Any]) -> None:
    """Appends one trial report to ``results/<trial id>.jsonl`` (created with its folder when missing)."""
    root = Path(run_dir) / RESULTS
    root.mkdir(exist_ok=True)
    line = json.dumps(result, default=str, allow_nan=True)
    with open(root / f"{trial_id}.jsonl", "a") as f:
        f.write(line + "\n")


def has_results(run_dir: Path) -> bool:
    """Whether any trial of the run reported (a result log exists).

    The result logs, not Tune's ``result.json``: Tune copies those into the run folder only with each state snapshot.
    """
    return any((run_dir / RESULTS).glob("*.jsonl"))


def trial_results(run_dir: Path, trial_id: str, logdir: str) -> list[dict[str, Any]]:
    """A trial's reports: its ``results/<trial id>.jsonl``, else (a search of an older version) Tune's ``result.json``.

    Args:
        run_dir: The run folder.
        trial_id: Tune's trial id.
        logdir: The trial's folder under ``tune/``, where Tune keeps its ``result.json``.

    Returns:
        One dict per report, oldest first; a line cut off by a kill is left out.
    """
    for path in (run_dir / RESULTS / f"{trial_id}.jsonl", run_dir / "tune" / logdir / "result.json"):
        try:
            lines = path.read_text().splitlines()
            break
        except OSError:
            continue
    else:
        return []
    rows = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict)]


# ---------------------------------------------------------------- trials.json from Tune's results


HISTORY_KEYS = ("report", "step", "score", "score_ood", "format_error_rate", "train_loss", "accuracy",
                "accuracy_fixed", "baseline_fixed", "distinct_predictions", "measured")
"""The metrics of each report that a row's ``history`` keeps (the report's curves)."""


def collect(results: Iterable[Any], fixed: Mapping[str, Any]) -> list[TrialRow]:
    """Turns a Tune ``ResultGrid`` into rows (full / stopped by ASHA / failed) with their report history.

    Args:
        results: Tune's results, one per trial (read through their attributes: no Ray import here).
        fixed: The space's fixed params, which complete each trial's searched ones.
    """
    rows = []
    for r in results:
        metrics = {k: v for k, v in (r.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
        config = {**fixed, **(r.config or {})}
        hparams = hparams_of(config)
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
    rows = [{k: float(v) for k, v in row.items() if v == v} for row in frame[cols].to_dict("records")]
    # A trial resumed from a checkpoint reports again the steps after it: its last report of each step counts.
    by_report = {row.get("report", i): row for i, row in enumerate(rows)}
    return sorted(by_report.values(), key=lambda r: r.get("report", 0))


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else type(error).__name__


# ---------------------------------------------------------------- summary.json


def new_summary(name: str, space_path: str, task: Task, space: SpaceConfig, *, metric: str,
                wall_s: float | None, ray_init_s: float | None) -> dict[str, Any]:
    """A search's ``summary.json`` before the seed stage: its names, metric, times and steps per trial."""
    hp = task.config.train
    return {"name": name, "space_path": space_path, "metric": metric, "wall_s": wall_s, "ray_init_s": ray_init_s,
            "max_concurrent": space.budget.max_concurrent,
            "steps_per_trial": hp.steps_per_epoch(len(task.splits["train"])) * hp.epochs, "winner": None}


def save_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """Writes ``summary.json``."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))


def summary_of(run_dir: Path, task: Task, space: SpaceConfig) -> dict[str, Any]:
    """``summary.json``, checked (raises ConfigError); when it is gone, rebuilt and written back.

    A rebuilt summary takes the name, the metric and the steps per trial from ``run.json``, the task and the space;
    the search's times are lost, and its ``missing`` says so (the report shows it).
    """
    path = run_dir / "summary.json"
    if path.exists():
        return read_summary(path)
    info = read_run_info(run_dir)
    summary = new_summary(info["name"] if isinstance(info.get("name"), str) else run_dir.name, info["space_path"],
                          task, space, metric=OBJECTIVE_METRIC[task.config.objective], wall_s=None, ray_init_s=None)
    summary["missing"] = ["summary.json was missing: rebuilt from run.json, the task, the space and verdict.json; "
                          "the search's wall time is unknown"]
    save_summary(run_dir, summary)
    return summary


def update_summary(run_dir: Path, rows: Sequence[TrialRow], verdict: Mapping[str, Any]) -> dict[str, Any]:
    """Writes the verdict's headline, winner and its trial into ``summary.json``; returns the new summary."""
    summary = read_summary(run_dir / "summary.json")
    design = verdict.get("winner_design")
    trial = next((r for r in full_budget(rows, summary["metric"])
                  if design and r.design == Design.from_params(design)), None)
    summary.update(winner=trial.trial_id if trial else None, winner_design=design,
                   reads_input=bool(verdict.get("reads_input")), headline=verdict.get("headline", ""),
                   real_gains=[f"{g['vs']} {g['split']}" for g in verdict.get("gains", []) if g.get("real")])
    save_summary(run_dir, summary)
    return summary


def save_verdict(run_dir: Path, verdict: Mapping[str, Any]) -> None:
    """Writes ``verdict.json``."""
    (run_dir / "verdict.json").write_text(json.dumps(verdict, indent=1))
