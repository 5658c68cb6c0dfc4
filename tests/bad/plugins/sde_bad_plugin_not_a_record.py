"""A plugin whose record reader returns a dict instead of a Record (tests/bad/plugin_not_a_record.yaml)."""

from collections.abc import Mapping
from typing import Any

from sde_search.tasks import AspectSentiment, Record, task_type


@task_type
class NotARecord(AspectSentiment):
    name = "not_a_record"

    def from_json(self, obj: Mapping[str, Any]) -> Record:
        return dict(obj)  # type: ignore[return-value]
