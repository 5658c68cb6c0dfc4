"""What a finished search says: trial rows, option effects, the ID/OOD Pareto front, search cost.

Pure core: no torch, Ray or MLflow. ``report.py`` turns these numbers into markdown and plots, the
notebook calls them directly on ``trials.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sde_search.config import OBJECTIVE_METRIC, ConfigError, not_utf8
from sde_search.design import DIMENSIONS, Design
from sde_search.tasks import clip


@dataclass
class TrialRow:
    """One trial's outcome, as saved in ``trials.json``.

    Attributes:
        trial_id: Tune's trial id.
        design: the sample design it trained.
        hparams: searched training values (``lr``, ``lora_rank``), empty when none were searched.
        status: ``full`` (reached the full budget), ``stopped`` (by ASHA) or ``failed``.
        metrics: the last report's metrics.
        history: one dict per report (``report``, ``score``, ``score_ood``, ``format_error_rate``, ``step``).
        error: the failure's last line, for failed trials.
        checkpoint: folder of the last checkpoint, when kept.
    """

    trial_id: str
    design: Design
    hparams: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    error: str = ""
    checkpoint: str | None = None

    def value(self, metric: str) -> float:
        """The metric's last value (NaN when absent)."""
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the design as its flat ``design.*`` params)."""
        return {**asdict(self), "design": self.design.to_params()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRow:
        """The inverse of :meth:`to_json`."""
        return cls(**{**data, "design": Design.from_params(data["design"])})


def save_rows(path: Path, rows: Sequence[TrialRow]) -> None:
    """Writes ``trials.json``."""
    path.write_text(json.dumps([r.to_json() for r in rows], indent=1, default=float))


def load_rows(path: Path) -> list[TrialRow]:
    """Reads ``trials.json``, checking every row's fields (raises ConfigError naming the file and the row)."""
    data = read_json(path, list, TRIALS_FIX)
    problems: list[str] = []
    for i, item in enumerate(data):
        problems += _row_problems(item, f"[{i}]")
    if problems:
        raise _error(path, problems, TRIALS_FIX)
    return [TrialRow.from_json({k: v for k, v in d.items() if k in ROW_FIELDS}) for d in data]


# ---------------------------------------------------------------- reading the run folder's JSON files
#
# A run folder outlives the process that wrote it: a kill mid-write, a full disk or a hand edit can leave any file
# cut short or with the wrong shape. Each reader checks the shape it relies on, so that such a file ends a command
# with the file, the key and what was expected, never with a traceback from deep inside the report.

STATUSES = ("full", "stopped", "failed")
MAX_PROBLEMS = 10
"""Problems listed per file; a file broken in every row says the rest in one line."""
TRIALS_FIX = "restore it from the MLflow parent run of the search (artifact trials.json)"
RUN_FIX = "restore it, or fix it by hand (it names the task, the space and the MLflow runs of the search)"
SUMMARY_FIX = "fix it, or delete it and run `sde-search report` on the run (it rebuilds summary.json)"
VERDICT_FIX = ("delete it (the report then has no verdict) or run `sde-search report --rescore` on the run "
               "(it runs the seed stage again)")

ROW_FIELDS = {"trial_id": "string", "design": "mapping", "hparams": "mapping", "status": "string",
              "metrics": "mapping", "history": "list?", "error": "string?", "checkpoint": "string|null?"}
"""``trials.json``: each row's keys and their JSON kinds (``?``: may be absent)."""
SUMMARY_FIELDS = {"name": "string", "space_path": "string", "metric": "string", "wall_s": "number|null",
                  "max_concurrent": "integer", "steps_per_trial": "integer", "ray_init_s": "number|null?",
                  "winner": "string|null?", "winner_design": "mapping|null?", "seed_stage_s": "number|null?",
                  "missing": "list?"}
"""``summary.json``: the keys the report reads (others are kept as they are)."""
VERDICT_FIELDS = {"headline": "string?", "candidates": "list?", "gains": "list?", "winner": "string|null?",
                  "winner_design": "mapping|null?", "reads_input": "boolean?", "method": "string?",
                  "seeds": "integer?", "hparams": "mapping?"}
