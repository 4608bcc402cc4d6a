"""`unmetered()`: the POSTs that looked like LLM calls but that no wire format read, for assertions.

llmtally logs each such (host, path) once, as a warning on the ``llmtally`` logger; every occurrence
also goes, at DEBUG, to the ``llmtally.unmetered`` logger with the pair attached. This listens there
(through logging only: this package imports nothing else of llmtally), and keeps those records from
reaching the application's own handlers while it listens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unmetered"]

_LOGGER = "llmtally.unmetered"


class _Collect(logging.Handler):
    def __init__(self, into: list[tuple[str, str]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        pair = getattr(record, "llmtally_unmetered", None)
        if isinstance(pair, tuple) and len(pair) == 2:
            self.into.append((str(pair[0]), str(pair[1])))


@contextmanager
def unmetered() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(host, path)`` of every POST in the block that looked like an LLM API call but was
    not counted, because no wire format llmtally knows reads it::

        with llmtally.testing.unmetered() as missed:
            run_my_agent()
        assert missed == []  # every LLM call my code made was metered
    """
    found: list[tuple[str, str]] = []
    logger = logging.getLogger(_LOGGER)
    handler = _Collect(found)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
