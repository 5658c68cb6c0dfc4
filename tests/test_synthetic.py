"""Tests for the synthetic dataset generator and the committed ``examples/data`` files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sde_search import synthetic
from sde_search.synthetic import (
    ENTITY_TYPES,
    EVENT_TYPES,
    MASA_ID_ASPECTS,
    MASA_OOD_ASPECTS,
    generate_entities,
    generate_events,
    generate_masa,
    write_examples,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"
FORBIDDEN = re.compile(r'[,;:"\n]|=>|<=')
SPAN_CHARS = re.compile(r"[A-Za-z0-9 -]+")
GENERATORS = (generate_masa, generate_entities, generate_events)


def _read(path: Path) -> list[dict]:
    """Read one JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _mentioned(records: list[dict], aspect: str) -> float:
    """Share of records whose text rates ``aspect``."""
    return sum(r["labels"].get(aspect, "unmentioned") != "unmentioned" for r in records) / len(records)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Write every split once into a temporary folder."""
    out = tmp_path_factory.mktemp("data")
    return out, write_examples(out)


@pytest.mark.parametrize("generate", GENERATORS)
def test_deterministic_per_seed(generate) -> None:
    """The same seed gives the same records, another seed different ones."""
    assert generate(30, 7) == generate(30, 7)
    assert generate(30, 7) != generate(30, 8)


def test_written_sizes_and_unique_ids(written) -> None:
    """Every split has its size and unique ids named after the split."""
    out, counts = written
    expected = {"masa": (400, 80, 120), "entities": (300, 60, 100), "events": (300, 60, 100)}
    for task, sizes in expected.items():
        for split, size in zip(("train", "dev", "test"), sizes, strict=True):
            assert counts[f"{task}/{split}.jsonl"] == size
    assert counts["masa/ood_dev.jsonl"] == 80 and counts["masa/ood_test.jsonl"] == 120
    for rel, count in counts.items():
        ids = [r["id"] for r in _read(out / rel)]
        assert len(ids) == len(set(ids)) == count
        task, split = rel.removesuffix(".jsonl").split("/")
        assert ids[0] == f"{task}-{split}-0001"


def test_splits_differ(written) -> None:
    """Splits come from different seeds, so they barely overlap."""
    out, _ = written
    texts = {rel: {r["text"] for r in _read(out / rel)} for rel in ("masa/train.jsonl", "masa/test.jsonl")}
    assert len(texts["masa/train.jsonl"] & texts["masa/test.jsonl"]) < 10


def test_constraints_hold_in_every_split(written) -> None:
    """Rationales, spans and triggers obey the separator constraints everywhere."""
    out, counts = written
    for rel in counts:
        for record in _read(out / rel):
            pieces = list(record["rationales"].values())
            pieces += [e["span"] for e in record.get("entities", [])] + [e["trigger"] for e in record.get("events", [])]
            for piece in pieces:
                assert piece and piece == piece.strip() and not FORBIDDEN.search(piece), (rel, record["id"], piece)
                assert synthetic.is_clean(piece)
            for item in record.get("entities", []) + record.get("events", []):
                assert SPAN_CHARS.fullmatch(item.get("span", item.get("trigger"))), (rel, record["id"])


def test_key_order(written) -> None:
    """Record and item keys come in the documented order."""
    out, _ = written
    assert list(_read(out / "masa/dev.jsonl")[0]) == ["id", "text", "slots", "labels", "rationales"]
    assert list(_read(out / "entities/dev.jsonl")[0]) == ["id", "text", "entities", "rationales"]
    assert list(_read(out / "events/dev.jsonl")[0]) == ["id", "text", "events", "rationales"]
    entity = next(e for r in _read(out / "entities/dev.jsonl") for e in r["entities"])
    event = next(e for r in _read(out / "events/dev.jsonl") for e in r["events"])
    assert list(entity) == ["start", "end", "type", "span"] and list(event) == ["trigger", "type", "start", "end"]


def test_masa_labels_and_rationales() -> None:
    """Each record lists 2-3 aspects of its pool; listed and rated ones are labelled, rated ones quote their clause."""
    for ood, records in ((False, generate_masa(200, 3)), (True, generate_masa(200, 4, ood=True))):
        pool = MASA_OOD_ASPECTS if ood else MASA_ID_ASPECTS
        for record in records:
            listed = record["slots"]
            assert 2 <= len(listed) <= 3 and len(set(listed)) == len(listed) and set(listed) <= set(pool)
            assert list(record["labels"])[:len(listed)] == listed and set(record["labels"]) == set(record["rationales"])
            assert set(record["labels"].values()) <= {"positive", "negative", "neutral", "unmentioned"}
            rated = [a for a, v in record["labels"].items() if v != "unmentioned"]
            assert rated and any(a in listed for a in rated) and len(set(rated) - set(listed)) <= 1
            assert len(record["text"].split()) <= 30
            for aspect in rated:
                text = record["text"].lower()
                assert aspect in text and record["rationales"][aspect].lower() in text


def test_masa_lists_vary_so_the_instruction_carries_information() -> None:
    """Lists differ in content and order, and texts often rate an aspect the list leaves out."""
    records = generate_masa(400, 101)
    assert len({tuple(r["slots"]) for r in records}) > 150
    assert len({tuple(sorted(r["slots"])) for r in records}) < len({tuple(r["slots"]) for r in records})
    unlisted = sum(any(a not in r["slots"] for a in r["labels"]) for r in records) / len(records)
    assert 0.3 < unlisted < 0.7


def test_masa_ood_aspects_are_unseen_pairs_of_known_words() -> None:
    """OOD aspects never occur in training texts or lists, yet each of their words does, in other aspects."""
    assert not set(MASA_ID_ASPECTS) & set(MASA_OOD_ASPECTS)
    train, ood = generate_masa(400, 101), generate_masa(200, 104, ood=True)
    for aspect in MASA_OOD_ASPECTS:
        assert _mentioned(train, aspect) == 0 and not any(aspect in r["text"].lower() for r in train)
        assert _mentioned(ood, aspect) > 0.2
        for word in aspect.split():
            assert any(word in a.split() for a in MASA_ID_ASPECTS)
    for aspect in MASA_ID_ASPECTS:
        assert _mentioned(train, aspect) > 0.02


def test_masa_polarities_balanced() -> None:
    """No polarity dominates the mentioned aspects."""
    polarities = Counter(v for r in generate_masa(400, 101) for v in r["labels"].values() if v != "unmentioned")
    total = sum(polarities.values())
    assert all(0.2 < polarities[p] / total < 0.45 for p in ("positive", "negative", "neutral"))


def test_entity_offsets_and_nesting() -> None:
    """Entity offsets match their spans and nested entities occur."""
    records = generate_entities(300, 5)
    nested = 0
    for record in records:
        for e in record["entities"]:
            assert record["text"][e["start"] : e["end"]] == e["span"] and e["type"] in ENTITY_TYPES
        spans = [(e["start"], e["end"]) for e in record["entities"]]
        nested += any(a != b and a[0] <= b[0] and b[1] <= a[1] for a in spans for b in spans)
        assert tuple(record["rationales"]) == ENTITY_TYPES
    assert nested > 30
    assert 0 < sum(not r["entities"] for r in records) < 100


def test_event_offsets_and_empty_sentences() -> None:
    """Trigger offsets match; about a quarter of sentences have no event."""
    records = generate_events(300, 6)
    for record in records:
        for e in record["events"]:
            assert record["text"][e["start"] : e["end"]] == e["trigger"] and e["type"] in EVENT_TYPES
        assert tuple(record["rationales"]) == EVENT_TYPES
    sizes = Counter(len(r["events"]) for r in records)
    assert 0.15 < sizes[0] / len(records) < 0.35 and sizes[2] > 20
    assert {e["type"] for r in records for e in r["events"]} == set(EVENT_TYPES)


def test_committed_examples_match_fresh_write(written) -> None:
    """The committed ``examples/data`` equals a fresh write (no drift)."""
    out, counts = written
    committed = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.jsonl"))
    assert committed == sorted(counts)
    for rel in counts:
        assert (EXAMPLES / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_cli_writes_and_prints(tmp_path: Path) -> None:
    """``python -m sde_search.synthetic DIR`` writes the files and prints counts."""
    command = [sys.executable, "-m", "sde_search.synthetic", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "masa/train.jsonl\t400" in proc.stdout
    assert (tmp_path / "events" / "test.jsonl").exists()


def test_pure_core_imports() -> None:
    """Importing the module loads neither torch, Ray nor MLflow."""
    code = "import sys, sde_search.synthetic; print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert proc.stdout.strip() == "[]"
