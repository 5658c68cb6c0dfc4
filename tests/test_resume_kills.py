"""A search SIGKILLed at seeded random moments over its whole life resumes every time, with every invariant.

The harness is ``bench/kill_resume.py`` (its report on the demo search: ``bench/results/kill_resume.md``). Here
it runs on the suite's small search with Tune's state snapshots 20 s apart, much staler than the search's own
3 s: the kills then land where Tune's saved view lags the study and MLflow, trials finish or start unseen by
it, which is what a resume must reconcile.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import SMALL, search_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import kill_resume  # noqa: E402

pytestmark = pytest.mark.slow


def test_random_kills_then_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**search_env(tmp_path), "TUNE_GLOBAL_CHECKPOINT_S": "20"}
    cmd = [sys.executable, "-m", "sde_search.cli", "--task", str(ROOT / "examples/demo_masa.yaml"),
           "--runs-dir", str(runs), *SMALL]
    kills = kill_resume.plan(6, seed=3)
    assert [k.moment for k in kills] == list(kill_resume.MOMENTS)  # each moment of a search's life once
    kills, checks, out = kill_resume.chain(cmd, "killed", runs, env, tmp_path, kills, num_samples=6, timeout=900)
    table = "\n".join(f"{k.moment} +{k.delay_s}s killed={k.happened} at {k.at_s}s: {k.repairs}" for k in kills)
    assert sum(k.happened for k in kills) >= 4, table  # the chain really killed it, over its life
    failed = {k: v for k, v in checks.items() if v is False}
    assert not failed, f"{failed}\n{checks}\n{table}\n{out[-3000:]}"
    assert checks["kept finished trials"] >= 1, table
