"""One trial: render the task under one design, LoRA-tune briefly, generate, parse and score.

``fit()`` knows nothing about Ray or MLflow: it reports through the ``report`` callable it is given,
``report(metrics, checkpoint_dir)``, ``train.reports_per_epoch`` times per epoch. The search wraps it in a
Tune trainable; ``sde-search train`` calls it directly. It follows a :class:`TrialRecipe` (setup, load,
train, which evaluates and saves at each report); a :class:`TrainState` is where the trial stands.

Imports torch, transformers and peft (heavy); never Ray or MLflow.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from sde_search import faults, steps
from sde_search.batches import Encoded, collate, encode, epoch_order
from sde_search.config import Task, TrainConfig
from sde_search.design import Design
from sde_search.model import CHECKPOINT_STATE, TrialError, load_model, read_checkpoint, resolve_hparams
from sde_search.render import render
from sde_search.scoring import Scorer

log = logging.getLogger(__name__)
Report = Callable[[dict[str, float], "str | None"], None]


@dataclass
class TrainState:
    """Where a trial stands: the counters its checkpoints keep.

    A checkpoint's ``state.pt`` holds them beside the LoRA adapter (``adapter``), the optimizer, schedule and
    fp16 scaler states (so that a resumed trial goes on with the same learning rate) and the torch RNG state
    (``torch_rng``, for dropout).
    """

    step: int = 0  # optimizer steps done
    train_s: float = 0.0  # seconds in optimizer steps
    gen_s: float = 0.0  # seconds in evaluations
    tokens: int = 0  # training tokens seen (padding excluded)
    fit_s: float = 0.0  # seconds inside fit(), a resumed trial's earlier parts included

    def save(self, folder: Path, model: torch.nn.Module, stepper: steps.Stepper) -> Path:
        """Writes ``folder/state.pt``: the adapter, the stepper's and the torch RNG's states and these counters."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"adapter": get_peft_model_state_dict(model), **stepper.state_dict(), "step": self.step,
                    "train_s": self.train_s, "gen_s": self.gen_s, "tokens": self.tokens, "fit_s": self.fit_s,
                    "torch_rng": torch.get_rng_state()},
                   folder / CHECKPOINT_STATE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: torch.nn.Module, stepper: steps.Stepper) -> TrainState:
        """Restores what :meth:`save` wrote into the model, the stepper and the torch RNG; returns the counters."""
        state = read_checkpoint(folder)
        set_peft_model_state_dict(model, state["adapter"])
        stepper.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])
        return cls(state["step"], state["train_s"], state["gen_s"], state["tokens"], state.get("fit_s", 0.0))


