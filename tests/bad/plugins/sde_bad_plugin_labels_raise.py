"""A plugin whose label check fails (tests/bad/plugin_labels_raise.yaml)."""

from collections.abc import Sequence

from sde_search.tasks import AspectSentiment, Record, task_type


@task_type
class LabelsRaise(AspectSentiment):
    name = "labels_raise"

    def label_problems(self, record: Record, slots: Sequence[str], values: Sequence[str],
                       unmentioned: str) -> list[str]:
        raise NotImplementedError("label check not written yet")
