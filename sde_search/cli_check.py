"""What ``sde-search --task T.yaml --check`` prints: the task's data and space, renders and their round trips.

Pure core: imports no torch, Ray or MLflow (``--check`` must stay fast and offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sde_search import render_check
from sde_search.config import SpaceConfig, Task, codes_text
from sde_search.design import ES_SDE, PAPER_BASELINE, Design
from sde_search.render import parse, render


def print_check(task: Task, space: SpaceConfig, space_path: Path, extra: Sequence[Design],
                trip: render_check.RoundTrip | None = None) -> None:
    """Prints what ``--check`` shows: counts, each split's source, space size, renders and their round trips."""
    print(f"task {task.config.name} ({task.config.type}) from {task.path}")
    print("data: " + ", ".join(f"{k} {len(v)}" for k, v in task.splits.items()))
    print("splits:")
    for split, source in task.sources.items():
        print(f"  {split}: {source}")
    print(f"slots: {', '.join(task.slots)}" + (f" | OOD slots: {', '.join(task.ood_slots)}"
                                             if task.ood_slots != task.slots else ""))
    if not task.kind.multi_valued and "number" in {*space.design_choices()["label_style"],
                                                   *(d.label_style for d in extra)}:
        print(f"label codes (label_style number; inferred where labels.numbers gives none): "
              f"{codes_text(task.config.labels.numbers)}")
    print(f"space {space_path.name}: {space.size()} designs; budget {space.budget.num_samples} trials, "
          f"{space.budget.max_concurrent} at once; objective {task.config.objective}")
    for note in [task.kappa_note(), *render_check.notes(task, space)]:
        if note:
            print(f"note: {note}")
    for line in render_check.round_trip_lines(trip) if trip else []:  # every record of every split
        print(line)
    record = task.splits["train"][0]
    designs = {"paper_baseline": PAPER_BASELINE, "es_sde": ES_SDE}
    designs.update({d.short(): d for d in extra})
    for name, design in designs.items():
        sample = render(record, design, task)
        parsed = parse(sample.target, design, task, slots=record.slots)
        ok = parsed.answer == task.gold(record, "train") and not parsed.errors
        lengths = [len((s.prompt + s.target).split()) for s in
                   (render(r, design, task) for r in task.splits["train"][:50])]
        print(f"\n== {name}: {design.short()}")
        if design.prompt_template == "chat":
            print("(prompt_template chat: the prompt below is wrapped in the model's chat template when trained)")
        print(sample.prompt + sample.target)
        print(f"-- round trip: {'ok' if ok else 'FAILED ' + str(parsed.errors)}; "
              f"~{sum(lengths) / len(lengths):.0f} words per sample (max {max(lengths)}, first 50 records)")
