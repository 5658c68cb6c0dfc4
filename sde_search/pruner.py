"""Early stopping that keeps slow starters: ASHA that treats a constant answer as no evidence.

Plain ASHA cuts a trial at a rung when its score is below the rung's ``1 - 1/rf`` quantile. Early in training
many designs still write one default answer for every record (all ``unmentioned``), which scores kappa exactly
0: a rung full of such ties cuts by arrival order, and a design that learns its format a little later (JSON,
placeholders) is stopped before it shows anything. Here a result whose predictions measure nothing
(``measured`` 0: one distinct answer, or every generation a format error) is *deferred*: it is neither cut
nor recorded at the rung, and the trial goes on until it reports a measured score (then judged against that
rung's recorded scores) or reaches ``defer_until`` reports, after which it is judged like any other.

:func:`decide` is the rule on its own, so that ``bench/pruning.py`` replays the very rule the search runs.
Only this module and ``search`` talk to Ray.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

EVIDENCE_KEY = "measured"
"""The trial metric that says whether a report's predictions measure anything (1) or not (0)."""


def decide(recorded: MutableMapping[str, float], trial_id: str, value: float, *, evidence: bool, report: int,
           rf: float, defer_until: int) -> bool:
    """One rung decision; returns True to stop the trial, and records its value at the rung when it counts.

    Args:
        recorded: The rung's recorded values (trial id -> value), updated in place.
        trial_id: The trial.
        value: Its score at this report.
        evidence: Whether the report measured anything (not a constant answer or all format errors).
        report: The report number.
        rf: ASHA's reduction factor.
        defer_until: Up to this report a result without evidence is deferred (neither cut nor recorded).
    """
    if not evidence and report < defer_until:
        return False
    stop = bool(recorded) and value < _cutoff(list(recorded.values()), rf)
    if not math.isnan(value):
        recorded[trial_id] = value
    return stop


def _cutoff(values: list[float], rf: float) -> float:
    """Ray's cutoff: the ``1 - 1/rf`` quantile (linear interpolation) of the values recorded at the rung."""
    import numpy as np

    return float(np.nanpercentile(values, (1 - 1 / rf) * 100))


class EvidenceASHA(ASHAScheduler):
    """``ASHAScheduler`` whose rungs skip results that measure nothing (see the module docstring).

    Args:
        defer_until: Report up to which a result without evidence is deferred (default: ``max_t``, so a trial
            that never writes a measured answer runs to the end and is never won by a constant score:
            ``measured`` 0 at the full budget keeps it off the leaderboard's top anyway).
        **kwargs: ``ASHAScheduler``'s arguments (``time_attr``, ``metric``, ``mode``, ``max_t``,
            ``grace_period``, ``reduction_factor``).
    """

    def __init__(self, *, defer_until: int | None = None, evidence_key: str = EVIDENCE_KEY, **kwargs: Any):
        """See the class docstring (``evidence_key``: ``measured_ood`` when the metric is the OOD score)."""
        super().__init__(**kwargs)
        self._defer_until = defer_until if defer_until is not None else self._max_t
        self._evidence_key = evidence_key

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:  # noqa: D102
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        report = int(result[self._time_attr])
        if report >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        bracket = self._trial_info[trial.trial_id]
        value = self._metric_op * float(result[self._metric])
        evidence = float(result.get(self._evidence_key, 1.0)) > 0
        for milestone, recorded in bracket._rungs:  # descending milestones, as Ray's _Bracket.on_result
            if report < milestone or trial.trial_id in recorded:
                continue
            if decide(recorded, trial.trial_id, value, evidence=evidence, report=report, rf=bracket.rf,
                      defer_until=self._defer_until):
                self._num_stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE
