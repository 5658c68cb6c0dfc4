"""What the user of a command sees of the package's log records.

Library modules log (``logging.getLogger(__name__)``) and never print. A command (the CLI, and a search
trial in its Ray worker) shows those records for as long as it runs through :func:`shown`: one handler on the
``sde_search`` logger that writes each record as a plain line, INFO and WARNING to stdout, ERROR and above to
stderr, and is removed again at the end, so that a test calling the CLI many times does not stack handlers.

Pure core: imports only the standard library (never torch, Ray or MLflow).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

PACKAGE_LOGGER = "sde_search"


class ConsoleHandler(logging.Handler):
    """Writes a record's message alone (no level, no logger name): stdout below ERROR, stderr from ERROR on.

    The streams are looked up at each record rather than kept, so a caller that swaps ``sys.stdout`` (pytest's
    capture) sees the lines.
    """

    def __init__(self) -> None:
        """A handler at INFO with the format ``%(message)s``."""
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            stream = sys.stderr if record.levelno >= logging.ERROR else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own policy: a broken stream must not fail the caller
            self.handleError(record)


@contextlib.contextmanager
def shown() -> Iterator[ConsoleHandler]:
    """Inside: the package's log records at INFO and above appear as plain lines (see :class:`ConsoleHandler`).

    The ``sde_search`` logger's level and propagation are restored on the way out, so records logged later
    reach whoever listens at the root logger again (pytest's ``caplog``).
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = ConsoleHandler()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (Ray's, a notebook's) would show each line twice
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
