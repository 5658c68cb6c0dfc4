"""A plugin whose record reader fails on every record (tests/bad/plugin_reader_raises.yaml)."""

from collections.abc import Mapping
from typing import Any

from sde_search.tasks import AspectSentiment, Record, task_type


@task_type
class ReaderRaises(AspectSentiment):
    name = "reader_raises"

    def from_json(self, obj: Mapping[str, Any]) -> Record:
        weight = 1 / len(obj.get("spans", []))  # a plugin bug: records without spans divide by zero
        return Record(str(obj["id"]), f"{obj['text']} ({weight})", {})
