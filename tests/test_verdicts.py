"""Verdicts that can fail: degenerate splits, reads-the-input, gains over records x seeds, the seed stage's judgement.

Fast: no training. Predictions are written by hand (perfect, the fixed answer, shuffled golds, seed-noisy copies)
so that each test knows the right verdict.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from sde_search import seeds, verdicts
from sde_search.analysis import TrialRow
from sde_search.config import load_task
from sde_search.design import ES_SDE, PAPER_BASELINE, parse_design

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    return load_task(ROOT / "examples" / "demo_masa.yaml", ["data.max_train=200", "data.max_eval=60",
                                                            "data.max_test=60"])


def _golds(task, split="test_id"):
    return [task.gold(r, split) for r in task.splits[split]]


def _scorer(task, split="test_id"):
    return lambda g, p: task.score(g, p, split)


def _empty(task, split="test_id"):
    return dict.fromkeys(task.slots_for(split), task.kind.empty(task.unmentioned))


def _noisy(golds, task, wrong: float, seed: int):
    """Golds with a share of slots replaced by a random label."""
    rng = random.Random(seed)
    labels = [*task.config.labels.values, task.unmentioned]
    return [{s: ((rng.choice(labels),) if rng.random() < wrong else v) for s, v in g.items()} for g in golds]


def test_degenerate_names_constant_answers_and_all_format_errors():
    a, b = {"x": ("p",)}, {"x": ("n",)}
    assert verdicts.degenerate([a, a, a], [[], [], []]) == "all 3 predictions are the same answer"
    assert verdicts.degenerate([a, b], [["split_error"], ["empty"]]) == \
        "every one of the 2 generations is a format error"
    assert verdicts.degenerate([a, b], [["split_error"], []]) == ""


def test_a_perfect_answer_reads_the_input_and_the_fixed_answer_does_not(task):
    golds = _golds(task)
    fixed = task.fixed_answer("test_id")
    perfect = verdicts.reads_input(_scorer(task), golds, [golds], fixed, _empty(task), samples=200)
    assert perfect.reads and perfect.why_not() == ""
    assert all(m.low > 0 for m in perfect.margins.values())
    parrot = verdicts.reads_input(_scorer(task), golds, [[fixed] * len(golds)], fixed, _empty(task), samples=200)
    assert not parrot.reads and "not above both trivial answers" in parrot.why_not()


def test_shuffled_answers_do_not_read_the_input_even_when_kappa_is_not_zero(task):
    """Other records' golds: varied predictions (kappa may be off 0), accuracy below the majority answer."""
    golds = _golds(task)
    shuffled = golds[:]
    random.Random(0).shuffle(shuffled)
    check = verdicts.reads_input(_scorer(task), golds, [shuffled], task.fixed_answer("test_id"), _empty(task),
                                 samples=200)
    assert not check.reads
    assert not check.margins["accuracy"].positive  # the check that can fail where kappa cannot


def test_seed_noise_widens_the_interval_of_a_gain(task):
    """Two designs equally good on average, but seed runs that differ: records alone look real, records x seeds not."""
    golds = _golds(task)
    a_runs = [_noisy(golds, task, w, s) for s, w in enumerate((0.05, 0.45, 0.25))]
    b_runs = [_noisy(golds, task, w, 10 + s) for s, w in enumerate((0.25, 0.30, 0.20))]
    one_seed = verdicts.gain(_scorer(task), golds, a_runs[:1], b_runs[:1], samples=300)["score"]
    assert one_seed.real and one_seed.delta > 0  # the lucky seed of a looks like a real gain
    pooled = verdicts.gain(_scorer(task), golds, a_runs, b_runs, samples=300)["score"]
    assert not pooled.real and pooled.seeds == (3, 3)
    assert pooled.high - pooled.low > one_seed.high - one_seed.low


def test_gain_needs_aligned_runs(task):
    golds = _golds(task)
    with pytest.raises(ValueError, match="same"):
        verdicts.gain(_scorer(task), golds, [golds[:-1]], [golds])


# ---------------------------------------------------------------- the seed stage's judgement


