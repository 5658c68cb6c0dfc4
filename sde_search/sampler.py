"""The Optuna side of a space: its distributions, the search's sampler and the points it evaluates first.

:class:`DistinctSampler` is written by hand because neither Optuna nor Ray does it: on a small all-categorical
space, TPE re-proposes a design it already tried (5 of 12 demo trials were repeats), and a repeat of a
deterministic fine-tune buys no information. The wrapper asks the wrapped sampler again a few times and, failing
that, takes a uniformly random unseen combination. Non-categorical parameters (``lr`` ranges) never count as seen.

Imports Optuna; never Ray, MLflow or torch (the report reads the space's distributions from here).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, BruteForceSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sde_search.analysis import full_budget, load_rows, read_summary
from sde_search.config import ConfigError, Range, SpaceConfig, Task
from sde_search.design import PRESETS, Design, design_param, hparams_of, train_param

ENUMERATE_LIMIT = 100_000  # spaces up to this many combinations are listed; larger ones are sampled


class DistinctSampler(BaseSampler):
    """Wraps a sampler so that its categorical combinations (the designs) are distinct across trials.

    Args:
        base: the sampler that proposes (TPE, random, ...).
        space: the study's full search space (name -> distribution), as given to ``study.ask``.
        seed: seed of the fallback's random choice.
        retries: how many times the base sampler is asked again before the fallback.
    """

    def __init__(self, base: BaseSampler, space: Mapping[str, BaseDistribution], seed: int | None = None,
                 retries: int = 16):
        """See the class docstring."""
        self.base = base
        self.space = dict(space)
        self.categorical = sorted(k for k, d in self.space.items() if isinstance(d, CategoricalDistribution))
        self.retries = retries
        self._rng = random.Random(seed)

    # --- the relative (joint) step carries the whole categorical combination -------------------------------

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The full space, so that every trial's combination is chosen jointly here."""
        return dict(self.space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The base sampler's proposal if unseen, else a retry, else a random unseen combination."""
        seen = self._seen(study, trial)
        inner = self.base.infer_relative_search_space(study, trial)
        params: dict[str, Any] = {}
        for _ in range(self.retries):
            params = self.base.sample_relative(study, trial, inner) if inner else {}
            if not self.categorical or not all(k in params for k in self.categorical):
                break  # the base samples independently (start-up trials): choose the combination here
            if self._key(params) not in seen:
                return params
        choice = self._unseen(seen)
        if choice is None:  # every design tried: let the base sampler repeat one
            return params
        return {**{k: v for k, v in params.items() if k not in choice}, **choice}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Delegated to the base sampler (only non-categorical parameters get here)."""
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:  # noqa: D102
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,  # noqa: D102
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # noqa: D102
        self.base.reseed_rng()

    # --- helpers ------------------------------------------------------------------------------------------

    def _key(self, params: Mapping[str, Any]) -> tuple:
        return tuple(params.get(k) for k in self.categorical)

    def _seen(self, study: Study, trial: FrozenTrial) -> set[tuple]:
        trials = study.get_trials(deepcopy=False)  # read only: the study's own records, not copies
        seen = {self._key(t.params) for t in trials if t.number != trial.number and t.params}
        fixed = trial.system_attrs.get("fixed_params")  # an enqueued point counts from the start
        if fixed:
            seen.add(self._key(fixed))
        return seen

    def _unseen(self, seen: set[tuple]) -> dict[str, Any] | None:
        choices = [self.space[k].choices for k in self.categorical]  # type: ignore[attr-defined]
        total = 1
        for c in choices:
            total *= len(c)
        if total <= ENUMERATE_LIMIT:
            free = [combo for combo in itertools.product(*choices) if combo not in seen]
            return dict(zip(self.categorical, self._rng.choice(free), strict=True)) if free else None
        for _ in range(1000):
            combo = tuple(self._rng.choice(c) for c in choices)
            if combo not in seen:
                return dict(zip(self.categorical, combo, strict=True))
        return None


def optuna_space(space: SpaceConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits the space into (searched Optuna distributions, fixed values), with flat dotted names."""
    searched: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for dim, values in space.design_choices().items():
        name = design_param(dim)
        if len(values) > 1:
            searched[name] = CategoricalDistribution(list(values))
        else:
            fixed[name] = values[0]
    for key, value in space.train.items():
        name = train_param(key)
        if isinstance(value, list) and len(value) > 1:
            searched[name] = CategoricalDistribution(value)
        elif isinstance(value, list):
            fixed[name] = value[0]
        elif isinstance(value, Range):
            searched[name] = value.distribution()  # the same distribution --check built
        else:
            fixed[name] = value
    return searched, fixed


# ---------------------------------------------------------------- the search's sampler and first points


def baseline_points(space: SpaceConfig, searched: Mapping[str, Any], task: Task,
                    warm: Sequence[Design] = ()) -> list[dict[str, Any]]:
    """``points_to_evaluate``: the paper's baseline and ES-SDE (``baselines:``), then warm-start designs.

    Designs outside the space are left out; searched training values take the task's value (or the range's
    low end when it falls outside).
    """
    points: list[dict[str, Any]] = []
    fixed = optuna_space(space)[1]
    for design in [PRESETS[name] for name in space.baselines] + list(warm):
        params = design.to_params()
        point = {k: v for k, v in params.items() if k in searched}
        if all(v in searched[k].choices for k, v in point.items()) and point not in points and \
                all(params[k] == v for k, v in fixed.items() if k in params):
            for key, value in hparams_of(searched).items():
                default = getattr(task.config.train, key)
                point[train_param(key)] = default if _fits(value, default) else _low_end(value)
            points.append(point)
    return points


def warm_designs(runs_dir: Path, runs: Sequence[str], top: int = 3) -> list[Design]:
    """The best ``top`` distinct full-budget designs of each earlier search (``--warm-start``)."""
    designs: list[Design] = []
    for run in runs:
        folder = next((p for p in (runs_dir / run, Path(run)) if (p / "trials.json").is_file()), None)
        if folder is None:
            raise ConfigError([f"--warm-start {run}: no finished search there (no trials.json in "
                               f"{runs_dir / run} or {run})"])
        if not (folder / "summary.json").is_file():
            raise ConfigError([f"--warm-start {run}: {folder / 'summary.json'}: missing, so the run's metric and "
                               f"winner are unknown; run `sde-search report {run}` first (it rebuilds summary.json)"])
        summary = read_summary(folder / "summary.json")
        ranked = full_budget(load_rows(folder / "trials.json"), summary["metric"])
        ranked.sort(key=lambda r: r.trial_id != summary.get("winner"))  # the run's winner first, then by score
        best = [r.design for r in ranked]
        designs += [d for d in dict.fromkeys(best) if d not in designs][:top]
    return designs


def _fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether a distribution holds a value (a choice of a categorical one, within a range's bounds)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high  # type: ignore[attr-defined]


def _low_end(dist: BaseDistribution) -> Any:
    """A distribution's first choice, or a range's low end: the value a baseline takes when the task's is outside."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    return dist.low  # type: ignore[attr-defined]


def make_sampler(space: SpaceConfig, searched: Mapping[str, Any]) -> BaseSampler:
    """TPE (seeded, multivariate, constant liar), random or brute force; wrapped to keep designs distinct."""
    s = space.sampler
    if s.name == "brute_force":
        return BruteForceSampler(seed=s.seed)  # distinct by construction
    if s.name == "random":
        base: BaseSampler = RandomSampler(seed=s.seed)
    else:
        base = TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                          constant_liar=True)
    return DistinctSampler(base, searched, seed=s.seed) if s.distinct else base
