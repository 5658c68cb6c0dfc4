"""Scoring a model: generate on a split's prompts, parse, score, beside the trivial answers on the same records.

A :class:`Scorer` is a model ready to score one design (a trial's reports use it); :func:`evaluate_checkpoint`
scores a saved checkpoint on held-out splits (the test sets, the robustness check, the seed stage).

Imports torch, transformers and peft (heavy, through :mod:`sde_search.model`); never Ray or MLflow.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sde_search import metrics, verdicts
from sde_search.batches import prompt_ids
from sde_search.config import Task, TrainConfig
from sde_search.design import Design
from sde_search.model import load_model, resolve_hparams
from sde_search.render import Parsed, parse, render


@dataclass(frozen=True)
class EvalSet:
    """Records of one split with their golds, rendered prompts and the trivial baselines' answers."""

    split: str
    prompts: list[str]
    golds: list[dict[str, tuple[str, ...]]]
    slots: list[tuple[str, ...] | None]  # per record: its own slot list (Record.slots), or None


def eval_set(task: Task, design: Design, split: str, limit: int | None, instruction: str | None = None) -> EvalSet:
    """The first ``limit`` records of a split (all when None), rendered under the design.

    ``instruction`` replaces the task's instruction (a paraphrase, for the robustness check).
    """
    records = task.splits[split][:limit] if limit else task.splits[split]
    ood = split.endswith("_ood")
    return EvalSet(split, [render(r, design, task, ood=ood, instruction=instruction).prompt for r in records],
                   [task.gold(r, split) for r in records], [r.slots for r in records])


@dataclass(frozen=True)
class Decoding:
    """How to decode: greedy (``temperature`` 0, the default) or sampling, as in the paper's robustness test."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``model.generate``."""
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or None, "top_p": self.top_p}


GREEDY = Decoding()


def max_new_tokens(task: Task, design: Design, hp: TrainConfig, tokenizer: Any) -> int:
    """``train.max_new_tokens``, else 1.25 x the longest rendered target (ID train, OOD eval) + 8."""
    if hp.max_new_tokens:
        return hp.max_new_tokens
    targets = [render(r, design, task).target for r in task.splits["train"]]
    targets += [render(r, design, task, ood=True).target for r in task.splits.get("eval_ood", ())]
    return int(max(len(tokenizer.encode(t, add_special_tokens=False)) for t in targets) * 1.25) + 8


def score_outputs(task: Task, design: Design, es: EvalSet, outputs: Sequence[str], *,
                  full: bool = False) -> dict[str, float]:
    """Parses and scores generations; adds format errors, repairs and the trivial answers on the same set.

    Besides the task's metrics (``score`` and ``accuracy`` among them): ``baseline_fixed``/``accuracy_fixed``
    (each slot's most common training value) and ``baseline_empty``/``accuracy_empty`` (every slot empty),
    ``distinct_predictions``, and ``measured`` (0 when every prediction is the same answer or a format
    error, so the score measures nothing). With ``full`` (the whole split, the last report) it also tests
    whether the design reads the input: ``reads_input`` (1 or 0) and ``reads_low_score`` /
    ``reads_low_accuracy``, the lower ends of the 95 % bootstrap intervals of the score minus the better
    trivial answer's.
    """
    ood = es.split.endswith("_ood")
    parsed: list[Parsed] = [parse(o, design, task, ood=ood, slots=s) for o, s in zip(outputs, es.slots, strict=True)]
    answers = [p.answer for p in parsed]
    n = len(es.golds)
    fixed = task.fixed_answer(es.split)
    empty = dict.fromkeys(task.slots_for(es.split), task.kind.empty(task.unmentioned))
    trivial = {name: task.score(es.golds, metrics.same_answer(answer, es.golds), es.split) for name, answer in
               (("fixed", fixed), ("empty", empty))}
    out = {k: float(v) for k, v in task.score(es.golds, answers, es.split).items()}
    out.update({
        "format_error_rate": metrics.format_error_rate([p.errors for p in parsed]),
        "repair_rate": metrics.repair_rate([p.repaired for p in parsed]),
        "distinct_predictions": float(metrics.distinct_answers(answers)),
        "measured": float(not verdicts.degenerate(answers, [p.errors for p in parsed])),
        "n_eval": float(n),
        **{f"baseline_{name}": float(t["score"]) for name, t in trivial.items()},
        **{f"accuracy_{name}": float(t.get("accuracy", math.nan)) for name, t in trivial.items()},
    })
    if full:
        check = verdicts.reads_input(lambda g, p: task.score(g, p, es.split), es.golds, [answers], fixed, empty,
                                     samples=300)
        out["reads_input"] = float(check.reads)
        out.update({f"reads_low_{key}": m.low for key, m in check.margins.items()})
    return out