def _fake_stage(task, tmp_path: Path, answers_by_design: dict, n_seeds: int = 3):
    """Writes seed-stage files whose parsed answers are given per design and split; returns (cands, results, jobs)."""
    rows = [TrialRow(f"t{i}", d, {}, "full", {"score": 1.0 - i / 10}) for i, d in enumerate(answers_by_design)]
    cands = seeds.candidates(rows, "score", top=len(rows))
    jobs = seeds.plan(task, cands, {}, n_seeds, tmp_path)
    results = {}
    for job in jobs:
        splits = {}
        for split in ("eval_id", "test_id"):
            answers = answers_by_design[job.design](split, job.seed)
            golds = _golds(task, split)
            metrics = task.score(golds, answers, split)
            splits[split] = {"metrics": metrics, "records": [
                {"id": str(i), "output": "", "parsed": {k: list(v) for k, v in a.items()}, "errors": []}
                for i, a in enumerate(answers)]}
        results[job.path] = {"design": job.design.to_params(), "seed": job.seed, "source": "fake", "splits": splits}
        job.path.write_text(json.dumps(results[job.path]))
    return cands, results, jobs


def test_judge_picks_a_reading_winner_and_calls_its_gain_real(task, tmp_path):
    good = parse_design("output_format=natural,unmentioned=omit")

    def reads(split, seed):
        return _noisy(_golds(task, split), task, 0.05, seed)

    def worse(split, seed):
        return _noisy(_golds(task, split), task, 0.6, 50 + seed)

    def parrot(split, seed):
        return [task.fixed_answer(split)] * len(task.splits[split])

    cands, results, jobs = _fake_stage(task, tmp_path, {good: reads, ES_SDE: worse, PAPER_BASELINE: parrot})
    verdict = seeds.judge(task, cands, results, jobs, samples=200)
    assert verdict["winner"] == good.short() and verdict["reads_input"]
    assert verdict["headline"].startswith(f"The winner, {good.short()}, reads the input")
    gains = {g["vs"]: g for g in verdict["gains"] if g["split"] == "test_id"}
    assert gains[ES_SDE.short()]["real"] and gains[ES_SDE.short()]["seeds_a"] == 3
    # a constant answer everywhere: "not measured", not a score of 0, and no gain is built on it
    base = next(c for c in verdict["candidates"] if "paper_baseline" in c["roles"])
    assert not base["splits"]["eval_id"]["measured"]
    assert "same answer" in base["splits"]["eval_id"]["why_not_measured"]
    assert not gains[PAPER_BASELINE.short()]["real"] and "not measured" in gains[PAPER_BASELINE.short()]["note"]


def test_judge_says_no_design_reads_the_input_and_calls_no_gain_real(task, tmp_path):
    """The negative control: every design answers with other records' labels (nothing learned from the input)."""
    def shuffled(offset):
        def answers(split, seed):
            golds = _golds(task, split)
            rng = random.Random(offset * 100 + seed)
            out = golds[:]
            rng.shuffle(out)
            return out
        return answers

    other = parse_design("output_format=json")
    cands, results, jobs = _fake_stage(task, tmp_path, {other: shuffled(1), ES_SDE: shuffled(2),
                                                         PAPER_BASELINE: shuffled(3)})
    verdict = seeds.judge(task, cands, results, jobs, samples=200)
    assert not verdict["reads_input"]
    assert verdict["headline"].startswith("No design reads the input at this budget")
    assert verdict["gains"] and not any(g["real"] for g in verdict["gains"])


def test_plan_trains_fresh_seeds_at_the_best_trial_s_hparams(task, tmp_path):
    rows = [TrialRow("a", ES_SDE, {"lr": 0.01}, "full", {"score": 0.5}),
            TrialRow("b", PAPER_BASELINE, {"lr": 0.02}, "full", {"score": 0.4})]
    cands = seeds.candidates(rows, "score", top=1)
    assert [c.roles for c in cands] == [["top1", "es_sde"], ["paper_baseline"]]
    jobs = seeds.plan(task, cands, {"lr": 0.01}, 3, tmp_path)
    assert [j.seed for j in jobs] == [1, 2, 3, 1, 2, 3]  # never the search's seed 0, whose scores chose the top
    assert all(dict(j.hparams) == {"lr": 0.01} for j in jobs)  # every candidate at the best trial's hparams


def test_a_saved_run_counts_only_for_its_own_job_and_records(task, tmp_path):
    job = seeds.plan(task, seeds.candidates([], "score", top=0), {}, 1, tmp_path)[0]
    records = [{"id": r.id, "output": "", "parsed": {}, "errors": []} for r in task.splits["test_id"]]
    data = {"design": job.design.to_params(), "seed": job.seed, "hparams": {"seed": job.seed},
            "splits": {"test_id": {"metrics": {}, "records": records}}}
    assert seeds.matches(task, job, data)
    assert not seeds.matches(task, job, {**data, "seed": job.seed + 1})
    shorter = {**data, "splits": {"test_id": {"metrics": {}, "records": records[:-1]}}}
    assert not seeds.matches(task, job, shorter)  # the task's test set changed since: train it again


