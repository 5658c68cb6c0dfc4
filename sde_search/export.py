"""``sde-search export``: a chosen design as YAML plus the task's data rendered in it, for any trainer.

Each JSONL line carries ``prompt`` and ``target`` (train on ``prompt + target``), ``loss_start``
(the character offset where the loss begins: 0 when the design also trains on the prompt, else
``len(prompt)``) and the record's ``id``. Pure core: no torch, Ray or MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from sde_search.config import ConfigError, Task
from sde_search.design import Design, dimensions_of
from sde_search.render import render

SPLITS = {"train": "train.jsonl", "eval_id": "dev.jsonl", "eval_ood": "dev_ood.jsonl", "test_id": "test.jsonl",
          "test_ood": "test_ood.jsonl"}


def out_problems(out: Path) -> list[str]:
    """Why ``--out`` cannot take an export (empty when it can).

    Export never replaces a file (there is no ``--force``): ``out`` must be a new folder, or an existing one
    without any of the files it writes.
    """
    never = "export never replaces a file (there is no --force)"
    if out.exists() and not out.is_dir():
        return [f"--out {out}: is a file; export writes a folder (design.yaml and one JSONL per split): pick a new "
                f"folder name; {never}"]
    above = next(p for p in (out, *out.parents) if p.exists())
    if not above.is_dir():
        return [f"--out {out}: {above} is a file, not a folder; {never}"]
    taken = [n for n in ("design.yaml", *SPLITS.values()) if (out / n).exists() or (out / n).is_symlink()]
    if taken:
        return [f"--out {out}: holds {', '.join(taken)} already (an earlier export?): pick a new folder or move "
                f"them away; {never}"]
    if not os.access(above, os.W_OK | os.X_OK):
        return [f"--out {out}: {above} is not writable"]
    return []


def export(task: Task, design: Design, out: Path, train: dict[str, Any] | None = None) -> dict[str, int]:
    """Writes ``design.yaml`` and one rendered JSONL per split present; returns lines written per file.

    Raises:
        ConfigError: when ``out`` is a file or already holds one of these files (nothing is written then).
    """
    problems = out_problems(out)
    if problems:
        raise ConfigError(problems)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"design": dimensions_of(design.to_params()),
            "task": task.config.name, "train": dict(train or {})}
    (out / "design.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    counts = {}
    for split, name in SPLITS.items():
        if split not in task.splits:
            continue
        ood = split.endswith("_ood")
        with open(out / name, "w", encoding="utf-8") as f:
            for record in task.splits[split]:
                s = render(record, design, task, ood=ood)
                loss_start = 0 if design.prompt_loss == "include" else len(s.prompt)
                f.write(json.dumps({"id": record.id, "prompt": s.prompt, "target": s.target,
                                    "loss_start": loss_start}, ensure_ascii=False) + "\n")
        counts[name] = len(task.splits[split])
    return counts