@dataclass(frozen=True, eq=False)
class Scorer:
    """A model ready to generate for one design, and to score the task's splits with what it generates.

    ``max_new`` (the generation length, :func:`max_new_tokens`) is worked out once, when it is built.
    """

    task: Task
    design: Design
    hp: TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    max_new: int = field(init=False)

    def __post_init__(self) -> None:
        """Works out ``max_new``."""
        object.__setattr__(self, "max_new", max_new_tokens(self.task, self.design, self.hp, self.tokenizer))

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], decoding: Decoding = GREEDY) -> list[str]:
        """Batched, left-padded generation (greedy unless ``decoding`` samples); returns the continuations.

        Prompts are framed as in training (:func:`~sde_search.batches.prompt_ids`, which reads
        ``design.prompt_template``); batches of ``train.eval_batch_size``, ``train.repetition_penalty``.
        """
        model, tokenizer, batch_size = self.model, self.tokenizer, self.hp.eval_batch_size
        model.eval()
        torch.manual_seed(decoding.seed)
        outputs = []
        for start in range(0, len(prompts), batch_size):
            chunk = [prompt_ids(p, tokenizer, self.design) for p in prompts[start:start + batch_size]]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, c in enumerate(chunk):
                ids[i, width - len(c):] = torch.tensor(c)
                mask[i, width - len(c):] = 1
            out = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                 **decoding.kwargs(), max_new_tokens=self.max_new,
                                 repetition_penalty=self.hp.repetition_penalty,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            outputs.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in out.tolist())
        model.train()
        return outputs

    def score_splits(self, splits: Sequence[str], limit: int | None = None, *, decoding: Decoding = GREEDY,
                     instruction: str | None = None, outputs: dict[str, list[str]] | None = None) -> dict[str, float]:
        """Generates on each split present and scores it; ``*_ood`` splits get keys with an ``_ood`` suffix.

        Args:
            splits: The splits to score (those the task lacks, and OOD ones the design cannot measure, are skipped).
            limit: Score each split's first ``limit`` records only (None: all, with the reads-the-input test).
            decoding: How to decode.
            instruction: An instruction to render the prompts with (None: the task's own).
            outputs: Filled with each split's raw generations.
        """
        task, design = self.task, self.design
        out: dict[str, float] = {}
        for split in splits:
            if split not in task.splits or (split.endswith("_ood") and not task.ood_measurable(design)):
                continue
            suffix = "_ood" if split.endswith("_ood") else ""
            es = eval_set(task, design, split, limit, instruction)
            texts = self.generate(es.prompts, decoding)
            if outputs is not None:
                outputs[split] = texts
            out.update({k + suffix: v for k, v in score_outputs(task, design, es, texts, full=limit is None).items()})
        return out


def evaluate_checkpoint(task: Task, design: Design, hparams: Mapping[str, Any] | None, checkpoint: str,
                        splits: Sequence[str] = ("test_id", "test_ood"), threads: int | None = None, *,
                        decodings: Sequence[Decoding] = (GREEDY,), instructions: Sequence[str | None] = (None,),
                        outputs: dict[str, list[str]] | None = None) -> list[dict[str, float]]:
    """Scores a trained checkpoint on held-out splits (the final report's test sets, the robustness check).

    Args:
        task: The loaded task.
        design: The checkpoint's design.
        hparams: The trial's training overrides (LoRA rank must match the checkpoint).
        checkpoint: A ``report-XXXX`` folder written by :func:`sde_search.trial.fit`.
        splits: Which splits to score.
        threads: torch CPU threads.
        decodings: How to decode; one score dict is returned per decoding (default: greedy only).
        instructions: Instructions to render the prompts with (None: the task's own; else paraphrases); the
            model is built once for all of them.
        outputs: Filled with each split's generations (of the last decoding and instruction).

    Returns:
        Per instruction, then per decoding: ``score``/``format_error_rate``/... for ``test_id`` and the same
        with ``_ood`` for ``test_ood``.
    """
    hp = resolve_hparams(task, hparams)
    torch.set_num_threads(threads or hp.threads or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = scorer = None
    try:
        model, tokenizer = load_model(task, hp, checkpoint, device=device)
        scorer = Scorer(task, design, hp, model, tokenizer, device)
        return [scorer.score_splits(splits, None, decoding=d, instruction=i, outputs=outputs)
                for i in instructions for d in decodings]
    finally:
        del model, scorer
        gc.collect()
