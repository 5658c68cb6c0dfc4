"""Tune's searcher: Ray's ``OptunaSearch`` made to tell the study what ASHA and a resume did to a trial.

Imports Ray and Optuna; never MLflow or torch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

from sde_search import resume

log = logging.getLogger(__name__)


class FullBudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna an ASHA-stopped trial was PRUNED, not COMPLETE with a partial score.

    Ray's OptunaSearch marks PRUNED only when no value came back, so TPE would otherwise rank a design stopped
    at 2 of 12 reports as if that early score were final. Pruned trials keep their reported intermediate
    values, which TPE uses to rank them among the poor ones.
    """

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's next design; first, an Optuna trial a killed search had started but Tune never recorded.

        Handing such a trial on keeps the study's trials and Tune's one to one after a resume (a running one
        first; a finished one is trained again, and the study keeps its result). Each Optuna trial is tagged
        with its Tune trial id, which is how a resume matches the two.
        """
        if trial_id not in self._ot_trials and not callable(self._space):
            mine = {t.number for t in self._ot_trials.values()}
            orphans = [t for t in self._ot_study.get_trials(deepcopy=False)
                       if t.number not in mine and t.state != optuna.trial.TrialState.WAITING]
            orphans.sort(key=lambda t: (t.state != optuna.trial.TrialState.RUNNING, t.number))
            if orphans:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphans[0]._trial_id)
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            try:
                ot_trial.set_user_attr(resume.TUNE_TRIAL_ATTR, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:  # an adopted finished trial: noted on the study
                self._ot_study.set_user_attr(f"{resume.TUNE_TRIAL_ATTR}:{ot_trial.number}", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:  # noqa: D102
        with warnings.catch_warnings(), contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            # a trial resumed from a checkpoint reports its later steps again (Optuna keeps the first), and one
            # the study already closed reports nothing more
            warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:  # noqa: D102
        stopped = result is not None and not error and result.get("progress", 1.0) < 1.0
        if trial_id in self._ot_trials and self._ot_study._storage.get_trial(
                self._ot_trials[trial_id]._trial_id).state.is_finished():  # adopted after a resume: already told
            self._completed_trials.add(trial_id)
            return
        if not stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        # Tune does not pass the result that ASHA stopped a trial on to the searcher: report it here, so the
        # pruned trial's last intermediate value is the one it was judged on, not the report before it.
        self.on_trial_result(trial_id, result)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray does: a bookkeeping error must not stop the search
            log.warning("optuna: %s", exc)
        self._completed_trials.add(trial_id)