CANDIDATE_FIELDS = {"short": "string", "roles": "list", "seeds": "list", "splits": "mapping"}
GAIN_FIELDS = {"vs": "string", "roles": "list", "split": "string", "note": "string"}
KIND_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
              "list": "a list", "mapping": "a JSON object", "null": "null"}


def shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a value from a file, cut to ``limit`` characters (a file may hold anything)."""
    return clip(repr(value), limit)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {str: "string", float: "number", list: "list", dict: "mapping", type(None): "null"}.get(
        type(value), type(value).__name__)


def kind_problem(value: Any, kinds: str) -> str | None:
    """Why ``value`` is not of ``kinds`` (``"number|null"``; ``number`` takes integers), or None."""
    kind = _kind(value)
    allowed = kinds.rstrip("?").split("|")
    if kind in allowed or (kind == "integer" and "number" in allowed):
        return None
    return f"expected {' or '.join(KIND_NAMES[k] for k in allowed)}, got {KIND_NAMES.get(kind, kind)} {shown(value)}"


def field_problems(data: Mapping[str, Any], fields: Mapping[str, str], where: str = "") -> list[str]:
    """``key: what is wrong`` for every field of ``fields`` missing from ``data`` or of the wrong kind."""
    problems = []
    for key, kinds in fields.items():
        if key not in data:
            if not kinds.endswith("?"):
                problems.append(f"{where}{'.' if where else ''}{key}: missing")
            continue
        why = kind_problem(data[key], kinds)
        if why:
            problems.append(f"{where}{'.' if where else ''}{key}: {why}")
    return problems


def _error(path: Path, problems: Sequence[str], fix: str) -> ConfigError:
    """One error line per problem (at most MAX_PROBLEMS, then how many more), each naming the file and the fix."""
    lines = [f"{path}: {p}; {fix}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{path}: {len(problems) - MAX_PROBLEMS} more problems of the same kind")
    return ConfigError(lines)


def read_json(path: Path, shape: type[dict[str, Any]] | type[list[Any]], fix: str) -> Any:
    """The parsed content of a run-folder JSON file that must be a JSON object (``dict``) or list.

    Raises:
        ConfigError: naming the file when it is missing, unreadable, cut short, not JSON or of another shape.
    """
    problem, text = None, ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "file not found"
    except IsADirectoryError:
        problem = "is a folder, not a JSON file"
    except UnicodeDecodeError as exc:
        problem = not_utf8(exc)
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    else:
        if not text.strip():
            problem = "the file is empty (it was cut short, e.g. by a kill or a full disk, while being written)"
    if problem:
        raise _error(path, [problem], fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        ends = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        cut = " (it ends early: it was cut short while being written)" if ends else ""
        raise _error(path, [f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{cut}"], fix) from None
    except RecursionError:
        raise _error(path, ["nested too deeply to read (not a file this tool wrote)"], fix) from None
    if not isinstance(data, shape):
        want = "a JSON object" if shape is dict else "a JSON list"
        raise _error(path, [f"expected {want}, got {KIND_NAMES.get(_kind(data), _kind(data))} {shown(data, 40)}"], fix)
    return data


def _row_problems(item: Any, where: str) -> list[str]:
    """What is wrong with one ``trials.json`` row (``where``: its index)."""
    if not isinstance(item, dict):
        return [f"{where}: {kind_problem(item, 'mapping')}"]
    problems = field_problems(item, ROW_FIELDS, where)
    if isinstance(item.get("status"), str) and item["status"] not in STATUSES:
        problems.append(f"{where}.status: {shown(item['status'])} is not one of {', '.join(STATUSES)}")
    if isinstance(item.get("design"), dict):
        try:
            Design.from_params(item["design"])
        except (ValueError, TypeError) as exc:
            problems.append(f"{where}.design: {str(exc)[:200]}")
    history = item.get("history")
    for i, entry in enumerate(history if isinstance(history, list) else []):
        if not isinstance(entry, dict):
            problems.append(f"{where}.history[{i}]: {kind_problem(entry, 'mapping')}")
            continue
        problems += field_problems(entry, {k: "number?" for k in entry}, f"{where}.history[{i}]")
    return problems


def read_summary(path: Path) -> dict[str, Any]:
    """Reads ``summary.json``, checking the keys the report and ``--warm-start`` read (raises ConfigError)."""
    data: dict[str, Any] = read_json(path, dict, SUMMARY_FIX)
    problems = field_problems(data, SUMMARY_FIELDS)
    metrics = sorted(set(OBJECTIVE_METRIC.values()), key=list(OBJECTIVE_METRIC.values()).index)
    if isinstance(data.get("metric"), str) and data["metric"] not in metrics:
        problems.append(f"metric: {shown(data['metric'])} is not one of {', '.join(metrics)}")
    if problems:
        raise _error(path, problems, SUMMARY_FIX)
    return data


def read_verdict(path: Path) -> dict[str, Any]:
    """Reads ``verdict.json`` (the seed stage's result); ``{}`` when there is none. Raises ConfigError."""
    if not path.exists():
        return {}
    data: dict[str, Any] = read_json(path, dict, VERDICT_FIX)
    problems = field_problems(data, VERDICT_FIELDS)
    for key, check in (("candidates", _candidate_problems), ("gains", _gain_problems)):
        entries = data.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            why = kind_problem(entry, "mapping")
            problems += [f"{key}[{i}]: {why}"] if why else check(entry, f"{key}[{i}]")
    if data.get("candidates"):
        problems += field_problems(data, {"seeds": "integer", "method": "string"})
    shorts = [c.get("short") for c in data.get("candidates") or [] if isinstance(c, dict)]
    if isinstance(data.get("winner_design"), dict):
        try:
            Design.from_params(data["winner_design"])
        except (ValueError, TypeError) as exc:
            problems.append(f"winner_design: {str(exc)[:200]}")
        if data.get("winner") not in shorts:
            problems.append(f"winner: {shown(data.get('winner'))} is not one of the candidates "
                            f"({', '.join(map(str, shorts[:10])) or 'none listed'})")
    if problems:
        raise _error(path, problems, VERDICT_FIX)
    return data


def _candidate_problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """A seed-stage candidate: its fields and, per split, whether it was measured and reads the input (and why)."""
    problems = field_problems(entry, CANDIDATE_FIELDS, where)
    if isinstance(entry.get("roles"), list) and not all(isinstance(r, str) for r in entry["roles"]):
        problems.append(f"{where}.roles: expected a list of strings, got {shown(entry['roles'])}")
    splits = entry.get("splits")
    splits = splits if isinstance(splits, dict) else {}
    for split, result in splits.items():
        at = f"{where}.splits.{split}"
        why = kind_problem(result, "mapping")
        if why:
            problems.append(f"{at}: {why}")
            continue
        needs = {"measured": "boolean", "reads_input": "boolean" if str(split).endswith("_id") else "boolean?"}
        if result.get("measured") is False:
            needs["why_not_measured"] = "string"
        elif result.get("reads_input") is False and str(split).endswith("_id"):
            needs["why_not_reading"] = "string"
        problems += field_problems(result, needs, at)
    return problems


def _gain_problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """The winner against one other design: the fields the report prints."""
    needs = {**GAIN_FIELDS, "text": "string"} if "delta" in entry else GAIN_FIELDS
    problems = field_problems(entry, needs, where)
    if isinstance(entry.get("roles"), list) and not all(isinstance(r, str) for r in entry["roles"]):
        problems.append(f"{where}.roles: expected a list of strings, got {shown(entry['roles'])}")
    return problems


RUN_FIELDS = {"task_path": "string", "space_path": "string", "overrides": "list?"}
"""``run.json``: what ``report`` / ``export`` / ``robust`` read before anything else."""


def read_run_info(folder: Path, fields: Mapping[str, str] = RUN_FIELDS) -> dict[str, Any]:
    """Reads ``run.json`` and checks ``fields`` (``overrides``: a list of strings); raises ConfigError.

    Keys not named in ``fields`` are left as they are.
    """
    path = folder / "run.json"
    data: dict[str, Any] = read_json(path, dict, RUN_FIX)
    overrides = data.get("overrides", [])
    problems = field_problems(data, {k: v for k, v in fields.items() if k != "overrides"})
    if "overrides" in fields and not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        problems.append(f"overrides: expected a list of strings (the search's --set KEY=VALUE), got "
                        f"{shown(overrides)}")
    if problems:
        raise _error(path, problems, RUN_FIX)
    return data


def full_budget(rows: Sequence[TrialRow], metric: str) -> list[TrialRow]:
    """Trials that reached the full budget with a measured score, best first.

    A score whose split was degenerate (``measured`` / ``measured_ood`` 0: one distinct answer or all format
    errors) measures nothing and does not count: ID metrics need ``measured``, OOD ones ``measured_ood``, their
    mean both.
    """
    needs = {"score_ood": ("measured_ood",), "score_mean": ("measured", "measured_ood")}.get(metric, ("measured",))
    full = [r for r in rows if r.status == "full" and not math.isnan(r.value(metric))
            and all(r.value(flag) != 0 for flag in needs)]
    return sorted(full, key=lambda r: -r.value(metric))


@dataclass(frozen=True)
class Effect:
    """Marginal score of one option value over the full-budget trials that used it."""

    dimension: str
    value: str
    mean: float
    std: float
    n: int


def option_effects(rows: Sequence[TrialRow], metric: str) -> list[Effect]:
    """Mean, spread and count of the metric per value of each design dimension that varied (full-budget trials)."""
    return _effects([(r.design, r.value(metric)) for r in full_budget(rows, metric)])


def effects_at_common_report(rows: Sequence[TrialRow], metric: str) -> tuple[int, list[Effect]]:
    """Option effects over every trial, stopped ones included, at the last report all of them reached.

    Returns:
        (that report's number, the effects); (0, []) when a trial has no history.
    """
    scored = [r for r in rows if r.status != "failed"]
    reached = [int(max((h.get("report", 0) for h in r.history), default=0)) for r in scored]
    if not scored or min(reached) < 1:
        return 0, []
    at = min(reached)
    points = []
    for r in scored:
        value = next((h.get(metric, math.nan) for h in r.history if int(h.get("report", 0)) == at), math.nan)
        if not math.isnan(value):
            points.append((r.design, value))
    return at, _effects(points)


MIN_EFFECT_N = 2
"""An option value's mean over fewer trials is one trial's score, not an effect: such rows are left out."""


def _effects(points: Sequence[tuple[Design, float]]) -> list[Effect]:
    effects = []
    for dim in DIMENSIONS:
        groups: dict[str, list[float]] = {}
        for design, value in points:
            groups.setdefault(str(getattr(design, dim)), []).append(value)
        groups = {k: v for k, v in groups.items() if len(v) >= MIN_EFFECT_N}
        if len(groups) < 2:
            continue
        for option, scores in sorted(groups.items(), key=lambda kv: -statistics.fmean(kv[1])):
            std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
            effects.append(Effect(dim, option, statistics.fmean(scores), std, len(scores)))
    return effects


def pareto_front(rows: Sequence[TrialRow], x: str = "score", y: str = "score_ood") -> list[TrialRow]:
    """Full-budget trials not dominated on (x, y), both maximised; sorted by x descending.

    Only trials whose OOD split is measured count (a degenerate split's score of 0 is no point on a front).
    """
    points = [r for r in full_budget(rows, x) if not math.isnan(r.value(y)) and r.value("measured_ood") != 0]
    # full_budget(rows, "score") already needs a measured ID split
    return [r for r in points
            if not any(o.value(x) >= r.value(x) and o.value(y) >= r.value(y) and
                       (o.value(x) > r.value(x) or o.value(y) > r.value(y)) for o in points)]


def search_cost(rows: Sequence[TrialRow], steps_per_trial: int, space_size: int) -> dict[str, float]:
    """Train steps and trial seconds spent, against all trials at full budget and an exhaustive grid."""
    spent = sum(r.value("step") for r in rows if not math.isnan(r.value("step")))
    seconds = sum(r.value("time_total_s") for r in rows if not math.isnan(r.value("time_total_s")))
    full = [r for r in rows if r.status == "full" and not math.isnan(r.value("time_total_s"))]
    per_full = statistics.fmean(r.value("time_total_s") for r in full) if full else float("nan")
    return {"trials": len(rows), "steps": spent, "steps_all_full": steps_per_trial * len(rows),
            "steps_grid": steps_per_trial * space_size, "trial_seconds": seconds,
            "grid_seconds_estimate": per_full * space_size}
