"""Optimizer steps of one trial, and the heartbeat that tells a user how a long trial is doing.

Gradient accumulation, clipping, the learning-rate schedule, mixed precision and gradient checkpointing.

``trial.fit`` builds a :class:`Stepper` and hands it the micro-batches of each optimizer step. Defaults
(``grad_accum: 1``, no warmup, ``schedule: constant``, no clipping, fp32 on CPU, no checkpointing) give the
plain AdamW loop bit for bit.

Imports torch and transformers (heavy); never Ray or MLflow. Progress is logged (logger ``sde_search.steps``),
each heartbeat record carrying its numbers in ``record.heartbeat``; the command decides what the user sees.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from transformers import get_scheduler

from sde_search.config import TrainConfig

log = logging.getLogger(__name__)

SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
"""``train.schedule`` -> the name ``transformers.get_scheduler`` knows (each with a linear warmup)."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training forward pass for ``train.precision``; None: plain fp32.

    Autocast is used on CUDA only: on CPU, bf16 autocast is slower than fp32 on most processors and fp16 is
    not what users of CPU training expect, so a CPU trial trains in fp32 whatever the setting.
    """
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def enable_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recomputes activations in the backward pass (non-reentrant), on a model before LoRA wraps it.

    transformers also makes the embeddings' output require grad, which peft needs when every base weight is
    frozen; non-reentrant checkpointing works either way.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x; the old name warns
    if enable is not None:
        enable({"use_reentrant": False})
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()


def loss_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens that carry loss in a right-padded causal-LM batch (labels shifted by one, -100 ignored)."""
    return int((batch["labels"][:, 1:] != -100).sum())


class Stepper:
    """AdamW with its schedule, optional gradient scaler and clipping; one :meth:`step` per optimizer step."""

    def __init__(self, model: torch.nn.Module, hp: TrainConfig, total_steps: int, device: torch.device,
                 dtype: torch.dtype | None):
        """Builds the optimizer, the schedule and, for fp16, the gradient scaler.

        Args:
            model: The (LoRA-wrapped) model; its parameters that require grad are trained.
            hp: The trial's settings (``lr``, ``warmup``, ``schedule``, ``max_grad_norm``).
            total_steps: Optimizer steps of the whole trial (the schedule's length).
            device: Where the model is (the autocast's and the gradient scaler's device type).
            dtype: The autocast dtype, None for fp32: :func:`autocast_dtype` (tests pass one to run the
                mixed-precision path on CPU).
        """
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=hp.lr)
        self.scheduler = get_scheduler(SCHEDULES[hp.schedule], self.optimizer,
                                       num_warmup_steps=hp.warmup_steps(total_steps), num_training_steps=total_steps)
        self.dtype = dtype
        self.device_type = device.type
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.max_grad_norm = hp.max_grad_norm
        self.grad_norm = math.nan  # the last step's norm before clipping (when clipping)

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's autocast context (a no-op in fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
        """One optimizer step over ``batches`` (micro-batches already on the model's device).

        Each micro-batch's mean loss is weighted by its share of the step's loss tokens, so the gradient is
        the one of a single batch holding them all, however the records were split or padded.

        Returns:
            The step's loss: the mean over every loss token of its micro-batches.
        """
        counts = [loss_tokens(b) for b in batches]
        total = sum(counts)
        loss_sum = torch.zeros((), device=batches[0]["input_ids"].device)
        for batch, n in zip(batches, counts, strict=True):
            if not n and total:  # nothing to learn from (every label masked): its loss would be 0/0
                continue
            with self.autocast():
                loss = model(**batch, use_cache=False).loss  # a KV cache is for generation; training only fills it
            part = loss * (n / total) if total else loss  # total 0: NaN, which the loop reports as a failed trial
            (self.scaler.scale(part) if self.scaler else part).backward()
            loss_sum = loss_sum + part.detach().float()
        if self.max_grad_norm is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss_sum)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and (fp16) scaler state, for a checkpoint."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`; a checkpoint from before schedules existed had a constant rate."""
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class Heartbeat:
    """Logs a progress line every ``every_s`` seconds of a trial's training: step/total, loss, s/step, lr.

    The numbers also travel as ``record.heartbeat`` (a dict), so that the search can forward them from its
    workers to the terminal.
    """

    def __init__(self, every_s: float, total: int, step: int = 0, clock: Callable[[], float] = time.monotonic):
        """Starts the clock.

        Args:
            every_s: Seconds between lines; 0: never.
            total: The trial's optimizer steps.
            step: The step it starts after (a resumed trial's).
            clock: Seconds, monotonic (tests pass their own).
        """
        self.every, self.total, self.clock = every_s, total, clock
        self._reset(step)

    def _reset(self, step: int) -> None:
        self.since, self.from_step, self.train_s, self.losses = self.clock(), step, 0.0, []

    def tick(self, step: int, loss: float, train_s: float, lr: float) -> dict[str, float] | None:
        """Records one optimizer step (``train_s``: its seconds); logs and returns the numbers when one is due."""
        if not self.every:
            return None
        self.losses.append(loss)
        self.train_s += train_s
        if self.clock() - self.since < self.every:
            return None
        done = step - self.from_step
        per_step = self.train_s / done
        beat = {"step": step, "total": self.total, "loss": sum(self.losses) / len(self.losses),
                "s_per_step": per_step, "lr": lr, "eta_s": per_step * (self.total - step), "time": time.time()}
        log.info("  step %d/%d (%.0f %%), loss %.3f, %.2f s/step, lr %.2e, %.1f min of training left", step,
                 self.total, 100 * step / self.total, beat["loss"], per_step, lr, beat["eta_s"] / 60,
                 extra={"heartbeat": beat})
        self._reset(step)
        return beat
