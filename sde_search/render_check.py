"""``--check``'s rehearsal of the renders: every design of the space reads back, and samples fit the model.

A record whose target does not parse back to its gold answer is scored on what the parser guesses, so a
perfect answer may fail; a sample longer than a model with a learned position table fails in training. Both
are found here, before a search starts: every record of every split is rendered under every target layout of
the space's designs and read back (:func:`round_trip`). A design under which no record of a split reads back
cannot represent the data (a slot name holding the format's own separators): a problem. Fewer failures are
counted and shown. Also the notes ``--check`` prints: settings that are allowed but worth knowing.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sde_search import preflight
from sde_search.config import SpaceConfig, Task, model_info
from sde_search.design import DIMENSIONS, Design
from sde_search.render import Parsed, Sample, parse, render

LAYOUT = ("output_format", "unmentioned", "label_style", "reasoning")
"""The dimensions a target depends on; the others (instruction, prompt loss, template) change only the prompt,
so the round trip reads each record once per layout, not once per design."""


def space_designs(space: SpaceConfig, extra: Sequence[Design] = ()) -> list[Design]:
    """Every design of the space, then the extra ones, without repeats."""
    choices = space.design_choices()
    designs = [Design(**dict[str, Any](zip(DIMENSIONS, combo, strict=True)))
               for combo in itertools.product(*choices.values())]
    return list(dict.fromkeys([*designs, *extra]))


def problems(task: Task, space: SpaceConfig, extra: Sequence[Design] = (), trip: RoundTrip | None = None) -> list[str]:
    """Designs that cannot represent the data, and samples a model with learned positions could not train on.

    Args:
        task: The loaded task.
        space: Its search space.
        extra: Designs checked beside the space's (baselines, ``--design``).
        trip: The round trip of those designs, when already run (else it is run here).
    """
    designs = space_designs(space, extra)
    found = round_trip_problems(task, trip or round_trip(task, designs))
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
    searched: Any = space.train.get("target_modules")
    targets = [task.config.train.target_modules,
               *(searched if isinstance(searched, list) else [] if searched is None else [searched])]
    if any(t != "all-linear" for t in targets):
        info, _ = model_info(task.config, task.path)
        if info is None or info.leaves is None:
            kind = "a GGUF file" if info is None else f"model type {info.kind or 'unknown'!r}"
            out.append(f"train.target_modules is not checked: the layer names of {kind} are not known here")
    return out


@dataclass(frozen=True)
class SplitTrip:
    """The round trip of one split: each record under each design checked.

    Attributes:
        split: The split's name.
        records: Its record count.
        failed: Records that do not read back under at least one design.
        pairs: (record, design) pairs that do not read back.
        designs: Designs under which at least one record does not read back.
        hopeless: Designs under which no record reads back (only when the split has records).
        example: The first failure, described; ``""`` when none.
        hopeless_example: The first failure under the first of ``hopeless``; ``""`` when none.
    """

    split: str
    records: int
    failed: int
    pairs: int
    designs: tuple[Design, ...]
    hopeless: tuple[Design, ...]
    example: str
    hopeless_example: str = ""


@dataclass(frozen=True)
class RoundTrip:
    """Every split's round trip under the same designs."""

    designs: int
    splits: tuple[SplitTrip, ...]


def layout(design: Design) -> Design:
    """The design with only its :data:`LAYOUT` dimensions kept (the rest at their defaults)."""
    return Design(**{d: getattr(design, d) for d in LAYOUT})


def round_trip(task: Task, designs: Sequence[Design]) -> RoundTrip:
    """Renders every record of every split under each target layout of ``designs`` and parses it back.

    A record fails under a design when its target parses with an error or to another answer than its gold.
    Each layout is rendered through its first design (``render`` stays the one truth), and a target met
    again (an answer shared by several records) is not parsed twice.
    """
    by_layout: dict[Design, list[Design]] = {}
    for design in designs:
        by_layout.setdefault(layout(design), []).append(design)
    splits = []
    for split, records in task.splits.items():
        ood = split.endswith("_ood")
        failed: set[int] = set()
        pairs, failing, hopeless, example, hopeless_example = 0, [], [], "", ""
        for members in by_layout.values():
            design, rows, first = members[0], [], ""
            parsed_of: dict[tuple[str, tuple[str, ...] | None], Parsed] = {}
            for i, record in enumerate(records):
                sample = render(record, design, task, ood=ood)
                key = (sample.target, record.slots)
                if key not in parsed_of:
                    parsed_of[key] = parse(sample.target, design, task, ood=ood, slots=record.slots)
                parsed = parsed_of[key]
                if parsed.errors or parsed.answer != task.gold(record, split):
                    rows.append(i)
                    first = first or _failure(design, record.id, sample, parsed)
            failed.update(rows)
            pairs += len(rows) * len(members)
            failing += members if rows else []
            example = example or first
            if rows and len(rows) == len(records):
                hopeless += members
                hopeless_example = hopeless_example or first
        splits.append(SplitTrip(split, len(records), len(failed), pairs, tuple(failing), tuple(hopeless), example,
                                hopeless_example))
    return RoundTrip(len(designs), tuple(splits))


def _failure(design: Design, record_id: str, sample: Sample, parsed: Parsed) -> str:
    how = f"with errors {list(parsed.errors)}" if parsed.errors else f"as {preflight.shown(dict(parsed.answer))}"
    return (f"{design.short()}: record {preflight.cut(record_id)}'s target {preflight.shown(sample.target)} "
            f"parses back {how}")


def round_trip_problems(task: Task, trip: RoundTrip) -> list[str]:
    """One line when a design cannot represent the data: no record of a split reads back under it."""
    hopeless = [(s, d) for s in trip.splits for d in s.hopeless]
    if not hopeless:
        return []
    split = hopeless[0][0]
    count = len({d for _, d in hopeless})
    return [f"{task.path}: round trip FAILED under {count} of {trip.designs} designs, e.g. {split.hopeless_example}, "
            f"and no other {split.split} record reads back under that design either: it cannot represent the data "
            "(a slot name holding the format's separators, ', ' in natural or '; ' for entities/events, cannot be "
            "read back -- rename it)"]


def round_trip_lines(trip: RoundTrip) -> list[str]:
    """What ``--check`` prints: per split, how many records do not read back, with an example."""
    lines = []
    for s in trip.splits:
        line = f"round trip: {s.failed} of {s.records} {s.split} records fail under the {trip.designs} designs checked"
        if s.failed:
            line += (f" ({s.pairs} record x design pairs, under {len(s.designs)} designs; such a record is scored "
                     f"on what the parser reads), e.g. {s.example}")
        lines.append(line)
    return lines


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
