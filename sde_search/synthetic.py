"""Seeded generator of synthetic datasets for the three task families (MASA, nested NER, events).

Every word comes from this module's own templates and word lists; no external text is read or
copied.

MASA aspects are a place and a thing ("patio music"). Each record lists its own aspects (2-3 of the
pool of 30, in a random order), and the review names the aspects it rates, some listed, sometimes one
unlisted. The instruction therefore carries information: which aspects to answer, in which order. The
OOD pool holds 6 held-out pairs: never listed, labelled or named in training, yet every word in them
was read and written there. A model trained from scratch has no pretraining that taught it a new
domain's words (which is how a pretrained model transfers to a new aspect list), so the OOD names reuse
known words: a model that learned to copy a listed name and to read the polarity next to it in the text
transfers; one that memorised the 30 names cannot. With 8 ID aspects instead of 30, the tiny model
memorised them: its OOD kappa stayed near 0 (0.02 and 0.06 for two designs after 24 epochs, one seed
each); with 30, 0.26 and 0.16.

Records carry one short rationale per slot for chain-of-thought designs. Rationales, entity spans and
triggers never contain ``, ; : "`` or newlines, nor ``=>`` or ``<=``, so every output format can embed
them. Output is deterministic: the same seed gives byte-identical JSONL files.

Pure core: stdlib only, never imports torch, Ray or MLflow.

Usage: ``python -m sde_search.synthetic [OUT_DIR]`` (default ``examples/data``).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Record = dict[str, Any]
Mention = tuple[str, list[tuple[int, int, str]]]  # text, (start, end, type) relative to the text

PLACES_IN = ("bar", "patio", "lounge", "terrace", "garden", "rooftop")
THINGS = ("food", "drinks", "music", "seating", "service", "view")
MASA_OOD_ASPECTS = tuple(f"{PLACES_IN[i % len(PLACES_IN)]} {thing}" for i, thing in enumerate(THINGS))
"""Six held-out pairs: every place and every thing also occurs in ID aspects, never these pairs."""
MASA_ID_ASPECTS = tuple(a for a in (f"{p} {t}" for p in PLACES_IN for t in THINGS) if a not in MASA_OOD_ASPECTS)
MASA_LABELS = ("positive", "negative", "neutral", "unmentioned")
ENTITY_TYPES = ("person", "organization", "location")
EVENT_TYPES = ("attack", "travel", "meeting", "payment")

POSITIVE_WORDS = ("great", "excellent", "lovely", "superb", "wonderful", "good")
NEGATIVE_WORDS = ("terrible", "awful", "poor", "bad", "dreadful", "disappointing")
NEUTRAL_WORDS = ("okay", "average", "fine", "unremarkable", "standard", "so-so")
INTENSIFIERS = ("really", "very", "truly", "quite", "so")
FRAMES = {  # polarity: clause frames; {n} is the aspect's own name, so the text names every aspect it rates
    "positive": ("the {n} was {a}", "the {n} was {i} {a}", "I loved the {n}", "we enjoyed the {n}"),
    "negative": ("the {n} was {b}", "the {n} was {i} {b}", "I disliked the {n}", "we hated the {n}"),
    "neutral": ("the {n} was {m}", "the {n} seemed {m}", "the {n} was {m} overall"),
}
OPENERS = {  # polarity: words that may open a clause
    "positive": ("", "", "", "honestly ", "overall ", "I think ", "luckily ", "happily "),
    "negative": ("", "", "", "honestly ", "overall ", "I think ", "sadly ", "frankly "),
    "neutral": ("", "", "", "honestly ", "overall ", "I think ", "to be fair "),
}
DISTRACTORS = ("we came on a Tuesday", "my cousin recommended it", "it was raining outside",
               "we were celebrating a birthday", "it was our first visit", "we went there after work",
               "a friend told us about the place", "we had booked a week ahead", "my sister ordered for us")
CONNECTORS = (". ", ", and ", ", but ", ". Also ", ". ", ", while ")

PLACES = ("Lorvik", "Tarsen", "Brevia", "Kalmora", "Ostrand", "Velmire", "Dunhollow", "Ashkel",
          "Miravel", "Porthen", "Zelgrad", "Quenby", "New Harl")
FIRST_NAMES = ("Anika", "Borin", "Celia", "Dovan", "Elsa", "Farid", "Greta", "Hollis", "Ilse", "Joren",
               "Kaia", "Lennart", "Mara", "Tolan")
SURNAMES = ("Marsk", "Tovey", "Quill", "Harrow", "Vance", "Ostby", "Pell", "Renke", "Dalgo", "Sunvik")
TITLES = ("Doctor", "Mayor", "Professor", "Captain", "Judge", "Minister")
ORG_WITH_PLACE = ("{L} Bank", "Bank of {L}", "University of {L}", "{L} City Council", "{L} Rail Company",
                  "{L} Herald", "Port Authority of {L}")
ORG_PLAIN = ("Silvercrest Group", "Kestrel Dynamics", "Brightmoor Labs", "Amberline Foods", "Tidewell Mutual")
ENTITY_TEMPLATES = ("{P} joined {O} last spring.", "{P} moved to {L} in May.", "{O} opened an office in {L}.",
                    "{P} met {P} in {L}.", "{P} works for {O}.", "{O} hired {P} as an adviser.",
                    "Reporters from {O} spoke with {P}.", "{P} was born in {L}.", "{O} announced record profits.",
                    "{P} praised {O} on Friday.", "{P} wrote a long letter.", "Crowds filled the streets of {L}.",
                    "{O} declined to comment.", "{P} stayed home all day.", "{L} was quiet that night.",
                    "The weather was mild all week.", "Nobody expected the result.",
                    "Prices rose again this quarter.")

TRIGGERS = {  # event type: verbs (with the words that follow them) and nouns
    "attack": (("attacked", "raided", "ambushed", "stormed", "shelled"), ("raid", "assault", "ambush")),
    "travel": (("flew to", "traveled to", "arrived in", "went to", "drove to", "sailed to"), ("trip", "journey")),
    "meeting": (("met with", "conferred with", "sat down with", "gathered with"), ("summit", "talks")),
    "payment": (("paid", "transferred", "wired", "donated"), ("payment", "transfer")),
}
TARGETS = ("depot", "convoy", "checkpoint", "warehouse", "border post")
NO_EVENT_TEMPLATES = ("{A} lives in {L}.", "The bridge in {L} is very old.", "{A} likes quiet mornings.",
                      "Markets in {L} stayed calm.", "{A} is known for careful work.", "Snow covered {L} again.")
JOINERS = (" and then ", ", and later ", " before ", ". Afterwards ")


def is_clean(text: str) -> bool:
    """Return whether ``text`` may serve as a rationale, span or trigger (no separators, no padding)."""
    return bool(text) and text == text.strip() and not re.search(r'[,;:"\n]|=>|<=', text)


def _capitalize(text: str) -> str:
    """Uppercase the first character and the first letter after each sentence-ending period."""
    return re.sub(r"(^|\. )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _masa_clause(rng: random.Random, aspect: str, polarity: str) -> str:
    """Return one clause stating ``polarity`` about ``aspect``, naming it (without punctuation)."""
    clause = rng.choice(FRAMES[polarity]).format(n=aspect, i=rng.choice(INTENSIFIERS), m=rng.choice(NEUTRAL_WORDS),
                                                 a=rng.choice(POSITIVE_WORDS), b=rng.choice(NEGATIVE_WORDS))
    return clause.replace(f"{aspect} was", f"{aspect} were") if aspect.endswith("s") else clause


def _masa_record(rng: random.Random, ood: bool, max_words: int = 30) -> Record:
    """Build one review of at most ``max_words`` words with its aspect list, labels and rationales (no id)."""
    while len((record := _masa_draft(rng, ood))["text"].split()) > max_words:
        pass
    return record


def _masa_draft(rng: random.Random, ood: bool) -> Record:
    """Draft one review with its aspect list, labels and rationales, whatever its length.

    The record lists 2-3 aspects of its pool in a random order (its ``slots``: what the instruction asks for).
    The text rates some of them and, half of the time, one aspect the list leaves out (an OOD review may
    rate an ID aspect too; a training review never names an OOD pair), so only a model that reads the
    list knows what to answer.
    """
    pool = MASA_OOD_ASPECTS if ood else MASA_ID_ASPECTS
    listed = rng.sample(pool, rng.choice((2, 2, 3)))
    rated = [a for a in listed if rng.random() < 0.6] or [rng.choice(listed)]
    unlisted = [a for a in pool + (MASA_ID_ASPECTS if ood else ()) if a not in listed]
    extra = [rng.choice(unlisted)] if rng.random() < 0.5 else []
    labels = dict.fromkeys(listed, "unmentioned")
    rationales = {a: f"{a} is not discussed" for a in listed}
    clauses = []
    for aspect in rated + extra:
        labels[aspect] = rng.choices(("positive", "negative", "neutral"), weights=(4, 4, 3))[0]
        rationales[aspect] = _masa_clause(rng, aspect, labels[aspect])
        clauses.append(rng.choice(OPENERS[labels[aspect]]) + rationales[aspect])
    if rng.random() < 0.3:
        clauses.append(rng.choice(DISTRACTORS))
    rng.shuffle(clauses)
    text = clauses[0] + "".join(rng.choice(CONNECTORS) + c for c in clauses[1:]) + "."
    return {"text": _capitalize(text), "slots": listed, "labels": labels, "rationales": rationales}


def _person(rng: random.Random) -> Mention:
    """Return a person name, sometimes with a title, sometimes a first name only."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
    text = rng.choice((name, name, f"{rng.choice(TITLES)} {name}", rng.choice(FIRST_NAMES)))
    return text, [(0, len(text), "person")]