class TrialRecipe:
    """One trial's steps, from its frozen settings (task, design, resolved ``train:`` block).

    :meth:`setup` builds the model and the optimizer; :meth:`load` resumes from a checkpoint; :meth:`train`
    runs the optimizer steps and, at each report, :meth:`evaluate` and :meth:`save`; :meth:`close` frees the
    model. Steps, reports and ``progress`` count optimizer steps, each of ``grad_accum`` micro-batches.
    """

    model: torch.nn.Module
    tokenizer: Any
    encoded: list[Encoded]
    stepper: steps.Stepper
    scorer: Scorer

    def __init__(self, task: Task, design: Design, hp: TrainConfig) -> None:
        """Takes the settings; builds nothing yet."""
        self.task, self.design, self.hp = task, design, hp
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.started = time.perf_counter()  # fit_s counts from here (a resumed trial: minus its earlier parts)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps of one epoch."""
        return self.hp.steps_per_epoch(len(self.encoded))

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole trial."""
        return self.steps_per_epoch * self.hp.epochs

    def setup(self, threads: int | None = None) -> None:
        """Seeds, builds the LoRA model (:func:`~sde_search.model.load_model`), encodes the training records.

        ``threads``: torch CPU threads (default: ``train.threads`` or 1).
        """
        hp = self.hp
        torch.set_num_threads(threads or hp.threads or 1)
        random.seed(hp.seed)
        torch.manual_seed(hp.seed)  # LoRA init and dropout of a loaded model (tiny re-seeds its weights itself)
        self.model, self.tokenizer = load_model(self.task, hp, device=self.device,
                                                grad_checkpointing=hp.grad_checkpointing)
        self.encoded = [encode(render(r, self.design, self.task), self.tokenizer, self.design)
                        for r in self.task.splits["train"]]
        self.stepper = steps.Stepper(self.model, hp, self.total_steps, self.device, self._autocast_dtype())
        self.scorer = Scorer(self.task, self.design, hp, self.model, self.tokenizer, self.device)

    def _autocast_dtype(self) -> torch.dtype | None:
        """The training autocast dtype; logs the settings a user may not get as written."""
        hp, device, total = self.hp, self.device, self.total_steps
        dtype = steps.autocast_dtype(hp.precision, device)
        if hp.precision in ("bf16", "fp16") and dtype is None:
            log.warning("train.precision: %s autocast needs a GPU; this trial trains in fp32 on %s", hp.precision,
                        device.type.upper())
        if hp.warmup_steps(total) > total:
            log.warning("train.warmup: %d steps, but the trial has only %d; the learning rate never reaches train.lr",
                        hp.warmup_steps(total), total)
        return dtype

    def load(self, checkpoint: str) -> TrainState:
        """Resumes from a checkpoint written by :meth:`save`: adapter, optimizer, schedule, RNG and counters."""
        state = TrainState.load(checkpoint, self.model, self.stepper)
        self.started -= state.fit_s  # fit_s counts the checkpointed part too, as train_s and gen_s do
        return state

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of optimizer step ``step`` (from 0), on the device; the epoch order replays on resume."""
        hp, per_step = self.hp, self.hp.batch_size * self.hp.grad_accum  # records per optimizer step
        epoch, offset = divmod(step, self.steps_per_epoch)
        idx = epoch_order(len(self.encoded), hp.seed, epoch)[offset * per_step:(offset + 1) * per_step]
        return [{k: v.to(self.device) for k, v in collate([self.encoded[i] for i in idx[j:j + hp.batch_size]],
                                                          self.tokenizer.pad_token_id).items()}
                for j in range(0, len(idx), hp.batch_size)]

    def train(self, report: Report, checkpoint_dir: str | None = None, state: TrainState | None = None,
              ) -> dict[str, float]:
        """Trains from ``state`` (default: the start) to the end; at each report evaluates, saves and reports.

        Returns:
            The last report's metrics.
        """
        hp, state, total = self.hp, state or TrainState(), self.total_steps
        reports = hp.epochs * hp.reports_per_epoch
        report_steps = [round(total * (k + 1) / reports) for k in range(reports)]
        heartbeat = steps.Heartbeat(hp.heartbeat_s, total, state.step)
        losses: list[float] = []
        last: dict[str, float] = {}
        self.model.train()
        while state.step < total:
            batches = self.batches(state.step)
            lr, t0 = self.stepper.lr, time.perf_counter()
            loss = self.stepper.step(self.model, batches)
            seconds = time.perf_counter() - t0
            state.train_s += seconds
            state.tokens += sum(int(b["attention_mask"].sum()) for b in batches)
            losses.append(loss)
            state.step += 1
            heartbeat.tick(state.step, loss, seconds, lr)
            if state.step not in report_steps:
                continue
            k = report_steps.index(state.step) + 1
            loss = faults.point("loss", k, self.design, losses[-1])
            if not math.isfinite(loss):
                raise TrialError(f"training loss became {loss} at step {state.step} (lr {hp.lr}); lower train.lr")
            faults.point("evaluate", k, self.design)
            generations: dict[str, list[str]] = {}
            t1 = time.perf_counter()
            last = self.evaluate(final=state.step == total, outputs=generations)
            state.gen_s += time.perf_counter() - t1
            state.fit_s = time.perf_counter() - self.started
            last.update(self._counters(k, state, losses))
            losses = []
            path = self.save(checkpoint_dir, k, state, generations)
            faults.point("checkpoint", k, self.design)
            report(last, path)
        return last

    def _counters(self, k: int, state: TrainState, losses: list[float]) -> dict[str, float]:
        """A report's training numbers: mean loss since the last report, progress, tokens, seconds."""
        enc = self.encoded
        return {"train_loss": sum(losses) / len(losses), "progress": state.step / self.total_steps,
                "step": float(state.step), "epoch": state.step / self.steps_per_epoch, "report": float(k),
                "train_tokens": float(state.tokens), "tokens_per_sample": sum(len(e.ids) for e in enc) / len(enc),
                "train_s": state.train_s, "gen_s": state.gen_s, "fit_s": state.fit_s}

    def evaluate(self, final: bool, outputs: dict[str, list[str]] | None = None) -> dict[str, float]:
        """Scores ID (``score``...) and OOD (``score_ood``...) sets; intermediate reports use a subset."""
        limit = None if final else self.hp.report_eval_size
        out = self.scorer.score_splits(("eval_id", "eval_ood"), limit, outputs=outputs)
        if "score_ood" in out:
            out["score_mean"] = (out["score"] + out["score_ood"]) / 2
        return out

    def save(self, root: str | None, k: int, state: TrainState, generations: Mapping[str, list[str]],
             ) -> str | None:
        """Writes report ``k``'s checkpoint, ``root/report-XXXX`` (None without a root)."""
        if root is None:
            return None
        folder = state.save(Path(root) / f"report-{k:04d}", self.model, self.stepper)
        # what this report scored, to inspect or to score again offline
        (folder / "generations.json").write_text(json.dumps(generations))
        return str(folder)

    def close(self) -> None:
        """Drops the model, optimizer and scorer and frees their memory (a reused worker runs the next trial)."""
        for name in ("scorer", "stepper", "model"):
            self.__dict__.pop(name, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fit(task: Task, design: Design, hparams: Mapping[str, Any] | None = None, *, report: Report,
        checkpoint_dir: str | None = None, resume_from: str | None = None, threads: int | None = None,
        ) -> dict[str, float]:
    """Trains one design with LoRA and reports ID/OOD scores ``reports_per_epoch`` times per epoch.

    Args:
        task: The loaded task.
        design: The sample design.
        hparams: Overrides of the task's ``train:`` block (e.g. searched ``lr``).
        report: Called as ``report(metrics, checkpoint_dir_or_None)`` after each evaluation.
        checkpoint_dir: If set, a checkpoint (adapter, optimizer, step) is written under it at each report.
        resume_from: A checkpoint folder written by an earlier call; training continues after it.
        threads: torch CPU threads (default: ``train.threads`` or 1).

    Returns:
        The last report's metrics.
    """
    recipe = TrialRecipe(task, design, resolve_hparams(task, hparams))
    try:
        recipe.setup(threads)
        state = recipe.load(resume_from) if resume_from else TrainState()
        return recipe.train(report, checkpoint_dir, state)
    finally:
        recipe.close()
