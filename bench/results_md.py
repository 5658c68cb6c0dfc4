"""What every benchmark does with its table: describe the machine, print the table, keep it in bench/results/."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line about the machine the figures come from."""
    return (f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def publish(name: str, lines: Sequence[str]) -> str:
    """Prints the markdown lines and writes them to ``bench/results/<name>``; returns the text."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    (RESULTS / name).write_text(text)
    return text
