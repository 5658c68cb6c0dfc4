"""A plugin that reads records but fails building a record's answer (tests/bad/plugin_answer_raises.yaml)."""

from collections.abc import Sequence

from sde_search.tasks import AspectSentiment, Record, task_type


@task_type
class AnswerRaises(AspectSentiment):
    name = "answer_raises"

    def gold(self, record: Record, slots: Sequence[str], unmentioned: str) -> dict[str, tuple[str, ...]]:
        return {s: (str(int(record.answer[s][0])),) for s in slots}  # a plugin bug: labels are words, not codes
