"""``sde-search --task T.yaml --estimate``: what a search will cost, timed before it is spent.

Times, in this process, what a trial is made of: the model build, a few real optimizer steps for each bucket
of designs of similar sample length, generation batches, scoring and one checkpoint. Designs differ in sample
length (output format, reasoning, instruction), which drives the step and generation times, so every design of
the space is tokenized on a sample of records, the designs are cut into buckets by tokens per training step, and
each bucket's representative is timed; every design then gets its bucket's seconds per token. The arithmetic
from those timings to the table is :mod:`sde_search.costs`.

Trains no search, creates no run folder, starts no Ray and no MLflow run; the only file written is the tiny
model's tokenizer, to the user cache, as a search would. Progress is logged; the command prints the table.

Imports torch, transformers and peft (heavy); never Ray or MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sde_search import costs, render_check, steps
from sde_search.batches import collate, encode, epoch_order, prompt_ids
from sde_search.config import Range, SpaceConfig, Task, TrainConfig, report_range
from sde_search.design import ES_SDE, PAPER_BASELINE, PRESETS, Design, hparams_of
from sde_search.model import build_tiny_tokenizer, converted_gguf, gguf_path, load_model, resolve_hparams
from sde_search.render import render
from sde_search.sampler import optuna_space
from sde_search.scoring import Decoding, Scorer, eval_set, score_outputs
from sde_search.trial import TrainState

log = logging.getLogger(__name__)

SURVEY_RECORDS = 48
"""Training records per design whose samples are tokenized (evenly spread over the split)."""
BUCKETS = 3
"""Buckets of designs by tokens per training step; one representative of each is timed."""
MIN_STEPS, MAX_STEPS, STEP_BUDGET_S = 3, 60, 3.0
"""Optimizer steps timed per bucket: at least MIN_STEPS, then more until STEP_BUDGET_S or MAX_STEPS."""
GEN_LENGTH = 12
"""New tokens of the longer timed generation batches (forced), to measure a decoding step."""


@dataclass(frozen=True)
class Survey:
    """Token counts of one design's samples.

    Attributes:
        design: The design.
        step_tokens: Expected padded tokens of one optimizer step (its micro-batches right-padded).
        prompts: Prompt tokens of the sampled records, per split kind (``id``, ``ood``).
        targets: Target tokens of every record, per split (the generation a trained model writes).
        max_new: The trial's generation limit.
    """

    design: Design
    step_tokens: float
    prompts: dict[str, list[int]]
    targets: dict[str, list[int]]
    max_new: int


def _sample(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when there are fewer)."""
    return list(range(n)) if n <= k else [i * n // k for i in range(k)]


def _largest(task: Task, space: SpaceConfig, key: str) -> int:
    """A training key's largest value in the space (its task value when the space does not set it)."""
    value = space.train.get(key, getattr(task.config.train, key))
    if isinstance(value, list):
        return max(int(v) for v in value)
    if isinstance(value, Range):
        return int(value.high)
    return int(value)


def trial_hparams(task: Task, space: SpaceConfig) -> tuple[TrainConfig, list[str]]:
    """A trial's settings as the search runs it, and the searched keys timed at one value.

    The space's fixed ``train:`` values apply; searched ``epochs`` and ``reports_per_epoch`` take their largest
    value (the full budget ASHA counts to); other searched keys keep the task's value.
    """
    searched, fixed = optuna_space(space)
    hparams = hparams_of(fixed)
    for key in ("epochs", "reports_per_epoch"):
        hparams[key] = _largest(task, space, key)
    others = sorted(k for k in hparams_of(searched) if k not in ("epochs", "reports_per_epoch"))
    return resolve_hparams(task, hparams), others


def survey(task: Task, design: Design, tokenizer: Any, hp: TrainConfig, targets: dict[tuple[str, ...], Any]
           ) -> Survey:
    """Tokenizes a design's samples: a sample of training records, prompts per split kind, every target.

    ``targets`` caches what depends only on the target layout (format, unmentioned, labels, reasoning).
    """
    key = tuple(getattr(design, d) for d in render_check.LAYOUT)
    if key not in targets:
        def tokens(split: str) -> list[int]:
            ood = split.endswith("_ood")
            return [len(tokenizer.encode(render(r, design, task, ood=ood).target, add_special_tokens=False))
                    for r in task.splits[split]]

        per_split = {s: tokens(s) for s in ("train", "eval_id", "eval_ood", "test_id", "test_ood")
                     if s in task.splits}
        longest = max([*per_split["train"], *per_split.get("eval_ood", [])])
        targets[key] = (per_split, hp.max_new_tokens or int(longest * 1.25) + 8)  # as scoring.max_new_tokens
    per_split, max_new = targets[key]

    def prompt_tokens(split: str, i: int) -> int:
        record = task.splits[split][i]
        return len(prompt_ids(render(record, design, task, ood=split.endswith("_ood")).prompt, tokenizer, design))

    sample = _sample(len(task.splits["train"]), SURVEY_RECORDS)
    prompts = {"id": [prompt_tokens("train", i) for i in sample]}
    # a training sample is its prompt, its target and the end token (batches.encode)
    lengths = [p + per_split["train"][i] + 1 for p, i in zip(prompts["id"], sample, strict=True)]
    step_tokens = costs.tokens_per_step(lengths, len(task.splits["train"]), hp.batch_size, hp.grad_accum)
    ood = next((s for s in ("eval_ood", "test_ood") if s in task.splits), None)
    if ood and task.ood_measurable(design):
        prompts["ood"] = [prompt_tokens(ood, i) for i in _sample(len(task.splits[ood]), SURVEY_RECORDS // 2)]
    return Survey(design, step_tokens, prompts, per_split, max_new)


def buckets(surveys: Sequence[Survey], k: int = BUCKETS) -> list[list[Survey]]:
    """The designs cut into ``k`` (or fewer) groups of near-equal size by tokens per step, shortest first."""
    ordered = sorted(surveys, key=lambda s: s.step_tokens)
    k = max(1, min(k, len(ordered)))
    return [ordered[i * len(ordered) // k:(i + 1) * len(ordered) // k] for i in range(k)]


@dataclass(frozen=True)
class _Forced(Decoding):
    """Greedy decoding that writes exactly ``length`` new tokens (an untrained model may stop at any time)."""

    length: int = 1

    def kwargs(self) -> dict[str, Any]:
        """``generate``'s arguments, with ``min_new_tokens``."""
        return {**super().kwargs(), "min_new_tokens": self.length}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Timer:
    """One model on this machine, timed: training steps, generation, scoring, a checkpoint."""

    def __init__(self, task: Task, hp: TrainConfig, device: torch.device) -> None:
        """Builds the model (timed as :attr:`model_s`) and its optimizer."""
        self.task, self.hp, self.device = task, hp, device
        t0 = time.perf_counter()
        self.model, self.tokenizer = load_model(task, hp, device=device, grad_checkpointing=hp.grad_checkpointing)
        self.model_s = time.perf_counter() - t0
        total = hp.steps_per_epoch(len(task.splits["train"])) * hp.epochs
        self.stepper = steps.Stepper(self.model, hp, total, device, steps.autocast_dtype(hp.precision, device))
        self.warm = False

    def step_seconds_per_token(self, design: Design) -> tuple[float, int]:
        """Seconds per padded token of real optimizer steps on ``design``'s records (median), and the steps timed."""
        hp, train = self.hp, self.task.splits["train"]
        per_step, per_epoch = hp.batch_size * hp.grad_accum, hp.steps_per_epoch(len(train))
        encoded = {}
        rates: list[float] = []  # seconds per padded token of each timed step
        seconds, done = 0.0, 0
        self.model.train()
        while done < MAX_STEPS and (done < MIN_STEPS or seconds < STEP_BUDGET_S):
            epoch, offset = divmod(done, per_epoch)  # the trial's batches (trial.TrialRecipe.batches)
            idx = epoch_order(len(train), hp.seed, epoch)[offset * per_step:(offset + 1) * per_step]
            for i in idx:
                if i not in encoded:
                    encoded[i] = encode(render(train[i], design, self.task), self.tokenizer, design)
            micro = [collate([encoded[i] for i in idx[j:j + hp.batch_size]], self.tokenizer.pad_token_id)
                     for j in range(0, len(idx), hp.batch_size)]
            micro = [{k: v.to(self.device) for k, v in b.items()} for b in micro]
            took = _timed(lambda: self.stepper.step(self.model, micro))  # noqa: B023 - called at once
            if not self.warm:  # the first step pays one-time costs (allocations, kernels): not a trial's step
                self.warm = True
                continue
            seconds += took
            rates.append(took / sum(int(b["input_ids"].numel()) for b in micro))
            done += 1
        # the median: a step slowed by another job's burst on a shared core does not move it
        return statistics.median(rates), done

    def generation(self, design: Design, rows: int) -> costs.GenSpeed:
        """Times batches of ``rows`` and of a quarter as many prompts writing 1 and :data:`GEN_LENGTH` tokens."""
        es = eval_set(self.task, design, "eval_id", None)
        points = []
        for n in dict.fromkeys((rows, max(1, rows // 4))):
            prompts = [es.prompts[i % len(es.prompts)] for i in range(n)]
            width = max(len(prompt_ids(p, self.tokenizer, design)) for p in prompts)
            measured = []
            for length in (1, GEN_LENGTH):
                hp = self.hp.model_copy(update={"max_new_tokens": length})
                scorer = Scorer(self.task, design, hp, self.model, self.tokenizer, self.device)
                if not points and not measured:
                    scorer.generate(prompts[:1], _Forced(length=1))  # warm-up
                measured.append(_timed(lambda s=scorer, p=prompts, n=length: s.generate(p, _Forced(length=n))))
            points.append((n, width, measured[0], measured[1]))
        return costs.GenSpeed.fit(points, GEN_LENGTH)

    def scoring(self, design: Design) -> tuple[float, float]:
        """Seconds per record of scoring a report subset, and of scoring a whole split (reads-the-input test)."""
        hp, out = self.hp, []
        for limit in (hp.report_eval_size, None):
            es = eval_set(self.task, design, "eval_id", limit)
            texts = [render(r, design, self.task).target for r in self.task.splits["eval_id"][:len(es.prompts)]]
            out.append(_timed(lambda e=es, t=texts, full=limit is None: score_outputs(self.task, design, e, t,
                                                                                     full=full)) / len(texts))
        return out[0], out[1]

    def setup(self, design: Design) -> tuple[float, float]:
        """A trial's set-up beside the model build: every training record encoded; the scorer (its max_new)."""
        task, tok = self.task, self.tokenizer
        encode_s = _timed(lambda: [encode(render(r, design, task), tok, design) for r in task.splits["train"]])
        scorer_s = _timed(lambda: Scorer(task, design, self.hp, self.model, tok, self.device))
        return encode_s, scorer_s

    def checkpoint(self) -> float:
        """Seconds to write one report's checkpoint (adapter, optimizer, generations), into a folder then removed."""
        folder = Path(tempfile.mkdtemp(prefix="sde-estimate-"))
        try:
            def save() -> None:
                path = TrainState().save(folder / "report-0001", self.model, self.stepper)
                (path / "generations.json").write_text(json.dumps({"eval_id": ["x" * 40] * 60}))

            return _timed(save)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _generation_s(task: Task, sv: Survey, gen: costs.GenSpeed, hp: TrainConfig, split: str, limit: int | None,
                  ) -> float:
    """Seconds to generate on a split's first ``limit`` records (all when None).

    Each batch is as wide as its longest prompt and as long as its longest target plus the end token (a
    trained model stops there), at most max_new.
    """
    if split not in task.splits or (split.endswith("_ood") and "ood" not in sv.prompts):
        return 0.0
    targets = sv.targets[split][:limit] if limit else sv.targets[split]
    prompts = sv.prompts["ood" if split.endswith("_ood") else "id"]
    total, start = 0.0, 0
    for rows in costs.chunks(len(targets), hp.eval_batch_size):
        new = min(sv.max_new, max(targets[start:start + rows]) + 1)
        total += gen.batch_s(rows, costs.expected_max(prompts, rows), new)
        start += rows
    return total


@dataclass(frozen=True)
class Parts:
    """The timed parts every design shares (measured on one design).

    Attributes:
        model_s: Building the model (the tokenizer cached).
        encode_s: Encoding every training record.
        scorer_s: Building the scorer (its generation limit from every training target).
        save_s: Writing one checkpoint.
        score_s: Seconds per record of scoring a report subset, and a whole split (reads-the-input test).
        gen: Generation speed.
    """

    model_s: float
    encode_s: float
    scorer_s: float
    save_s: float
    score_s: tuple[float, float]
    gen: costs.GenSpeed


def trial_cost(task: Task, hp: TrainConfig, sv: Survey, per_token_s: float, parts: Parts) -> costs.TrialCost:
    """One design's trial, from the timings: steps scaled by its tokens, generation by its prompts and targets.

    The seed stage's ``test_s``: each test split scored from the checkpoint, the model built again for each.
    """
    def records(split: str, limit: int | None) -> int:
        if split not in task.splits or (split.endswith("_ood") and "ood" not in sv.prompts):
            return 0
        n = len(task.splits[split])
        return min(n, limit) if limit else n

    def evaluation(split: str, limit: int | None) -> float:
        scoring = parts.score_s[0 if limit else 1] * records(split, limit)
        return _generation_s(task, sv, parts.gen, hp, split, limit) + scoring

    part = hp.report_eval_size
    tests = [s for s in ("test_id", "test_ood") if records(s, None)]
    return costs.TrialCost(
        setup_s=parts.model_s + parts.encode_s + parts.scorer_s, step_s=per_token_s * sv.step_tokens,
        steps=hp.steps_per_epoch(len(task.splits["train"])) * hp.epochs, reports=hp.epochs * hp.reports_per_epoch,
        report_s=sum(evaluation(s, part) for s in ("eval_id", "eval_ood")) + parts.save_s,
        final_s=sum(evaluation(s, None) for s in ("eval_id", "eval_ood")) + parts.save_s,
        test_s=sum(parts.model_s + parts.scorer_s + evaluation(s, None) for s in tests))


def plan_of(task: Task, space: SpaceConfig, hp: TrainConfig, gpus: int) -> costs.Plan:
    """What the search will run on this machine (concurrency as Ray and the seed stage work it out)."""
    cpus = max(os.cpu_count() or 1, int(space.resources.cpu))
    budget, res = space.budget, space.resources
    presets = (ES_SDE, PAPER_BASELINE)
    inside = set(render_check.space_designs(space))
    enqueued = {PRESETS[b] for b in space.baselines if b in PRESETS} & inside  # the search trains these too
    workers = 1 if res.gpu else max(1, min(budget.max_concurrent, cpus // max(1, int(res.cpu))))
    reuse = (not res.gpu) if space.reuse_actors == "auto" else bool(space.reuse_actors)
    asha = costs.Asha(space.asha.enabled, space.asha.grace_period, space.asha.reduction_factor,
                      report_range(task, space)[1], space.asha.margin)
    return costs.Plan(trials=budget.num_samples, space_size=space.size(),
                      slots=costs.slots(budget.max_concurrent, res.cpu, res.gpu, cpus, gpus), asha=asha,
                      reuse_workers=reuse, seed_top=min(budget.seed_top, budget.num_samples),
                      seed_presets=len(presets), presets_searched=sum(d in enqueued for d in presets),
                      seeds=budget.seeds, seed_workers=workers)


@dataclass(frozen=True)
class Result:
    """An estimate and what it was built from.

    Attributes:
        plan: What the search will run.
        measured: The timings the table rests on.
        estimate: The table's rows.
        by_design: Each surveyed design's trial (the space's designs, ES-SDE and the baseline).
        text: The estimate as the command prints it.
    """

    plan: costs.Plan
    measured: costs.Measured
    estimate: costs.Estimate
    by_design: dict[Design, costs.TrialCost]
    text: str


def run(task: Task, space: SpaceConfig, space_path: Path, *, import_s: float = 0.0) -> str:
    """Times the parts of a trial and returns the estimate as text (a header, the table, the assumptions).

    Args:
        task: The loaded task.
        space: Its search space.
        space_path: The space's file (named in the header).
        import_s: Seconds the command took to import torch, transformers and peft (each worker pays them).
    """
    return measure(task, space, space_path, import_s=import_s).text


def _prepare(task: Task) -> float:
    """Seconds of the first use of the model: the tiny model's tokenizer trained, or a GGUF file converted.

    Both are cached afterwards (the timed model builds then read the cache), as in a search.
    """
    if task.config.model.name == "tiny" and not task.config.model.gguf_file:
        return _timed(lambda: build_tiny_tokenizer(task))
    gguf = gguf_path(task)
    return _timed(lambda: converted_gguf(gguf)) if gguf else 0.0


def _spans(groups: Sequence[Sequence[Survey]]) -> str:
    """The buckets' token ranges and sizes, for the progress line and the header."""
    return ", ".join(f"{g[0].step_tokens:.0f}-{g[-1].step_tokens:.0f} ({len(g)} designs)" for g in groups)


def _survey_space(task: Task, space: SpaceConfig, tokenizer: Any, hp: TrainConfig,
                  ) -> tuple[list[Design], dict[Design, Survey], list[list[Survey]]]:
    """Every design of the space (and the presets the search and the seed stage train) tokenized, in buckets."""
    designs = render_check.space_designs(space)
    presets = [ES_SDE, PAPER_BASELINE, *(PRESETS[b] for b in space.baselines if b in PRESETS)]
    cache: dict[tuple[str, ...], Any] = {}
    t0 = time.perf_counter()
    surveys = {d: survey(task, d, tokenizer, hp, cache) for d in dict.fromkeys([*designs, *presets])}
    groups = buckets([surveys[d] for d in designs])
    log.info("estimate: %d designs tokenized in %.1f s; %d buckets by tokens per step: %s", len(designs),
             time.perf_counter() - t0, len(groups), _spans(groups))
    return designs, surveys, groups


def _time_buckets(timer: Timer, groups: Sequence[Sequence[Survey]]) -> list[tuple[float, float]]:
    """Each bucket's middle design trained for a few steps: (its tokens per step, seconds per token)."""
    per_token = []
    for i, group in enumerate(groups, start=1):
        rep = group[len(group) // 2]
        seconds, done = timer.step_seconds_per_token(rep.design)
        per_token.append((rep.step_tokens, seconds))
        log.info("estimate: bucket %d/%d: %s, %.0f tokens per step: %.3f s/step (%d steps timed)", i, len(groups),
                 rep.design.short(), rep.step_tokens, seconds * rep.step_tokens, done)
    return per_token


def _time_parts(timer: Timer, design: Design) -> Parts:
    """Generation, set-up, checkpoint and scoring, timed on one design."""
    hp, task = timer.hp, timer.task
    rows = min(hp.eval_batch_size, hp.report_eval_size, len(task.splits["eval_id"]))
    gen = timer.generation(design, rows)
    parts = Parts(timer.model_s, *timer.setup(design), timer.checkpoint(), timer.scoring(design), gen)
    log.info("estimate: generation %.3f s per decoding step for %d prompts; set-up %.1f s, checkpoint %.2f s, "
             "scoring %.1f ms per record (%.1f ms on a whole split)", gen.step_s(rows), rows,
             parts.model_s + parts.encode_s + parts.scorer_s, parts.save_s, parts.score_s[0] * 1e3,
             parts.score_s[1] * 1e3)
    return parts


def measure(task: Task, space: SpaceConfig, space_path: Path, *, import_s: float = 0.0) -> Result:
    """Times the parts of a trial and works out the estimate (see :func:`run`)."""
    t_start = time.perf_counter()
    hp, untimed = trial_hparams(task, space)
    torch.set_num_threads(hp.threads or max(1, int(space.resources.cpu)))  # as the search's trials
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plan = plan_of(task, space, hp, torch.cuda.device_count())
    prepare_s = _prepare(task)
    timer = Timer(task, hp, device)
    log.info("estimate: model %s built in %.1f s on %s (first use: %.1f s), %d torch thread(s)",
             task.config.model.name, timer.model_s, device.type, prepare_s, torch.get_num_threads())
    designs, surveys, groups = _survey_space(task, space, timer.tokenizer, hp)
    per_token = _time_buckets(timer, groups)
    middle = groups[len(groups) // 2]
    parts = _time_parts(timer, middle[len(middle) // 2].design)

    def cost(sv: Survey) -> costs.TrialCost:  # seconds per token of the bucket nearest in tokens per step
        nearest = min(per_token, key=lambda p: abs(p[0] - sv.step_tokens))[1]
        return trial_cost(task, hp, sv, nearest, parts)

    by_design = {d: cost(sv) for d, sv in surveys.items()}
    search = costs.mean_cost([by_design[d] for d in designs])
    tops = min(space.budget.seed_top, space.budget.num_samples)
    seed = costs.mean_cost([search] * tops + [by_design[ES_SDE], by_design[PAPER_BASELINE]])
    measured = costs.Measured(search=search, seed=seed, import_s=import_s, prepare_s=prepare_s,
                              peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              gpu_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)
    est = costs.build(plan, measured)
    header = [f"estimate for {task.config.name}: space {space_path.name} ({plan.space_size} designs), "
              f"{plan.trials} trials, model {task.config.model.name} on {device.type}, {torch.get_num_threads()} "
              f"torch thread(s) per trial; timed in {time.perf_counter() - t_start:.0f} s",
              f"designs by tokens per training step ({hp.batch_size * hp.grad_accum} records): {_spans(groups)}"]
    text = costs.table(est, plan, measured)
    if untimed:
        text += f"\nassumed: searched train keys timed at the task's value: {', '.join(untimed)}"
    return Result(plan, measured, est, by_design, "\n".join(header) + "\n\n" + text)
