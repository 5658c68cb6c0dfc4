"""Generation files: one JSON line per scored record, the layout the search and ``sde-search train`` share.

A row holds the record's ``id``, its ``gold`` answer, the ``prompt`` the model saw, the ``target`` it was
trained to write (the gold answer rendered in the design), the model's ``output``, the ``parsed`` answer and the
parse's error kinds (``errors``; empty when the output parsed cleanly). Answers map each slot to a list of values.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sde_search.config import Task
from sde_search.design import Design
from sde_search.render import parse, render


def rows(task: Task, design: Design, split: str, texts: Sequence[str]) -> list[dict[str, Any]]:
    """One row per generation, paired in order with the split's first ``len(texts)`` records.

    Args:
        task: The loaded task.
        design: The design the outputs were generated under.
        split: The split the outputs belong to (``*_ood`` splits are rendered and parsed on the OOD slots).
        texts: The model's outputs, one per record from the split's start.

    Returns:
        The rows (see the module docstring).
    """
    ood = split.endswith("_ood")
    out = []
    for record, text in zip(task.splits[split], texts, strict=False):
        sample = render(record, design, task, ood=ood)
        parsed = parse(text, design, task, ood=ood, slots=record.slots)
        out.append({"id": record.id, "gold": {k: list(v) for k, v in task.gold(record, split).items()},
                    "prompt": sample.prompt, "target": sample.target, "output": text,
                    "parsed": {k: list(v) for k, v in parsed.answer.items()}, "errors": list(parsed.errors)})
    return out


def write(path: Path, task: Task, design: Design, split: str, texts: Sequence[str]) -> Path:
    """Writes :func:`rows` as JSON lines to ``path`` (its folder is created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows(task, design, split, texts))
    return path
