"""Rendered samples as token ids: prompt framing, loss masks, padded batches and each epoch's data order.

Imports torch (tensors); never transformers' models, Ray or MLflow.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sde_search.design import Design
from sde_search.render import Sample


@dataclass(frozen=True)
class Encoded:
    """One tokenised training sample: ids and labels (-100 where no loss)."""

    ids: list[int]
    labels: list[int]


# The ChatML layout SmolLM2 and many instruct models use; for tokenizers without a chat template of their own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def prompt_ids(prompt: str, tokenizer: Any, design: Design) -> list[int]:
    """Token ids of a prompt: BOS + raw text (the paper), or the chat template around it (``prompt_template: chat``).

    The chat form is the tokenizer's own template (e.g. SmolLM2's, with its default system turn) as one user
    turn plus the assistant header; tokenizers without one get :data:`FALLBACK_CHAT_TEMPLATE`.
    """
    if design.prompt_template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True,
                                             chat_template=tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE)
        return tokenizer.encode(text, add_special_tokens=False)
    return [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]


def encode(sample: Sample, tokenizer: Any, design: Design) -> Encoded:
    """Prompt (:func:`prompt_ids`) + target + EOS; No-MI (``exclude``) masks the whole prompt."""
    prompt = prompt_ids(sample.prompt, tokenizer, design)
    target = [*tokenizer.encode(sample.target, add_special_tokens=False), tokenizer.eos_token_id]
    ids = prompt + target
    labels = [-100] * len(prompt) + target if design.prompt_loss == "exclude" else [-100] + ids[1:]
    return Encoded(ids, labels)


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads ids (pad) and labels (-100) for training."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch, a pure function of (seed, epoch) so that resumes replay it."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order