def _location(rng: random.Random) -> Mention:
    """Return a made-up place name."""
    text = rng.choice(PLACES)
    return text, [(0, len(text), "location")]


def _bare_name(rng: random.Random) -> Mention:
    """Return a person name that is not annotated (event actors)."""
    return _person(rng)[0], []


def _bare_place(rng: random.Random) -> Mention:
    """Return a place name that is not annotated (event places)."""
    return rng.choice(PLACES), []


def _organization(rng: random.Random) -> Mention:
    """Return an organization; most contain a nested location or person entity."""
    kind = rng.random()
    if kind < 0.2:
        text = rng.choice(ORG_PLAIN)
        return text, [(0, len(text), "organization")]
    if kind < 0.35:  # nested person: "Greta Pell Foundation"
        inner = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
        text = f"{inner} Foundation"
        return text, [(0, len(text), "organization"), (0, len(inner), "person")]
    place = rng.choice(PLACES)
    template = rng.choice(ORG_WITH_PLACE)
    text, start = template.replace("{L}", place), template.index("{L}")
    return text, [(0, len(text), "organization"), (start, start + len(place), "location")]


def _fill(rng: random.Random, template: str, makers: dict[str, Callable[[random.Random], Mention]]) -> Record:
    """Fill ``{X}`` slots of ``template`` with mentions and return text plus absolute spans."""
    text, spans = "", []
    for i, part in enumerate(re.split(r"\{(\w)\}", template)):
        if i % 2:
            mention, rel = makers[part](rng)
            spans += [(len(text) + s, len(text) + e, t) for s, e, t in rel]
            text += mention
        else:
            text += part
    return {"text": text, "spans": sorted(spans, key=lambda s: (s[0], -s[1]))}


