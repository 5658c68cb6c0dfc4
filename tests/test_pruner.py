"""The pruner keeps slow starters: a constant answer is no evidence at a rung (rule and Ray scheduler, with fakes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sde_search.pruner import EvidenceASHA, decide


def test_a_constant_answer_is_deferred_not_cut_and_not_recorded():
    recorded = {"a": 0.4, "b": 0.3, "c": 0.2}
    assert not decide(recorded, "slow", 0.0, evidence=False, at_report=3, milestone=3, rf=3, defer_until=9)
    assert "slow" not in recorded  # it does not lower the rung's cutoff either


def test_after_defer_until_a_constant_answer_is_judged_like_any_result():
    recorded = {"a": 0.4, "b": 0.3, "c": 0.2}
    assert decide(recorded, "slow", 0.0, evidence=False, at_report=9, milestone=9, rf=3, defer_until=9)
    assert recorded["slow"] == 0.0


def test_a_measured_low_score_is_cut_and_the_first_arrival_never_is():
    recorded: dict[str, float] = {}
    assert not decide(recorded, "first", 0.1, evidence=True, at_report=3, milestone=3, rf=3, defer_until=12)
    recorded.update({"b": 0.5, "c": 0.6})
    assert decide(recorded, "weak", 0.2, evidence=True, at_report=3, milestone=3, rf=3, defer_until=12)
    assert not decide(recorded, "strong", 0.7, evidence=True, at_report=3, milestone=3, rf=3, defer_until=12)


def _trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=name)


@pytest.mark.parametrize(("defer_until", "slow_stopped"), [(12, False), (0, True)])
def test_evidence_asha_lets_a_slow_starter_reach_its_first_measured_report(defer_until: int,
                                                                            slow_stopped: bool) -> None:
    """Three trials reach rung 3 with measured scores; a fourth still writes one answer there (kappa 0)."""
    asha = EvidenceASHA(time_attr="report", metric="score", mode="max", max_t=12, grace_period=3,
                        reduction_factor=3, defer_until=defer_until)
    trials = {n: _trial(n) for n in ("a", "b", "c", "slow")}
    for t in trials.values():
        asha.on_trial_add(None, t)
    for name, score in (("c", 0.3), ("b", 0.4), ("a", 0.5)):  # rising, so that ASHA cuts none of them
        assert asha.on_trial_result(None, trials[name], {"report": 3, "score": score, "measured": 1}) == "CONTINUE"
    action = asha.on_trial_result(None, trials["slow"], {"report": 3, "score": 0.0, "measured": 0})
    assert (action == "STOP") is slow_stopped
    if not slow_stopped:  # its next report measures something and is judged at rung 3 then
        good = asha.on_trial_result(None, trials["slow"], {"report": 4, "score": 0.6, "measured": 1})
        assert good == "CONTINUE"


def test_a_late_judgement_is_compared_but_not_recorded_at_the_earlier_rung():
    recorded = {"a": 0.4, "b": 0.3}
    assert not decide(recorded, "late", 0.9, evidence=True, at_report=5, milestone=3, rf=3, defer_until=12)
    assert "late" not in recorded  # its report-5 score would raise the cutoff for report-3 arrivals


def test_a_finished_trial_leaves_no_value_in_a_rung_it_skipped():
    asha = EvidenceASHA(time_attr="report", metric="score", mode="max", max_t=12, grace_period=3,
                        reduction_factor=3, defer_until=12)
    trial = _trial("constant")
    asha.on_trial_add(None, trial)
    for k in range(1, 12):
        assert asha.on_trial_result(None, trial, {"report": k, "score": 0.0, "measured": 0}) == "CONTINUE"
    asha.on_trial_complete(None, trial, {"report": 12, "score": 0.0, "measured": 0})
    assert all(not recorded for bracket in asha._brackets for _, recorded in bracket._rungs)
