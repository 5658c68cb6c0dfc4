"""A task's records: reading each split's file once, cutting carves, sub-sampling, checking every record.

Problems are appended to a list, one ``file: data.<split>: ...`` line each, so that the loader reports them
together with the task file's own. A plugin task type's code that raises is named in the message.

Pure core: never imports torch, Ray or MLflow (``hf:`` sources import ``datasets`` only when read).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sde_search import preflight, splits, tasks
from sde_search.data.files import file_problem, first_line, not_utf8
from sde_search.splits import SPLITS
from sde_search.tasks import clip

if TYPE_CHECKING:  # the schema's types, for annotations only: the config package imports this module
    from sde_search.config.schema import LabelsConfig, TaskConfig


def load_splits(config: TaskConfig, path: Path, root: Path, kind: tasks.TaskType,
                problems: list[str]) -> tuple[dict[str, tuple[tasks.Record, ...]], dict[str, str]]:
    """Each split's records and where they came from (carves cut, OOD twins filled, ``data.max_*`` applied).

    Every file is read (and checked) once, however many splits name it; the problems of the split values themselves
    were reported by the task checks (:func:`sde_search.config.checks.check_task`).

    Args:
        config: The validated task config, its label codes filled in.
        path: The task file, named in the messages.
        root: ``data.root`` resolved, which relative split paths start from.
        kind: The task type.
        problems: Where problems are appended, one line each.

    Returns:
        Split -> its records, and split -> where they came from in words (every split, those turned off too).
    """
    sources, _ = splits.plan(split_values(config), root, config.data.seed)
    files: dict[str, tuple[list[tasks.Record], list[dict[str, Any]]] | None] = {}
    for split, source in sources.items():
        if source.location and source.location not in files:
            files[source.location] = _read_split(source, root, config, kind, f"{path}: data.{split}", problems)
    found: dict[str, list[tasks.Record]] = {}
    origin: dict[str, tuple[int, dict[str, int]]] = {}  # split -> (records of its file, carves out of that file)
    for location, read in files.items():
        if read is None:
            continue
        records, rows = read
        carves = [s for s in sources.values() if s.kind == "carve" and s.location == location]
        whole = [s.split for s in sources.values() if s.kind == "file" and s.location == location]
        part = splits.partition(records, rows, carves, whole)
        problems.extend(f"{path}: data.{key}: {message}" for key, message in part.problems)
        if part.problems:
            continue
        taken = {split: len(picked) for split, picked in part.carved.items()}
        for split in whole:
            found[split], origin[split] = [records[i] for i in part.rest], (len(records), taken)
        for split, picked in part.carved.items():
            found[split], origin[split] = [records[i] for i in picked], (len(records), {})
    out: dict[str, tuple[tasks.Record, ...]] = {}
    described = {split: _off_text(config, split) for split in SPLITS if split not in sources}
    for split, source in sources.items():
        if source.kind == "twin" and source.given in found:  # read with labels.ood_slots, not a record's own list
            found[split] = [replace(r, slots=None) for r in found[source.given]]
            origin[split] = (0, {})
        if split not in found:
            continue
        if split.endswith("_ood"):
            problems.extend(_ood_problems(found[split], config, f"{path}: data.{split}", source))
        key = "max_train" if split == "train" else "max_eval" if split.startswith("eval") else "max_test"
        kept = _subsample(found[split], getattr(config.data, key), config.data.seed)
        out[split] = tuple(kept)
        total, taken = origin[split]
        described[split] = splits.describe(source, len(found[split]), total, taken) + (
            f"; {len(kept):,} sampled (data.{key}, seed {config.data.seed})" if len(kept) < len(found[split]) else "")
    return out, {split: described[split] for split in SPLITS if split in described}


def split_values(config: TaskConfig) -> dict[str, splits.SplitValue | None]:
    """Split -> its ``data:`` value (a path, a carve, ``none`` or unset), for every split."""
    return {split: getattr(config.data, split) for split in SPLITS}


def _off_text(config: TaskConfig, split: str) -> str:
    """What ``--check`` says of a split that is not there: turned off, or left out (with how to add an OOD one)."""
    if getattr(config.data, split) == splits.OFF or split in config.data.model_fields_set:
        return "none (turned off in the task file)"
    labels = config.labels
    twin = splits.OOD_TWIN.get(split)
    if twin and labels.ood_slots and labels.ood_slots != labels.slots and getattr(config.data, twin) is not None:
        when = "during the search" if split == "eval_ood" else "in the final report"
        return (f"none -- labels.ood_slots are not scored {when}; give a file of OOD records, or {{from: {twin}}} "
                f"to read {twin}'s texts with them (where those texts are labelled for them)")
    return "none"


def _ood_problems(records: Sequence[tasks.Record], config: TaskConfig, where: str,
                  source: splits.Source) -> list[str]:
    """A mismatched OOD schema: an OOD set that labels none of the OOD slots would be scored on nothing."""
    ood = config.labels.ood_slots or config.labels.slots
    seen = sorted({s for r in records for s in r.answer})
    if not records or set(ood) & set(seen):
        return []
    origin = f" ({source.given}'s records read with labels.ood_slots)" if source.kind == "twin" else ""
    return [f"{where}: the OOD records{origin} label none of labels.ood_slots {preflight.cut(str(list(ood)))}; "
            f"they label {preflight.cut(str(seen)) if seen else 'nothing'} -- labels.ood_slots must name the OOD "
            "set's slots"]


def _read_split(source: splits.Source, root: Path, config: TaskConfig, kind: tasks.TaskType, where: str,
                problems: list[str]) -> tuple[list[tasks.Record], list[dict[str, Any]]] | None:
    """A file's records, checked against the labels, and their raw rows; None (problem appended) when unreadable.

    A plugin task type's code that raises while reading (``from_json``), checking (``label_problems``) or building
    an answer (``gold``) becomes one problem naming the plugin module, the function and the data file.
    """
    try:
        read = _load_records(source, root, config, kind, where, problems)
        if read is not None:
            with tasks.plugin_code(kind, "label_problems"):  # all records, not just the sample
                _check_records(read[0], config, kind, source.split, f"{where} ({source.given})", problems)
            if tasks.is_plugin(kind):
                _build_answers(read[0], config, kind, source.split)
    except tasks.PluginError as exc:
        row = f" row {exc.row}" if exc.row else ""
        problems.append(f"{where}: {preflight.cut(source.location)}{row}: {exc}")
        return None
    return read


def _split_slots(labels: LabelsConfig, split: str) -> list[str]:
    """The slots a split is scored on (what ``Task.slots_for`` says once the task is loaded)."""
    return (labels.ood_slots or labels.slots) if split.endswith("_ood") else labels.slots


def _build_answers(records: Sequence[tasks.Record], config: TaskConfig, kind: tasks.TaskType, split: str) -> None:
    """Builds every record's answer once, so that a plugin's ``gold`` fails here, naming the data file."""
    labels = config.labels
    slots = _split_slots(labels, split)
    with tasks.plugin_code(kind, "placeholder"):
        unmentioned = labels.unmentioned or kind.placeholder
    for i, record in enumerate(records, 1):
        with tasks.plugin_code(kind, "gold", i):
            kind.gold(record, record.slots or slots, unmentioned)


def _load_records(source: splits.Source, root: Path, config: TaskConfig, kind: tasks.TaskType, where: str,
                  problems: list[str]) -> tuple[list[tasks.Record], list[dict[str, Any]]] | None:
    """A file's records and the raw rows they were built from (a carve's group key may be a field of the rows)."""
    location = source.location
    try:
        rows = tasks.read_rows(location, columns=config.data.columns)
    except (ValueError, OSError, ImportError) as exc:  # UnicodeDecodeError is a ValueError
        problems.append(f"{where}: {_read_problem(exc, source.given, location, root)}")
        return None
    bad: list[str] = []
    skipped: set[int] = set()
    shown = preflight.cut(location)

    def bad_row(i: int, msg: str) -> None:
        skipped.add(i)
        bad.append(f"{where}: {shown} row {i}: {clip(msg, 300)}")

    records = tasks.records_from_rows(rows, kind, bad_row)
    problems.extend(bad[:5] + ([f"{where}: ... and {len(bad) - 5} more bad rows"] if len(bad) > 5 else []))
    if not rows:
        problems.append(f"{where}: {shown} holds no records (a .jsonl file needs one JSON object per line)")
    return records, [row for i, row in enumerate(rows, 1) if i not in skipped]


def _read_problem(exc: Exception, source: str, location: str, root: Path) -> str:
    """One line saying why a data source could not be read (the file and folder named, each cut short)."""
    shown = preflight.cut(location)
    if source.startswith("hf:"):
        return (f"{shown} could not be loaded ({type(exc).__name__}: {clip(first_line(exc))}); "
                "hf: sources need the datasets package and a cached or reachable dataset")
    if isinstance(exc, FileNotFoundError) and not os.path.islink(location):
        return f"file not found: {shown} ({_path_rule(source, root)})"
    if isinstance(exc, IsADirectoryError):
        return f"{shown} is a folder; give a file (allowed: .jsonl, .json or .csv, or hf:<dataset id>)"
    if isinstance(exc, UnicodeDecodeError):
        return f"{shown} is {not_utf8(exc)}"
    if isinstance(exc, OSError):
        return f"{shown}: {file_problem(exc, location, 'a .jsonl, .json or .csv file')} ({_path_rule(source, root)})"
    return f"{shown}: {clip(first_line(exc), 300)}"


def _path_rule(given: str, root: Path) -> str:
    """How a split's path was resolved, for a message about a file that is not there."""
    if os.path.isabs(os.path.expanduser(given)):
        return "an absolute or ~ path is taken as is"
    return f"relative paths resolve against data.root = {preflight.cut(str(root))}"


