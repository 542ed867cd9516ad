"""The package's warnings on a terminal: records of the ``wtal`` logger (data problems the
loaders found, evaluator notes) as one ``warning: <message>`` line each on stderr."""

from __future__ import annotations

import logging
import sys


class StderrHandler(logging.Handler):
    """``<level>: <message>`` lines on the current ``sys.stderr`` (looked up at each record,
    so redirected or captured streams get them)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def show_warnings() -> None:
    """Print the ``wtal`` logger's warnings on stderr, each once (installed at most once)."""
    logger = logging.getLogger("wtal")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler(logging.WARNING))
        logger.propagate = False  # printed here; not a second time by a root handler
