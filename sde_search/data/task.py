"""The loaded task: its config, task type and records, and what they imply (gold answers, scores, fixed answer).

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sde_search import metrics, tasks
from sde_search.design import Design

if TYPE_CHECKING:  # the schema's type, for annotations only: the config package imports this module
    from sde_search.config.schema import TaskConfig


@dataclass(frozen=True)
class Task:
    """A loaded task: its validated config, task type, records per split and where each split came from."""

    config: TaskConfig
    path: Path
    kind: tasks.TaskType
    splits: Mapping[str, tuple[tasks.Record, ...]]
    sources: Mapping[str, str] = field(default_factory=dict)
    """Split -> where its records came from, in words (every split, those turned off too); ``--check`` prints it."""

    @property
    def slots(self) -> tuple[str, ...]:
        """In-domain slots."""
        return tuple(self.config.labels.slots)

    @property
    def ood_slots(self) -> tuple[str, ...]:
        """Out-of-domain slots (default: the in-domain ones)."""
        return tuple(self.config.labels.ood_slots or self.config.labels.slots)

    @property
    def unmentioned(self) -> str:
        """The placeholder written for an empty slot."""
        return self.config.labels.unmentioned or self.kind.placeholder

    def slots_for(self, split: str) -> tuple[str, ...]:
        """The slots a split is scored on."""
        return self.ood_slots if split.endswith("_ood") else self.slots

    def gold(self, record: tasks.Record, split: str) -> dict[str, tuple[str, ...]]:
        """The record's answer on its own slots (``Record.slots``), else on the split's slots."""
        return self.kind.gold(record, record.slots or self.slots_for(split), self.unmentioned)

    def ood_measurable(self, design: Design) -> bool:
        """Whether a design gets an OOD score: a No-inst prompt names no slots, so it cannot ask for OOD ones."""
        return design.instruction != "none" or self.ood_slots == self.slots

    def score(self, golds: Sequence[tasks.Answer], preds: Sequence[tasks.Answer], split: str) -> dict[str, float]:
        """Scores predictions of a split (its slots, the labels, ``metrics.kappa_weights``); adds ``score``."""
        weights = self.config.metrics.kappa_weights
        out = self.kind.score(golds, preds, slots=self.slots_for(split), values=self.config.labels.values,
                              unmentioned=self.unmentioned, **({"weights": weights} if weights else {}))
        return {**out, "score": out[self.kind.score_key]}

    def kappa_note(self) -> str:
        """A visible note when kappa is unweighted because the label set is not the paper's four; else ``""``."""
        if self.kind.score_key != "kappa" or self.config.metrics.kappa_weights:
            return ""
        order = [*self.config.labels.values, self.unmentioned]
        if metrics.kappa_weights(order) is not None:
            return ""
        return (f"kappa is unweighted: the labels {order} are not the paper's four "
                f"({', '.join(metrics.PAPER_LABELS)}); set metrics.kappa_weights in {self.path.name} to weight "
                "near-misses")

    def fixed_answer(self, split: str) -> metrics.Answer:
        """The trivial "fixed answer" for a split: each of its slots' most common value in the training set."""
        return metrics.most_common_answer([self.gold(r, split) for r in self.splits["train"]], self.slots_for(split),
                                          placeholder=self.kind.empty(self.unmentioned))
