"""The Optuna side of a space: its distributions, and a sampler that never repeats a design needlessly.

Written by hand because neither Optuna nor Ray does it: on a small all-categorical space, TPE re-proposes a
design it already tried (5 of 12 demo trials were repeats), and a repeat of a deterministic fine-tune
buys no information. The wrapper asks the wrapped sampler again a few times and, failing that, takes a
uniformly random unseen combination. Non-categorical parameters (``lr`` ranges) never count as seen.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sde_search.config import Range, SpaceConfig

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
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)  # noqa: SLF001
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
        name = f"design.{dim}"
        if len(values) > 1:
            searched[name] = CategoricalDistribution(list(values))
        else:
            fixed[name] = values[0]
    for key, value in space.train.items():
        name = f"train.{key}"
        if isinstance(value, list) and len(value) > 1:
            searched[name] = CategoricalDistribution(value)
        elif isinstance(value, list):
            fixed[name] = value[0]
        elif isinstance(value, Range):
            searched[name] = value.distribution()  # the same distribution --check built
        else:
            fixed[name] = value
    return searched, fixed