def _subsample(records: list[tasks.Record], limit: int | None, seed: int) -> list[tasks.Record]:
    if limit is None or len(records) <= limit:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def _check_records(records: Sequence[tasks.Record], config: TaskConfig, kind: tasks.TaskType, split: str,
                   where: str, problems: list[str]) -> None:
    labels = config.labels
    all_slots = list(dict.fromkeys([*labels.slots, *(labels.ood_slots or [])]))
    unmentioned = labels.unmentioned or kind.placeholder
    ids = [r.id for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dup:
        problems.append(f"{where}: duplicate record ids {preflight.cut(str(dup[:5]))} (every record needs its own id)")
    bad = [(r.id, p) for r in records for p in kind.label_problems(r, all_slots, labels.values, unmentioned)]
    pool = _split_slots(labels, split)
    key = "labels.ood_slots" if split.endswith("_ood") and labels.ood_slots else "labels.slots"
    bad += [(r.id, f"its slots {clip(str(list(r.slots)), 100)} name {clip(str(out), 100)}, not in {key} "
                   f"(allowed: {preflight.cut(', '.join(pool))})")
            for r in records if r.slots and (out := [s for s in r.slots if s not in pool])]
    for rid, p in bad[:5]:
        problems.append(f"{where}: record {preflight.cut(rid)}: {clip(p, 400)}")  # a plugin's message, too
    if len(bad) > 5:
        problems.append(f"{where}: ... and {len(bad) - 5} more label problems")