def test_one_seed_per_side_is_never_a_real_gain(task):
    golds = _golds(task)
    better, worse = _noisy(golds, task, 0.05, 1), _noisy(golds, task, 0.6, 2)
    one = verdicts.gain(_scorer(task), golds, [better], [worse], samples=100)["score"]
    assert one.real and not one.seed_noise  # the interval cannot hold seed noise it never saw
    assert verdicts.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)


def test_kappa_weights_from_the_task_file_change_the_score(task):
    golds = _golds(task)
    preds = _noisy(golds, task, 0.3, 0)
    paper = task.score(golds, preds, "test_id")["kappa"]
    identity = [[float(i == j) for j in range(4)] for i in range(4)]
    plain = load_task(ROOT / "examples" / "demo_masa.yaml", ["data.max_test=60", "data.max_train=200",
                                                             f"metrics.kappa_weights={json.dumps(identity)}"])
    unweighted = plain.score(golds, preds, "test_id")["kappa"]
    assert not math.isclose(paper, unweighted) and plain.kappa_note() == ""
    assert task.kappa_note() == ""  # the paper's four labels: weighted, no note
    five = load_task(ROOT / "examples" / "demo_masa.yaml", ["labels.values=[positive, negative, neutral, conflict]",
                                                             "labels.numbers={}"])
    assert "kappa is unweighted" in five.kappa_note() and "metrics.kappa_weights" in five.kappa_note()


def test_no_inst_designs_get_no_ood_score(task):
    assert not task.ood_measurable(parse_design("instruction=none"))
    assert task.ood_measurable(ES_SDE)


def test_the_report_puts_the_verdict_first_and_names_what_is_not_measured(task, tmp_path):
    """report.build from run-folder files alone: headline first, unmeasured splits named, no importance table."""
    from sde_search import analysis, report
    from sde_search.config import load_space

    good = parse_design("output_format=natural,unmentioned=omit")
    (tmp_path / "seeds").mkdir()
    cands, results, jobs = _fake_stage(task, tmp_path / "seeds", {
        good: lambda split, seed: _noisy(_golds(task, split), task, 0.05, seed),
        ES_SDE: lambda split, seed: _noisy(_golds(task, split), task, 0.6, 50 + seed),
        PAPER_BASELINE: lambda split, seed: [task.fixed_answer(split)] * len(task.splits[split])})
    verdict = seeds.judge(task, cands, results, jobs, samples=100)
    verdict.update(hparams={}, seeds=3)
    rows = [TrialRow("t1", good, {}, "full", {"score": 0.7, "measured": 1.0, "score_ood": 0.0, "measured_ood": 0.0,
                                              "accuracy": 0.9, "accuracy_fixed": 0.6, "reads_input": 1.0}),
            TrialRow("t2", PAPER_BASELINE, {}, "full", {"score": 0.0, "measured": 0.0, "score_ood": 0.0,
                                                        "measured_ood": 0.0})]
    analysis.save_rows(tmp_path / "trials.json", rows)
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    (tmp_path / "summary.json").write_text(json.dumps({
        "name": "fake", "space_path": str(ROOT / "search_spaces" / "quick.yaml"), "metric": "score", "wall_s": 60.0,
        "max_concurrent": 2, "steps_per_trial": 300, "winner": "t1"}))
    text = report.build(tmp_path, task, load_space(ROOT / "search_spaces" / "quick.yaml"))
    lines = text.splitlines()
    assert lines[2] == f"**{verdict['headline']}**" and "reads the input" in lines[2]
    assert "| 2 | t2 | last/exclude/natural/placeholder/text/none | - | not measured |" in text  # never 0.000
    assert "not measured: 3 of 3 seeds: all 60 predictions are the same answer" in text
    assert "No importance table: 1 full-budget trials" in text
    assert "## ID / OOD Pareto front" not in text and "OOD not measured for 1 of 1" in text
    assert "Method: difference of the mean scores over training seeds" in text


def test_no_winner_when_every_design_writes_one_constant_answer(task, tmp_path):
    def parrot(split, seed):
        return [task.fixed_answer(split)] * len(task.splits[split])

    cands, results, jobs = _fake_stage(task, tmp_path, {ES_SDE: parrot, PAPER_BASELINE: parrot})
    verdict = seeds.judge(task, cands, results, jobs, samples=50)
    assert verdict["winner"] is None and not verdict["reads_input"]
    assert "nothing was measured; no winner" in verdict["headline"]
