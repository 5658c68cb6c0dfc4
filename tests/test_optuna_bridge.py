"""What the search tells Optuna about each trial (``FullBudgetOptunaSearch``), on an in-memory study.

TPE ranks designs by what the study holds, so a trial ASHA stopped early must be PRUNED (its reports kept as
intermediate values), never COMPLETE with a partial score; a trial that ran its full budget is COMPLETE with
its final score. After a resume, the study's trials and Tune's stay one to one. No Ray cluster is started:
Tune's calls to the searcher are made directly.
"""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from sde_search import resume
from sde_search.searcher import FullBudgetOptunaSearch

SPACE = {"design.output_format": CategoricalDistribution(["natural", "lines", "json"]),
         "design.unmentioned": CategoricalDistribution(["placeholder", "omit"])}


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def searcher(storage: optuna.storages.BaseStorage | None = None, pareto: bool = False,
             points: list[dict[str, Any]] | None = None) -> FullBudgetOptunaSearch:
    """The searcher as the search builds it (seeded random sampler, so any order of designs is fine)."""
    return FullBudgetOptunaSearch(space=SPACE, metric=["score", "score_ood"] if pareto else "score",
                                  mode=["max", "max"] if pareto else "max", points_to_evaluate=points,
                                  sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                                  storage=storage or optuna.storages.InMemoryStorage())


def report(k: int, score: float, of: int = 4, **extra: Any) -> dict[str, Any]:
    """Trial report ``k`` of ``of`` (``progress`` = the share of the full budget trained)."""
    return {"score": score, "score_ood": score / 2, "training_iteration": k, "report": k, "progress": k / of,
            **extra}


def only_trial(s: FullBudgetOptunaSearch) -> optuna.trial.FrozenTrial:
    (trial,) = s._ot_study.get_trials(deepcopy=False)
    return trial


def test_a_full_budget_trial_is_complete_with_its_final_score() -> None:
    s = searcher()
    params = s.suggest("t1")
    assert set(params) == set(SPACE)  # flat names, as the trainable reads them
    for k in (1, 2, 3):
        s.on_trial_result("t1", report(k, k / 10))
    s.on_trial_complete("t1", report(4, 0.55))
    trial = only_trial(s)
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.55)


def test_an_asha_stopped_trial_is_pruned_with_the_score_it_was_stopped_on() -> None:
    s = searcher()
    s.suggest("t1")
    s.on_trial_result("t1", report(1, 0.3))
    s.on_trial_complete("t1", report(2, 0.1))  # stopped at report 2 of 4; Tune never sent report 2 as a result
    trial = only_trial(s)
    assert trial.state == TrialState.PRUNED  # not COMPLETE: TPE must not rank 0.1 as a full-budget score
    assert trial.intermediate_values == pytest.approx({1: 0.3, 2: 0.1})  # what TPE ranks pruned trials by
    assert trial.value == pytest.approx(0.1)  # Optuna's value of a pruned trial: its last report, the one ASHA judged
    assert "t1" in s._completed_trials


def test_a_result_without_progress_counts_as_full_budget() -> None:
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", {"score": 0.4, "training_iteration": 1})
    assert only_trial(s).state == TrialState.COMPLETE


def test_a_failed_trial_is_failed_not_pruned() -> None:
    s = searcher()
    s.suggest("t1")
    s.on_trial_result("t1", report(1, 0.3))
    s.on_trial_complete("t1", None, error=True)
    assert only_trial(s).state == TrialState.FAIL


def test_pareto_stopped_is_pruned_and_full_is_complete_with_both_scores() -> None:
    s = searcher(pareto=True)
    s.suggest("t1")
    s.suggest("t2")
    s.on_trial_complete("t1", report(1, 0.2))
    s.on_trial_complete("t2", report(4, 0.6))
    first, second = sorted(s._ot_study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert first.state == TrialState.PRUNED and first.values is None
    assert second.state == TrialState.COMPLETE and second.values == pytest.approx([0.6, 0.3])


def test_a_step_reported_again_after_a_resume_keeps_the_first_value() -> None:
    s = searcher()
    s.suggest("t1")
    for k, score in ((1, 0.3), (2, 0.4), (2, 0.9)):  # resumed from the checkpoint of report 1: report 2 again
        s.on_trial_result("t1", report(k, score))
    s.on_trial_complete("t1", report(3, 0.2))
    trial = only_trial(s)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == pytest.approx({1: 0.3, 2: 0.4, 3: 0.2})


def test_enqueued_points_come_first_and_are_not_adopted_as_orphans() -> None:
    points = [{"design.output_format": "json", "design.unmentioned": "omit"},
              {"design.output_format": "natural", "design.unmentioned": "placeholder"}]
    s = searcher(points=points)
    got = [s.suggest(f"t{i}") for i in (1, 2, 3)]
    assert got[:2] == points
    numbers = {tid: t.number for tid, t in s._ot_trials.items()}
    assert numbers == {"t1": 0, "t2": 1, "t3": 2}  # one study trial per Tune trial


def test_after_a_resume_the_trial_a_killed_search_left_running_is_handed_on() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask(fixed_distributions=SPACE)
    study.tell(done, 0.5)  # finished before the kill, but Tune never recorded it
    running = study.ask(fixed_distributions=SPACE)  # started; the kill came before Tune recorded it

    s = searcher(storage)
    params = s.suggest("t-new")
    assert params == running.params
    assert len(study.get_trials()) == 2  # no new study trial
    assert study.trials[running.number].user_attrs[resume.TUNE_TRIAL_ATTR] == "t-new"

    # then the finished one: trained again, the study keeps its result, the link is noted on the study
    s.suggest("t-again")
    assert study.user_attrs[f"{resume.TUNE_TRIAL_ATTR}:{done.number}"] == "t-again"
    s.on_trial_complete("t-again", report(4, 0.9))
    assert study.trials[done.number].value == pytest.approx(0.5)  # already told: not told again
    assert "t-again" in s._completed_trials

    s.on_trial_complete("t-new", report(4, 0.7))
    assert study.trials[running.number].state == TrialState.COMPLETE
    assert study.trials[running.number].value == pytest.approx(0.7)
    assert len(study.get_trials()) == 2
