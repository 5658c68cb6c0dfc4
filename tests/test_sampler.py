"""DistinctSampler: a design is never proposed twice while unseen designs remain."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from sde_search.sampler import DistinctSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"design.a": CategoricalDistribution(["x", "y", "z"]), "design.b": CategoricalDistribution([0, 1]),
         "design.c": CategoricalDistribution(["p", "q"])}


def _study(base: optuna.samplers.BaseSampler, space: dict, distinct: bool = True) -> optuna.Study:
    sampler = DistinctSampler(base, space, seed=0) if distinct else base
    return optuna.create_study(direction="maximize", sampler=sampler)


def _run(study: optuna.Study, space: dict, n: int, finish: bool = True) -> list[tuple]:
    keys = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=space)
        keys.append(tuple(trial.params[k] for k in sorted(SPACE)))
        if finish:  # a score that TPE can chase: prefers a=z, b=1
            study.tell(trial, float(trial.params["design.a"] == "z") + trial.params["design.b"])
    return keys


@pytest.mark.parametrize("base", [optuna.samplers.TPESampler(seed=1, n_startup_trials=3, multivariate=True,
                                                             constant_liar=True),
                                  optuna.samplers.RandomSampler(seed=1)], ids=["tpe", "random"])
def test_every_design_once_before_any_repeat(base):
    study = _study(base, SPACE)
    study.enqueue_trial({"design.a": "x", "design.b": 0, "design.c": "p"})
    keys = _run(study, SPACE, 12)
    assert keys[0] == ("x", 0, "p")  # the enqueued point is kept
    assert len(set(keys)) == 12  # all 12 designs, no repeat
    assert len(set(_run(study, SPACE, 3))) >= 1  # past the space's size it repeats instead of failing


def test_running_trials_count_as_seen():
    study = _study(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), SPACE)
    keys = _run(study, SPACE, 6, finish=False)  # six trials in flight at once
    assert len(set(keys)) == 6


def test_plain_tpe_repeats_on_a_small_space():
    """The reason the wrapper exists: the same budget without it repeats designs."""
    base = optuna.samplers.TPESampler(seed=1, n_startup_trials=3, multivariate=True, constant_liar=True)
    keys = _run(_study(base, SPACE, distinct=False), SPACE, 12)
    assert len(set(keys)) < 12


def test_continuous_parameters_are_left_to_the_base_sampler():
    space = {**SPACE, "train.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    study = _study(optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True), space)
    trials = [study.ask(fixed_distributions=space) for _ in range(5)]
    for t in trials:
        study.tell(t, t.params["train.lr"])
    assert len({tuple(t.params[k] for k in sorted(SPACE)) for t in trials}) == 5
    assert all(1e-4 <= t.params["train.lr"] <= 1e-2 for t in trials)
