"""``--estimate``: the arithmetic from timings to the table (hand-computed cases), and the command end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sde_search import cli, costs
from sde_search.costs import Asha, GenSpeed, Measured, Plan, TrialCost

ROOT = Path(__file__).resolve().parents[1]


def test_expected_max_is_the_mean_largest_of_every_draw() -> None:
    # draws of 2 from [1, 2, 3]: {1,2} -> 2, {1,3} -> 3, {2,3} -> 3
    assert costs.expected_max([3, 1, 2], 2) == pytest.approx(8 / 3)
    assert costs.expected_max([3, 1, 2], 1) == pytest.approx(2)
    assert costs.expected_max([3, 1, 2], 3) == 3
    assert costs.expected_max([3, 1, 2], 9) == 3  # more draws than values: all of them
    assert costs.chunks(70, 32) == [32, 32, 6]
    # an epoch of 5 records in steps of 2 x 1: micro-batches 2, 2, 1 over 3 steps
    lengths = [3, 1, 2]
    assert costs.tokens_per_step(lengths, 5, 2) == pytest.approx((2 * 8 / 3 + 2 * 8 / 3 + 2) / 3)
    # the same records in one step of 2 micro-batches of 2 and one of 1 (grad_accum 3)
    assert costs.tokens_per_step(lengths, 5, 2, 3) == pytest.approx(2 * 8 / 3 + 2 * 8 / 3 + 2)
    assert costs.chunks(0, 32) == []


def test_rungs_are_grace_times_powers_of_rf_below_max_t() -> None:
    assert Asha(True, 3, 2, 20).rungs() == [3, 6, 12]
    assert Asha(True, 3, 2, 12).rungs() == [3, 6]  # a rung at max_t cuts nothing: the trial ends there
    assert Asha(True, 2, 3, 12).rungs() == [2, 6]
    assert Asha(True, 20, 2, 20).rungs() == []
    assert Asha(False, 3, 2, 20).rungs() == []


def test_cut_chance_is_successive_halving_without_a_margin_and_less_with_one() -> None:
    assert costs.cut_chance(2) == pytest.approx(0.5)
    assert costs.cut_chance(3) == pytest.approx(2 / 3)
    # margin 0.1 at sd 0.12: Phi(Phi^-1(0.5) - 0.8333) = Phi(-0.8333) = 0.2023
    assert costs.cut_chance(2, 0.1, 0.12) == pytest.approx(0.2023, abs=1e-4)
    assert costs.cut_chance(3, 0.05, 0.12) < costs.cut_chance(3)


def test_spend_counts_the_trials_reaching_each_rung() -> None:
    sp = costs.spend(12, Asha(True, 3, 2, 20))  # plain successive halving: half of the later arrivals go on
    assert sp.points == (3, 6, 12, 20)
    # 12 reach 3; 1 + 11/2 = 6.5 reach 6; 1 + 5.5/2 = 3.75 reach 12; 1 + 2.75/2 = 2.375 reach 20
    assert sp.reached == pytest.approx((12, 6.5, 3.75, 2.375))
    assert sp.reports == pytest.approx(12 * 3 + 6.5 * 3 + 3.75 * 6 + 2.375 * 8)  # 97
    assert sp.share == pytest.approx(97 / 240)
    off = costs.spend(12, Asha(False, 3, 2, 20))
    assert off.reached == (12,) and off.reports == 240 and off.share == 1
    assert costs.spend(12, Asha(True, 3, 2, 20), cut=0).share == 1  # nothing cut
    one = costs.spend(1, Asha(True, 3, 2, 20))  # a lone trial is every rung's first arrival
    assert one.reached == pytest.approx((1, 1, 1, 1))


COST = TrialCost(setup_s=2, step_s=0.1, steps=100, reports=10, report_s=1, final_s=3)


def test_trial_seconds_charge_stopped_and_full_trials_their_parts() -> None:
    assert COST.per_report_s == pytest.approx(2)  # 10 steps x 0.1 s + 1 s
    assert COST.full_s == pytest.approx(2 + 10 * 2 + (3 - 1))  # the last report evaluates whole sets
    assert COST.seconds(4) == pytest.approx(2 + 4 * 2)
    sp = costs.spend(4, Asha(True, 5, 2, 10))  # 4 reach 5, 1 + 3/2 = 2.5 reach 10
    # 1.5 trials stopped at 5 reports (12 s each) + 2.5 full ones (24 s each)
    assert costs.trial_seconds(COST, sp) == pytest.approx(1.5 * 12 + 2.5 * 24)
    mean = costs.mean_cost([COST, TrialCost(setup_s=4, step_s=0.3, steps=100, reports=10, report_s=1, final_s=5)])
    assert mean.step_s == pytest.approx(0.2) and mean.full_s == pytest.approx((24 + 4 + 40 + 4) / 2)  # 24 and 48
    with pytest.raises(ValueError, match="different lengths"):
        costs.mean_cost([COST, TrialCost(setup_s=2, step_s=0.1, steps=50, reports=10, report_s=1, final_s=3)])


def test_slots_are_max_concurrent_limited_by_cpus_and_gpus() -> None:
    assert costs.slots(2, 1, 0, 2, 0) == 2
    assert costs.slots(4, 1, 0, 2, 0) == 2  # 2 cores, 1 CPU per trial
    assert costs.slots(4, 2, 0, 3, 0) == 1
    assert costs.slots(4, 1, 0.5, 16, 1) == 2  # one GPU, half a GPU per trial
    assert costs.slots(1, 4, 0, 2, 0) == 1  # never below one


def test_generation_speed_is_two_lines_through_two_timed_batches() -> None:
    # 32 rows x 10 tokens: 0.42 s for 1 token, 1.52 s for 12; 8 rows x 10: 0.12 s and 0.56 s
    gen = GenSpeed.fit([(32, 10, 0.42, 1.52), (8, 10, 0.12, 0.56)], 12)
    assert gen.prefill == pytest.approx((0.02, 0.00125))  # through (320 tokens, 0.42 s) and (80, 0.12)
    assert gen.step == pytest.approx((0.02, 0.0025))  # through (32 rows, 0.1 s) and (8, 0.04)
    assert gen.batch_s(16, 10, 5) == pytest.approx(0.22 + 4 * 0.06)
    flat = GenSpeed.fit([(1, 10, 0.1, 1.2)], 12)  # one batch size timed: no slope
    assert flat.step == pytest.approx((0.1, 0.0))


def _plan(**over: object) -> Plan:
    base: dict[str, object] = dict(trials=4, space_size=10, slots=2, asha=Asha(True, 5, 2, 10), reuse_workers=True,
                                   seed_top=1, seed_presets=2, presets_searched=0, seeds=2,
                                   seed_workers=2)
    return Plan(**{**base, **over})  # type: ignore[arg-type]


MEASURED = Measured(search=COST, seed=TrialCost(setup_s=2, step_s=0.1, steps=100, reports=10, report_s=1, final_s=3,
                                                test_s=4), import_s=3, prepare_s=1, peak_mb=500)


def test_the_table_rows_add_up() -> None:
    est = costs.build(_plan(), MEASURED)
    start = costs.RAY_START_S + costs.TUNER_START_S + costs.WORKER_START_S + 3  # once; workers reused
    gaps = 4 * costs.TRIAL_GAP_S
    asha = est.row(costs.SEARCH_ASHA)
    assert asha.trial_s == pytest.approx(78)  # as in test_trial_seconds..., the margin 0 of the plan
    assert asha.wall_s == pytest.approx(start + (78 + gaps) / 2)
    full = est.row(costs.SEARCH_FULL)
    assert full.trial_s == pytest.approx(4 * 24) and full.wall_s == pytest.approx(start + (96 + gaps) / 2)
    grid = est.row(costs.GRID)
    assert grid.trial_s == pytest.approx(10 * 24)
    assert grid.wall_s == pytest.approx(start + (240 + 10 * costs.TRIAL_GAP_S) / 2)
    seed = est.row(costs.SEED_STAGE)  # 6 runs of 24 + 4 s, 2 at once: 3 waves, after the workers' imports
    assert seed.trial_s == pytest.approx(6 * 28) and seed.wall_s == pytest.approx(3 + 3 * 28)
    assert est.row(costs.TOTAL).wall_s == pytest.approx(1 + asha.wall_s + seed.wall_s)
    assert est.row(costs.SEARCH_NOMINAL).wall_s <= asha.wall_s < full.wall_s
    text = costs.table(est, _plan(), MEASURED)
    for name in (costs.SEARCH_ASHA, costs.SEARCH_FULL, costs.GRID, costs.SEED_STAGE, costs.TOTAL):
        assert f"| {name} |" in text
    assert "peak memory per trial: 500 MiB" in text


def test_a_preset_among_the_top_designs_is_trained_once_in_the_seed_stage() -> None:
    # 12 trials, 6 of them expected at full budget (half reach it); top 3: a searched preset is a top design with
    # chance min(6/12, 3/12) = 1/4; with both presets searched, 0, 1 or 2 merges with 9/16, 6/16, 1/16
    sp = costs.Spend(12, (3, 10), (12.0, 6.0))
    plan = _plan(trials=12, seed_top=3, presets_searched=2, seeds=3, seed_workers=2)
    spread = costs.seed_designs(plan, sp)
    assert spread == [(pytest.approx(9 / 16), 5), (pytest.approx(6 / 16), 4), (pytest.approx(1 / 16), 3)]
    row = costs._seed_row(plan, MEASURED, sp)
    runs = 3 * (5 * 9 + 4 * 6 + 3 * 1) / 16  # 13.5 expected, 15 at most
    waves = (8 * 9 + 6 * 6 + 5 * 1) / 16  # ceil(15 / 2), ceil(12 / 2), ceil(9 / 2)
    assert row.trial_s == pytest.approx(runs * 28) and row.wall_s == pytest.approx(3 + waves * 28)
    assert "13.5 runs expected (5 designs x 3 seeds at most" in row.note
    # presets outside the search are always trained on their own; fewer full-budget trials than seed_top
    assert costs.seed_designs(_plan(trials=12, seed_top=3, presets_searched=0), sp) == [(1.0, 5)]
    few = costs.Spend(12, (3, 10), (12.0, 1.6))
    assert costs.seed_designs(_plan(trials=12, seed_top=3, presets_searched=0), few) == [(1.0, 4)]


def test_the_margin_and_fresh_workers_change_the_search_row() -> None:
    plain = costs.build(_plan(), MEASURED).row(costs.SEARCH_ASHA)
    margin = costs.build(_plan(asha=Asha(True, 5, 2, 10, margin=0.1)), MEASURED).row(costs.SEARCH_ASHA)
    assert plain.trial_s < margin.trial_s < 4 * 24  # fewer cuts, still some
    fresh = costs.build(_plan(reuse_workers=False), MEASURED).row(costs.SEARCH_ASHA)
    worker = costs.WORKER_START_S + 3
    # each trial waits for a new worker instead of the slots' one-time start
    assert fresh.wall_s - plain.wall_s == pytest.approx(4 * (worker - costs.TRIAL_GAP_S) / 2 - worker)
    off = costs.build(_plan(asha=Asha(False, 5, 2, 10)), MEASURED)  # ASHA off: one search row, every trial full
    assert off.row(costs.SEARCH_FULL).trial_s == pytest.approx(4 * 24) and "ASHA off" in off.row(costs.SEARCH_FULL).note
    with pytest.raises(KeyError):
        off.row(costs.SEARCH_ASHA)
    one = costs.build(_plan(trials=1), MEASURED).row(costs.SEARCH_FULL)  # one trial uses one slot, not two
    assert one.wall_s == pytest.approx(costs.RAY_START_S + costs.TUNER_START_S + worker + 24 + costs.TRIAL_GAP_S)


def test_duration_picks_a_readable_unit() -> None:
    assert costs.duration(4.25) == "4.2 s" and costs.duration(42) == "42 s"
    assert costs.duration(330) == "5.5 min" and costs.duration(7200) == "2.0 h" and costs.duration(math.nan) == "-"


def test_estimate_with_resume_or_check_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--resume"], ["--check"]):
        assert cli.main(["--task", "examples/demo_masa.yaml", "--estimate", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --estimate:"), err


def test_estimate_on_a_bad_task_exits_2_like_a_search(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--task", "examples/demo_masa.yaml", "--estimate", "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs" in err[0], err


_SCRIPT = """
import json, sys
from sde_search import cli
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": [m for m in ("ray", "mlflow") if m in sys.modules]}))
"""


def test_estimate_prints_the_table_and_starts_nothing(tmp_path: Path) -> None:
    task = ROOT / "tests" / "masa_fixed" / "task.yaml"
    runs = tmp_path / "runs"
    args = ["--task", str(task), "--estimate", "--runs-dir", str(runs), "--set", "data.max_train=48",
            "--set", "data.max_eval=8", "--set", "data.max_test=8", "--set", "train.epochs=2",
            "--set", "train.reports_per_epoch=4",
            "--set", "space.design.instruction=[first, last]", "--set", "space.design.prompt_loss=exclude",
            "--set", "space.budget.num_samples=6", "--set", "space.sampler.n_startup_trials=2"]
    env = {"SDE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "loaded": []}  # no Ray, no MLflow imported, let alone started
    out = proc.stdout
    for name in (costs.SEARCH_ASHA, costs.SEARCH_NOMINAL, costs.SEARCH_FULL, costs.GRID, costs.SEED_STAGE,
                 costs.TOTAL, "worker start", "one trial, full budget"):
        assert f"| {name} |" in out, name
    assert "6 trials" in out and "all 24 designs" in out  # the --set overrides reached the estimate
    assert "peak memory per trial:" in out
    assert "estimate: bucket 1/" in out  # progress lines (library logs the command shows)
    assert not runs.exists()  # no run folder, no MLflow store
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("optuna.db"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the tokenizer cache, nothing else
