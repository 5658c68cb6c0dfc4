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

from sde_search.design import DIMENSIONS, Design


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
    """Reads ``trials.json``."""
    return [TrialRow.from_json(d) for d in json.loads(path.read_text())]


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
        for value, scores in sorted(groups.items(), key=lambda kv: -statistics.fmean(kv[1])):
            std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
            effects.append(Effect(dim, value, statistics.fmean(scores), std, len(scores)))
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
