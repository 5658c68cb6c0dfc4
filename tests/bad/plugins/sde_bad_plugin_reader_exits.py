"""A plugin whose record reader calls sys.exit (tests/bad/plugin_reader_exits.yaml)."""

import sys
from collections.abc import Mapping
from typing import Any

from sde_search.tasks import AspectSentiment, Record, task_type


@task_type
class ReaderExits(AspectSentiment):
    name = "reader_exits"

    def from_json(self, obj: Mapping[str, Any]) -> Record:
        sys.exit("giving up on this record")
