"""``--check``'s rehearsal of the renders: every design of the space reads back, and samples fit the model.

A design whose targets do not parse back to the gold answer (a slot or label name holding the format's own
separators) would be scored on what the parser guesses; a sample longer than a model with a learned position
table fails in training. Both are found here, before a search starts, by rendering records under the space's
designs. Also the notes ``--check`` prints: settings that are allowed but worth knowing.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from sde_search import preflight
from sde_search.config import SpaceConfig, Task, model_info
from sde_search.design import DIMENSIONS, Design
from sde_search.render import Sample, parse, render
from sde_search.tasks import Record

ROUND_TRIP_RECORDS = 8
"""Records read back per design and split: the first, then ones bringing a (slot, value) not seen yet."""


def space_designs(space: SpaceConfig, extra: Sequence[Design] = ()) -> list[Design]:
    """Every design of the space, then the extra ones, without repeats."""
    choices = space.design_choices()
    designs = [Design(**dict(zip(DIMENSIONS, combo, strict=True))) for combo in itertools.product(*choices.values())]
    return list(dict.fromkeys([*designs, *extra]))


def problems(task: Task, space: SpaceConfig, extra: Sequence[Design] = ()) -> list[str]:
    """Designs whose renders do not read back, and samples a model with learned positions could not train on."""
    designs = space_designs(space, extra)
    found = round_trip_problems(task, designs)
    found.extend(length_findings(task, designs)[0])
    return found


def notes(task: Task, space: SpaceConfig) -> list[str]:
    """What ``--check`` points out without refusing: OOD slots shared with ID ones, long samples, unchecked layers."""
    out = []
    shared = [s for s in task.ood_slots if s in task.slots]
    if shared and task.ood_slots != task.slots:
        out.append(f"labels.ood_slots share {preflight.cut(str(shared))} with labels.slots: those slots are "
                   "in-domain, so the OOD score partly measures in-domain slots")
    out.extend(length_findings(task, space_designs(space))[1])
    searched = space.train.get("target_modules")
    targets = [task.config.train.target_modules,
               *(searched if isinstance(searched, list) else [] if searched is None else [searched])]
    if any(t != "all-linear" for t in targets):
        info, _ = model_info(task.config, task.path)
        if info is None or info.leaves is None:
            kind = "a GGUF file" if info is None else f"model type {info.kind or 'unknown'!r}"
            out.append(f"train.target_modules is not checked: the layer names of {kind} are not known here")
    return out


def _covering(records: Sequence[Record], limit: int) -> list[Record]:
    """The first record, then records that bring a (slot, value) pair not seen yet, at most ``limit``."""
    seen: set[tuple[str, str]] = set()
    chosen = []
    for record in records:
        pairs = {(slot, value) for slot, values in record.answer.items() for value in values[:1]}
        if not chosen or pairs - seen:
            chosen.append(record)
            seen |= pairs
        if len(chosen) >= limit:
            break
    return chosen


def round_trip_problems(task: Task, designs: Sequence[Design]) -> list[str]:
    """Designs under which a record's target does not parse back to its gold answer (one line in all)."""
    splits = [("train", False)] + ([("eval_ood", True)] if task.ood_slots != task.slots and "eval_ood" in task.splits
                                   else [])
    failed: list[tuple[Design, Record, Sample, str]] = []
    for split, ood in splits:
        records = _covering(task.splits[split], ROUND_TRIP_RECORDS)
        for design in designs:
            for record in records:
                sample = render(record, design, task, ood=ood)
                parsed = parse(sample.target, design, task, ood=ood)
                gold = task.gold(record, split)
                if parsed.errors or parsed.answer != gold:
                    how = f"with errors {list(parsed.errors)}" if parsed.errors else \
                        f"as {preflight.shown(dict(parsed.answer))}"
                    failed.append((design, record, sample, how))
                    break
    if not failed:
        return []
    design, record, sample, how = failed[0]
    count = len({d for d, *_ in failed})
    return [f"{task.path}: round trip FAILED under {count} of {len(designs)} designs, e.g. {design.short()}: record "
            f"{preflight.cut(record.id)}'s target {preflight.shown(sample.target)} parses back {how}; a slot or "
            "label name holding the format's separators (', ', '; ', ': ', a line break) cannot be read back "
            "-- rename it"]


def length_findings(task: Task, designs: Sequence[Design]) -> tuple[list[str], list[str]]:
    """Training samples longer than the model's context: (problems, notes).

    sde-search does not truncate: every sample is trained whole. That fails only on a model whose positions are a
    learned table (GPT-2 style) and only when the tokens are counted exactly (the model folder's tokenizer.json);
    otherwise it costs memory and uses positions the model was not built or trained for, which is a note.
    """
    info, _ = model_info(task.config, task.path)
    records = task.splits["train"]
    if info is None or info.context is None or not records or not designs:
        return [], []
    first = records[0]
    design = max(designs, key=lambda d: len(_text(render(first, d, task))))  # the longest samples
    count, exact = preflight.token_counter(info.tokenizer)
    lengths = [count(_text(render(r, design, task))) for r in records]
    over = [n for n in lengths if n > info.context]
    if not over:
        return [], []
    unit = "tokens" if exact else "UTF-8 bytes, an upper bound on the tokens"
    what = (f"{len(over)} of {len(records)} training samples are longer than the model's {info.context} positions "
            f"under design {design.short()} (longest {max(over)} {unit})")
    if info.kind in preflight.LEARNED_POSITIONS and exact:
        return [f"{task.path}: model.name: {what}; a {info.kind} model has a learned table of positions, so "
                "training would fail on them (sde-search does not truncate) -- shorten those records or pick a "
                "model with a longer context"], []
    built = "was built for" if info.kind == "tiny" else "was trained on"
    return [], [f"{what}; sde-search does not truncate: each is trained whole, at more memory and time, past the "
                f"positions the model {built}"]


def _text(sample: Sample) -> str:
    """What the model trains on (BOS and EOS are counted by the token counter)."""
    return sample.prompt + sample.target
