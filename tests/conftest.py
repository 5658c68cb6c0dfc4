"""Shared fixtures: one small real search, run once per session and used by the search and report tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.max_train=400", "--set", "data.max_eval=16", "--set", "data.max_test=16",
         "--set", "train.epochs=3", "--set", "train.reports_per_epoch=2", "--set", "train.report_eval_size=16",
         "--set", "space.budget.num_samples=6", "--set", "space.sampler.n_startup_trials=2",
         "--set", "space.asha.grace_period=1", "--set", "space.asha.reduction_factor=2",
         "--set", "space.budget.seeds=2", "--set", "space.budget.seed_top=1",
         # plain ASHA, so that this tiny budget still stops trials (the pruner's own rules: test_pruner.py)
         "--set", "space.asha.defer_until=1", "--set", "space.asha.margin=0", "--set", "space.asha.rung_value=last"]


TASK = ROOT / "tests" / "masa_fixed" / "task.yaml"
"""The machinery's test task: MASA with one aspect list (the earlier demo), on which these small budgets were
calibrated; the quick space is cut to its 24 designs of that time (no No-inst, no prompt loss)."""
FIXED_SPACE = ["--set", "space.design.instruction=[first, last]", "--set", "space.design.prompt_loss=exclude"]


MACHINERY = ["--set", "data.max_train=100"]
"""Added to a small search that tests the machinery (faults, a killed driver, tracking, warm start), whose
assertions hold whatever a trial learns: a quarter of the training records, so each trial trains about a quarter
as long (the reports, rungs and fault points stay where they were). Its trials then learn next to nothing (mostly
one constant answer: kappa 0 ties at every rung), so ASHA rarely stops one: not for searches that need a stop
(``small_search``, the kill chain's rung moment)."""
NO_SEED_STAGE = ["--set", "space.budget.seeds=1", "--set", "space.budget.seed_top=0"]
"""The smallest seed stage (ES-SDE and the baseline, one seed each), for tests that do not test it."""


def search_cmd(runs: Path, *extra: str) -> list[str]:
    """``sde-search`` on :data:`TASK` with a small budget (6 trials, 3 epochs of 400 records: 75 steps)."""
    return [sys.executable, "-m", "sde_search.cli", "--task", str(TASK), "--runs-dir", str(runs), *SMALL,
            *FIXED_SPACE, *extra]


SECRETS = {"HF_TOKEN": "hf_sdeTestSecret0001", "MLFLOW_TRACKING_PASSWORD": "sdeTestSecret0002"}


def search_env(folder: Path) -> dict[str, str]:
    """The environment of a test search: its own cache folder, unbuffered output, fake credentials to leak-test."""
    return {**os.environ, "SDE_CACHE": str(folder / "cache"), "PYTHONUNBUFFERED": "1", **SECRETS}


@pytest.fixture(scope="session")
def small_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A finished 6-trial search named ``it``: (runs folder, the finished process)."""
    folder = tmp_path_factory.mktemp("search")
    runs = folder / "runs"
    proc = subprocess.run(search_cmd(runs, "--name", "it"), cwd=folder, env=search_env(folder),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return runs, proc
