"""``sde-search init``: a commented starter task file and a small synthetic data sample to run it on.

The task files are package data (``sde_search/starters/<kind>.yaml``); the records come from
:mod:`sde_search.synthetic`, seeded, so two runs write the same bytes. Nothing is read from outside the package.

Pure core: stdlib only, never imports torch, Ray or MLflow; writes files, prints nothing.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sde_search import synthetic

STARTERS = Path(__file__).resolve().parent / "starters"
TASK_FILE = "task.yaml"


@dataclass(frozen=True)
class Split:
    """One data file of a starter: ``data/<file>``, ``size`` records of ``family``, generated with ``seed``.

    ``family`` is ``masa``, ``masa_ood`` (records that list the held-out aspects), ``entities`` or ``events``.
    """

    file: str
    family: str
    size: int
    seed: int

    def records(self) -> list[dict[str, Any]]:
        """The split's records, ids ``<file stem>-0001`` onwards (unique across a starter's files)."""
        prefix = self.file.removesuffix(".jsonl")
        if self.family in ("masa", "masa_ood"):
            return synthetic.generate_masa(self.size, self.seed, ood=self.family == "masa_ood", prefix=prefix)
        make = {"entities": synthetic.generate_entities, "events": synthetic.generate_events}[self.family]
        return make(self.size, self.seed, prefix=prefix)


KINDS: dict[str, tuple[Split, ...]] = {
    # Enough for --check and for `train` and a search to run on a CPU (a 12-epoch `train` of the masa
    # sample took 28 s); too few for the tiny model to learn the 30-aspect format well (75 % format errors
    # after 12 epochs), so designs barely differ on it: the sample shows the file formats, the user's records
    # replace it. Seeds differ per file, so splits share no generated record.
    "masa": (Split("train.jsonl", "masa", 200, 11), Split("dev.jsonl", "masa", 40, 12),
             Split("test.jsonl", "masa", 40, 13), Split("ood_dev.jsonl", "masa_ood", 40, 14),
             Split("ood_test.jsonl", "masa_ood", 40, 15)),
    "ner": (Split("train.jsonl", "entities", 150, 21), Split("dev.jsonl", "entities", 40, 22),
            Split("test.jsonl", "entities", 40, 23)),
    "events": (Split("train.jsonl", "events", 150, 31), Split("dev.jsonl", "events", 40, 32),
               Split("test.jsonl", "events", 40, 33)),
}
"""Starter kind -> its data files; the task file is ``starters/<kind>.yaml``."""

ALIASES = {"aspect_sentiment": "masa", "entities": "ner"}
"""Task type names that are accepted as starter kinds too."""


def kind_of(name: str) -> str | None:
    """The starter kind that ``name`` (a kind or a task type) names, else None."""
    name = ALIASES.get(name, name)
    return name if name in KINDS else None


def planned(kind: str, folder: Path) -> list[Path]:
    """Every file :func:`write` would create for ``kind`` in ``folder``: the task file first, then the data."""
    return [folder / TASK_FILE, *(folder / "data" / s.file for s in KINDS[kind])]


def write(kind: str, folder: Path) -> dict[Path, int]:
    """Write the starter task file and its data sample into ``folder`` (created if needed).

    Args:
        kind: A key of :data:`KINDS`.
        folder: Where ``task.yaml`` and ``data/`` go; none of :func:`planned`'s files may exist yet.

    Returns:
        Each written file -> its record count (0 for the task file).

    Raises:
        FileExistsError: One of the files exists already (nothing is written then).
    """
    targets = planned(kind, folder)
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing:
        raise FileExistsError(errno.EEXIST, "already exists", str(existing[0]))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    written: dict[Path, int] = {}
    task = folder / TASK_FILE
    with task.open("x", encoding="utf-8", newline="\n") as f:  # "x": never replace a file made meanwhile
        f.write((STARTERS / f"{kind}.yaml").read_text(encoding="utf-8"))
    written[task] = 0
    for split, path in zip(KINDS[kind], targets[1:], strict=True):
        records = split.records()
        with path.open("x", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        written[path] = len(records)
    return written