def _slot_rationale(found: list[str], singular: str, plural: str, empty: str) -> str:
    """Name the spans that fill one slot (``X is a person``), or say that the slot is empty."""
    unique = list(dict.fromkeys(found))
    if not unique:
        return empty
    return f"{unique[0]} {singular}" if len(unique) == 1 else f"{' and '.join(unique)} {plural}"


def _entity_record(rng: random.Random) -> Record:
    """Build one sentence with nested entities and per-type rationales (no id)."""
    filled = _fill(rng, rng.choice(ENTITY_TEMPLATES), {"P": _person, "O": _organization, "L": _location})
    text = filled["text"]
    entities = [{"start": s, "end": e, "type": t, "span": text[s:e]} for s, e, t in filled["spans"]]
    rationales = {}
    for etype in ENTITY_TYPES:
        article = "an" if etype[0] in "aeiou" else "a"
        found = [x["span"] for x in entities if x["type"] == etype]
        rationales[etype] = _slot_rationale(found, f"is {article} {etype}", f"are {etype}s", f"no {etype} is named")
    return {"text": text, "entities": entities, "rationales": rationales}


def _event_clause(rng: random.Random, etype: str) -> Record:
    """Return one clause holding a single event of ``etype`` (text, spans)."""
    verbs, nouns = TRIGGERS[etype]
    if rng.random() < 0.25:
        trigger = rng.choice(nouns)
        template = rng.choice(("the {T} in {L} was brief", "{A} spoke about the {T} in {L}"))
    else:
        phrase = rng.choice(verbs)
        trigger, _, rest = phrase.partition(" ")
        rest = f" {rest}" if rest else ""
        target = {"attack": " the " + rng.choice(TARGETS) + " near {L}", "travel": " {L}", "meeting": " {A} in {L}",
                  "payment": f" {rng.randint(2, 90) * 10} coins to {{A}}"}[etype]
        template = "{A} {T}" + rest + target
    makers = {"A": _bare_name, "L": _bare_place, "T": lambda r: (trigger, [(0, len(trigger), etype)])}
    return _fill(rng, template, makers)


def _event_record(rng: random.Random) -> Record:
    """Build one sentence with zero, one or two events and per-type rationales (no id)."""
    roll = rng.random()
    if roll < 0.25:
        filled = _fill(rng, rng.choice(NO_EVENT_TEMPLATES), {"A": _bare_name, "L": _bare_place})
        text, spans = filled["text"], []
    else:
        parts = [_event_clause(rng, rng.choice(EVENT_TYPES)) for _ in range(2 if roll > 0.8 else 1)]
        text, spans = parts[0]["text"], list(parts[0]["spans"])
        if len(parts) == 2:
            joiner = rng.choice(JOINERS)
            offset = len(text) + len(joiner)
            text += joiner + parts[1]["text"]
            spans += [(s + offset, e + offset, t) for s, e, t in parts[1]["spans"]]
        text = _capitalize(text + ".")
    events = [{"trigger": text[s:e], "type": t, "start": s, "end": e} for s, e, t in spans]
    rationales = {}
    for etype in EVENT_TYPES:
        found = [x["trigger"] for x in events if x["type"] == etype]
        rationales[etype] = _slot_rationale(found, f"signals {etype}", f"signal {etype}", f"no {etype} is described")
    return {"text": text, "events": events, "rationales": rationales}


def _generate(n: int, seed: int, prefix: str, build: Callable[[random.Random], Record]) -> list[Record]:
    """Build ``n`` records with ``build`` from one seeded RNG and put the id first."""
    rng = random.Random(seed)
    return [{"id": f"{prefix}-{i:04d}", **build(rng)} for i in range(1, n + 1)]


def generate_masa(n: int, seed: int, *, ood: bool = False, prefix: str = "masa") -> list[Record]:
    """Generate multi-aspect restaurant reviews.

    Args:
        n: Number of records.
        seed: Seed of the ``random.Random`` that drives everything.
        ood: List aspects of the OOD pool (``MASA_OOD_ASPECTS``) instead of the ID pool.
        prefix: Id prefix; ids are ``{prefix}-0001`` onwards.

    Returns:
        Records ``{id, text, slots, labels, rationales}``: ``slots`` is the record's own aspect list (2-3 of
        its pool, in a random order); every listed aspect is labelled, and so is an unlisted aspect the text
        also rates.
    """
    return _generate(n, seed, prefix, lambda rng: _masa_record(rng, ood))


def generate_entities(n: int, seed: int, *, prefix: str = "entities") -> list[Record]:
    """Generate sentences with nested person/organization/location entities.

    Args:
        n: Number of records.
        seed: Seed of the ``random.Random`` that drives everything.
        prefix: Id prefix; ids are ``{prefix}-0001`` onwards.

    Returns:
        Records ``{id, text, entities, rationales}`` with ``text[start:end] == span``.
    """
    return _generate(n, seed, prefix, _entity_record)


def generate_events(n: int, seed: int, *, prefix: str = "events") -> list[Record]:
    """Generate sentences with zero, one or two events of ``EVENT_TYPES``.

    Args:
        n: Number of records.
        seed: Seed of the ``random.Random`` that drives everything.
        prefix: Id prefix; ids are ``{prefix}-0001`` onwards.

    Returns:
        Records ``{id, text, events, rationales}`` with ``text[start:end] == trigger``.
    """
    return _generate(n, seed, prefix, _event_record)


SPLITS = (  # task, split, size, seed; the "ood_*" MASA splits mention mostly the OOD aspects
    ("masa", "train", 400, 101), ("masa", "dev", 80, 102), ("masa", "test", 120, 103),
    ("masa", "ood_dev", 80, 104), ("masa", "ood_test", 120, 105), ("masa", "ood_train", 400, 106),
    ("entities", "train", 300, 201), ("entities", "dev", 60, 202), ("entities", "test", 100, 203),
    ("events", "train", 300, 301), ("events", "dev", 60, 302), ("events", "test", 100, 303),
)


def write_examples(out_dir: Path) -> dict[str, int]:
    """Write every split of ``SPLITS`` as ``{task}/{split}.jsonl`` under ``out_dir``.

    Args:
        out_dir: Target folder; ``masa/``, ``entities/`` and ``events/`` are created in it.

    Returns:
        Record count per relative file path.
    """
    counts = {}
    for task, split, size, seed in SPLITS:
        prefix, rel = f"{task}-{split}", f"{task}/{split}.jsonl"
        if task == "masa":
            records = generate_masa(size, seed, ood=split.startswith("ood"), prefix=prefix)
        else:
            records = {"entities": generate_entities, "events": generate_events}[task](size, seed, prefix=prefix)
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        counts[rel] = len(records)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Write the example datasets to ``argv[0]`` (default ``examples/data``) and print the counts."""
    args = sys.argv[1:] if argv is None else argv
    for rel, count in write_examples(Path(args[0] if args else "examples/data")).items():
        print(f"{rel}\t{count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
